// Watches this network namespace for listening TCP and bound, unconnected UDP sockets with
// a scanner (netlink or /proc/net, see scanners.ts) and tells subscribers what changed. Scans
// run on an interval (a poll, or a slow safety re-scan beside kernel events), and at once when
// the scanner reports a change. A UDP socket is reported once it has stayed bound long enough
// to be a server (core/udp-settle.ts).
import { readFile } from "node:fs/promises";
import { parseProcNet, type Protocol } from "../core/proc-net.ts";
import { diffPorts, isEmptyDiff, portKey, toPortSet, type PortDiff, type PortSet } from "../core/ports.ts";
import type { IPPort } from "../proto/guest-service.ts";
import type { Scanner } from "./scanners.ts";
import type { EventBatch } from "./kernel-events.ts";
import { UdpSettler } from "../core/udp-settle.ts";
import type { PortOwner, SocketId } from "../core/port-owner.ts";
import type { OwnerResolver } from "./port-owners.ts";
import { DiffBatch } from "../core/diff-batch.ts";

const TABLES: { file: string; protocol: Protocol; optional: boolean }[] = [
  { file: "tcp", protocol: "tcp", optional: false },
  { file: "tcp6", protocol: "tcp", optional: true }, // absent when IPv6 is disabled
  { file: "udp", protocol: "udp", optional: false },
  { file: "udp6", protocol: "udp", optional: true },
];

export interface ScanResult {
  ports: IPPort[];
  /** Each port's socket (inode and uid) by portKey, where the scanner can tell. */
  sockets?: Map<string, SocketId>;
  errors: string[];
  /** The scanner knows nothing changed since its last scan (the watcher skips the diff). */
  unchanged?: boolean;
}

export type WatchListener = (diff: PortDiff, errors: string[]) => void;

/**
 * A close event fires as close() begins, before the kernel unhashes the socket: when the dump
 * right after an event shows no change, one more this much later.
 */
const FOLLOW_UP_MS = 5;
/**
 * A UDP bind is looked at this much later: a client that binds its socket connects it right
 * after (then it is no server), and a look between the two would report it for a moment.
 */
const UDP_BIND_LOOK_MS = 3;
/** Binding processes remembered (by port), and how many of the latest are looked at for any new port. */
const MAX_BINDERS = 4096;
const RECENT_BINDERS = 4;
/** While a young UDP socket waits to count as a server, scans run at least this often. */
const UDP_PENDING_SCAN_MS = 250;

export class PortWatcher {
  private state: PortSet = new Map();
  /**
   * The ports as subscribers have been told them: the state lags behind it while a change waits
   * for its batch and its owners. A new event stream starts from this, so that no change
   * reaches it twice (in its first event, and again when told).
   */
  private told: PortSet = new Map();
  private listeners = new Set<WatchListener>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private inFlight: Promise<boolean> | undefined;
  private stopped = true;
  private stopWatchingChanges: (() => void) | undefined;
  private followUp: ReturnType<typeof setTimeout> | undefined;
  private pendingTimer: ReturnType<typeof setTimeout> | undefined;
  private boundTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly boundLater: EventBatch["ports"] = [];
  /** A change was reported while a scan ran: scan again after it. */
  private again = false;
  private scanned = false;
  /** The last scan's sockets, before the UDP settling. */
  private lastScan: IPPort[] = [];
  /** A UDP socket is bound but not yet long enough to count as a server. */
  private udpPending = false;
  /** The socket (inode, uid) of each port seen, for finding its owner. */
  private sockets = new Map<string, SocketId>();
  /** The owner of each port in `state`, found when the port appeared (with a resolver). */
  private owners = new Map<string, PortOwner>();
  /** Notifications in order: each waits for its new ports' owners, and for the one before. */
  private notified: Promise<void> = Promise.resolve();
  /**
   * Changes not yet told: those found in one turn of the event loop (the events of one wake-up,
   * a ring buffer's records and a destroy event together) go out as one (one owner lookup, one
   * message to each host), at no cost in latency; a change that names one of their ports again
   * sends them first.
   */
  private readonly batch = new DiffBatch();
  private batchTimer: ReturnType<typeof setImmediate> | undefined;
  /** Settles once the batch under way has been told. */
  private batchTold: { promise: Promise<void>; resolve: () => void } | undefined;

  constructor(
    private readonly intervalMs: number,
    private readonly scanner: Scanner,
    private readonly settler = new UdpSettler(),
    private readonly resolver?: OwnerResolver,
  ) {}

  get ports(): IPPort[] {
    return [...this.state.values()];
  }

  /** The ports subscribers have been told of so far (see `told`). */
  get toldPorts(): IPPort[] {
    return [...this.told.values()];
  }

  /** Who owns a port now reported, where that could be found. */
  ownerOf(p: IPPort): PortOwner | undefined {
    const key = portKey(p);
    // A port gone keeps its owner until its removal is told (a batch later): not asked for then.
    return this.state.has(key) ? this.owners.get(key) : undefined;
  }

  async start(): Promise<void> {
    this.stopped = false;
    // Watching first: a close between the first scan and the subscription would otherwise
    // wait for the next full scan (a change before the first scan joins it).
    this.stopWatchingChanges = this.scanner.watchChanges?.((change) => this.onChange(change));
    await this.refresh();
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.followUp);
    clearTimeout(this.pendingTimer);
    clearTimeout(this.boundTimer);
    // Stopped: what was not told yet never will be (nobody waits on it).
    if (this.batchTimer) clearImmediate(this.batchTimer);
    this.batch.take();
    this.batchTold?.resolve();
    this.batchTold = undefined;
    this.stopWatchingChanges?.();
  }

  /**
   * The scanner says something may have changed: the ports it names are looked at alone (a
   * dump of one port), anything else with a full scan (again after a scan under way).
   */
  private onChange(change: EventBatch, followingUp = false): void {
    if (this.stopped) return;
    for (const p of change.ports) if (p.pid) this.noteBinder(p);
    const bound = change.ports.filter((p) => p.bound);
    if (bound.length) {
      this.boundLater.push(...bound.map((p) => ({ ...p, bound: false })));
      this.boundTimer ??= setTimeout(() => {
        this.boundTimer = undefined;
        this.onChange({ ports: this.boundLater.splice(0), whole: 0 });
      }, UDP_BIND_LOOK_MS);
      change = { ports: change.ports.filter((p) => !p.bound), whole: change.whole };
    }
    const whole = change.whole !== 0 || !this.scanner.scanPort || !this.scanned;
    if (!whole && !change.ports.length) return;
    const changed = whole ? this.fullScanSoon() : Promise.resolve(this.lookAt(change.ports));
    const closing = change.ports.filter((p) => p.closing);
    if (!whole && !closing.length) return;
    void changed.then((yes) => {
      // A listener's close is reported before the kernel unhashes it: look once more shortly
      // (unless there was nothing to look at: the destroy event, often first, removed it).
      if (yes !== false || followingUp || this.stopped || this.followUp) return;
      if (!whole) change = { ports: closing, whole: 0 };
      this.followUp = setTimeout(() => {
        this.followUp = undefined;
        this.onChange(change, true);
      }, FOLLOW_UP_MS);
    });
  }

  private fullScanSoon(): Promise<boolean> {
    if (this.inFlight) this.again = true;
    return this.refresh();
  }

  /**
   * Looks at these ports alone and applies what it finds to the state: no full dump, no
   * walk over every port (beside thousands of listeners, a port opening costs the same as
   * beside none). A target whose address is known (the kernel's record, or the state's own
   * sockets for a close) is one socket lookup in the kernel's hash; else a dump of its port.
   * Returns whether something changed (undefined: nothing to look at).
   */
  private lookAt(targets: EventBatch["ports"]): boolean | undefined {
    // A close where the state has nothing: nothing to remove, no dump (a listener's close
    // comes as a kernel event and again as a destroy event).
    targets = targets.filter((t) => !t.closeOnly || this.slotsOf(t).some((slot) => this.bySlot.has(slot)));
    if (!targets.length) return undefined;
    const touchedSlots = new Set<number>();
    const touchedKeys = new Set<string>();
    const found: IPPort[] = [];
    const take = (result: ScanResult): boolean => {
      if (result.errors.length) return false;
      found.push(...result.ports);
      for (const [k, socket] of result.sockets ?? []) this.sockets.set(k, socket);
      return true;
    };
    const exact = (t: EventBatch["ports"][number], ip: string, family: 4 | 6, addr: Uint8Array): boolean | undefined => {
      let result: ScanResult;
      try {
        result = this.scanner.scanSocket!(t.protocol, family, addr, t.port);
      } catch (err) {
        result = { ports: [], errors: [(err as Error).message] };
      }
      // Nothing where a socket just opened: one bound to a device (which a lookup without
      // the device does not find), or gone already; its port's dump tells.
      if (!result.errors.length && !result.ports.length && !t.closeOnly) return undefined;
      touchedKeys.add(portKey({ protocol: t.protocol, ip, port: t.port }));
      return take(result);
    };
    for (const t of targets) {
      let ok: boolean | undefined;
      if (this.scanner.scanSocket && t.addr && t.ip !== undefined) {
        ok = exact(t, t.ip, t.families === 2 ? 6 : 4, t.addr);
      } else if (this.scanner.scanSocket && t.closeOnly) {
        // A close the kernel named by port only: the state's sockets there, each looked up.
        ok = true;
        for (const slot of this.slotsOf(t)) {
          for (const k of this.bySlot.get(slot) ?? []) {
            const p = this.state.get(k)!;
            const addr = ipBytes(p.ip);
            ok = addr ? exact(t, p.ip, slot & (2 << 16) ? 6 : 4, addr) : this.dumpPort(t, touchedSlots, take);
            if (!ok) break;
          }
          if (!ok) break;
        }
      }
      if (ok === undefined) ok = this.dumpPort(t, touchedSlots, take);
      if (!ok) {
        void this.fullScanSoon();
        return false;
      }
    }
    // A full scan under way read the table before this: it must not overwrite what this saw.
    // (The scanner treats its next full scan as news, so lastScan is replaced then.)
    if (this.inFlight) this.again = true;
    // A young UDP socket in the ephemeral range has to be seen to stay: the full path settles it.
    if (found.some((p) => !this.settler.countsAtOnce(p))) {
      void this.fullScanSoon();
      return true;
    }
    const foundKeys = new Set(found.map(portKey));
    const removed: IPPort[] = [];
    for (const slot of touchedSlots) {
      for (const k of this.bySlot.get(slot) ?? []) if (!foundKeys.has(k)) touchedKeys.add(k);
    }
    for (const k of touchedKeys) if (!foundKeys.has(k) && this.state.has(k)) removed.push(this.state.get(k)!);
    const added: IPPort[] = [];
    const adding = new Set<string>();
    for (const p of found) {
      const k = portKey(p);
      if (this.state.has(k) || adding.has(k)) continue; // a wildcard socket may answer for several addresses
      adding.add(k);
      added.push(p);
    }
    for (const p of removed) this.unindex(p);
    for (const p of added) this.index(p);
    if (!added.length && !removed.length) return false;
    void this.notify({ added, removed }, []);
    return true;
  }

  /** The slots (protocol, family, port) a target names. */
  private slotsOf(t: EventBatch["ports"][number]): number[] {
    const out: number[] = [];
    if (t.families & 1) out.push(slotKey(t.protocol, false, t.port));
    if (t.families & 2) out.push(slotKey(t.protocol, true, t.port));
    return out;
  }

  /** A dump of the target's port (in its families); false on an error. */
  private dumpPort(t: EventBatch["ports"][number], touched: Set<number>, take: (r: ScanResult) => boolean): boolean {
    for (const slot of this.slotsOf(t)) touched.add(slot);
    try {
      return take(this.scanner.scanPort!(t.protocol, t.port, t.families));
    } catch (err) {
      return take({ ports: [], errors: [(err as Error).message] });
    }
  }

  /** The process that last bound each port (by slotKey), where the kernel said. */
  private binders = new Map<number, number>();
  /** The last few processes that bound a port, newest first. */
  private recentBinders: number[] = [];

  private noteBinder(t: EventBatch["ports"][number]): void {
    if (this.binders.size >= MAX_BINDERS) this.binders.clear();
    if (t.families & 1) this.binders.set(slotKey(t.protocol, false, t.port), t.pid!);
    if (t.families & 2) this.binders.set(slotKey(t.protocol, true, t.port), t.pid!);
    if (this.recentBinders[0] !== t.pid) this.recentBinders = [t.pid!, ...this.recentBinders.filter((p) => p !== t.pid)].slice(0, RECENT_BINDERS);
  }

  /**
   * Whether this socket is still open on its port (one lookup by address, where the scanner
   * can; else assumed). Asked only when its owner was not where the kernel said.
   */
  private stillThere(p: IPPort | undefined, inode: number): boolean {
    const addr = p && this.scanner.scanSocket ? ipBytes(p.ip) : undefined;
    if (!p || !addr) return true;
    try {
      const result = this.scanner.scanSocket!(p.protocol as "tcp" | "udp", p.ip.includes(":") ? 6 : 4, addr, p.port);
      if (result.errors.length) return true;
      return [...(result.sockets?.values() ?? [])].some((s) => s.inode === inode);
    } catch {
      return true;
    }
  }

  /** The state's ports by protocol, family and port (what one look covers). */
  private bySlot = new Map<number, Set<string>>();

  private index(p: IPPort): void {
    const k = portKey(p);
    this.state.set(k, p);
    const slot = slotOf(p);
    let keys = this.bySlot.get(slot);
    if (!keys) this.bySlot.set(slot, (keys = new Set()));
    keys.add(k);
  }

  private unindex(p: IPPort): void {
    const k = portKey(p);
    this.state.delete(k);
    const slot = slotOf(p);
    const keys = this.bySlot.get(slot);
    keys?.delete(k);
    if (keys && !keys.size) this.bySlot.delete(slot);
  }

  private setState(ports: IPPort[]): void {
    this.state = new Map();
    this.bySlot = new Map();
    for (const p of ports) this.index(p);
  }

  subscribe(listener: WatchListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Scans now (joining a scan already under way) and notifies subscribers of changes; true when something changed. */
  refresh(): Promise<boolean> {
    this.inFlight ??= this.scanAndNotify().finally(() => {
      this.inFlight = undefined;
      if (this.again && !this.stopped) {
        this.again = false;
        void this.refresh();
      }
    });
    return this.inFlight;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.refresh().finally(() => this.schedule()), this.intervalMs);
  }

  private async scanAndNotify(): Promise<boolean> {
    let result: ScanResult;
    try {
      result = await this.scanner.scan();
    } catch (err) {
      result = { ports: [], errors: [`scanning sockets: ${(err as Error).message}`] };
    }
    const { errors, unchanged } = result;
    // Nothing new from the kernel, and no UDP socket waiting to be old enough: nothing to do.
    if (unchanged && !errors.length && this.scanned && !this.udpPending) return false;
    this.scanned = true;
    if (!unchanged && !errors.length) {
      this.lastScan = result.ports;
      // Sockets of ports about to be removed stay until their removal is told (then forgotten).
      const sockets = result.sockets ?? new Map<string, SocketId>();
      for (const k of this.state.keys()) if (!sockets.has(k) && this.sockets.has(k)) sockets.set(k, this.sockets.get(k)!);
      this.sockets = sockets;
    }
    const settled = this.settler.settle(this.lastScan, Date.now());
    this.udpPending = settled.pending;
    if (settled.pending && !this.pendingTimer && !this.stopped && this.intervalMs > UDP_PENDING_SCAN_MS) {
      this.pendingTimer = setTimeout(() => {
        this.pendingTimer = undefined;
        void this.refresh();
      }, UDP_PENDING_SCAN_MS);
    }
    const ports = settled.ports;
    // A failed scan keeps the last good state: a read error must not look like closed ports.
    const diff = errors.length ? { added: [], removed: [] } : diffPorts(this.state, toPortSet(ports));
    if (!errors.length) this.setState(ports);
    if (isEmptyDiff(diff) && !errors.length) return false;
    await this.notify(diff, errors);
    return !isEmptyDiff(diff);
  }

  /**
   * Tells subscribers of a change: with the others found in this turn of the event loop, in
   * order (a change that names a port of the batch again sends the batch first). Settles once told.
   */
  private notify(diff: PortDiff, errors: string[]): Promise<void> {
    if (errors.length || !this.batch.accepts(diff)) this.sendBatch();
    if (errors.length) return this.tell(diff, errors);
    this.batch.add(diff);
    if (!this.batchTold) {
      let resolve = () => {};
      const promise = new Promise<void>((r) => (resolve = r));
      this.batchTold = { promise, resolve };
      this.batchTimer = setImmediate(() => this.sendBatch());
    }
    return this.batchTold.promise;
  }

  private sendBatch(): void {
    const told = this.batchTold;
    if (!told) return;
    if (this.batchTimer) clearImmediate(this.batchTimer);
    this.batchTimer = undefined;
    this.batchTold = undefined;
    void this.tell(this.batch.take(), []).then(told.resolve);
  }

  /** Tells subscribers, in order, once the new ports' owners are known (a rule may match on them). */
  private tell(diff: PortDiff, errors: string[]): Promise<void> {
    return (this.notified = this.notified
      .then(() => this.resolveOwners(diff.added, diff.removed))
      .then(() => {
        for (const p of diff.removed) this.told.delete(portKey(p));
        for (const p of diff.added) this.told.set(portKey(p), p);
        for (const listener of this.listeners) {
          try {
            listener(diff, errors);
          } catch {
            // one subscriber's failure (a host gone mid-write) is not the others'
          }
        }
      }));
  }

  /**
   * Owners of the ports that appeared; those of ports gone are forgotten. A port keeps the
   * owner found when it appeared. The processes the kernel saw bind them (and the last few
   * that bound anything: a full scan may see a port before its event) are looked at first.
   */
  private async resolveOwners(added: IPPort[], removed: IPPort[]): Promise<void> {
    const gone: number[] = [];
    for (const p of removed) {
      const key = portKey(p);
      this.owners.delete(key);
      if (this.state.has(key)) continue; // back already, with its own socket
      const inode = this.sockets.get(key)?.inode;
      if (inode) gone.push(inode);
      this.sockets.delete(key);
    }
    if (!this.resolver) return;
    // A port already gone again (closed while earlier lookups ran) needs no owner: looking for
    // it would cost a whole pass over /proc for a socket no process holds.
    const sockets = added.flatMap((p) => {
      if (!this.state.has(portKey(p))) return [];
      const socket = this.sockets.get(portKey(p));
      return socket ? [{ key: portKey(p), socket }] : [];
    });
    try {
      // What a change costs is the ports it names, not the whole state (a churn beside a
      // thousand listeners); the cache is trimmed to the state only once it has grown.
      this.resolver.forget(gone);
      if (sockets.length) {
        const likely = added.flatMap((p) => this.binders.get(slotOf(p)) ?? []);
        const byInode = new Map(added.map((p) => [this.sockets.get(portKey(p))?.inode, p]));
        const found = await this.resolver.resolve(sockets.map((s) => s.socket), likely, {
          recent: this.recentBinders,
          alive: (inode) => this.stillThere(byInode.get(inode), inode),
        });
        for (const { key, socket } of sockets) {
          const owner = found.get(socket.inode);
          if (owner) this.owners.set(key, owner);
        }
      }
      if (this.resolver.size > 2 * this.state.size + 64) {
        this.resolver.keepOnly(new Set([...this.state.keys()].flatMap((k) => this.sockets.get(k)?.inode ?? [])));
      }
    } catch {
      // an owner is a nicety: the port is reported without one
    }
  }
}

/** A number for protocol, family and port: the sockets one look at a port covers. */
function slotKey(protocol: string, v6: boolean, port: number): number {
  return (protocol === "tcp" ? 0 : 4 << 16) + (v6 ? 2 << 16 : 0) + port;
}

/** An address as 16 bytes (IPv4 in the first 4), as the kernel's lookup takes it; undefined if it does not parse. */
export function ipBytes(ip: string): Uint8Array | undefined {
  const out = new Uint8Array(16);
  if (!ip.includes(":")) {
    const parts = ip.split(".").map(Number);
    if (parts.length !== 4 || parts.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) return undefined;
    out.set(parts);
    return out;
  }
  const halves = ip.split("::");
  if (halves.length > 2 || ip.includes("%") || ip.includes(".")) return undefined;
  const words = (s: string) => (s ? s.split(":").map((w) => (/^[0-9a-f]{1,4}$/i.test(w) ? parseInt(w, 16) : NaN)) : []);
  const head = words(halves[0]!);
  const tail = halves.length === 2 ? words(halves[1]!) : [];
  const all = halves.length === 2 ? [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail] : head;
  if (all.length !== 8 || all.some((w) => Number.isNaN(w))) return undefined;
  all.forEach((w, i) => {
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

function slotOf(p: IPPort): number {
  return slotKey(p.protocol, p.ip.includes(":"), p.port);
}

export async function scanProcNet(dir: string): Promise<ScanResult> {
  const ports: IPPort[] = [];
  const sockets = new Map<string, SocketId>();
  const errors: string[] = [];
  await Promise.all(
    TABLES.map(async ({ file, protocol, optional }) => {
      try {
        ports.push(...parseProcNet(await readFile(`${dir}/${file}`, "latin1"), protocol, sockets));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (!(optional && code === "ENOENT")) errors.push(`reading ${dir}/${file}: ${(err as Error).message}`);
      }
    }),
  );
  return { ports, sockets, errors };
}
