// Reading who holds a host port from the kernel's tables: /proc/net/{tcp,tcp6,udp,udp6}
// give the listening socket's inode, /proc/net/unix the paths of a process's unix sockets.
// Parsing only; the reading is in src/host/port-owner.ts. No I/O.
import { decodeProcAddress } from "./proc-net.ts";

/** TCP_LISTEN for TCP; bound and unconnected for UDP. */
const BOUND_STATE = { tcp: "0A", udp: "07" } as const;

/**
 * Inodes of the sockets in one /proc/net table bound to `port` on an address that blocks a
 * bind of `ip` there: the same address or a wildcard (either way round).
 */
export function inodesOnPort(text: string, protocol: "tcp" | "udp", ip: string, port: number): number[] {
  const out: number[] = [];
  const wild = (a: string) => a === "0.0.0.0" || a === "::";
  for (const line of text.split("\n").slice(1)) {
    // "  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 12345 ..."
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || f[3] !== BOUND_STATE[protocol]) continue;
    const [addrHex, portHex] = f[1]!.split(":");
    if (parseInt(portHex!, 16) !== port) continue;
    const local = decodeProcAddress(addrHex!);
    if (local !== ip && !wild(local) && !wild(ip)) continue;
    const inode = Number(f[9]);
    if (inode) out.push(inode);
  }
  return out;
}

/** `socket:[12345]` (an fd's link) -> 12345. */
export function socketInode(link: string): number | undefined {
  const m = /^socket:\[(\d+)\]$/.exec(link);
  return m ? Number(m[1]) : undefined;
}

/** Paths of listening unix sockets in /proc/net/unix whose inode is in `inodes`. */
export function listeningUnixPaths(text: string, inodes: Set<number>): string[] {
  const out: string[] = [];
  for (const line of text.split("\n").slice(1)) {
    // "Num RefCount Protocol Flags Type St Inode Path"; flag 00010000 is __SO_ACCEPTCON (listening)
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || !(parseInt(f[3]!, 16) & 0x10000)) continue;
    if (inodes.has(Number(f[6])) && f[7]!.startsWith("/")) out.push(f.slice(7).join(" "));
  }
  return out;
}
