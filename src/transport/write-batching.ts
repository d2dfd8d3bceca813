// Writes made in one turn of the event loop leave as one system call. ssh2 writes every
// packet (32 KiB at most) to its socket on its own, and an SSH channel hands each packet to
// the forwarded socket on its own: a 256 KiB read became 8 sends of 32 KiB, and the send
// calls were half of the SSH forwarder's CPU (profiled under iperf3). Corked for the rest of
// the turn, they go out together (Node and Bun both join corked writes into one send).
import type * as net from "node:net";

export function batchWrites(socket: net.Socket): void {
  const write = socket.write;
  let corked = false;
  const uncork = () => {
    corked = false;
    if (!socket.destroyed) socket.uncork();
  };
  socket.write = function (this: net.Socket, ...args: Parameters<net.Socket["write"]>) {
    if (!corked && !socket.destroyed) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    return write.apply(this, args as never);
  } as net.Socket["write"];
}
