// Agent-channel addresses: `unix:///path` and `tcp://host:port`.
import { parseHostPort } from "./address.ts";

export type TransportAddress =
  | { kind: "unix"; path: string }
  | { kind: "tcp"; host: string; port: number };

export const SUPPORTED_SCHEMES = ["unix", "tcp"] as const;

export function parseTransportAddress(text: string): TransportAddress {
  const m = /^([a-z]+):\/\/(.*)$/.exec(text);
  if (!m) throw new Error(`"${text}" is not an address: use unix:///path or tcp://host:port`);
  const [, scheme, rest] = m as unknown as [string, string, string];
  switch (scheme) {
    case "unix":
      if (!rest.startsWith("/")) throw new Error(`"${text}": a unix socket path must be absolute (unix:///path)`);
      return { kind: "unix", path: rest };
    case "tcp": {
      const { host, port } = parseHostPort(rest);
      if (port === 0) throw new Error(`"${text}": port 0 is not allowed`);
      return { kind: "tcp", host, port };
    }
    default:
      throw new Error(`"${text}": unsupported scheme "${scheme}" (supported: ${SUPPORTED_SCHEMES.join(", ")})`);
  }
}

export function formatTransportAddress(a: TransportAddress): string {
  return a.kind === "unix" ? `unix://${a.path}` : `tcp://${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}

/** The target string grpc-js understands for a dial address. */
export function grpcTarget(a: TransportAddress): string {
  return a.kind === "unix" ? `unix://${a.path}` : `${a.host.includes(":") ? `[${a.host}]` : a.host}:${a.port}`;
}
