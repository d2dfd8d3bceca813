// Keeps the host's listeners equal to the plan: opens what is new, closes what is
// gone, leaves the rest untouched. Reports ports the rules do not forward once each.
import { formatHostPort } from "../core/address.ts";
import type { ForwardEvent } from "../core/forward-event.ts";
import { planForwards } from "../core/forward-plan.ts";
import { portKey, type PortSet } from "../core/ports.ts";
import type { RuleEntry } from "../core/rules.ts";
import { TcpForward, type ConnectionHandler } from "./tcp-forward.ts";

export class Reconciler {
  private readonly active = new Map<string, TcpForward>();
  private reportedNotForwarded = new Set<string>();

  constructor(
    private readonly rules: RuleEntry[],
    private readonly onConnection: ConnectionHandler,
    private readonly report: (e: ForwardEvent) => void,
  ) {}

  reconcile(ports: PortSet): void {
    const plan = planForwards(ports.values(), this.rules);
    for (const [key, forward] of this.active) {
      if (plan.forwards.has(key)) continue;
      forward.close();
      this.active.delete(key);
    }
    for (const [key, planned] of plan.forwards) {
      const existing = this.active.get(key);
      if (existing) existing.retarget(planned);
      else this.active.set(key, new TcpForward(planned, this.onConnection, this.report));
    }

    const nowNotForwarded = new Set<string>();
    for (const { port, decision } of plan.notForwarded) {
      const key = portKey(port);
      nowNotForwarded.add(key);
      if (this.reportedNotForwarded.has(key)) continue;
      this.report({
        type: "not-forwarding",
        protocol: port.protocol,
        guestAddr: formatHostPort(port.ip, port.port),
        ...(decision.kind === "none" ? { error: "no rule matches" } : {}),
        ...(decision.kind === "ignore" ? { rule: decision.origin, error: "ignored by rule" } : {}),
        ...(decision.kind === "forward-socket" ? { rule: decision.origin, error: "host sockets are not supported yet" } : {}),
      });
    }
    this.reportedNotForwarded = nowNotForwarded;
  }

  /** Closes every listener and connection (agent shutdown). */
  destroy(): void {
    for (const forward of this.active.values()) forward.destroy();
    this.active.clear();
  }
}
