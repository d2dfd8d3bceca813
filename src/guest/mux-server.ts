// The guest end of the lean multiplexer (core/mux-frames.ts): an agent connection that
// opened with the host's mux probe carries many streams. The "agent" stream is the host's
// gRPC connection, served as any other (through the preface check); every other stream
// names a target that is dialed here, answered OPENED or REFUSED (with the reason), then
// relayed with its own credit each way (transport/lean-mux.ts).
import * as net from "node:net";
import { parseHostPort } from "../core/address.ts";
import { MUX_ACCEPT, parseMuxTarget } from "../core/mux-frames.ts";
import { MuxSession } from "../transport/lean-mux.ts";
import { memoryPair } from "../transport/memory-pair.ts";
import { noteDialError } from "./fd-pressure.ts";

export function serveMux(raw: net.Socket, rest: Buffer, serveAgent: (socket: net.Socket) => void, log: (line: string) => void, name: string): MuxSession {
  // A frame's header and its bytes go as two writes: Nagle must not hold the second (TCP).
  if (typeof raw.setNoDelay === "function") raw.setNoDelay(true);
  raw.write(MUX_ACCEPT);
  const session: MuxSession = new MuxSession(
    raw,
    "guest",
    {
      onOpen(id, text) {
        const target = parseMuxTarget(text);
        if ("error" in target) return session.refuse(id, target.error);
        if (target.kind === "agent") {
          const [inner, outer] = memoryPair(raw);
          session.accept(id, outer);
          return serveAgent(inner as net.Socket);
        }
        let dial: net.NetConnectOpts;
        try {
          dial = target.kind === "unix" ? { path: target.path, allowHalfOpen: true } : { ...parseHostPort(target.address), allowHalfOpen: true, noDelay: true };
        } catch (err) {
          return session.refuse(id, (err as Error).message);
        }
        const where = target.kind === "unix" ? target.path : target.address;
        let upstream: net.Socket;
        try {
          upstream = net.connect(dial);
        } catch (err) {
          noteDialError(err, where); // e.g. out of fds: this stream is refused, the agent goes on
          return session.refuse(id, `${where}: ${(err as Error).message}`);
        }
        upstream.pause();
        const failed = (err: Error) => (noteDialError(err, where), session.refuse(id, `${where}: ${err.message}`));
        upstream.once("error", failed);
        upstream.once("connect", () => {
          upstream.off("error", failed);
          session.accept(id, upstream);
        });
      },
      onClose(reason) {
        // The host going away is the ordinary end; a broken format is worth a line.
        if (!reason.startsWith("the agent stream")) log(`${name}: closed the host's multiplexed connection: ${reason}`);
      },
    },
    rest,
  );
  return session;
}
