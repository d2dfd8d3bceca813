// The guest end of a UDP flow over porthole's data stream (transport/datagram-stream.ts):
// a UDP socket connected to the guest server, datagrams framed both ways, credits as on a
// credited gRPC flow. Only a porthole host opens one (the header says `udp`); Lima's hosts
// use the Tunnel (udp-endpoint.ts). An undeliverable datagram is lost, as UDP allows; the
// stream's end closes the socket.
import type * as net from "node:net";
import { parseHostPort } from "../core/address.ts";
import { STATUS_CONNECTED, STATUS_FAILED } from "../core/data-header.ts";
import { DatagramBudget, STREAM_BUDGET_BYTES } from "../transport/datagram-budget.ts";
import { connectDatagrams, type DatagramSocket } from "../transport/datagram-socket.ts";
import { DatagramStream } from "../transport/datagram-stream.ts";

/** `warn`: the flow's drops over budget, said at the first and counted at its end. */
export function handleUdpDataStream(stream: net.Socket, address: string, initial: Buffer, onBad: (why: string) => void, warn: (line: string) => void = () => {}): void {
  const { host, port } = parseHostPort(address);
  const target = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  let gone = false;
  const early = () => (gone = true);
  stream.once("close", early);
  stream.on("error", () => {});
  connectDatagrams(target, port).then(
    (socket: DatagramSocket) => {
      stream.off("close", early);
      if (gone) return socket.close();
      stream.write(Buffer.of(STATUS_CONNECTED));
      const budget = new DatagramBudget(true, STREAM_BUDGET_BYTES);
      // Past the budget (the host agent has not reported the last MiB delivered) a datagram is
      // dropped, as UDP may: said at the first, counted, and the count said when the flow ends.
      let dropped = 0;
      const flow: DatagramStream = new DatagramStream(
        stream,
        {
          onDatagrams: (datagrams, delivered) => {
            if (delivered) budget.delivered(delivered);
            if (!datagrams.length) return;
            let bytes = 0;
            for (const d of datagrams) bytes += d.length;
            // Credited as they are handed over, before the send: the host's budget is freed by
            // the time sendmmsg() has delivered them (on loopback, the server's wake-up too),
            // not a turn of this loop later (alternating runs: 30-44% lost against 44-52%).
            if (bytes) flow.report(bytes);
            socket.send(datagrams);
          },
          onEnd: (bad) => {
            if (bad) onBad(bad);
            socket.close();
            if (dropped) warn(`UDP flow to ${address} ended; ${dropped} datagram(s) from the guest's server were dropped over its budget in all.`);
          },
        },
        initial,
      );
      socket.receive((datagrams) => {
        for (const d of datagrams) {
          if (budget.send(d, (done) => (flow.send(d), done()))) continue;
          if (dropped++ === 0) {
            warn(
              `UDP flow to ${address}: the guest's server sends faster than the host agent takes its datagrams; ` +
                "the excess is dropped (as UDP may) rather than queued. Lower the server's rate to lose none.",
            );
          }
        }
      });
    },
    () => {
      stream.off("close", early);
      if (!gone) stream.end(Buffer.of(STATUS_FAILED));
    },
  );
}
