// What every host-side forward shares: bind with retry and backoff (or, with the
// `next-free` conflict policy, the next free port), Lima-style events, its status for
// `porthole status`, and closing. A bind that fails is reported and tried again until it
// works or the forward is no longer wanted; it never takes the agent down.
import { backoffDelay } from "../core/backoff.ts";
import type { ForwardEvent } from "../core/forward-event.ts";
import { formatHostTarget, type HostTarget, type PlannedForward } from "../core/forward-plan.ts";

const RETRY = { minMs: 500, maxMs: 10_000 };
/** Errors that mean "this host has no such address family", not "try again later". */
const NO_ADDRESS = new Set(["EADDRNOTAVAIL", "EAFNOSUPPORT"]);
/** How far `next-free` looks past a taken port. */
const NEXT_FREE_SPAN = 100;

export type Report = (e: ForwardEvent) => void;
export type ForwardState = "forwarding" | "failed" | "waiting";

/** Traffic through a forward: open connections (or UDP flows) and bytes each way. */
export interface Traffic {
  connections: number;
  /** Client to guest. */
  bytesIn: number;
  /** Guest to client. */
  bytesOut: number;
}

export interface ForwardStatus extends Traffic {
  key: string;
  protocol: string;
  guestAddr: string;
  hostAddr: string;
  requestedHostAddr?: string;
  path: string;
  rule: number | "built-in";
  label?: string;
  state: ForwardState;
  lastError?: string;
  since: string;
}

export abstract class HostForward {
  protected closed = false;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private portOffset = 0;
  private state: ForwardState = "waiting";
  private lastError: string | undefined;
  private since = new Date();

  constructor(
    protected plan: PlannedForward,
    protected readonly report: Report,
    /** Which data path new connections take (for the events); UDP is always gRPC. */
    private readonly pathOf: (plan: PlannedForward) => string = () => "grpc",
  ) {
    // After the subclass constructor: its fields must exist before the first bind.
    queueMicrotask(() => void this.bind());
  }

  /** Where this forward listens: the plan's address, moved on by `next-free` if it had to. */
  protected get hostTarget(): HostTarget {
    const host = this.plan.host;
    return host.kind === "tcp" ? { ...host, port: host.port + this.portOffset } : host;
  }

  get hostAddr(): string {
    return formatHostTarget(this.hostTarget);
  }

  get guestAddr(): string {
    return this.plan.guestAddr;
  }

  /** The guest bind or the rule behind this forward changed; the listener stays. */
  retarget(plan: PlannedForward): void {
    this.plan = plan;
  }

  /** Stops listening at once; connections or flows already open may finish. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.isListening()) {
      this.report({ type: "stopping", ...this.describe() });
      this.stopListening();
    }
  }

  /** Closes the listener and everything it carries (agent shutdown). */
  destroy(): void {
    this.close();
    this.dropAll();
  }

  status(): ForwardStatus {
    return {
      key: this.plan.key,
      ...this.describe(),
      state: this.state,
      ...(this.lastError ? { lastError: this.lastError } : {}),
      since: this.since.toISOString(),
      ...this.traffic(),
    };
  }

  protected describe() {
    const protocol = this.plan.protocol === "udp" ? "udp" : "tcp";
    return {
      protocol,
      guestAddr: this.guestAddr,
      hostAddr: this.hostAddr,
      ...(this.portOffset ? { requestedHostAddr: formatHostTarget(this.plan.host) } : {}),
      rule: this.plan.origin,
      ...(this.plan.label ? { label: this.plan.label } : {}),
      path: this.pathOf(this.plan),
    };
  }

  /** Resolves once listening on `hostTarget`; rejects with the bind error. */
  protected abstract listen(): Promise<void>;
  protected abstract isListening(): boolean;
  protected abstract stopListening(): void;
  protected abstract dropAll(): void;
  protected abstract traffic(): Traffic;

  private setState(state: ForwardState, error?: string): void {
    if (state !== this.state) this.since = new Date();
    this.state = state;
    this.lastError = error ?? this.lastError;
  }

  private async bind(): Promise<void> {
    if (this.closed) return;
    try {
      await this.listen();
    } catch (err) {
      return this.bindFailed(err as NodeJS.ErrnoException);
    }
    if (this.closed) return this.stopListening();
    this.attempt = 0;
    this.setState("forwarding");
    this.report({ type: "forwarding", ...this.describe() });
  }

  private bindFailed(err: NodeJS.ErrnoException): void {
    if (this.closed) return;
    const host = this.plan.host;
    if (err.code === "EADDRINUSE" && this.plan.onConflict === "next-free" && host.kind === "tcp" && this.portOffset < NEXT_FREE_SPAN && host.port + this.portOffset < 65535) {
      this.portOffset++;
      return void this.bind();
    }
    const error = describeBindError(err, this.hostTarget);
    this.setState("failed", error);
    if (this.plan.companion && NO_ADDRESS.has(err.code ?? "")) {
      // No IPv6 loopback on this host: the IPv4 listener serves alone.
      this.report({ type: "failed", ...this.describe(), error: `${error}; not retrying` });
      return;
    }
    this.portOffset = 0; // next-free found nothing in its span: start over on the next try
    const retryInMs = backoffDelay(this.attempt++, RETRY);
    this.report({ type: "failed", ...this.describe(), error, retryInMs });
    this.retryTimer = setTimeout(() => void this.bind(), retryInMs);
  }
}

function describeBindError(err: NodeJS.ErrnoException, host: HostTarget): string {
  switch (err.code) {
    case "EADDRINUSE":
      return "address already in use (another program holds this host port)";
    case "EACCES":
      return host.kind === "tcp" && host.port < 1024
        ? "permission denied (host ports below 1024 need root or CAP_NET_BIND_SERVICE; map the guest port to a port of 1024 or more with a portForwards rule)"
        : "permission denied";
    case "EADDRNOTAVAIL":
      return "address not available on this host";
    default:
      return err.message;
  }
}
