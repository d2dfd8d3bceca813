// Watches this network namespace for listening TCP and bound, unconnected UDP sockets with
// a scanner (netlink or /proc/net, see scanners.ts) and tells subscribers what changed. Scans
// run on an interval, and at once when the scanner reports a closed socket. A UDP socket is
// reported once it has stayed bound long enough to be a server (core/udp-settle.ts).
import { readFile } from "node:fs/promises";
import { parseProcNet, type Protocol } from "../core/proc-net.ts";
import { diffPorts, isEmptyDiff, portKey, toPortSet, type PortDiff, type PortSet } from "../core/ports.ts";
import type { IPPort } from "../proto/guest-service.ts";
import type { Scanner } from "./scanners.ts";
import { UdpSettler } from "../core/udp-settle.ts";
import type { PortOwner, SocketId } from "../core/port-owner.ts";
import type { OwnerResolver } from "./port-owners.ts";

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

export class PortWatcher {
  private state: PortSet = new Map();
  private listeners = new Set<WatchListener>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private inFlight: Promise<void> | undefined;
  private stopped = true;
  private stopWatchingCloses: (() => void) | undefined;
  private scanned = false;
  /** The last scan's sockets, before the UDP settling. */
  private lastScan: IPPort[] = [];
  /** A UDP socket is bound but not yet long enough to count as a server. */
  private udpPending = false;
  private lastSockets = new Map<string, SocketId>();
  /** The owner of each port in `state`, found when the port appeared (with a resolver). */
  private owners = new Map<string, PortOwner>();

  constructor(
    private readonly intervalMs: number,
    private readonly scanner: Scanner,
    private readonly settler = new UdpSettler(),
    private readonly resolver?: OwnerResolver,
  ) {}

  get ports(): IPPort[] {
    return [...this.state.values()];
  }

  /** Who owns a port now reported, where that could be found. */
  ownerOf(p: IPPort): PortOwner | undefined {
    return this.owners.get(portKey(p));
  }

  async start(): Promise<void> {
    this.stopped = false;
    await this.refresh();
    this.schedule();
    this.stopWatchingCloses = this.scanner.watchCloses?.(() => void this.refresh());
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.stopWatchingCloses?.();
  }

  subscribe(listener: WatchListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Scans now (joining a scan already under way) and notifies subscribers of changes. */
  refresh(): Promise<void> {
    this.inFlight ??= this.scanAndNotify().finally(() => (this.inFlight = undefined));
    return this.inFlight;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.refresh().finally(() => this.schedule()), this.intervalMs);
  }

  /**
   * Owners of the ports that appeared, before anyone hears of them (a rule may match on the
   * owner); those of ports gone are forgotten. A port keeps the owner found when it appeared.
   */
  private async resolveOwners(added: IPPort[], removed: IPPort[]): Promise<void> {
    for (const p of removed) this.owners.delete(portKey(p));
    if (!this.resolver) return;
    const sockets = added.flatMap((p) => {
      const socket = this.lastSockets.get(portKey(p));
      return socket ? [{ key: portKey(p), socket }] : [];
    });
    try {
      const found = await this.resolver.resolve(sockets.map((s) => s.socket));
      for (const { key, socket } of sockets) {
        const owner = found.get(socket.inode);
        if (owner) this.owners.set(key, owner);
      }
      this.resolver.keepOnly(new Set([...this.state.keys()].flatMap((k) => this.lastSockets.get(k)?.inode ?? [])));
    } catch {
      // an owner is a nicety: the port is reported without one
    }
  }

  private async scanAndNotify(): Promise<void> {
    let result: ScanResult;
    try {
      result = await this.scanner.scan();
    } catch (err) {
      result = { ports: [], errors: [`scanning sockets: ${(err as Error).message}`] };
    }
    const { errors, unchanged } = result;
    // Nothing new from the kernel, and no UDP socket waiting to be old enough: nothing to do.
    if (unchanged && !errors.length && this.scanned && !this.udpPending) return;
    this.scanned = true;
    if (!unchanged && !errors.length) {
      this.lastScan = result.ports;
      this.lastSockets = result.sockets ?? new Map();
    }
    const settled = this.settler.settle(this.lastScan, Date.now());
    this.udpPending = settled.pending;
    const ports = settled.ports;
    // A failed scan keeps the last good state: a read error must not look like closed ports.
    const diff = errors.length ? { added: [], removed: [] } : diffPorts(this.state, toPortSet(ports));
    if (!errors.length) this.state = toPortSet(ports);
    if (isEmptyDiff(diff) && !errors.length) return;
    await this.resolveOwners(diff.added, diff.removed);
    for (const listener of this.listeners) {
      try {
        listener(diff, errors);
      } catch {
        // one subscriber's failure (a host gone mid-write) is not the others'
      }
    }
  }
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
