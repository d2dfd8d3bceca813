// Decodes the native shim's sock_diag records (24 bytes each; see native/porthole_shim.c)
// into ports, printed as Lima prints them.
import type { IPPort } from "../proto/guest-service.ts";
import { formatIPv4Bytes, formatIPv6Bytes } from "./address.ts";

export const DIAG_RECORD_BYTES = 24;
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
