// Keeps the host's listeners equal to the plan: opens what is new, closes what is gone,
// leaves the rest untouched. Reports each port the rules do not forward once per decision.
import { formatHostPort } from "../core/address.ts";
import type { ForwardEvent } from "../core/forward-event.ts";
import { planForwards, type NotForwarded, type PlanOptions } from "../core/forward-plan.ts";
import { portKey, type PortSet } from "../core/ports.ts";
import type { RuleEntry } from "../core/rules.ts";
import { TcpForward, type ConnectionHandler } from "./tcp-forward.ts";

const REASONS: Record<NotForwarded["decision"]["kind"], string> = {
  none: "no rule matches",
  ignore: "ignored by rule",
};

export class Reconciler {
  private readonly active = new Map<string, TcpForward>();
  private reportedNotForwarded = new Set<string>();
  private ports: PortSet = new Map();

  constructor(
    private rules: RuleEntry[],
    private options: PlanOptions,
    private readonly onConnection: ConnectionHandler,
    private readonly report: (e: ForwardEvent) => void,
  ) {}

  /** New rules: forwards they still want stay up untouched, the others close, new ones open. */
  setRules(rules: RuleEntry[], options: PlanOptions): void {
    this.rules = rules;
    this.options = options;
    this.reconcile(this.ports);
  }

  reconcile(ports: PortSet): void {
    this.ports = ports;
    const plan = planForwards(ports.values(), this.rules, this.options);
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
      const origin = decision.kind === "ignore" ? decision.origin : undefined;
      const key = `${portKey(port)} ${decision.kind} ${origin}`;
      nowNotForwarded.add(key);
      if (this.reportedNotForwarded.has(key)) continue;
      this.report({
        type: "not-forwarding",
        protocol: port.protocol,
        guestAddr: formatHostPort(port.ip, port.port),
        error: REASONS[decision.kind],
        ...(origin !== undefined ? { rule: origin } : {}),
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
