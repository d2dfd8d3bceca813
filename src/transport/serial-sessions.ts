// One host connection after another on a virtio-serial port that stays open. The port gives
// no sign when one host goes and the next comes faster than the guest reads (QEMU's "host
// connected" flag drops and rises again), so the next host's preface can follow the last
// host's frames on the same stream. Each host connection gets its own in-process stream, cut
// where core/session-starts.ts finds a new host's preface: the old session is closed, the new
// one starts with every byte of its host, and nothing the old one writes later reaches it.
import type * as net from "node:net";
import type { Duplex } from "node:stream";
import { NEW_SESSION, SessionStarts, type Segment } from "../core/session-starts.ts";
import { memoryPair } from "./memory-pair.ts";

/**
 * How long a frame that carries a preface may stay unfinished before the preface counts as a
 * new host's (whose last host was killed mid-frame): a sender still there finishes a frame at
 * once, and a new host's probe waits 5 s for its answer.
 */
const STALL_MS = 1000;
/** What may wait for a session that reads slowly before the port itself is held back. */
const MAX_QUEUED = 1 << 20;
let saidReplaced = false;

/**
 * Serves host connections from `port` (the port's stream, open until the host side hangs up)
 * with `onConnection`, one at a time. A session starts with the first bytes of the port and
 * with each new host's preface; one that closes leaves the port open for the next host.
 */
export function serveSessions(port: net.Socket, onConnection: (socket: net.Socket) => void, name: string, log: (line: string) => void): void {
  const starts = new SessionStarts();
  let current: Duplex | undefined;
  let fresh = true;

  let stall: ReturnType<typeof setTimeout> | undefined;
  /**
   * A preface inside a frame that has not ended: if nothing more comes for STALL_MS, its
   * sender is gone. Only while the port flows: bytes held back by this side's own
   * backpressure are no stall of the host's.
   */
  const armStall = () => {
    clearTimeout(stall);
    stall = starts.waiting && !port.isPaused() ? setTimeout(() => take(starts.stalled()), STALL_MS) : undefined;
  };
  const flow = () => {
    port.resume();
    armStall();
  };

  const begin = () => {
    const [inner, outer] = memoryPair(port);
    current = outer;
    outer.pipe(port, { end: false }); // a port has no half-close: it outlives its sessions
    outer.on("drain", flow);
    const ended = () => {
      outer.unpipe(port); // its listeners leave the port, which outlives it
      if (current !== outer) return;
      // The session is over (its host went, or its reader gave up on the bytes): the next
      // preface on the port starts the next one.
      current = undefined;
      starts.lose();
      flow();
    };
    outer.once("end", ended);
    outer.once("close", ended);
    outer.on("error", () => {});
    try {
      onConnection(inner as net.Socket);
    } catch (err) {
      inner.destroy();
      log(`${name}: a connection failed: ${(err as Error).message}`);
    }
  };

  const close = (outer: Duplex) => {
    outer.unpipe(port);
    outer.destroy();
  };

  const take = (segments: Segment[]): void => {
    for (const segment of segments) {
      if (segment === NEW_SESSION) {
        if (current) {
          if (!saidReplaced) {
            log(
              `${name}: a new host connection began on the port before the last one was seen to end (the port gave no ` +
                "hang-up between them); the last one's session was closed and the new one served. Its last words may have reached " +
                "the new host first: a host that then drops its first connection dials again, as Lima's host agent does within 10 s " +
                "(said once)",
            );
          }
          saidReplaced = true;
          const old = current;
          current = undefined;
          close(old);
        }
        begin();
        port.resume(); // the old session may have held the port back; the new one reads
        continue;
      }
      // Bytes of a session that is over are nobody's: dropped until the next preface. A
      // session that reads slowly gets a queue before the port is held back, so that the port
      // is still read (and a new host still seen) while an old session has stopped reading.
      if (current && !current.write(segment) && current.writableLength > MAX_QUEUED) port.pause();
    }
    armStall();
  };
  port.on("data", (chunk: Buffer) => {
    if (fresh) {
      fresh = false;
      begin();
    }
    take(starts.push(chunk));
  });
  port.once("close", () => {
    clearTimeout(stall);
    if (current) close(current);
  });
  port.on("error", () => {});
}
