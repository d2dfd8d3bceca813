// Whether an address lies on one of this host's directly connected networks: where the
// direct path (host to guest by IP, no tunnel) may work. Being on such a network proves
// nothing about who answers there (core/direct-proof.ts does that). No I/O: the caller
// passes the interfaces (os.networkInterfaces()).
import { isIPv4, isIPv6 } from "node:net";

export interface InterfaceAddress {
  address: string;
  netmask: string;
  family: string | number;
  internal: boolean;
}

/** An IPv4 or IPv6 address as a number (IPv4 in 32 bits, IPv6 in 128), or undefined. */
export function ipToBigInt(ip: string): bigint | undefined {
  if (isIPv4(ip)) return ip.split(".").reduce((n, part) => (n << 8n) + BigInt(Number(part)), 0n);
  if (!isIPv6(ip)) return undefined;
  let text = ip.split("%")[0]!.toLowerCase();
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = ipToBigInt(v4[1]!)!;
    text = `${text.slice(0, -v4[1]!.length)}${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = tail === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill("0"), ...right];
  if (groups.length !== 8) return undefined;
  return groups.reduce((n, g) => (n << 16n) + BigInt(parseInt(g, 16)), 0n);
}

function familyOf(i: InterfaceAddress): 4 | 6 {
  return i.family === "IPv4" || i.family === 4 ? 4 : 6;
}

export function onLocalSubnet(ip: string, interfaces: InterfaceAddress[]): boolean {
  const family = isIPv4(ip) ? 4 : isIPv6(ip) ? 6 : 0;
  const target = ipToBigInt(ip);
  if (!family || target === undefined) return false;
  return interfaces.some((i) => {
    if (i.internal || familyOf(i) !== family) return false;
    const own = ipToBigInt(i.address);
    const mask = ipToBigInt(i.netmask);
    if (own === undefined || mask === undefined || mask === 0n) return false;
    if (own === target) return false; // the host's own address: not a guest
    return (own & mask) === (target & mask);
  });
}
