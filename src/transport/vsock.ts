// AF_VSOCK through the native shim: a listener whose accepted connections become ordinary
// sockets, and a dial that finishes the connect before the fd is handed to the runtime.
// Neither polls nor blocks the event loop: the shim's relay thread watches the listening fd
// and the connecting fd, and says when they are ready (runtime/native-relay.ts).
import type * as net from "node:net";
import { check, NativeError, type NativeShim } from "../runtime/native-api.ts";
import { loadNative } from "../runtime/native.ts";
import { EPOLLIN, EPOLLOUT, sharedRelayLoop, type NativeRelayLoop } from "../runtime/native-relay.ts";
import { socketFromFd } from "../runtime/fd-socket.ts";
import type { UnreadConnection } from "./unread.ts";

export const VMADDR_CID_ANY = 0xffffffff;
export const VMADDR_CID_HOST = 2;
const EAGAIN = 11;
const ECONNABORTED = 103;
/** After a failed accept (EMFILE, ...), wait this long before trying again. */
const ACCEPT_RETRY_MS = 100;

async function shim(): Promise<{ native: NativeShim; loop: NativeRelayLoop }> {
  const { shim, error } = await loadNative();
  if (!shim) throw new Error(`vsock needs the native shim, which did not load: ${error}`);
  return { native: shim, loop: sharedRelayLoop(shim) };
}

export interface VsockListener {
  port: number;
  close(): void;
}

/** An accepted fd, not adopted yet; adopt() closes it if the runtime will not take it. */
function unreadFd(native: NativeShim, fd: number, halfOpen?: boolean): UnreadConnection {
  return {
    fd,
    adopt() {
      try {
        return socketFromFd(fd, halfOpen);
      } catch (err) {
        native.close(fd);
        throw err;
      }
    },
  };
}

/**
 * Calls `acceptAll` each time listening socket `fd` has connections waiting (it must take
 * them all: the watch is re-armed after it). When it returns a number of milliseconds (accept
 * failed, e.g. out of fds), the watch is re-armed only after that long, so a lasting failure
 * does not spin. Returns a stop. Any listening fd will do.
 */
export function onAcceptable(loop: NativeRelayLoop, fd: number, acceptAll: () => number | void): () => void {
  let stopped = false;
  let cancel = () => {};
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    timer = undefined;
    if (stopped) return;
    cancel = loop.watchOnce(fd, EPOLLIN, () => {
      let later: number | void = undefined;
      try {
        later = acceptAll();
      } finally {
        if (later) timer = setTimeout(arm, later);
        else arm();
      }
    });
  };
  arm();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    cancel();
    loop.unwatch(fd);
  };
}

/**
 * Listens on vsock `port`; each accepted connection from an allowed peer CID goes to
 * `onConnection` (by default only the host, CID 2, as Lima's agent does).
 */
export async function listenVsock(
  port: number,
  onConnection: (socket: net.Socket, peerCid: number) => void,
  options: { allowCid?: (cid: number) => boolean; onRejected?: (cid: number) => void; halfOpen?: boolean; onUnread?: (c: UnreadConnection) => void } = {},
): Promise<VsockListener> {
  const { native, loop } = await shim();
  const allow = options.allowCid ?? ((cid) => cid === VMADDR_CID_HOST);
  const fd = check(native, native.vsockSocket(), "vsock socket");
  try {
    check(native, native.vsockBindListen(fd, VMADDR_CID_ANY, port, 128), `vsock listen on port ${port}`);
  } catch (err) {
    native.close(fd);
    throw err;
  }
  const peer = new Uint32Array(2);
  const stop = onAcceptable(loop, fd, () => {
    for (;;) {
      const conn = native.vsockAccept(fd, peer);
      if (conn === -EAGAIN) return;
      if (conn === -ECONNABORTED) continue; // gone before it was taken
      if (conn < 0) return ACCEPT_RETRY_MS; // out of fds, or the like: try again shortly
      if (!allow(peer[0]!)) {
        native.close(conn);
        options.onRejected?.(peer[0]!);
        continue;
      }
      if (options.onUnread) {
        options.onUnread(unreadFd(native, conn, options.halfOpen));
        continue;
      }
      let socket: net.Socket;
      try {
        socket = socketFromFd(conn, options.halfOpen);
      } catch {
        native.close(conn); // the runtime would not adopt it: drop this connection, keep accepting
        continue;
      }
      onConnection(socket, peer[0]!);
    }
  });
  return {
    port,
    close() {
      stop();
      native.close(fd);
    },
  };
}

/**
 * Resolves when connecting fd `fd` is connected (writable, no SO_ERROR); rejects on its error
 * or after `timeoutMs`. The event loop stays free meanwhile. Any connecting fd will do.
 */
export function whenConnected(native: NativeShim, loop: NativeRelayLoop, fd: number, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cancel();
      reject(new NativeError("ETIMEDOUT", `${what}: no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    const cancel = loop.watchOnce(fd, EPOLLOUT, () => {
      clearTimeout(timer);
      loop.unwatch(fd);
      const err = native.socketError(fd);
      if (err < 0) reject(new NativeError(native.errnoName(err), `${what}: ${native.errnoName(err)} (${native.strerror(err)})`));
      else resolve();
    });
  });
}

/** Connects to (cid, port) within `timeoutMs`, without blocking the event loop. */
export async function dialVsock(cid: number, port: number, timeoutMs: number): Promise<net.Socket> {
  const { native, loop } = await shim();
  const what = `vsock connect to ${cid}:${port}`;
  const fd = check(native, native.vsockConnectStart(cid, port), what);
  try {
    await whenConnected(native, loop, fd, timeoutMs, what);
  } catch (err) {
    native.close(fd);
    throw err;
  }
  return socketFromFd(fd, true); // dialled streams are data streams: half-open capable
}

/** Whether this machine can do vsock at all (the shim loads and knows the local CID). */
export async function vsockUsable(): Promise<boolean> {
  const { shim } = await loadNative();
  return shim !== undefined && shim.vsockLocalCid() >= 0;
}
