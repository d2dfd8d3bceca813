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

/** A connected fd read by readFd. */
export interface FdReader {
  /** Lets the process exit while this is all that is left. */
  unref(): void;
  /** Stops reading and closes the fd. */
  close(): void;
}

interface BunFdSocket {
  unref(): void;
  terminate(): void;
}
type BunConnect = (options: {
  fd: number;
  socket: { data(s: BunFdSocket, chunk: Buffer): void; end(s: BunFdSocket): void; close(s: BunFdSocket, err?: Error): void; error(s: BunFdSocket, err: Error): void };
}) => Promise<BunFdSocket>;

/**
 * Reads what a connected fd delivers (the relay thread's records, netlink events) as it comes;
 * `end` once, when the fd closed or failed (with the error, where there was one). On Bun
 * through its own socket API, which costs about half the CPU of a net.Socket per wake-up of
 * the event loop (40-55 µs against 73-99 µs here, a 64-byte read every 4 ms, 2,000 reads);
 * elsewhere a net.Socket (socketFromFd).
 */
export function readFd(fd: number, on: { data(chunk: Buffer): void; end(err?: Error): void }): FdReader {
  let ended = false;
  const end = (err?: Error) => {
    if (ended) return;
    ended = true;
    on.end(err);
  };
  const connect = runtimeName() === "bun" ? ((globalThis as unknown as { Bun: { connect: BunConnect } }).Bun.connect) : undefined;
  if (!connect) {
    const socket = socketFromFd(fd);
    socket.on("data", (chunk: Buffer) => on.data(chunk));
    socket.once("error", (err) => end(err));
    socket.once("close", () => end());
    return { unref: () => socket.unref(), close: () => socket.destroy() };
  }
  let socket: BunFdSocket | undefined;
  let closing = false;
  let unref = false;
  void connect({
    fd,
    socket: {
      data: (_s, chunk) => on.data(chunk),
      end: (s) => s.terminate(),
      close: (_s, err) => end(err),
      error: (_s, err) => end(err),
    },
  }).then(
    (s) => {
      socket = s;
      if (unref) s.unref();
      if (closing) s.terminate();
    },
    (err: Error) => end(err),
  );
  return {
    unref: () => {
      unref = true;
      socket?.unref();
    },
    close: () => {
      closing = true;
      socket?.terminate();
    },
  };
}
