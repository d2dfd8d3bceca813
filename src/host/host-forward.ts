// What every host-side forward shares: bind with retry and backoff (or, with the
// `next-free` conflict policy, the next free port), Lima-style events, its status for
// `porthole status`, and closing. A forward's listeners (127.0.0.1:P and its [::1]:P
// companion) stand or fall together: if one cannot bind, the others are closed again, the
// failure is reported and all are retried (with `next-free`, all move to the same port). A
// bind that fails never takes the agent down.
import type { PortOwner } from "../core/port-owner.ts";
import { backoffDelay } from "../core/backoff.ts";
import type { ForwardEvent } from "../core/forward-event.ts";
import type { RuleOrigin } from "../core/rules.ts";
import { formatHostTarget, type HostTarget, type PlannedForward } from "../core/forward-plan.ts";
import { atFdLimit, fdLimitHint } from "../runtime/fd-limit.ts";

const RETRY = { minMs: 500, maxMs: 10_000 };
/** Errors that mean "this host has no such address family", not "try again later". */
const NO_ADDRESS = new Set(["EADDRNOTAVAIL", "EAFNOSUPPORT"]);
/** How far `next-free` looks past a taken port. */
const NEXT_FREE_SPAN = 100;

export type Report = (e: ForwardEvent) => void;
/** An error in one of a forward's callbacks (a connection, a datagram): the forward goes on. */
export type Trouble = (err: unknown, where: string) => void;
/** Who holds a busy host address, in words (a pid and command, or another porthole agent). */
export type FindOwner = (protocol: "tcp" | "udp", ip: string, port: number) => Promise<string | undefined>;
export type ForwardState = "forwarding" | "failed" | "waiting" | "closing";

/** Traffic through a listener: open connections (or UDP flows) and bytes each way. */
export interface Traffic {
  connections: number;
  /** Client to guest. */
  bytesIn: number;
  /** Guest to client. */
  bytesOut: number;
  /** UDP: datagrams from clients dropped because their flow's budget was spent (the agent channel lagged). */
  datagramsDropped?: number;
  /** UDP: datagrams the shim's pump carried (both ways) on this forward's flows, none of them through JavaScript. */
  datagramsPumped?: number;
}

export interface ForwardStatus extends Traffic {
  key: string;
  protocol: string;
  guestAddr: string;
  hostAddr: string;
  requestedHostAddr?: string;
  path: string;
  rule: RuleOrigin;
  label?: string;
  owner?: PortOwner;
  state: ForwardState;
  lastError?: string;
  since: string;
  /** Listens whether or not the guest does (a `static: true` rule, or `porthole forward add`). */
  static?: boolean;
}

/** One bound listener of a forward, with what it carries. */
export interface Listener {
  /** Stops accepting; what is open may finish. */
  close(): void;
  /** Ends everything it carries. */
  dropAll(): void;
  traffic(): Traffic;
}

export abstract class HostForward {
  protected closed = false;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private portOffset = 0;
  private state: ForwardState = "waiting";
  private lastError: string | undefined;
  private since = new Date();
  /** Bound listeners, in the order of targets(); empty while not forwarding. */
  private listeners: Listener[] = [];
  /** Listeners closed while their connections went on: still counted, closed on destroy. */
  private retired: Listener[] = [];
  /** The host has no IPv6: the companion is not tried again. */
  private companionUnavailable = false;

  constructor(
    protected plan: PlannedForward,
    protected readonly report: Report,
    /** Which data path new connections take (for the events); UDP is always gRPC. */
    private readonly pathOf: (plan: PlannedForward) => string = () => "grpc",
    protected readonly trouble: Trouble = () => {},
    /** Names who holds a busy port in the `failed` event. */
    private readonly findOwner?: FindOwner,
  ) {
    // After the subclass constructor: its fields must exist before the first bind.
    queueMicrotask(() => this.bindSafely());
  }

  /** Where this forward listens: the plan's address, moved on by `next-free` if it had to. */
  protected get hostTarget(): HostTarget {
    const host = this.plan.host;
    return host.kind === "tcp" ? { ...host, port: host.port + this.portOffset } : host;
  }

  /** Every address this forward listens on: the host target, then its [::1] companion. */
  targets(): HostTarget[] {
    const main = this.hostTarget;
    if (!this.plan.ipv6Companion || this.companionUnavailable || main.kind !== "tcp") return [main];
    return [main, { ...main, ip: "::1" }];
  }

  get hostAddr(): string {
    return formatHostTarget(this.hostTarget);
  }

  get guestAddr(): string {
    return this.plan.guestAddr;
  }

  /** The guest bind or the rule behind this forward changed; the listeners stay. */
  retarget(plan: PlannedForward): void {
    this.plan = plan;
  }

  /** Stops listening at once; connections or flows already open may finish. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.listeners.length) {
      for (const target of this.targets()) this.report({ type: "stopping", ...this.describe(target) });
      this.unbind();
    }
    this.setState("closing");
  }

  /** Closes the listeners and everything they carry (agent shutdown). */
  destroy(): void {
    this.close();
    for (const l of this.retired) l.dropAll();
  }

  /** Open connections (or flows), those of closed listeners included. */
  get openConnections(): number {
    return [...this.listeners, ...this.retired].reduce((n, l) => n + l.traffic().connections, 0);
  }

  /** One row per listener (one per wanted address while not listening). */
  status(): ForwardStatus[] {
    return this.targets().map((target, i) => {
      const own = this.listeners[i] ? [this.listeners[i]!] : [];
      // Closed listeners' connections and bytes count on the first row.
      const counted = i === 0 ? [...own, ...this.retired] : own;
      return {
        key: `${this.plan.protocol} ${target.kind === "tcp" ? formatHostTarget(target) : `unix:${target.path}`}`,
        ...this.describe(target),
        state: this.state,
        ...(this.lastError ? { lastError: this.lastError } : {}),
        since: this.since.toISOString(),
        ...(this.plan.static ? { static: true } : {}),
        ...sumTraffic(counted.map((l) => l.traffic())),
      };
    });
  }

  protected describe(target: HostTarget = this.hostTarget) {
    const protocol = this.plan.protocol === "udp" ? "udp" : "tcp";
    const requested = this.portOffset && target.kind === "tcp" && this.plan.host.kind === "tcp" ? { ...target, port: this.plan.host.port } : undefined;
    return {
      protocol,
      guestAddr: this.guestAddr,
      hostAddr: formatHostTarget(target),
      ...(requested ? { requestedHostAddr: formatHostTarget(requested) } : {}),
      rule: this.plan.origin,
      ...(this.plan.label ? { label: this.plan.label } : {}),
      ...(this.plan.owner ? { owner: this.plan.owner } : {}),
      path: this.currentPath(),
    };
  }

  private currentPath(): string {
    try {
      return this.pathOf(this.plan);
    } catch (err) {
      this.trouble(err, `choosing the data path of ${this.hostAddr}`);
      return "grpc"; // where the path cannot be chosen, connections fall back to gRPC
    }
  }

  /** Resolves with the listener once bound on `target`; rejects with the bind error. */
  protected abstract listenOn(target: HostTarget): Promise<Listener>;

  private unbind(): void {
    for (const l of this.listeners) l.close();
    this.retired.push(...this.listeners);
    this.listeners = [];
  }

  private setState(state: ForwardState, error?: string): void {
    if (state !== this.state) this.since = new Date();
    this.state = state;
    this.lastError = error ?? this.lastError;
  }

  /** bind(), whose every failure is reported and retried: nothing escapes to the event loop. */
  private bindSafely(): void {
    this.bind().catch((err: NodeJS.ErrnoException) => {
      try {
        for (const l of this.listeners.splice(0)) l.close();
        this.bindFailed(err, this.hostTarget);
      } catch (again) {
        this.trouble(again, `binding ${this.hostAddr}`);
      }
    });
  }

  private async bind(): Promise<void> {
    if (this.closed) return;
    const bound: Listener[] = [];
    for (const target of this.targets()) {
      try {
        bound.push(await this.listenOn(target));
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        if (bound.length && NO_ADDRESS.has(e.code ?? "")) {
          // No IPv6 loopback on this host: the IPv4 listener serves alone, said once.
          this.companionUnavailable = true;
          this.report({ type: "failed", ...this.describe(target), error: `${describeBindError(e, target)}; IPv4 serves alone, not retrying` });
          continue;
        }
        for (const l of bound) l.close(); // stand or fall together
        return this.bindFailed(e, target);
      }
    }
    if (this.closed) return void bound.forEach((l) => l.close());
    this.listeners = bound;
    this.attempt = 0;
    this.setState("forwarding");
    // The [::1] companion's event says so: one forward, one `--on-forward` run.
    this.targets().forEach((target, i) => this.report({ type: "forwarding", ...this.describe(target), ...(i ? { companion: true } : {}) }));
  }

  private bindFailed(bindError: NodeJS.ErrnoException, target: HostTarget): void {
    if (this.closed) return;
    const err = !bindError.code && atFdLimit() ? Object.assign(new Error(bindError.message, { cause: bindError }), { code: "EMFILE" }) : bindError;
    const host = this.plan.host;
    if (err.code === "EADDRINUSE" && this.plan.onConflict === "next-free" && host.kind === "tcp" && this.portOffset < NEXT_FREE_SPAN && host.port + this.portOffset < 65535) {
      this.portOffset++;
      return this.bindSafely();
    }
    if (err.code === "EMFILE") this.trouble(err, `listening on ${formatHostTarget(target)}`);
    if (err.code === "EADDRINUSE" && this.findOwner && target.kind === "tcp") {
      // Said with who holds the port (another agent, or which program), found with asynchronous reads.
      const protocol = this.plan.protocol === "udp" ? "udp" : "tcp";
      this.findOwner(protocol, target.ip, target.port).then(
        (owner) => this.failed(err, target, owner),
        () => this.failed(err, target),
      ).catch((again) => this.trouble(again, `binding ${this.hostAddr}`));
      return;
    }
    this.failed(err, target);
  }

  private failed(err: NodeJS.ErrnoException, target: HostTarget, owner?: string): void {
    if (this.closed) return;
    const error = describeBindError(err, target, owner);
    const failedAddr = formatHostTarget(target);
    const others = this.targets().filter((t) => formatHostTarget(t) !== failedAddr).map(formatHostTarget);
    const where = failedAddr === this.hostAddr ? "" : `${failedAddr}: `;
    const why = others.length ? `${where}${error}; not listening on ${others.join(" or ")} either (a forward's addresses stand or fall together)` : error;
    this.setState("failed", why);
    this.portOffset = 0; // next-free found nothing in its span: start over on the next try
    const retryInMs = backoffDelay(this.attempt++, RETRY);
    this.report({ type: "failed", ...this.describe(), error: why, retryInMs });
    this.retryTimer = setTimeout(() => this.bindSafely(), retryInMs);
  }
}

const ZERO: Traffic = { connections: 0, bytesIn: 0, bytesOut: 0 };

function sumTraffic(list: Traffic[]): Traffic {
  return list.reduce((a, t) => {
    const sum: Traffic = { connections: a.connections + t.connections, bytesIn: a.bytesIn + t.bytesIn, bytesOut: a.bytesOut + t.bytesOut };
    const dropped = (a.datagramsDropped ?? 0) + (t.datagramsDropped ?? 0);
    if (a.datagramsDropped !== undefined || t.datagramsDropped !== undefined) sum.datagramsDropped = dropped;
    if (a.datagramsPumped !== undefined || t.datagramsPumped !== undefined) sum.datagramsPumped = (a.datagramsPumped ?? 0) + (t.datagramsPumped ?? 0);
    return sum;
  }, ZERO);
}

function describeBindError(err: NodeJS.ErrnoException, host: HostTarget, owner?: string): string {
  switch (err.code) {
    case "EADDRINUSE":
      return owner ? `address already in use, held by ${owner}` : "address already in use (another program holds this host port)";
    case "EACCES":
      return host.kind === "tcp" && host.port < 1024
        ? "permission denied (host ports below 1024 need root or CAP_NET_BIND_SERVICE; map the guest port to a port of 1024 or more with a portForwards rule)"
        : "permission denied";
    case "EADDRNOTAVAIL":
      return "address not available on this host";
    case "EMFILE":
      return `out of file descriptors (EMFILE): ${fdLimitHint()}`;
    case "ENFILE":
      return "the system is out of file descriptors (ENFILE: its fs.file-max is reached)";
    default:
      return err.message;
  }
}
