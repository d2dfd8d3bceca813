// Moves bytes between a socket and a gRPC Tunnel stream in both directions, with
// backpressure each way: a full socket pauses the stream (and so, through HTTP/2 flow
// control, the far writer); a full stream pauses the socket. Closing is the caller's policy.
import type * as net from "node:net";
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
 * Joins two connected sockets, kernel socket to kernel socket: pipe() each way (backpressure
 * and half-close come with it). A side that fails, or closes before it ended its writing,
 * resets the other, so neither peer is left hanging.
 */
export function spliceSockets(a: net.Socket, b: net.Socket): void {
  a.pipe(b);
  b.pipe(a);
  for (const [one, other] of [[a, b], [b, a]] as const) {
    one.once("error", () => resetSocket(other));
    one.once("close", () => other.writableEnded || resetSocket(other));
  }
}
