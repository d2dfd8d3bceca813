// Client-side transports: a connected stream for a transport address.
import * as net from "node:net";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";

export function dialTransport(address: TransportAddress, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      address.kind === "unix"
        ? net.connect({ path: address.path })
        : net.connect({ host: address.host, port: address.port, noDelay: true });
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new Error(`cannot connect to ${formatTransportAddress(address)}: ${err.message}`));
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
