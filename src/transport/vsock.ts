// AF_VSOCK through the native shim: a listener whose accepted connections become ordinary
// sockets, and a dial that finishes the connect before the fd is handed to the runtime.
import type * as net from "node:net";
import { check, type NativeShim } from "../runtime/native-api.ts";
import { loadNative } from "../runtime/native.ts";
import { socketFromFd } from "../runtime/fd-socket.ts";

export const VMADDR_CID_ANY = 0xffffffff;
export const VMADDR_CID_HOST = 2;
/** Accepting polls a non-blocking socket: connections are few and long-lived. */
const ACCEPT_POLL_MS = 50;

async function shim(): Promise<NativeShim> {
  const { shim, error } = await loadNative();
  if (!shim) throw new Error(`vsock needs the native shim, which did not load: ${error}`);
  return shim;
}

export interface VsockListener {
  port: number;
  close(): void;
}

/**
 * Listens on vsock `port`; each accepted connection from an allowed peer CID goes to
 * `onConnection` (by default only the host, CID 2, as Lima's agent does).
 */
export async function listenVsock(
  port: number,
  onConnection: (socket: net.Socket, peerCid: number) => void,
  options: { allowCid?: (cid: number) => boolean; onRejected?: (cid: number) => void; halfOpen?: boolean } = {},
): Promise<VsockListener> {
  const native = await shim();
  const allow = options.allowCid ?? ((cid) => cid === VMADDR_CID_HOST);
  const fd = check(native, native.vsockSocket(), "vsock socket");
  try {
    check(native, native.vsockBindListen(fd, VMADDR_CID_ANY, port, 128), `vsock listen on port ${port}`);
  } catch (err) {
    native.close(fd);
    throw err;
  }
  const peer = new Uint32Array(2);
  const timer = setInterval(() => {
    for (;;) {
      const conn = native.vsockAccept(fd, peer);
      if (conn < 0) return; // EAGAIN: nothing waiting (other errors: try again next tick)
      if (!allow(peer[0]!)) {
        native.close(conn);
        options.onRejected?.(peer[0]!);
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
  }, ACCEPT_POLL_MS);
  return {
    port,
    close() {
      clearInterval(timer);
      native.close(fd);
    },
  };
}

/** Connects to (cid, port) within `timeoutMs`. */
export async function dialVsock(cid: number, port: number, timeoutMs: number): Promise<net.Socket> {
  const native = await shim();
  const fd = check(native, native.vsockConnect(cid, port, timeoutMs), `vsock connect to ${cid}:${port}`);
  return socketFromFd(fd, true); // dialled streams are data streams: half-open capable
}

/** Whether this machine can do vsock at all (the shim loads and knows the local CID). */
export async function vsockUsable(): Promise<boolean> {
  const { shim } = await loadNative();
  return shim !== undefined && shim.vsockLocalCid() >= 0;
}
