// The guest end of a UDP flow over porthole's data stream (transport/datagram-stream.ts):
// a UDP socket connected to the guest server, datagrams framed both ways, credits as on a
// credited gRPC flow. Only a porthole host opens one (the header says `udp`); Lima's hosts
// use the Tunnel (udp-endpoint.ts). An undeliverable datagram is lost, as UDP allows; the
// stream's end closes the socket.
import type * as net from "node:net";
import { parseHostPort } from "../core/address.ts";
import { STATUS_CONNECTED, STATUS_FAILED } from "../core/data-header.ts";
import { DatagramBudget, STREAM_BUDGET_BYTES } from "../transport/datagram-budget.ts";
import { connectDatagrams, connectedDatagramFd, datagramPumps, pumpableStreamFd, pumpRefusedFlow, type DatagramSocket } from "../transport/datagram-socket.ts";
import { DatagramStream } from "../transport/datagram-stream.ts";
import { unreadBytes } from "../transport/fast-relay.ts";
import { PUMP_END_BAD } from "../runtime/native-udp-pump.ts";

/** `warn`: the flow's drops over budget, said at the first and counted at its end. */
export function handleUdpDataStream(stream: net.Socket, address: string, initial: Buffer, onBad: (why: string) => void, warn: (line: string) => void = () => {}): void {
  const { host, port } = parseHostPort(address);
  const target = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  if (pumpNatively(stream, address, target, port, initial, onBad, warn)) return;
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
            if (dropped) warn(droppedInAll(address, dropped));
          },
        },
        initial,
      );
      socket.receive((datagrams) => {
        for (const d of datagrams) {
          if (budget.send(d, (done) => flow.send(d, done))) continue;
          if (dropped++ === 0) warn(firstDrop(address));
        }
      });
    },
    () => {
      stream.off("close", early);
      if (!gone) stream.end(Buffer.of(STATUS_FAILED));
    },
  );
}

/**
 * Where the shim's pump runs: the flow's connected UDP socket and the stream are pumped there
 * (runtime/native-udp-pump.ts), the status byte first; the flow's drops over budget are said
 * and counted when it ends. False: the event loop carries the flow (above).
 */
function pumpNatively(stream: net.Socket, address: string, target: string, port: number, initial: Buffer, onBad: (why: string) => void, warn: (line: string) => void): boolean {
  if (stream.destroyed) return false;
  const native = datagramPumps();
  if (!native) return false; // said once there
  const fd = pumpableStreamFd(stream);
  if (fd === undefined) return false;
  let udpFd: number | undefined;
  try {
    udpFd = connectedDatagramFd(target, port);
  } catch {
    return false; // the event loop's way answers the failure (the status byte) as before
  }
  if (udpFd === undefined) return false;
  stream.pause();
  const rest = unreadBytes(stream);
  const fromStream = initial.length ? Buffer.concat([initial, rest]) : rest;
  try {
    native.pumps.add(
      udpFd,
      fd,
      { toStream: Buffer.of(STATUS_CONNECTED), fromStream, budget: STREAM_BUDGET_BYTES },
      (stats) => {
        if (stats.end === PUMP_END_BAD) onBad(`a frame head of ${stats.err >>> 0}`);
        if (stats.overBudget) warn(droppedInAll(address, stats.overBudget));
      },
      () => warn(firstDrop(address)),
    );
  } catch (err) {
    pumpRefusedFlow((err as Error).message);
    if (rest.length) stream.unshift(rest); // the unread bytes only: the caller still holds `initial`
    return false;
  } finally {
    native.shim.close(udpFd); // the pump holds its own dup()
  }
  stream.destroy(); // closes only the runtime's fd: the pump holds its own dup()
  return true;
}

function firstDrop(address: string): string {
  return (
    `UDP flow to ${address}: the guest's server sends faster than the host agent takes its datagrams; ` +
    "the excess is dropped (as UDP may) rather than queued. Lower the server's rate to lose none."
  );
}

function droppedInAll(address: string, dropped: number): string {
  return `UDP flow to ${address} ended; ${dropped} datagram(s) from the guest's server were dropped over its budget in all.`;
}
