// The guest's side of every agent transport: hands each incoming connection, as an ordinary
// socket, to `onConnection`. Nothing above this file knows which transport it runs on.
import * as fs from "node:fs";
import type * as net from "node:net";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { unreadSocketFd } from "../runtime/fd-socket.ts";
import { listenTransport } from "./listen.ts";
import { serveSerial } from "./serial.ts";
import { verifyToken } from "./token.ts";
import { rateLimitedRefusals } from "../core/log-text.ts";
import type { UnreadConnection } from "./unread.ts";
import { listenVsock } from "./vsock.ts";

export interface ServeOptions {
  /** Required for TCP: the shared token a client must present first. */
  token?: string;
  /** vsock: accept peers other than the host (CID 2). */
  vsockAnyCid?: boolean;
  /** Connections are raw data streams (half-open capable), not HTTP/2 connections. */
  halfOpen?: boolean;
  log: (line: string) => void;
  /**
   * Unix and vsock connections come here unread, instead of to onConnection, where the runtime
   * lets them (the other transports read first: a token, a serial line).
   */
  onUnread?: (connection: UnreadConnection) => void;
}

export interface Served {
  address: TransportAddress;
  close(): void;
  /** A data endpoint served in the relay thread: streams dialled there, and handed to JavaScript. */
  nativeStats?(): { carried: number; handed: number };
}

export async function serveTransport(address: TransportAddress, onConnection: (socket: net.Socket) => void, options: ServeOptions): Promise<Served> {
  const name = formatTransportAddress(address);
  switch (address.kind) {
    case "unix": {
      const onUnread = options.onUnread;
      const server = await listenTransport(address, options.halfOpen, onUnread !== undefined);
      const handOver = (socket: net.Socket) => {
        const fd = onUnread && unreadSocketFd(socket);
        if (fd === undefined) return onConnection(socket.resume());
        onUnread!({ fd, adopt: () => socket.resume() });
      };
      server.on("connection", guarded(handOver, name, options.log));
      server.on("error", (err) => options.log(`${name}: ${err.message}`)); // e.g. EMFILE on accept (Node)
      return { address, close: () => (server.close(), fs.rmSync(address.path, { force: true })) };
    }
    case "tcp": {
      const token = options.token;
      if (!token) throw new Error(`${name}: a TCP agent channel needs --token-file (anyone on the machine can connect to a TCP port)`);
      const server = await listenTransport(address, options.halfOpen);
      server.on("error", (err) => options.log(`${name}: ${err.message}`));
      const refused = rateLimitedRefusals(options.log); // anyone who reaches the port can cause these
      server.on("connection", (socket: net.Socket) => {
        void verifyToken(socket, token).then((ok) => {
          if (ok) guarded(onConnection, name, options.log)(socket);
          else refused(`${name}: rejected a connection from ${socket.remoteAddress} without the right token`);
        });
      });
      return { address, close: () => server.close() };
    }
    case "vsock": {
      if (address.cid !== undefined) throw new Error(`${name}: to listen, leave the CID out (vsock://:${address.port})`);
      const refused = rateLimitedRefusals(options.log); // any process of a guest with vsock loopback (or a nested VM) can cause these
      const listener = await listenVsock(address.port, guarded(onConnection, name, options.log), {
        allowCid: options.vsockAnyCid ? () => true : undefined,
        halfOpen: options.halfOpen,
        onUnread: options.onUnread && guardedUnread(options.onUnread, name, options.log),
        onRejected: (cid) => refused(`${name}: rejected a connection from CID ${cid} (only the host, CID 2, may connect; see --vsock-any-cid)`),
      });
      return { address, close: () => listener.close() };
    }
    case "serial": {
      const port = await serveSerial(address.path, onConnection, options.log);
      return { address, close: () => port.close() };
    }
  }
}

/** An unread-connection handler whose exception closes that connection only. */
function guardedUnread(onUnread: (c: UnreadConnection) => void, name: string, log: (line: string) => void): (c: UnreadConnection) => void {
  return (connection) => {
    try {
      onUnread(connection);
    } catch (err) {
      try {
        connection.adopt().destroy();
      } catch {
        // adopt() closed the fd itself
      }
      log(`${name}: a connection failed: ${(err as Error).message}`);
    }
  };
}

/** A connection handler whose exception closes that connection only. */
function guarded(onConnection: (socket: net.Socket) => void, name: string, log: (line: string) => void): (socket: net.Socket) => void {
  return (socket) => {
    try {
      onConnection(socket);
    } catch (err) {
      socket.destroy();
      log(`${name}: a connection failed: ${(err as Error).message}`);
    }
  };
}
