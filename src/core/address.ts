// IP address and host:port helpers, printing addresses the way Lima does:
// IPv4-mapped IPv6 as IPv4, IPv6 compressed (RFC 5952), IPv6 host:port in brackets.
import { isIPv4, isIPv6 } from "node:net";

export function isUnspecified(ip: string): boolean {
  return ip === "0.0.0.0" || ip === "::";
}

/** `::ffff:1.2.3.4` becomes `1.2.3.4`; everything else is returned as is. */
export function unmapIPv4(ip: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return m ? m[1]! : ip;
}

/** Equal as addresses: IPv4 and its IPv4-mapped IPv6 form are the same address. */
export function ipEquals(a: string, b: string): boolean {
  return unmapIPv4(a.toLowerCase()) === unmapIPv4(b.toLowerCase());
}

export function formatHostPort(ip: string, port: number): string {
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export interface HostPort {
  host: string;
  port: number;
}

/** Parses `1.2.3.4:80`, `[::1]:80` or `name:80`; throws on anything else. */
export function parseHostPort(text: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d+)$/.exec(text);
  if (!m) throw new Error(`"${text}" is not host:port`);
  const host = (m[1] ?? m[2])!;
  if (m[1] !== undefined && !isIPv6(host)) throw new Error(`"${host}" in "${text}" is not an IPv6 address`);
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`"${m[3]}" in "${text}" is not a port (0-65535)`);
  return { host, port };
}

/** IPv6 from 16 bytes, compressed per RFC 5952; IPv4-mapped addresses come out as IPv4. */
export function formatIPv6Bytes(bytes: Uint8Array): string {
  const mapped = bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  if (mapped) return formatIPv4Bytes(bytes.subarray(12, 16));
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((bytes[i]! << 8) | bytes[i + 1]!);
  // The longest run of two or more zero words becomes "::" (the first one on a tie).
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

export function formatIPv4Bytes(bytes: Uint8Array): string {
  return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
}

export function isIP(text: string): boolean {
  return isIPv4(text) || isIPv6(text);
}
