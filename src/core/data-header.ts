// porthole's raw data path: each forwarded connection gets its own stream over the agent
// transport, which starts with one header line (host to guest) and one status byte (guest
// to host), then carries plain bytes both ways (half-close included). The header names the
// target and carries the session secret that the guest agent handed out over the (already
// trusted) agent channel. The status byte says whether the guest reached the target: unix
// and vsock streams have no reset, so a refused target must be said in words.
export const DATA_MAGIC = "PHDATA1";
export const STATUS_CONNECTED = 0;
export const STATUS_FAILED = 1;
const MAX_HEADER = 4096;

export interface DataTarget {
  protocol: "tcp" | "unix";
  /** `host:port` or an absolute socket path. */
  address: string;
}

export function encodeDataHeader(secret: string, target: DataTarget): string {
  if (/\s/.test(target.address)) throw new Error(`"${target.address}": a data-path target cannot contain spaces`);
  return `${DATA_MAGIC} ${secret} ${target.protocol} ${target.address}\n`;
}

export type HeaderResult =
  | { kind: "need-more" }
  | { kind: "bad"; reason: string }
  | { kind: "ok"; secret: string; target: DataTarget; rest: Buffer };

/** Parses the header from what arrived so far. */
export function parseDataHeader(data: Buffer): HeaderResult {
  const nl = data.indexOf(10);
  if (nl < 0) return data.length > MAX_HEADER ? { kind: "bad", reason: "header too long" } : { kind: "need-more" };
  const parts = data.subarray(0, nl).toString("latin1").split(" ");
  if (parts.length !== 4 || parts[0] !== DATA_MAGIC) return { kind: "bad", reason: "not a porthole data stream" };
  const [, secret, protocol, address] = parts as [string, string, string, string];
  if (protocol !== "tcp" && protocol !== "unix") return { kind: "bad", reason: `protocol "${protocol}"` };
  return { kind: "ok", secret, target: { protocol, address }, rest: data.subarray(nl + 1) };
}
