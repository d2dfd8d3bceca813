// Agent-channel addresses: `unix:///path`, `tcp://host:port`, `vsock://CID:PORT` (dial) or
// `vsock://:PORT` (listen), and `serial:///dev/virtio-ports/NAME` (guest side of a port).
import { parseHostPort } from "./address.ts";

export type TransportAddress =
  | { kind: "unix"; path: string }
  | { kind: "tcp"; host: string; port: number }
  | { kind: "vsock"; cid?: number; port: number }
  | { kind: "serial"; path: string };

export const SUPPORTED_SCHEMES = ["unix", "tcp", "vsock", "serial"] as const;
const U32_MAX = 0xffffffff;

function parseU32(text: string, what: string, address: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(n >= 0 && n <= U32_MAX)) throw new Error(`"${address}": "${text}" is not a ${what}`);
  return n;
}

export function parseTransportAddress(text: string): TransportAddress {
  const m = /^([a-z]+):\/\/(.*)$/.exec(text);
  if (!m) throw new Error(`"${text}" is not an address: use unix:///path, tcp://host:port, vsock://CID:PORT or serial:///dev/…`);
  const [, scheme, rest] = m as unknown as [string, string, string];
  switch (scheme) {
    case "unix":
    case "serial":
      if (!rest.startsWith("/")) throw new Error(`"${text}": the path must be absolute (${scheme}:///path)`);
      return { kind: scheme, path: rest };
    case "tcp": {
      const { host, port } = parseHostPort(rest);
      if (port === 0) throw new Error(`"${text}": port 0 is not allowed`);
      return { kind: "tcp", host, port };
    }
    case "vsock": {
      const v = /^(\d*):(\d+)$/.exec(rest);
      if (!v) throw new Error(`"${text}": use vsock://CID:PORT to connect or vsock://:PORT to listen`);
      const port = parseU32(v[2]!, "vsock port", text);
      return v[1] === "" ? { kind: "vsock", port } : { kind: "vsock", cid: parseU32(v[1]!, "vsock CID", text), port };
    }
    default:
      throw new Error(`"${text}": unsupported scheme "${scheme}" (supported: ${SUPPORTED_SCHEMES.join(", ")})`);
  }
}

export function formatTransportAddress(a: TransportAddress): string {
  switch (a.kind) {
    case "unix":
    case "serial":
      return `${a.kind}://${a.path}`;
    case "tcp":
      return `tcp://${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
    case "vsock":
      return `vsock://${a.cid ?? ""}:${a.port}`;
  }
}
