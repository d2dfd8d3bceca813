// Parser for the kernel's /proc/net/{tcp,tcp6,udp,udp6} tables.
//
// Why /proc/net and not netlink sock_diag: JavaScript runtimes have no AF_NETLINK socket,
// so netlink needs the native shim; /proc/net needs nothing and, for the few hundred
// sockets of a typical guest, a scan costs well under a millisecond, cheap enough to run
// five times a second. (With 10,000 established sockets it costs ~46 ms; netlink's
// LISTEN-only dump is the way out there and comes with the native shim.)
import { formatIPv4Bytes, formatIPv6Bytes } from "./address.ts";
import type { IPPort } from "../proto/guest-service.ts";
import type { SocketId } from "./port-owner.ts";
import { portKey } from "./ports.ts";

export type Protocol = "tcp" | "udp";

/** TCP_LISTEN for TCP; TCP_CLOSE (bound, not connected) for UDP. */
const WANTED_STATE: Record<Protocol, string> = { tcp: "0A", udp: "07" };

/** Decodes the hex address column: 32-bit words printed in host (little-endian) byte order. */
export function decodeProcAddress(hex: string): string {
  const bytes = new Uint8Array(hex.length / 2);
  for (let word = 0; word < hex.length / 8; word++) {
    for (let i = 0; i < 4; i++) {
      const at = word * 8 + (3 - i) * 2;
      bytes[word * 4 + i] = parseInt(hex.slice(at, at + 2), 16);
    }
  }
  return bytes.length === 4 ? formatIPv4Bytes(bytes) : formatIPv6Bytes(bytes);
}

/**
 * The listening (TCP) or bound-unconnected (UDP) sockets of one table; with `sockets`, also
 * each port's socket inode and uid (the first socket where several share a port).
 */
export function parseProcNet(text: string, protocol: Protocol, sockets?: Map<string, SocketId>): IPPort[] {
  const out: IPPort[] = [];
  const lines = text.split("\n");
  for (let i = 1; i < lines.length; i++) {
    // "  0: 0100007F:1F90 00000000:0000 0A ..." -> local address, remote address, state
    const fields = lines[i]!.trim().split(/\s+/, sockets ? 10 : 4);
    if (fields.length < 4 || fields[3] !== WANTED_STATE[protocol]) continue;
    const [addrHex, portHex] = fields[1]!.split(":");
    const port = parseInt(portHex!, 16);
    if (!addrHex || !port) continue;
    const p = { protocol, ip: decodeProcAddress(addrHex), port };
    out.push(p);
    // "... tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode"
    const inode = Number(fields[9]);
    if (sockets && inode && !sockets.has(portKey(p))) sockets.set(portKey(p), { inode, uid: Number(fields[7]) });
  }
  return out;
}
