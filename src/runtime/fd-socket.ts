// A connected stream fd (an accepted vsock socket, a socketpair end) as a net.Socket that the
// layers above use like any other. The one place that knows how each runtime does it.
import * as net from "node:net";
import { runtimeName } from "./self.ts";

type PipeWrap = { Pipe: new (type: number) => { open(fd: number): number }; constants: { SOCKET: number } };

/** `halfOpen`: keep writing after the peer's EOF (data streams); off for HTTP/2 connections. */
export function socketFromFd(fd: number, halfOpen = false): net.Socket {
  if (runtimeName() === "bun") {
    // Bun: `new net.Socket({ fd })` is broken; net.connect({ fd }) adopts a connected fd.
    return net.connect({ fd, allowHalfOpen: halfOpen } as unknown as net.NetConnectOpts);
  }
  // Node and Deno: libuv rejects AF_VSOCK fds in net.Socket({ fd }); a Pipe handle takes any
  // stream fd (undocumented API, kept to this one function and tested).
  const { Pipe, constants } = (process as unknown as { binding(name: string): PipeWrap }).binding("pipe_wrap");
  const handle = new Pipe(constants.SOCKET);
  const err = handle.open(fd);
  if (err) throw new Error(`cannot adopt fd ${fd} as a stream (libuv error ${err})`);
  return new net.Socket({ handle, readable: true, writable: true, allowHalfOpen: halfOpen } as unknown as net.SocketConstructorOpts);
}

/**
 * The fd under an accepted socket that has not read yet (a server made with `pauseOnConnect`),
 * so its first bytes can be peeked at in place; undefined where the runtime does not show it.
 * Bun and Node both keep it as `_handle.fd` (not public API: kept to this one function, tested).
 */
export function unreadSocketFd(socket: net.Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === "number" && fd >= 0 ? fd : undefined;
}
