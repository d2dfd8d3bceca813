// The guest's data endpoint accepted in the shim's relay thread (native/relay.c, "data
// listeners"): a stream whose header names a TCP or unix target with the session's secret is
// dialled, answered and relayed there, with no JavaScript per connection. Every other stream
// (UDP flows, unframed ones, bad or slow headers) comes to `onHandoff` as an ordinary socket,
// nothing of it read, for the JavaScript data server to handle as before. Undefined where the
// native relay does not run (the caller serves the endpoint in JavaScript).
import * as fs from "node:fs";
import type * as net from "node:net";
import * as path from "node:path";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { LISTEN_BACKLOG } from "../runtime/listen-backlog.ts";
import { check } from "../runtime/native-api.ts";
import { loadNative } from "../runtime/native.ts";
import { nativeRelay } from "./fast-relay.ts";
import { removeStaleSocket } from "./listen.ts";
import { VMADDR_CID_ANY, VMADDR_CID_HOST } from "./vsock.ts";

/** A stream that sent no complete header this soon goes to JavaScript (which waits on). */
const HEADER_MS = 1000;

export interface NativeDataOptions {
  secret: string;
  /** A target's connect deadline. */
  dialMs: number;
  /** vsock: accept peers other than the host (CID 2). */
  vsockAnyCid?: boolean;
  onHandoff(socket: net.Socket): void;
  /** A target could not be dialled (the host was answered the failure status). */
  onDialFailed(err: NodeJS.ErrnoException): void;
  log(line: string): void;
}

export interface NativeDataEndpoint {
  close(): void;
  /** Streams dialled in the relay thread, and streams handed to JavaScript. */
  stats(): { carried: number; handed: number };
}

export async function listenDataNatively(address: TransportAddress, options: NativeDataOptions): Promise<NativeDataEndpoint | undefined> {
  // unix only for now: the relay thread's vsock accept (its peer-CID check in C) cannot be
  // tested on machines without vsock loopback, so a vsock endpoint stays with JavaScript,
  // whose accept and CID check are tested.
  if (address.kind !== "unix" && !(address.kind === "vsock" && process.env.PORTHOLE_NATIVE_VSOCK_ACCEPT === "1")) return undefined;
  const native = nativeRelay();
  const { shim } = await loadNative();
  if (!native || !shim) return undefined;
  const name = formatTransportAddress(address);
  let fd: number;
  if (address.kind === "unix") {
    await removeStaleSocket(address.path);
    fs.mkdirSync(path.dirname(address.path), { recursive: true, mode: 0o755 });
    // As transport/listen.ts: umask instead of a chmod afterwards, so the socket is never open to all.
    const oldMask = process.umask(0o177);
    try {
      fd = check(shim, shim.unixListen(Buffer.from(`${address.path}\0`), LISTEN_BACKLOG), `cannot listen on ${name}`);
    } finally {
      process.umask(oldMask);
    }
  } else {
    fd = check(shim, shim.vsockSocket(), "vsock socket");
    const bound = shim.vsockBindListen(fd, VMADDR_CID_ANY, address.port, LISTEN_BACKLOG);
    if (bound < 0) shim.close(fd);
    check(shim, bound, `vsock listen on port ${address.port}`);
  }
  let id: number;
  try {
    id = native.loop.dataListen(fd, options.secret, options.vsockAnyCid ? -1 : VMADDR_CID_HOST, native.copy, HEADER_MS, options.dialMs, {
      handoff: (conn) => native.loop.adopt(conn, options.onHandoff),
      dialFailed: (err) => {
        const { code, message } = native.loop.errnoText(err);
        options.onDialFailed(Object.assign(new Error(message), { code, errno: -err }));
      },
      rejected: (cid) => options.log(`${name}: rejected a connection from CID ${cid} (only the host, CID 2, may connect; see --vsock-any-cid)`),
      acceptFailed: (err) => options.log(`${name}: accepting failed: ${native.loop.errnoText(err).message}; trying again in 100 ms`),
    });
  } catch (err) {
    // E.g. all of the relay thread's listener slots taken: this endpoint is served in JavaScript.
    options.log(`${name}: data streams are accepted in JavaScript (slower): the relay thread cannot listen (${(err as Error).message})`);
    if (address.kind === "unix") fs.rmSync(address.path, { force: true });
    return undefined;
  } finally {
    shim.close(fd); // the relay thread holds its own dup
  }
  return {
    close() {
      native.loop.dataUnlisten(id);
      if (address.kind === "unix") fs.rmSync(address.path, { force: true });
    },
    stats: () => native.loop.dataListenerStats(id),
  };
}
