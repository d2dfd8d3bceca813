// From the guest's ports and the rules to the host listeners that should exist.
// Several guest binds can map to one host address (guest 0.0.0.0:P and [::]:P both go to
// host 127.0.0.1:P): they share one listener instead of failing with "address in use".
import type { IPPort } from "../proto/guest-service.ts";
import { formatHostPort } from "./address.ts";
import { portKey } from "./ports.ts";
import { decide, type Decision, type Rule, type RuleEntry, type RuleOrigin } from "./rules.ts";

export type HostTarget = { kind: "tcp"; ip: string; port: number } | { kind: "unix"; path: string };

export interface PlannedForward {
  /** `tcp 127.0.0.1:8080` or `tcp unix:/path`: one listener per key. */
  key: string;
  protocol: string;
  host: HostTarget;
  /** The guest address the tunnel dials. */
  guest: IPPort;
  origin: RuleOrigin;
  /** From a `static: true` rule: wanted whether or not the guest listens. */
  static: boolean;
  /** The `::1` listener beside a `127.0.0.1` one: dropped where the host has no IPv6. */
  companion: boolean;
}

export interface NotForwarded {
  port: IPPort;
  decision: Exclude<Decision, { kind: "forward" | "forward-socket" }>;
}

export interface ForwardPlan {
  forwards: Map<string, PlannedForward>;
  notForwarded: NotForwarded[];
}

export interface PlanOptions {
  /** A forward to host 127.0.0.1 also listens on ::1. */
  ipv6Loopback: boolean;
}

export function formatHostTarget(t: HostTarget): string {
  return t.kind === "tcp" ? formatHostPort(t.ip, t.port) : t.path;
}

export function forwardKey(protocol: string, t: HostTarget): string {
  return `${protocol} ${t.kind === "tcp" ? formatHostPort(t.ip, t.port) : `unix:${t.path}`}`;
}

/** IPv4 binds first, then by address and port, so the chosen dial target is stable. */
function compareGuestPorts(a: IPPort, b: IPPort): number {
  const v6 = (p: IPPort) => (p.ip.includes(":") ? 1 : 0);
  return v6(a) - v6(b) || portKey(a).localeCompare(portKey(b));
}

function inRange(rule: Rule, port: IPPort): boolean {
  return (rule.proto === "any" || rule.proto === port.protocol) && port.port >= rule.guestPortRange[0] && port.port <= rule.guestPortRange[1];
}

/** Static rules forward every port of their range; the guest side dials the rule's guest IP. */
function* staticForwards(rules: RuleEntry[]): Generator<{ guest: IPPort; host: HostTarget; origin: RuleOrigin }> {
  for (const { rule, origin } of rules) {
    if (!rule.static || rule.ignore || rule.guestSocket || rule.proto === "udp") continue;
    const dialIP = rule.guestIP === "0.0.0.0" ? "127.0.0.1" : rule.guestIP === "::" ? "::1" : rule.guestIP;
    const [lo, hi] = rule.guestPortRange;
    for (let port = lo; port <= hi; port++) {
      const host: HostTarget = rule.hostSocket
        ? { kind: "unix", path: rule.hostSocket }
        : { kind: "tcp", ip: rule.hostIP, port: port - lo + rule.hostPortRange[0] };
      yield { guest: { protocol: "tcp", ip: dialIP, port }, host, origin };
    }
  }
}

export function planForwards(ports: Iterable<IPPort>, rules: RuleEntry[], options: PlanOptions): ForwardPlan {
  const forwards = new Map<string, PlannedForward>();
  const notForwarded: NotForwarded[] = [];
  const add = (guest: IPPort, host: HostTarget, origin: RuleOrigin, isStatic: boolean) => {
    const targets: [HostTarget, boolean][] = [[host, false]];
    if (options.ipv6Loopback && host.kind === "tcp" && host.ip === "127.0.0.1") targets.push([{ ...host, ip: "::1" }, true]);
    for (const [target, companion] of targets) {
      const key = forwardKey(guest.protocol, target);
      if (!forwards.has(key)) forwards.set(key, { key, protocol: guest.protocol, host: target, guest, origin, static: isStatic, companion });
    }
  };

  for (const { guest, host, origin } of staticForwards(rules)) add(guest, host, origin, true);
  const staticRules = rules.filter(({ rule }) => rule.static && !rule.ignore && !rule.guestSocket);
  for (const port of [...ports].sort(compareGuestPorts)) {
    if (staticRules.some(({ rule }) => inRange(rule, port))) continue; // the static forward covers it
    const decision = decide(port, rules);
    if (decision.kind === "forward") add(port, { kind: "tcp", ip: decision.hostIP, port: decision.hostPort }, decision.origin, false);
    else if (decision.kind === "forward-socket") add(port, { kind: "unix", path: decision.hostSocket }, decision.origin, false);
    else notForwarded.push({ port, decision });
  }
  return { forwards, notForwarded };
}
