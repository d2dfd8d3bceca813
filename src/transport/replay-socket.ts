// A socket whose first bytes were already read, as a duplex that yields those bytes again and
// then the rest. `socket.unshift()` is not enough: Bun's HTTP/2 server reads the native socket
// directly and never sees bytes put back into the JavaScript stream (Node's does); a plain
// Duplex is read through its stream interface by both runtimes' HTTP/2 servers, needs no
// native shim (no socketpair), and adds no system call per chunk.
import type * as net from "node:net";
import { Duplex } from "node:stream";

export function replaySocket(socket: net.Socket, head: Buffer): Duplex {
  const replay = new Duplex({
    allowHalfOpen: false,
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, callback);
    },
    final(callback) {
      socket.end();
      callback();
    },
    destroy(err, callback) {
      socket.destroy(err ?? undefined);
      callback(err);
    },
  });
  socket.pause();
  if (head.length) replay.push(head);
  socket.on("data", (chunk: Buffer) => {
    if (!replay.push(chunk)) socket.pause(); // backpressure: resumed by read()
  });
  socket.once("end", () => replay.push(null));
  socket.once("error", (err) => replay.destroy(err));
  socket.once("close", () => replay.destroy());
  // What HTTP/2 servers and gRPC ask of a socket beyond the stream interface.
  Object.defineProperties(replay, {
    remoteAddress: { get: () => socket.remoteAddress },
    remotePort: { get: () => socket.remotePort },
    remoteFamily: { get: () => socket.remoteFamily },
    localAddress: { get: () => socket.localAddress },
    localPort: { get: () => socket.localPort },
  });
  const extra = replay as Duplex & Record<string, unknown>;
  extra.setNoDelay = (on?: boolean) => (socket.setNoDelay(on), replay);
  extra.setKeepAlive = (on?: boolean, delay?: number) => (socket.setKeepAlive(on, delay), replay);
  extra.setTimeout = (ms: number, cb?: () => void) => (socket.setTimeout(ms, cb), replay);
  extra.ref = () => (socket.ref(), replay);
  extra.unref = () => (socket.unref(), replay);
  return replay;
}
