// Decodes the native shim's sock_diag records (32 bytes each; see native/sock_diag.c)
// into ports, printed as Lima prints them, and the socket inodes that name their owners.
import type { IPPort } from "../proto/guest-service.ts";
import { formatIPv4Bytes, formatIPv6Bytes } from "./address.ts";
import type { SocketId } from "./port-owner.ts";
import { portKey } from "./ports.ts";

export const DIAG_RECORD_BYTES = 32;
const AF_INET = 2;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

export interface DiagRecord {
  family: number;
  /** 6 (TCP), 17 (UDP), or 0 for destroy events, which do not say. */
  protocol: number;
  state: number;
  port: number;
  ip: string;
  /** The socket's owner uid and inode (0 where the kernel does not say). */
  uid: number;
  inode: number;
}

export function parseDiagRecords(buf: Uint8Array, count: number): DiagRecord[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: DiagRecord[] = [];
  for (let i = 0; i < count; i++) {
    const at = i * DIAG_RECORD_BYTES;
    const family = buf[at]!;
    const addr = buf.subarray(at + 8, at + 24);
    out.push({
      family,
      protocol: buf[at + 1]!,
      state: buf[at + 2]!,
      port: view.getUint16(at + 4, true),
      ip: family === AF_INET ? formatIPv4Bytes(addr) : formatIPv6Bytes(addr),
      uid: view.getUint32(at + 24, true),
      inode: view.getUint32(at + 28, true),
    });
  }
  return out;
}

/** Listening TCP and unconnected UDP records as ports (port 0, not yet bound, is skipped). */
export function diagRecordsToPorts(records: DiagRecord[]): IPPort[] {
  return records
    .filter((r) => r.port !== 0 && (r.protocol === IPPROTO_TCP || r.protocol === IPPROTO_UDP))
    .map((r) => ({ protocol: r.protocol === IPPROTO_TCP ? "tcp" : "udp", ip: r.ip, port: r.port }));
}

/** The socket behind each port (the first one, where several share a port), by portKey. */
export function diagRecordsToSockets(records: DiagRecord[]): Map<string, SocketId> {
  const out = new Map<string, SocketId>();
  for (const r of records) {
    if (r.port === 0 || !r.inode || (r.protocol !== IPPROTO_TCP && r.protocol !== IPPROTO_UDP)) continue;
    const key = portKey({ protocol: r.protocol === IPPROTO_TCP ? "tcp" : "udp", ip: r.ip, port: r.port });
    if (!out.has(key)) out.set(key, { inode: r.inode, uid: r.uid });
  }
  return out;
}

const NLMSG_HEADER_BYTES = 16;
const SOCK_DIAG_BY_FAMILY = 20;

/**
 * The listening or unconnected sockets (no remote port) a batch of sock_diag destroy events
 * names, as family (4 or 6) and port, each once; undefined when the bytes do not parse (scan
 * everything). A destroy event does not say TCP or UDP.
 */
export function closedListeners(bytes: Uint8Array): { family: 4 | 6; port: number }[] | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: { family: 4 | 6; port: number }[] = [];
  const seen = new Set<number>();
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < NLMSG_HEADER_BYTES + 8) return undefined;
    const len = view.getUint32(at, true);
    if (len < NLMSG_HEADER_BYTES + 8 || at + len > bytes.length) return undefined;
    if (view.getUint16(at + 4, true) !== SOCK_DIAG_BY_FAMILY) return undefined;
    const family = bytes[at + NLMSG_HEADER_BYTES] === AF_INET ? 4 : 6;
    const sport = view.getUint16(at + NLMSG_HEADER_BYTES + 4, false);
    const dport = view.getUint16(at + NLMSG_HEADER_BYTES + 6, false);
    if (dport === 0 && sport !== 0 && !seen.has(family * 65536 + sport)) {
      seen.add(family * 65536 + sport);
      out.push({ family, port: sport });
    }
    at += (len + 3) & ~3; // NLMSG_ALIGN
  }
  return out;
}
