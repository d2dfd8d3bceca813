// porthole's raw data path: each forwarded connection gets its own stream over the agent
// transport, which starts with one header line (host to guest) and one status byte (guest
// to host), then carries the bytes both ways (half-close included). The header names the
// target and carries the session secret that the guest agent handed out over the (already
// trusted) agent channel. The status byte says whether the guest reached the target: unix
// and vsock streams have no reset, so a refused target must be said in words.
//
// `PHDATA1` streams then carry plain bytes; `PHDATA2` streams carry frames both ways
// (core/data-frames.ts), so that EOF, reset and a dead agent can be told apart. The header
// is a trust boundary (anything may connect to the data endpoint): it is bounded, and every
// field is checked before anything is dialed.
import { isIP } from "node:net";
import { parseHostPort } from "./address.ts";

export const DATA_MAGIC = "PHDATA1";
export const FRAMED_MAGIC = "PHDATA2";
export const STATUS_CONNECTED = 0;
export const STATUS_FAILED = 1;
export const MAX_HEADER = 4096;
/** Linux's sun_path holds 108 bytes, the terminating NUL included. */
const MAX_SOCKET_PATH = 107;

export interface DataTarget {
  /** `udp`: one UDP flow, its datagrams framed (core/datagram-frames.ts); only to a guest whose Hello lists "udp-data-path". */
  protocol: "tcp" | "unix" | "udp";
  /** `ip:port` or an absolute socket path. */
  address: string;
}

export function encodeDataHeader(secret: string, target: DataTarget, framed = false): string {
  const problem = targetProblem(target);
  if (problem) throw new Error(`"${target.address}": ${problem}`);
  return `${framed ? FRAMED_MAGIC : DATA_MAGIC} ${secret} ${target.protocol} ${target.address}\n`;
}

export type HeaderResult =
  | { kind: "need-more" }
  | { kind: "bad"; reason: string }
  | { kind: "ok"; secret: string; target: DataTarget; framed: boolean; rest: Buffer };

/** Parses the header from what arrived so far. */
export function parseDataHeader(data: Buffer): HeaderResult {
  const nl = data.indexOf(10);
  if (nl < 0) return data.length > MAX_HEADER ? { kind: "bad", reason: "header too long" } : { kind: "need-more" };
  if (nl > MAX_HEADER) return { kind: "bad", reason: "header too long" };
  const line = data.subarray(0, nl);
  if (line.some((b) => b < 0x20 || b > 0x7e)) return { kind: "bad", reason: "not a porthole data stream (control or non-ASCII bytes in the header)" };
  const parts = line.toString("latin1").split(" ");
  if (parts.length !== 4 || (parts[0] !== DATA_MAGIC && parts[0] !== FRAMED_MAGIC)) return { kind: "bad", reason: "not a porthole data stream" };
  const [magic, secret, protocol, address] = parts as [string, string, string, string];
  if (!/^[0-9a-f]{16,128}$/.test(secret)) return { kind: "bad", reason: "malformed secret" };
  if (protocol !== "tcp" && protocol !== "unix" && protocol !== "udp") return { kind: "bad", reason: `protocol ${JSON.stringify(protocol)}` };
  const target: DataTarget = { protocol, address };
  const problem = targetProblem(target);
  if (problem) return { kind: "bad", reason: problem };
  return { kind: "ok", secret, target, framed: magic === FRAMED_MAGIC, rest: data.subarray(nl + 1) };
}

/** Why a target cannot be dialed as it is, if it cannot. */
function targetProblem(target: DataTarget): string | undefined {
  if (/[\s\0]/.test(target.address)) return "a data-path target cannot contain spaces or control characters";
  if (target.protocol === "unix") {
    if (!target.address.startsWith("/")) return "a unix socket target must be an absolute path";
    if (Buffer.byteLength(target.address) > MAX_SOCKET_PATH) return "a unix socket path longer than 107 bytes";
    return undefined;
  }
  try {
    const { host, port } = parseHostPort(target.address);
    if (!isIP(host)) return `a ${target.protocol.toUpperCase()} target must be an IP address and port`;
    if (port < 1) return `a ${target.protocol.toUpperCase()} target needs a port from 1 to 65535`;
  } catch (err) {
    return (err as Error).message;
  }
  return undefined;
}
