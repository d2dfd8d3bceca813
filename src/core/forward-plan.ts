// From the guest's ports and the rules to the host listeners that should exist.
// Several guest binds can map to one host address (guest 0.0.0.0:P and [::]:P both go to
// host 127.0.0.1:P): they share one listener instead of failing with "address in use".
import type { IPPort } from "../proto/guest-service.ts";
import { formatHostPort } from "./address.ts";
import { portKey } from "./ports.ts";
import { decide, type Decision, type RuleEntry, type RuleOrigin } from "./rules.ts";

export interface PlannedForward {
  /** `tcp 127.0.0.1:8080`: one listener per key. */
  key: string;
  protocol: string;
  hostIP: string;
  hostPort: number;
  /** The guest bind the tunnel dials. */
  guest: IPPort;
  origin: RuleOrigin;
}

export interface NotForwarded {
  port: IPPort;
  decision: Exclude<Decision, { kind: "forward" }>;
}

export interface ForwardPlan {
  forwards: Map<string, PlannedForward>;
  notForwarded: NotForwarded[];
}

/** IPv4 binds first, then by address and port, so the chosen dial target is stable. */
function compareGuestPorts(a: IPPort, b: IPPort): number {
  const v6 = (p: IPPort) => (p.ip.includes(":") ? 1 : 0);
  return v6(a) - v6(b) || portKey(a).localeCompare(portKey(b));
}

export function hostKey(protocol: string, hostIP: string, hostPort: number): string {
  return `${protocol} ${formatHostPort(hostIP, hostPort)}`;
}

export function planForwards(ports: Iterable<IPPort>, rules: RuleEntry[]): ForwardPlan {
  const forwards = new Map<string, PlannedForward>();
  const notForwarded: NotForwarded[] = [];
  for (const port of [...ports].sort(compareGuestPorts)) {
    const decision = decide(port, rules);
    if (decision.kind !== "forward") {
      notForwarded.push({ port, decision });
      continue;
    }
    const key = hostKey(port.protocol, decision.hostIP, decision.hostPort);
    if (forwards.has(key)) continue;
    forwards.set(key, {
      key,
      protocol: port.protocol,
      hostIP: decision.hostIP,
      hostPort: decision.hostPort,
      guest: port,
      origin: decision.origin,
    });
  }
  return { forwards, notForwarded };
}
