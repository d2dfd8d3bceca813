// Client-side transports: a connected stream for a transport address.
import * as net from "node:net";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { dialVsock } from "./vsock.ts";

/** `allowHalfOpen`: keep writing after the peer's EOF (data streams); SSH wants it off. */
export async function dialTransport(address: TransportAddress, timeoutMs: number, options: { allowHalfOpen?: boolean } = {}): Promise<net.Socket> {
  const name = formatTransportAddress(address);
  switch (address.kind) {
    case "vsock":
      if (address.cid === undefined) throw new Error(`${name}: to connect, give the CID (vsock://CID:${address.port})`);
      return dialVsock(address.cid, address.port, timeoutMs).catch((err: Error) => {
        throw new Error(`cannot connect to ${name}: ${err.message}`, { cause: err });
      });
    case "serial":
      throw new Error(`${name}: a serial port is not dialed; use the host side of the port (its unix socket)`);
    case "unix":
    case "tcp":
      return connectSocket(address, name, timeoutMs, options.allowHalfOpen ?? false);
  }
}

function connectSocket(address: Extract<TransportAddress, { kind: "unix" | "tcp" }>, name: string, timeoutMs: number, allowHalfOpen: boolean): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      address.kind === "unix"
        ? net.connect({ path: address.path, allowHalfOpen })
        : net.connect({ host: address.host, port: address.port, noDelay: true, allowHalfOpen });
    const fail = (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      // The errno code stays: callers tell "refused" from "unreachable" by it.
      reject(Object.assign(new Error(`cannot connect to ${name}: ${err.message}`, { cause: err }), { code: err.code }));
    };
    const timer = setTimeout(() => fail(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    socket.once("error", fail);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.off("error", fail);
      resolve(socket);
    });
  });
}
