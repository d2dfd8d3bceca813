// What every host-side forward shares: bind with retry and backoff, Lima-style events,
// and closing. A bind that fails (port busy, privileged) is reported and tried again until
// it works or the forward is no longer wanted; it never takes the agent down.
import { backoffDelay } from "../core/backoff.ts";
import type { ForwardEvent } from "../core/forward-event.ts";
import { formatHostTarget, type PlannedForward } from "../core/forward-plan.ts";

const RETRY = { minMs: 500, maxMs: 10_000 };
/** Errors that mean "this host has no such address family", not "try again later". */
const NO_ADDRESS = new Set(["EADDRNOTAVAIL", "EAFNOSUPPORT"]);

export type Report = (e: ForwardEvent) => void;

export abstract class HostForward {
  protected closed = false;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    protected plan: PlannedForward,
    protected readonly report: Report,
    /** Which data path new connections take (for the events); UDP is always gRPC. */
    private readonly pathOf: (plan: PlannedForward) => string = () => "grpc",
  ) {
    // After the subclass constructor: its fields must exist before the first bind.
    queueMicrotask(() => void this.bind());
  }

  get hostAddr(): string {
    return formatHostTarget(this.plan.host);
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

  protected describe() {
    const protocol = this.plan.protocol === "udp" ? "udp" : "tcp";
    return { protocol, guestAddr: this.guestAddr, hostAddr: this.hostAddr, rule: this.plan.origin, path: this.pathOf(this.plan) };
  }

  /** Resolves once listening; rejects with the bind error. */
  protected abstract listen(): Promise<void>;
  protected abstract isListening(): boolean;
  protected abstract stopListening(): void;
  protected abstract dropAll(): void;

  private async bind(): Promise<void> {
    if (this.closed) return;
    try {
      await this.listen();
    } catch (err) {
      return this.bindFailed(err as NodeJS.ErrnoException);
    }
    if (this.closed) return this.stopListening();
    this.attempt = 0;
    this.report({ type: "forwarding", ...this.describe() });
  }

  private bindFailed(err: NodeJS.ErrnoException): void {
    if (this.closed) return;
    const error = describeBindError(err, this.plan);
    if (this.plan.companion && NO_ADDRESS.has(err.code ?? "")) {
      // No IPv6 loopback on this host: the IPv4 listener serves alone.
      this.report({ type: "failed", ...this.describe(), error: `${error}; not retrying` });
      return;
    }
    const retryInMs = backoffDelay(this.attempt++, RETRY);
    this.report({ type: "failed", ...this.describe(), error, retryInMs });
    this.retryTimer = setTimeout(() => void this.bind(), retryInMs);
  }
}

function describeBindError(err: NodeJS.ErrnoException, plan: PlannedForward): string {
  switch (err.code) {
    case "EADDRINUSE":
      return "address already in use (another program holds this host port)";
    case "EACCES":
      return plan.host.kind === "tcp" && plan.host.port < 1024
        ? "permission denied (host ports below 1024 need root or CAP_NET_BIND_SERVICE; map the guest port to a port of 1024 or more with a portForwards rule)"
        : "permission denied";
    case "EADDRNOTAVAIL":
      return "address not available on this host";
    default:
      return err.message;
  }
}
