// Lima's portForwards rule semantics (pkg/hostagent/port.go, pkg/limayaml/defaults.go):
// defaults, the built-in rules around the user's, and first-match-wins matching. No I/O.
import type { GuestPort } from "./ports.ts";
import { ipEquals, isUnspecified } from "./address.ts";
import { containerMatches, processMatches } from "./owner-match.ts";

export type RuleProto = "tcp" | "udp" | "any";

/** A rule with every default filled in. */
export interface Rule {
  guestIPMustBeZero: boolean;
  guestIP: string;
  guestPortRange: [number, number];
  guestSocket?: string;
  hostIP: string;
  hostPortRange: [number, number];
  hostSocket?: string;
  proto: RuleProto;
  reverse: boolean;
  ignore: boolean;
  static: boolean;
  /** porthole: idle UDP flows of this rule's forwards end after this long (ms). */
  udpIdleTimeoutMs?: number;
  /** porthole: at most this many UDP flows per forward. */
  udpMaxFlows?: number;
  /** porthole: a name shown in status and events. */
  label?: string;
  /** porthole: what to do when the host port is taken (default: the global policy). */
  onConflict?: ConflictPolicy;
  /** porthole: the rule matches only ports whose owner's command matches this glob. */
  guestProcess?: string;
  /** porthole: the rule matches only ports whose owner runs in this container (name or id). */
  guestContainer?: string;
}

/** `fail`: report and retry until the port frees up; `next-free`: take the next free port. */
export type ConflictPolicy = "fail" | "next-free";

/** A rule as written by a user: every field optional. */
export interface RuleInput {
  guestIPMustBeZero?: boolean;
  guestIP?: string;
  guestPort?: number;
  guestPortRange?: [number, number];
  guestSocket?: string;
  hostIP?: string;
  hostPort?: number;
  hostPortRange?: [number, number];
  hostSocket?: string;
  proto?: RuleProto;
  reverse?: boolean;
  ignore?: boolean;
  static?: boolean;
  /** In milliseconds (the config schema converts durations). */
  udpIdleTimeout?: number;
  udpMaxFlows?: number;
  label?: string;
  onConflict?: ConflictPolicy;
  guestProcess?: string;
  guestContainer?: string;
}

/** Which rule decided: the user's rule index, one of the built-in rules, or a forward added at run time. */
export type RuleOrigin = number | "built-in" | "runtime";

export interface RuleEntry {
  rule: Rule;
  origin: RuleOrigin;
}

export function withDefaults(input: RuleInput): Rule {
  const guestIPMustBeZero = input.guestIPMustBeZero ?? input.guestIP === "0.0.0.0";
  const guestIP = input.guestIP ?? (guestIPMustBeZero ? "0.0.0.0" : "127.0.0.1");
  const guestPortRange: [number, number] =
    input.guestPortRange ?? (input.guestPort !== undefined ? [input.guestPort, input.guestPort] : [1, 65535]);
  const hostPortRange: [number, number] =
    input.hostPortRange ?? (input.hostPort !== undefined ? [input.hostPort, input.hostPort] : [...guestPortRange]);
  return {
    guestIPMustBeZero,
    guestIP,
    guestPortRange,
    guestSocket: input.guestSocket,
    hostIP: input.hostIP ?? "127.0.0.1",
    hostPortRange,
    hostSocket: input.hostSocket,
    proto: input.proto ?? "any",
    reverse: input.reverse ?? false,
    ignore: input.ignore ?? false,
    static: input.static ?? false,
    ...(input.udpIdleTimeout !== undefined ? { udpIdleTimeoutMs: input.udpIdleTimeout } : {}),
    ...(input.udpMaxFlows !== undefined ? { udpMaxFlows: input.udpMaxFlows } : {}),
    ...(input.label !== undefined ? { label: input.label } : {}),
    ...(input.onConflict !== undefined ? { onConflict: input.onConflict } : {}),
    ...(input.guestProcess !== undefined ? { guestProcess: input.guestProcess } : {}),
    ...(input.guestContainer !== undefined ? { guestContainer: input.guestContainer } : {}),
  };
}

/**
 * The list in force: ignore rules for guest port 22 (and the host's SSH local port when
 * known), the user's rules in order, then the fallback that forwards guest loopback and
 * wildcard binds to host 127.0.0.1 on the same port.
 */
export function rulesInForce(userRules: Rule[], sshLocalPort?: number): RuleEntry[] {
  const ignorePorts = [22, ...(sshLocalPort && sshLocalPort !== 22 ? [sshLocalPort] : [])];
  const ignores = ignorePorts.map((port) =>
    withDefaults({ guestIP: "0.0.0.0", guestIPMustBeZero: false, guestPort: port, ignore: true }),
  );
  return [
    ...ignores.map((rule) => ({ rule, origin: "built-in" as const })),
    ...userRules.map((rule, i) => ({ rule, origin: i })),
    { rule: withDefaults({}), origin: "built-in" },
  ];
}

export type Decision =
  | { kind: "forward"; hostIP: string; hostPort: number; origin: RuleOrigin }
  | { kind: "forward-socket"; hostSocket: string; origin: RuleOrigin }
  | { kind: "ignore"; origin: RuleOrigin }
  | { kind: "none" };

function guestIPMatches(rule: Rule, ip: string): boolean {
  if (isUnspecified(ip)) return true;
  if (ipEquals(ip, rule.guestIP)) return true;
  if (ip === "::1" && rule.guestIP === "127.0.0.1") return true;
  return isUnspecified(rule.guestIP) && !rule.guestIPMustBeZero;
}

/** Whether a rule's owner keys hold for a port; a port whose owner is unknown matches none. */
export function ownerMatches(rule: Rule, port: GuestPort): boolean {
  if (rule.guestProcess === undefined && rule.guestContainer === undefined) return true;
  if (!port.owner) return false;
  if (rule.guestProcess !== undefined && !processMatches(rule.guestProcess, port.owner)) return false;
  return rule.guestContainer === undefined || containerMatches(rule.guestContainer, port.owner);
}

/**
 * What to tell the user when rules match on the owner but the guest agent reports none (a
 * stock Lima one, an older porthole): undefined when no rule does.
 */
export function ownerRulesUnmatchable(rules: Rule[]): string | undefined {
  const indexes = rules.flatMap((r, i) => (r.guestProcess !== undefined || r.guestContainer !== undefined ? [i] : []));
  if (!indexes.length) return undefined;
  return `portForwards rule(s) ${indexes.join(", ")} match on guestProcess or guestContainer, but the guest agent does not report who owns its ports (a stock Lima guest agent never does), so they match no port and the next rules decide; run porthole's guest agent for them to apply`;
}

/** First match wins; see lima-reference §3 for each step (porthole's owner keys come after the IP). */
export function decide(port: GuestPort, entries: RuleEntry[]): Decision {
  for (const { rule, origin } of entries) {
    if (rule.guestSocket) continue;
    if (rule.proto !== "any" && rule.proto !== port.protocol) continue;
    const [lo, hi] = rule.guestPortRange;
    if (port.port < lo || port.port > hi) continue;
    if (!guestIPMatches(rule, port.ip)) continue;
    if (!ownerMatches(rule, port)) continue;
    if (rule.ignore) {
      // A wildcard bind also listens on addresses a specific ignore rule does not name.
      if (isUnspecified(port.ip) && !isUnspecified(rule.guestIP)) continue;
      return { kind: "ignore", origin };
    }
    if (rule.hostSocket) return { kind: "forward-socket", hostSocket: rule.hostSocket, origin };
    return { kind: "forward", hostIP: rule.hostIP, hostPort: port.port - lo + rule.hostPortRange[0], origin };
  }
  return { kind: "none" };
}
