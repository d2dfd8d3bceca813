// Which path each forwarded connection really took, and the bytes it carried: what
// `porthole status --json` shows per path (for the agent and per forward), so a test (or a
// user) can see that bytes went direct, over the data path, gRPC or SSH, not only which
// path was planned.
import type * as net from "node:net";
import type { PathTraffic } from "../core/status.ts";
import { relayedBytes, whenOver } from "../transport/fast-relay.ts";


const empty = (): PathTraffic => ({ connections: 0, open: 0, bytesIn: 0, bytesOut: 0, fallbacks: 0 });

function plus(a: PathTraffic, b: PathTraffic): PathTraffic {
  const sum: PathTraffic = { connections: a.connections + b.connections, open: a.open + b.open, bytesIn: a.bytesIn + b.bytesIn, bytesOut: a.bytesOut + b.bytesOut, fallbacks: a.fallbacks + b.fallbacks };
  if (a.failed !== undefined || b.failed !== undefined) sum.failed = (a.failed ?? 0) + (b.failed ?? 0);
  return sum;
}

export class PathCounters {
  private readonly closed = new Map<string, PathTraffic>();
  private readonly live = new Map<string, Set<net.Socket>>();
  private readonly toGuest = new WeakSet<net.Socket>();
  /** Traffic counted elsewhere (the kernel's, for rewritten connections), read when asked. */
  private readonly sources = new Map<string, Set<() => PathTraffic | undefined>>();

  private entry(key: string): PathTraffic {
    let t = this.closed.get(key);
    if (!t) this.closed.set(key, (t = empty()));
    return t;
  }

  /**
   * A client socket now carried by `path` (for the forward `forward`). `toGuest`: the socket
   * is the stream to the guest (a UDP flow's), so what it wrote went in and what it read came out.
   */
  took(path: string, forward: string, socket: net.Socket, toGuest = false): void {
    for (const key of [path, `${forward}\0${path}`]) {
      this.entry(key).connections++;
      let set = this.live.get(key);
      if (!set) this.live.set(key, (set = new Set()));
      set.add(socket);
      if (toGuest) this.toGuest.add(socket);
      // A connection handed to the native relay lives on after its socket object closes
      // (a natively dialed one's closed before it was counted).
      whenOver(socket, () => {
        set!.delete(socket);
        const t = this.entry(key);
        const { read, written } = relayedBytes(socket);
        t.bytesIn += toGuest ? written : read;
        t.bytesOut += toGuest ? read : written;
      });
    }
  }

  /**
   * Traffic of `path` for the forward `forward` that `read` counts (connections the agent never
   * sees); returns the stop, after which its last reading stays counted.
   */
  addSource(path: string, forward: string, read: () => PathTraffic | undefined): () => void {
    const keys = [path, `${forward}\0${path}`];
    for (const key of keys) {
      this.entry(key);
      if (!this.sources.has(key)) this.sources.set(key, new Set());
      this.sources.get(key)!.add(read);
    }
    return () => {
      const last = read();
      for (const key of keys) {
        this.sources.get(key)?.delete(read);
        if (last) this.closed.set(key, plus(this.entry(key), { ...last, open: 0 }));
      }
    };
  }

  fellBack(path: string, forward: string): void {
    this.entry(path).fallbacks++;
    this.entry(`${forward}\0${path}`).fallbacks++;
  }

  /** Per path: for the whole agent, or for one forward (its key). */
  snapshot(forward?: string): Record<string, PathTraffic> {
    const out: Record<string, PathTraffic> = {};
    const prefix = forward === undefined ? "" : `${forward}\0`;
    for (const [key, t] of this.closed) {
      if (forward === undefined ? key.includes("\0") : !key.startsWith(prefix)) continue;
      const live = this.live.get(key) ?? new Set();
      let [bytesIn, bytesOut] = [t.bytesIn, t.bytesOut];
      for (const s of live) {
        const { read, written } = relayedBytes(s);
        const swap = this.toGuest.has(s);
        bytesIn += swap ? written : read;
        bytesOut += swap ? read : written;
      }
      let row: PathTraffic = { ...t, open: live.size, bytesIn, bytesOut };
      for (const read of this.sources.get(key) ?? []) {
        const more = read();
        if (more) row = plus(row, more);
      }
      out[key.slice(prefix.length)] = row;
    }
    return out;
  }
}
