// Keeps the host's forwards equal to the plan: opens what is new, closes what is gone,
// leaves the rest untouched. Reports each port the rules do not forward once per decision.
import { formatHostPort } from "../core/address.ts";
import type { HostEvent } from "../core/forward-event.ts";
import { planForwards, type PlannedForward, type PlannedReverse, type PlanOptions } from "../core/forward-plan.ts";
import { portKey, type PortSet } from "../core/ports.ts";
import type { RuleEntry, RuleOrigin } from "../core/rules.ts";
import type { PortOwner } from "../core/port-owner.ts";
import type { ForwardStatus, HostForward } from "./host-forward.ts";

export interface ReverseHandle {
  close(): void;
  destroy(): void;
  status(): ForwardStatus;
}

export interface ForwardFactory {
  forward(plan: PlannedForward): HostForward;
  reverse(plan: PlannedReverse): ReverseHandle;
}

/** A guest port the rules do not forward, for `porthole status`. */
export interface NotForwardedStatus {
  protocol: string;
  guestAddr: string;
  state: "not-forwarding";
  reason: string;
  rule?: RuleOrigin;
  owner?: PortOwner;
}

export class Reconciler {
  private readonly active = new Map<string, HostForward>();
  private readonly reverses = new Map<string, ReverseHandle>();
  /** Forwards no longer wanted whose connections are still open. */
  private readonly closing = new Set<HostForward>();
  private readonly closingReverses = new Set<ReverseHandle>();
  private reportedNotForwarded = new Set<string>();
  private notForwarded: NotForwardedStatus[] = [];
  private ports: PortSet = new Map();
  /** Guest ports left out by the forward cap, as last said (said again only when it changes from none). */
  private overCap = 0;

  constructor(
    private rules: RuleEntry[],
    private options: PlanOptions,
    private readonly factory: ForwardFactory,
    private readonly report: (e: HostEvent) => void,
  ) {}

  /**
   * New rules or options (and, on reconnect, a new port snapshot): forwards still wanted
   * stay up untouched, the others close, new ones open.
   */
  setRules(rules: RuleEntry[], options: PlanOptions, ports: PortSet = this.ports): void {
    this.rules = rules;
    this.options = options;
    this.reconcile(ports);
  }

  /** The ports of a reconcile due at the end of this turn of the event loop (reconcileSoon). */
  private soon: PortSet | undefined;

  /**
   * Reconciles once this turn of the event loop is over: a burst of the guest's events (each
   * may change one port) costs one plan of every port, not one per event (a guest could send
   * thousands a second, each planning all of its up to 10,000 ports).
   */
  reconcileSoon(ports: PortSet): void {
    const scheduled = this.soon !== undefined;
    this.soon = ports;
    if (scheduled) return;
    setImmediate(() => {
      const due = this.soon;
      this.soon = undefined;
      if (due) this.reconcile(due);
    });
  }

  reconcile(ports: PortSet): void {
    this.soon = undefined; // this one supersedes a reconcile still due (another session's ports, say)
    // Destroyed (the agent stopping while it waits for its relays to reset): a late guest
    // event must not open listeners again (a unix forward would leave its socket file behind).
    if (this.destroyed) return;
    this.ports = ports;
    const plan = planForwards(ports.values(), this.rules, this.options);
    for (const [key, forward] of this.active) {
      if (plan.forwards.has(key)) continue;
      forward.close();
      this.active.delete(key);
      // Its open connections go on: status still counts them and stop still ends them.
      this.closing.add(forward);
    }
    this.pruneClosing();
    for (const [key, planned] of plan.forwards) {
      const existing = this.active.get(key);
      if (existing) existing.retarget(planned);
      else this.active.set(key, this.factory.forward(planned));
    }
    for (const [key, reverse] of this.reverses) {
      if (plan.reverses.has(key)) continue;
      reverse.close();
      this.reverses.delete(key);
      this.closingReverses.add(reverse);
    }
    for (const [key, planned] of plan.reverses) {
      if (!this.reverses.has(key)) this.reverses.set(key, this.factory.reverse(planned));
    }

    if (plan.overCap && !this.overCap) {
      this.report({ type: "warning", message: `${plan.overCap} guest port(s) not forwarded: ${this.options.maxForwards!.reason}` });
    }
    this.overCap = plan.overCap;

    const nowNotForwarded = new Set<string>();
    this.notForwarded = plan.notForwarded.map(({ port, reason, origin }) => ({
      protocol: port.protocol,
      guestAddr: formatHostPort(port.ip, port.port),
      state: "not-forwarding" as const,
      reason,
      ...(origin !== undefined ? { rule: origin } : {}),
      ...(port.owner ? { owner: port.owner } : {}),
    }));
    for (const { port, reason, origin } of plan.notForwarded) {
      const key = `${portKey(port)} ${reason} ${origin}`;
      nowNotForwarded.add(key);
      if (this.reportedNotForwarded.has(key)) continue;
      this.report({
        type: "not-forwarding",
        protocol: port.protocol,
        guestAddr: formatHostPort(port.ip, port.port),
        error: reason,
        ...(origin !== undefined ? { rule: origin } : {}),
        ...(port.owner ? { owner: port.owner } : {}),
      });
    }
    this.reportedNotForwarded = nowNotForwarded;
  }

  private pruneClosing(): void {
    for (const f of this.closing) if (f.openConnections === 0) this.closing.delete(f);
    for (const r of this.closingReverses) if (r.status().connections === 0) this.closingReverses.delete(r);
  }

  /** Every forward (and port not forwarded) as `porthole status` shows it. */
  snapshot(): { forwards: ForwardStatus[]; notForwarded: NotForwardedStatus[] } {
    this.pruneClosing();
    return {
      forwards: [...[...this.active.values(), ...this.closing].flatMap((f) => f.status()), ...[...this.reverses.values(), ...this.closingReverses].map((r) => r.status())],
      notForwarded: this.notForwarded,
    };
  }

  /** Closes every forward and what it carries (agent shutdown). */
  private destroyed = false;

  destroy(): void {
    this.destroyed = true;
    for (const forward of [...this.active.values(), ...this.closing]) forward.destroy();
    this.closing.clear();
    for (const reverse of [...this.reverses.values(), ...this.closingReverses]) reverse.destroy();
    this.closingReverses.clear();
    this.active.clear();
    this.reverses.clear();
  }
}
