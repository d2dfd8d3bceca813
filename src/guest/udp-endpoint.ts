// The guest end of a UDP Tunnel (one per host client): a UDP socket connected to the guest
// server, one datagram per message each way (several between porthole agents, with credits).
// A datagram that cannot be delivered is lost, as UDP allows; it never ends the tunnel. The host's end of the stream closes the socket.
import * as grpc from "@grpc/grpc-js";
import { parseHostPort } from "../core/address.ts";
import type { TunnelMessage } from "../proto/guest-service.ts";
import { DatagramBatcher, datagramsOf } from "../transport/datagram-batch.ts";
import { DatagramBudget, DeliveryReport } from "../transport/datagram-budget.ts";
import { connectDatagrams, type DatagramSocket } from "../transport/datagram-socket.ts";
import type { TunnelCall } from "./tunnel-endpoint.ts";

export function handleUdpTunnel(call: TunnelCall, handshake: TunnelMessage): void {
  const { host, port } = parseHostPort(handshake.guest_addr);
  const target = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  const id = handshake.id;
  let socket: DatagramSocket | undefined;
  let closed = false;
  // Past the budget, datagrams are dropped rather than queued on the shared connection. A
  // porthole host that asked for credits counts what it delivered, and is told what we did.
  const credited = handshake.udp_credit;
  const budget = new DatagramBudget(credited);
  const report = credited ? new DeliveryReport((bytes) => closed || call.write({ udp_delivered: bytes })) : undefined;
  const close = () => {
    if (closed) return;
    closed = true;
    socket?.close();
    call.end();
  };
  call.once("end", close);
  call.once("cancelled", close);
  call.once("error", close);

  // A porthole host that said so reads several datagrams per message; Lima's, one each.
  const batcher = handshake.udp_batch ? new DatagramBatcher((message, done) => call.write(message, done)) : undefined;
  connectDatagrams(target, port).then(
    (opened) => {
      if (closed) return opened.close();
      socket = opened;
      socket.receive((datagrams) => {
        for (const data of datagrams) {
          if (closed) return;
          budget.send(data, (done) => (batcher ? batcher.add(data, done) : call.write({ id, data }, done)));
        }
      });
      call.on("data", (msg: TunnelMessage) => {
        if (closed) return;
        if (msg.udp_delivered) budget.delivered(msg.udp_delivered);
        const { datagrams, refusedBytes } = datagramsOf(msg); // what no UDP socket can send is left out (UDP may lose it)
        let bytes = refusedBytes; // gone too: credited, so the host's budget gets them back
        for (const datagram of datagrams) bytes += datagram.length;
        opened.send(datagrams);
        if (bytes) report?.add(bytes);
      });
      call.resume();
    },
    (err: Error) => {
      if (closed) return;
      closed = true;
      call.emit("error", { code: grpc.status.UNAVAILABLE, details: `${handshake.guest_addr}: ${err.message}` });
    },
  );
}
