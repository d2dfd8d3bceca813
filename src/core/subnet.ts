// Whether an address lies on one of this host's directly connected networks: where the
// direct path (host to guest by IP, no tunnel) can work. No I/O: the caller passes the
// interfaces (os.networkInterfaces()).
import { isIPv4 } from "node:net";

export interface InterfaceAddress {
  address: string;
  netmask: string;
  family: string;
  internal: boolean;
}

function v4ToInt(ip: string): number {
  return ip.split(".").reduce((n, part) => (n << 8) + Number(part), 0) >>> 0;
}

export function onLocalSubnet(ip: string, interfaces: InterfaceAddress[]): boolean {
  if (!isIPv4(ip)) return false; // IPv6 guests are reached through the tunnels for now
  const target = v4ToInt(ip);
  return interfaces.some((i) => {
    if (i.internal || i.family !== "IPv4" || i.address === ip) return false;
    const mask = v4ToInt(i.netmask);
    return (v4ToInt(i.address) & mask) === (target & mask);
  });
}
