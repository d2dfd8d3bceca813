// From the guest's ports and the rules to the host listeners that should exist.
// Several guest binds can map to one host address (guest 0.0.0.0:P and [::]:P both go to
// host 127.0.0.1:P): they share one listener instead of failing with "address in use".
import type { GuestPort } from "./ports.ts";
import { formatHostPort } from "./address.ts";
import type { UdpSettings } from "./config.ts";
import type { PortOwner } from "./port-owner.ts";
import { decide, type ConflictPolicy, type Rule, type RuleEntry, type RuleOrigin } from "./rules.ts";

export type HostTarget = { kind: "tcp"; ip: string; port: number } | { kind: "unix"; path: string };

/** How the tunnel reaches the guest: a TCP or UDP port, or a unix socket path. */
export type TunnelProtocol = "tcp" | "udp" | "unix";

export interface PlannedForward {
  /** `tcp 127.0.0.1:8080`, `udp [::1]:53` or `unix unix:/path`: one listener per key. */
  key: string;
  protocol: TunnelProtocol;
  host: HostTarget;
  /** What the guest dials: `127.0.0.1:8080`, `[::1]:53` or `/var/run/docker.sock`. */
  guestAddr: string;
  origin: RuleOrigin;
  /** From a `static: true` or `guestSocket` rule: wanted whether or not the guest listens. */
  static: boolean;
  /**
   * A `127.0.0.1` forward also listens on `[::1]` at the same port: the two stand or fall
   * together (a client resolving localhost to ::1 must not reach the guest while 127.0.0.1
   * is another program's), except where the host has no IPv6, where IPv4 serves alone.
   */
  ipv6Companion: boolean;
  /** For UDP forwards: flow limits from the rule, else the global settings. */
  udp: UdpSettings;
  /** The rule's label, for status and events. */
  label?: string;
  onConflict: ConflictPolicy;
  /** Who holds the guest socket, where the guest agent said (not for static or socket forwards). */
  owner?: PortOwner;
}

/** `reverse: true`: a host unix socket that appears in the guest. */
export interface PlannedReverse {
  key: string;
  guestSocket: string;
  hostSocket: string;
  origin: RuleOrigin;
}

export interface NotForwarded {
  port: GuestPort;
  reason: string;
  origin?: RuleOrigin;
}

export interface ForwardPlan {
  forwards: Map<string, PlannedForward>;
  reverses: Map<string, PlannedReverse>;
  notForwarded: NotForwarded[];
  /** Guest ports left out by maxForwards. */
  overCap: number;
}

export interface PlanOptions {
  /** A forward to host 127.0.0.1 also listens on ::1. */
  ipv6Loopback: boolean;
  /** Flow limits for UDP forwards whose rule sets none. */
  udp: UdpSettings;
  /** Why UDP cannot be forwarded right now (SSH mode with the agent channel down), if so. */
  udpUnavailable?: string;
  /** The policy for rules that set none. */
  onConflict?: ConflictPolicy;
  /**
   * At most this many forwards from guest ports (static forwards count, but are always made),
   * and why, for the ports over it: each forward holds up to two listening sockets, and the
   * host's open-files limit must leave room for connections.
   */
  maxForwards?: { count: number; reason: string };
  /** Auto-forwarding is paused (`porthole forward pause`), and what to tell the user: guest ports are not forwarded, static forwards stay. */
  paused?: string;
}

/** The DHCP client's port: a long-lived, unconnected UDP socket that is no server. */
const DHCP_CLIENT_PORT = 68;

export function formatHostTarget(t: HostTarget): string {
  return t.kind === "tcp" ? formatHostPort(t.ip, t.port) : t.path;
}

function forwardKey(protocol: TunnelProtocol, t: HostTarget): string {
  return `${protocol} ${t.kind === "tcp" ? formatHostPort(t.ip, t.port) : `unix:${t.path}`}`;
}


/** IPv4 binds first, then by address and port, so the chosen dial target is stable. */
function compareGuestPorts(a: GuestPort, b: GuestPort): number {
  const v6 = (p: GuestPort) => (p.ip.includes(":") ? 1 : 0);
  return v6(a) - v6(b) || a.protocol.localeCompare(b.protocol) || a.ip.localeCompare(b.ip) || a.port - b.port;
}

function protocolsOf(rule: Rule): ("tcp" | "udp")[] {
  return rule.proto === "any" ? ["tcp", "udp"] : [rule.proto];
}

function inStaticRange(rule: Rule, port: GuestPort): boolean {
  return protocolsOf(rule).includes(port.protocol as "tcp" | "udp") && port.port >= rule.guestPortRange[0] && port.port <= rule.guestPortRange[1];
}

/**
 * Who owns the guest socket that a static forward (a rule, or `porthole forward add`) dials at
 * ip:port, where the guest reports it: a socket on that address, else one on the wildcard of its
 * family (0.0.0.0 or ::) that also answers there.
 */
function staticOwner(ports: GuestPort[], protocol: TunnelProtocol, ip: string, port: number): PortOwner | undefined {
  const candidates = ports.filter((p) => p.owner && p.protocol === protocol && p.port === port);
  const wildcard = ip.includes(":") ? "::" : "0.0.0.0";
  return (candidates.find((p) => p.ip === ip) ?? candidates.find((p) => p.ip === wildcard || p.ip === "::"))?.owner;
}

export function planForwards(guestPorts: Iterable<GuestPort>, rules: RuleEntry[], options: PlanOptions): ForwardPlan {
  const ports = [...guestPorts];
  const forwards = new Map<string, PlannedForward>();
  const reverses = new Map<string, PlannedReverse>();
  const notForwarded: NotForwarded[] = [];
  let overCap = 0;
  /** Adds a forward (or joins one to the same host address); false if the cap leaves it out. */
  const add = (protocol: TunnelProtocol, guestAddr: string, host: HostTarget, entry: RuleEntry, isStatic: boolean, owner?: PortOwner | null): boolean => {
    if (protocol === "udp" && options.udpUnavailable) return true;
    const udp = {
      idleTimeoutMs: entry.rule.udpIdleTimeoutMs ?? options.udp.idleTimeoutMs,
      maxFlows: entry.rule.udpMaxFlows ?? options.udp.maxFlows,
    };
    const key = forwardKey(protocol, host);
    if (forwards.has(key)) return true;
    if (!isStatic && options.maxForwards && forwards.size >= options.maxForwards.count) return false;
    const ipv6Companion = options.ipv6Loopback && host.kind === "tcp" && host.ip === "127.0.0.1";
    const onConflict = entry.rule.onConflict ?? options.onConflict ?? "fail";
    forwards.set(key, { key, protocol, host, guestAddr, origin: entry.origin, static: isStatic, ipv6Companion, udp, onConflict, ...(entry.rule.label ? { label: entry.rule.label } : {}), ...(owner ? { owner } : {}) });
    return true;
  };
  const addGuestPort = (port: GuestPort, ...args: Parameters<typeof add>) => {
    if (add(...args)) return;
    overCap++;
    notForwarded.push({ port, reason: options.maxForwards!.reason });
  };

  // Unix socket rules and static rules hold from start-up, whatever the guest reports.
  for (const entry of rules) {
    const { rule } = entry;
    if (rule.ignore) continue;
    if (rule.guestSocket) {
      if (rule.reverse) {
        const key = `reverse ${rule.guestSocket}`;
        reverses.set(key, { key, guestSocket: rule.guestSocket, hostSocket: rule.hostSocket!, origin: entry.origin });
        continue;
      }
      const host: HostTarget = rule.hostSocket ? { kind: "unix", path: rule.hostSocket } : { kind: "tcp", ip: rule.hostIP, port: rule.hostPortRange[0] };
      add("unix", rule.guestSocket, host, entry, true);
      continue;
    }
    if (!rule.static) continue;
    const dialIP = rule.guestIP === "0.0.0.0" ? "127.0.0.1" : rule.guestIP === "::" ? "::1" : rule.guestIP;
    const [lo, hi] = rule.guestPortRange;
    for (const protocol of protocolsOf(rule)) {
      if (protocol === "udp" && rule.hostSocket) continue; // a stream socket cannot carry datagrams
      for (let port = lo; port <= hi; port++) {
        const host: HostTarget = rule.hostSocket
          ? { kind: "unix", path: rule.hostSocket }
          : { kind: "tcp", ip: rule.hostIP, port: port - lo + rule.hostPortRange[0] };
        add(protocol, formatHostPort(dialIP, port), host, entry, true, staticOwner(ports, protocol, dialIP, port));
      }
    }
  }

  // A static rule covers its guest ports (Lima); a forward added at run time is one more way in, not a rule over them.
  const dynamicRules = rules.filter(({ origin }) => origin !== "runtime");
  const staticRules = rules.filter(({ rule, origin }) => rule.static && !rule.ignore && !rule.guestSocket && origin !== "runtime");
  for (const port of ports.sort(compareGuestPorts)) {
    if (staticRules.some(({ rule }) => inStaticRange(rule, port))) continue; // the static forward covers it
    if (options.paused) {
      notForwarded.push({ port, reason: options.paused });
      continue;
    }
    const decision = decide(port, dynamicRules);
    const guestAddr = formatHostPort(port.ip, port.port);
    const entry = (origin: RuleOrigin) => rules.find((r) => r.origin === origin)!;
    switch (decision.kind) {
      case "forward":
        if (port.protocol === "udp" && options.udpUnavailable) {
          notForwarded.push({ port, reason: options.udpUnavailable });
          break;
        }
        // Which UDP sockets are servers the guest decides (connected ones and short-lived ones
        // are not reported); only the DHCP client's port is known to be none. A user's rule
        // forwards it anyway.
        if (decision.origin === "built-in" && port.protocol === "udp" && port.port === DHCP_CLIENT_PORT) {
          notForwarded.push({ port, reason: "the DHCP client's port" });
          break;
        }
        addGuestPort(port, port.protocol as TunnelProtocol, guestAddr, { kind: "tcp", ip: decision.hostIP, port: decision.hostPort }, entry(decision.origin), false, port.owner);
        break;
      case "forward-socket":
        if (port.protocol === "tcp") addGuestPort(port, "tcp", guestAddr, { kind: "unix", path: decision.hostSocket }, entry(decision.origin), false, port.owner);
        else notForwarded.push({ port, reason: "no rule matches" }); // a stream socket cannot carry datagrams
        break;
      case "ignore":
        notForwarded.push({ port, reason: "ignored by rule", origin: decision.origin });
        break;
      case "none":
        notForwarded.push({ port, reason: "no rule matches" });
    }
  }
  // A forward of its own to [::1]:P wins over another's companion there (one listener per address).
  for (const f of forwards.values()) {
    if (f.ipv6Companion && f.host.kind === "tcp" && forwards.has(forwardKey(f.protocol, { ...f.host, ip: "::1" }))) f.ipv6Companion = false;
  }
  return { forwards, reverses, notForwarded, overCap };
}

