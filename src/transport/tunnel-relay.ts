// Moves bytes between a socket and another stream in both directions, with backpressure
// each way: a full socket pauses the stream (and so, through HTTP/2 flow control or the
// kernel's socket buffers, the far writer); a full stream pauses the socket. One rule for
// every relay: a stream ends the way its far end ended it, EOF as EOF and a reset (or an
// error, or a far agent that died) as a reset, after the bytes that arrived before it.
import type * as net from "node:net";
import { dataFrameHeader, END_EOF, END_RESET, FrameDecoder, MAX_FRAME, type StreamEnd } from "../core/data-frames.ts";
import type { TunnelMessage } from "../proto/guest-service.ts";

/** What the relay needs of a grpc-js duplex call, client or server side. */
export interface TunnelStream {
  write(message: Partial<TunnelMessage>): boolean;
  pause(): unknown;
  resume(): unknown;
  on(event: "data", listener: (message: TunnelMessage) => void): unknown;
  on(event: "drain", listener: () => void): unknown;
  readonly writableEnded: boolean;
  readonly destroyed: boolean;
}

export function relayTunnel(
  socket: net.Socket,
  stream: TunnelStream,
  toMessage: (data: Buffer) => Partial<TunnelMessage>,
): void {
  socket.on("data", (chunk: Buffer) => {
    if (stream.writableEnded || stream.destroyed) return;
    if (!stream.write(toMessage(chunk))) socket.pause();
  });
  stream.on("drain", () => socket.resume());

  stream.on("data", (msg: TunnelMessage) => {
    if (!msg.data?.length || socket.destroyed || socket.writableEnded) return;
    if (!socket.write(msg.data)) stream.pause();
  });
  socket.on("drain", () => stream.resume());
}

/** Closes a socket so that the peer sees a reset where the runtime can send one. */
export function resetSocket(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (typeof socket.resetAndDestroy === "function") {
    try {
      socket.resetAndDestroy();
      return;
    } catch {
      // Not connected yet, or the runtime cannot reset: a plain close will do.
    }
  }
  socket.destroy();
}

/**
 * Resets a socket once what was already written to it has gone out: a far end that sent
 * data and then reset is seen as exactly that (the data, then the reset), never the reset
 * alone with the data lost in the relay.
 */
export function resetAfterFlush(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (socket.writableLength === 0 || socket.writableEnded) return resetSocket(socket);
  // An empty write calls back once every earlier write is handed to the kernel.
  socket.write(Buffer.alloc(0), () => resetSocket(socket));
}

/** Relays `from` into `to` with backpressure; `from`'s ending is `to`'s (EOF or reset). */
function relayOneWay(from: net.Socket, to: net.Socket, onEnd: (how: StreamEnd) => void, write = (chunk: Buffer) => to.write(chunk)): void {
  let ended = false;
  const end = (how: StreamEnd) => {
    if (ended) return;
    ended = true;
    onEnd(how);
  };
  from.on("data", (chunk: Buffer) => {
    if (ended || to.destroyed || to.writableEnded) return;
    if (!write(chunk)) from.pause();
  });
  to.on("drain", () => from.resume());
  from.once("end", () => end("eof"));
  from.once("error", () => end("reset"));
  // Destroyed without EOF or an error (closed locally, or by the other direction): a reset.
  from.once("close", () => end("reset"));
  from.resume(); // as pipe() does: a side handed over paused starts flowing
}

/**
 * Joins two connected sockets, kernel socket to kernel socket, each way with backpressure.
 * Each side ends the other the way it ended: EOF as EOF (half-close: the other direction
 * goes on), an error or a reset as a reset, after the bytes already read are delivered.
 */
export function spliceSockets(a: net.Socket, b: net.Socket): void {
  /** The sides whose direction has ended (their EOF or reset passed on). */
  const over = new Set<net.Socket>();
  for (const [one, other] of [[a, b], [b, a]] as const) {
    relayOneWay(one, other, (how) => {
      over.add(one);
      if (how === "eof") other.destroyed || other.end();
      else resetAfterFlush(other);
    });
    // Gone after its EOF (its peer reset it) while the other side still sends: that side is
    // reset too, not left sending into a socket that is no more.
    const gone = () => over.has(one) && !over.has(other) && resetAfterFlush(other);
    one.once("error", gone);
    one.once("close", gone);
  }
}

/**
 * Joins a plain socket to a framed data-path stream (`PHDATA2`, core/data-frames.ts). The
 * plain side's EOF or reset goes out as an end frame; the far side's end frame is played
 * back on the plain socket; a stream that closes without one (its agent died, or it sent
 * garbage) resets the plain socket. `initial`: bytes of the stream already read.
 */
export function spliceFramed(plain: net.Socket, framed: net.Socket, initial?: Buffer, onBad?: (reason: string) => void): void {
  const decoder = new FrameDecoder();
  let sentEnd = false;
  let gotEnd = false;
  const closeIfDone = () => {
    if (sentEnd && gotEnd && !framed.destroyed && !framed.writableEnded) framed.end();
  };
  let sentEOF = false;
  const sendEnd = (how: StreamEnd) => {
    if (sentEnd) return;
    sentEnd = true;
    sentEOF = how === "eof";
    if (!framed.destroyed && !framed.writableEnded) framed.write(how === "eof" ? END_EOF : END_RESET);
    closeIfDone();
  };
  const farEnded = (how: StreamEnd) => {
    if (gotEnd) return;
    gotEnd = true;
    if (how === "eof") {
      if (!plain.destroyed) plain.end();
    } else {
      resetAfterFlush(plain);
      // The plain side is over: its END_RESET goes now (a runtime may report the reset
      // socket's close as an "end", which must not go out as END_EOF).
      sendEnd("reset");
    }
    closeIfDone();
  };

  relayOneWay(plain, framed, sendEnd, (chunk) => {
    if (sentEnd) return true; // nothing after the end frame
    let ok = true;
    for (let at = 0; at < chunk.length; at += MAX_FRAME) {
      const piece = chunk.subarray(at, at + MAX_FRAME);
      framed.write(dataFrameHeader(piece.length));
      ok = framed.write(piece);
    }
    return ok;
  });

  const receive = (chunk: Buffer) => {
    for (const item of decoder.push(chunk)) {
      if (item.kind === "data") {
        if (!plain.destroyed && !plain.writableEnded && !plain.write(item.data)) framed.pause();
      } else if (item.kind === "end") {
        farEnded(item.how);
      } else {
        onBad?.(item.reason);
        farEnded("reset");
        framed.destroy();
        return;
      }
    }
  };
  plain.on("drain", () => framed.resume());
  framed.on("data", receive);
  // The stream itself closing before its end frame: the far agent died or cut it.
  const lost = () => {
    farEnded("reset");
    if (!sentEnd) sentEnd = true;
    if (!framed.destroyed) framed.destroy();
  };
  framed.once("end", () => (gotEnd ? undefined : lost()));
  framed.once("error", lost);
  framed.once("close", lost);
  // The plain side gone after its END_EOF (its peer reset it) while the far side still sends:
  // one end frame each way, so no END_RESET can follow; the stream is closed instead, which the
  // far agent takes for a lost stream and answers with a reset of its side.
  const plainGone = () => {
    if (sentEOF && !gotEnd && !framed.destroyed) framed.destroy();
  };
  plain.once("error", plainGone);
  plain.once("close", plainGone);
  if (initial?.length) receive(initial);
  framed.resume();
}
