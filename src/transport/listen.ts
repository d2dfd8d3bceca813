// Listening on a unix socket or a TCP port: a net.Server.
// A unix socket is created with mode 0600 (the transport is the security boundary);
// a stale socket file left by a dead agent is replaced, a live one is an error.
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import type { TransportAddress } from "../core/transport-address.ts";
import { formatTransportAddress } from "../core/transport-address.ts";
import { LISTEN_BACKLOG, widenBacklog } from "../runtime/listen-backlog.ts";

/**
 * `halfOpen`: accepted sockets keep writing after the peer's EOF (data streams, tunnels);
 * leave it off for connections an HTTP/2 server owns, which must see the peer's EOF close them.
 * `unread`: accepted sockets start paused, their bytes still in the kernel (to be peeked at).
 */
export async function listenTransport(address: Extract<TransportAddress, { kind: "unix" | "tcp" }>, halfOpen = false, unread = false): Promise<net.Server> {
  if (address.kind === "tcp") return listenServer((s) => s.listen({ port: address.port, host: address.host, backlog: LISTEN_BACKLOG }), address, halfOpen, unread);
  await removeStaleSocket(address.path);
  fs.mkdirSync(path.dirname(address.path), { recursive: true, mode: 0o755 });
  // umask instead of a chmod afterwards: there is no moment when the socket is open to all.
  const oldMask = process.umask(0o177);
  try {
    return await listenServer((s) => s.listen({ path: address.path, backlog: LISTEN_BACKLOG }), address, halfOpen, unread);
  } finally {
    process.umask(oldMask);
  }
}

function listenServer(start: (s: net.Server) => void, address: TransportAddress, halfOpen: boolean, unread: boolean): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer({ allowHalfOpen: halfOpen, pauseOnConnect: unread });
    server.once("error", (err) => reject(new Error(`cannot listen on ${formatTransportAddress(address)}: ${err.message}`, { cause: err })));
    server.once("listening", () => {
      server.removeAllListeners("error");
      void widenBacklog(server, (message) => console.error(message)).then(() => resolve(server));
    });
    start(server);
  });
}

/** A live process already listens on the socket: a second agent must not take it over. */
export class SocketInUseError extends Error {}

/** Removes a socket file whose listener is gone; refuses a live socket or any other file. */
export async function removeStaleSocket(socketPath: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new Error(`${socketPath} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath);
    probe.once("connect", () => { probe.destroy(); resolve(true); });
    probe.once("error", () => resolve(false));
  });
  if (live) throw new SocketInUseError(`another process is already listening on unix://${socketPath}`);
  fs.unlinkSync(socketPath);
}
