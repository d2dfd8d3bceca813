// --kernel-direct: this host's own clients of a direct forward connect to the guest itself.
// A cgroup BPF program (native/connect_rewrite.c) turns connect() to the forward's loopback
// address into connect() to the guest's proven address, so no relay stands between them and
// the kernel carries the bytes as it does by IP. Only IPv4 loopback listeners (127.0.0.0/8)
// to an IPv4 guest address, only connections made in this network namespace; everything else
// (the [::1] companion, clients from other machines) reaches the listener as before. A rewritten
// connection that fails to connect takes the rewrite away in the kernel, so the next clients
// come to the listener, whose relay dials, falls back and says so as for any direct connection.
import { isIPv4 } from "node:net";
import { loadNative } from "../runtime/native.ts";
import type { NativeShim } from "../runtime/native-api.ts";
import type { PathTraffic } from "../core/status.ts";

export interface RewriteCounts {
  connections: number;
  closed: number;
  failed: number;
  bytesIn: number;
  bytesOut: number;
}

export class KernelDirect {
  private readonly out = new BigUint64Array(5);

  private constructor(private readonly shim: NativeShim) {}

  /** Loads the programs; undefined (and `say` hears why, in words) where they cannot run. */
  static async start(say: (problem: string) => void): Promise<KernelDirect | undefined> {
    const native = await loadNative();
    if (!native.shim) {
      say(`--kernel-direct needs the native shim (${native.error}); direct forwards go through the relay`);
      return undefined;
    }
    const msg = new Uint8Array(4096);
    const r = native.shim.rewriteStart(msg, msg.length);
    if (r < 0) {
      const why = new TextDecoder().decode(msg.subarray(0, msg.indexOf(0) < 0 ? msg.length : msg.indexOf(0)));
      const hint = r === -1 || r === -13 ? " (it needs root, or CAP_BPF with CAP_NET_ADMIN)" : "";
      say(`--kernel-direct: cannot rewrite connect() in the kernel: ${why || native.shim.errnoName(r)}${hint}; direct forwards go through the relay`);
      return undefined;
    }
    return new KernelDirect(native.shim);
  }

  /** Whether connections to this listener can be rewritten to this guest address at all. */
  static fits(hostIP: string, guestIP: string): boolean {
    return KernelDirect.rewritable(hostIP) && isIPv4(guestIP);
  }

  /** A listener whose clients can be rewritten at all: an IPv4 loopback address. */
  static rewritable(hostIP: string): boolean {
    return isIPv4(hostIP) && hostIP.startsWith("127.");
  }

  /** Rewrites connect() to hostIP:hostPort to the target, or stops (target undefined). -errno on failure, else 0. */
  route(hostIP: string, hostPort: number, target: { host: string; port: number } | undefined): number {
    if (!target) return this.shim.rewriteClear(ip4(hostIP), hostPort);
    return this.shim.rewriteSet(ip4(hostIP), hostPort, ip4(target.host), target.port);
  }

  active(hostIP: string, hostPort: number): boolean {
    return this.shim.rewriteActive(ip4(hostIP), hostPort) === 1;
  }

  counts(hostIP: string, hostPort: number): RewriteCounts | undefined {
    if (this.shim.rewriteStats(ip4(hostIP), hostPort, this.out) < 0) return undefined;
    const [connections, closed, failed, bytesIn, bytesOut] = [...this.out].map(Number) as [number, number, number, number, number];
    return { connections, closed, failed, bytesIn, bytesOut };
  }

  /** The rewrite and its counters gone (the listener closed). -errno on failure, else 0. */
  forget(hostIP: string, hostPort: number): number {
    return this.shim.rewriteForget(ip4(hostIP), hostPort);
  }

  errnoName(err: number): string {
    return this.shim.errnoName(err);
  }

  /** Detaches both programs (the agent stops; its exit would too). */
  stop(): void {
    this.shim.rewriteStop();
  }
}

/** A listener's rewritten connections as a path's traffic (open: connected or connecting now). */
export function rewriteTraffic(c: RewriteCounts): PathTraffic {
  return { connections: c.connections, open: Math.max(0, c.connections - c.closed - c.failed), bytesIn: c.bytesIn, bytesOut: c.bytesOut, fallbacks: 0, failed: c.failed };
}

function ip4(ip: string): Uint8Array {
  return Uint8Array.from(ip.split(".").map(Number));
}

/** What a forward's listener needs to have its own clients rewritten (see TcpForward). */
export interface KernelRouting {
  direct: KernelDirect;
  /** Counts a listener's rewritten connections on the path "direct-kernel" of its forward; returns the stop. */
  count(forward: string, read: () => PathTraffic | undefined): () => void;
  /** A change worth a line: usable, or not and why. */
  say(guestAddr: string, usable: boolean, reason: string): void;
}

/**
 * One listener's rewrite. It starts only once the relay connected one of the listener's clients
 * to the same guest address and port (that address takes connections on that port: a guest
 * firewall or an IPv6-only socket would otherwise refuse every client, where the relay falls
 * back to a tunnel), and it stops while the router chooses another path. After a rewritten
 * connection failed (the kernel took the rewrite away) it waits for the relay's next success.
 */
export class ListenerRewrite {
  private rewritten: string | undefined;
  /** The router's direct target for the listener's clients now, if it can be rewritten to. */
  private current: { host: string; port: number } | undefined;
  /** "ip:port" the relay has connected a client to, since the target last changed. */
  private proven: string | undefined;
  private failedSeen = 0;
  private saidError = false;
  /** The listener closed: nothing may set the rewrite again (a late record of the relay's could try). */
  private closed = false;
  private readonly stopCounting: () => void;

  constructor(
    private readonly routing: KernelRouting,
    private readonly hostIP: string,
    private readonly hostPort: number,
    forward: string,
    private readonly guestAddr: () => string,
  ) {
    this.stopCounting = routing.count(forward, () => {
      const c = routing.direct.counts(hostIP, hostPort);
      return c && rewriteTraffic(c);
    });
  }

  /** The relay's target for the listener's clients now (a direct one has a host). */
  update(target: { host: string; port: number } | { path: string } | undefined): void {
    this.current = target && "host" in target && KernelDirect.fits(this.hostIP, target.host) ? { host: target.host, port: target.port } : undefined;
    const key = this.current && `${this.current.host}:${this.current.port}`;
    if (key !== this.proven) this.proven = undefined;
    this.apply();
  }

  /** The relay connected one of this listener's clients to `target`. */
  connected(target: { host: string; port: number } | { path: string } | undefined): void {
    if (!target || !("host" in target)) return;
    this.noticeFailures();
    this.proven = `${target.host}:${target.port}`;
    this.apply();
  }

  /** Rewritten to the current target where the relay proved it, else not. */
  private apply(): void {
    if (this.closed) return;
    this.noticeFailures();
    const key = this.current && `${this.current.host}:${this.current.port}`;
    if (key && key === this.proven) {
      if (this.rewritten === key) return;
      const r = this.routing.direct.route(this.hostIP, this.hostPort, this.current);
      if (r < 0) {
        if (!this.saidError) this.routing.say(this.guestAddr(), false, `cannot rewrite connections to ${this.hostIP}:${this.hostPort} in the kernel (${this.routing.direct.errnoName(r)}); they go through the relay`);
        this.saidError = true;
        return;
      }
      this.rewritten = key;
      this.routing.say(this.guestAddr(), true, `this host's connections to ${this.hostIP}:${this.hostPort} now connect to ${key} themselves (connect() rewritten in the kernel)`);
      return;
    }
    if (this.rewritten) this.unset(this.routing.direct.route(this.hostIP, this.hostPort, undefined));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.current = this.proven = undefined;
    this.stopCounting();
    this.unset(this.routing.direct.forget(this.hostIP, this.hostPort));
  }

  /** The rewrite was taken away (0), or the kernel refused to (-errno): said, as the clients then still reach the guest. */
  private unset(result: number): void {
    const was = this.rewritten;
    this.rewritten = undefined;
    if (result >= 0 || !was) return;
    this.routing.say(
      this.guestAddr(),
      false,
      `could not stop rewriting connections to ${this.hostIP}:${this.hostPort} in the kernel (${this.routing.direct.errnoName(result)}); they may still connect to ${was} until the host agent stops`,
    );
  }

  /** A rewritten connection that failed took the rewrite away: said once per such loss; the proof starts over. */
  private noticeFailures(): void {
    const failed = this.routing.direct.counts(this.hostIP, this.hostPort)?.failed ?? 0;
    if (failed === this.failedSeen) return;
    this.failedSeen = failed;
    this.proven = undefined;
    const lost = this.rewritten;
    if (!lost || this.routing.direct.active(this.hostIP, this.hostPort)) return;
    this.rewritten = undefined;
    this.routing.say(
      this.guestAddr(),
      false,
      `a connection to ${this.hostIP}:${this.hostPort} rewritten to ${lost} did not connect (its client saw that); the next ones go through the relay until it connects one again`,
    );
  }
}
