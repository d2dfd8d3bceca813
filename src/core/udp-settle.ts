// Which UDP sockets are servers. The kernel already tells connected sockets (clients that
// called connect(): state ESTABLISHED, which the scanners skip) from unconnected ones; an
// unconnected socket may still be a short-lived client (a resolver's query, an NTP probe),
// so one bound in the ephemeral range (where the kernel puts clients) counts as a server once
// it has stayed bound for a while. The port alone never excludes it: a DNS server on 40011 or
// WireGuard on 51820 sits in the ephemeral range too. A socket outside that range was bound
// to its port on purpose: it is reported at once, as a TCP listener is.
import type { IPPort } from "../proto/guest-service.ts";
import { portKey } from "./ports.ts";

/** How long an unconnected UDP socket must stay bound to count as a server. */
export const UDP_SERVER_AFTER_MS = 2000;

export class UdpSettler {
  /** When each UDP socket now bound was first seen. */
  private readonly firstSeen = new Map<string, number>();

  constructor(
    private readonly minAgeMs = UDP_SERVER_AFTER_MS,
    /** The guest's ip_local_port_range; Linux's default when not told. */
    private readonly ephemeral: [number, number] = [32768, 60999],
  ) {}

  /** Whether a socket counts at once, without waiting to see it stay (TCP, or UDP outside the ephemeral range). */
  countsAtOnce(p: IPPort): boolean {
    return p.protocol !== "udp" || p.port < this.ephemeral[0] || p.port > this.ephemeral[1];
  }

  /**
   * The scanned ports to report at `now`: every TCP listener, every UDP socket outside the
   * ephemeral range, and those inside it once bound for at least minAgeMs. `pending` says whether a UDP socket is still too young (scan again).
   */
  settle(ports: IPPort[], now: number): { ports: IPPort[]; pending: boolean } {
    const seen = new Set<string>();
    const out: IPPort[] = [];
    let pending = false;
    for (const p of ports) {
      if (p.protocol !== "udp" || p.port < this.ephemeral[0] || p.port > this.ephemeral[1]) {
        out.push(p);
        continue;
      }
      const key = portKey(p);
      seen.add(key);
      const since = this.firstSeen.get(key) ?? now;
      this.firstSeen.set(key, since);
      if (now - since >= this.minAgeMs) out.push(p);
      else pending = true;
    }
    for (const key of this.firstSeen.keys()) if (!seen.has(key)) this.firstSeen.delete(key);
    return { ports: out, pending };
  }
}
