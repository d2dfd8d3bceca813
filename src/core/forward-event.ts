// What the host agent reports about each forward, as Lima's log lines or as JSON.
import { logText as q } from "./log-text.ts";
import type { RuleOrigin } from "./rules.ts";
import { formatOwner, type PortOwner } from "./port-owner.ts";

export type ForwardEventType = "forwarding" | "not-forwarding" | "stopping" | "failed";
export type AgentEventType =
  | "guest-connected"
  | "guest-disconnected"
  | "guest-unreachable"
  | "stock-guest"
  | "config-loaded"
  | "config-rejected"
  | "forwarder-selected"
  | "ssh-connected"
  | "ssh-disconnected"
  | "ssh-unreachable"
  | "path-changed"
  | "relay-selected"
  | "forward-added"
  | "forward-removed"
  | "auto-forwarding-paused"
  | "auto-forwarding-resumed"
  | "on-forward-failed"
  | "warning";

export interface ForwardEvent {
  type: ForwardEventType;
  protocol: string;
  guestAddr: string;
  hostAddr?: string;
  rule?: RuleOrigin;
  /** Why a forward failed or was not made. */
  error?: string;
  /** When a failed forward is tried again, in milliseconds. */
  retryInMs?: number;
  /** A host socket that appears in the guest (`reverse: true`). */
  reverse?: boolean;
  /** The data path new connections take: direct, fast, grpc or ssh. */
  path?: string;
  /** The rule's label. */
  label?: string;
  /** Where the forward wanted to listen, when `next-free` moved it. */
  requestedHostAddr?: string;
  /** A forward's second listener ([::1] beside 127.0.0.1): the same forward, not a new one. */
  companion?: boolean;
  /** Who holds the guest socket (a porthole guest agent says). */
  owner?: PortOwner;
}

export interface AgentEvent {
  type: AgentEventType;
  /** The guest agent's address, for guest-* events. */
  guest?: string;
  /** The config file, for config-* events. */
  file?: string;
  /** How many rules the loaded config has. */
  rules?: number;
  error?: string;
  /** For warnings. */
  message?: string;
  /** forwarder-selected: which data path carries TCP, and why. */
  forwarder?: string;
  reason?: string;
  /** ssh-connected: which path the SSH session took. */
  via?: string;
  /** guest-connected: the porthole guest agent's version and extensions, or `lima` for a stock agent. */
  version?: string;
  features?: string[];
  lima?: boolean;
  /** path-changed: the guest address (or forward's guest address) and the data path concerned. */
  address?: string;
  path?: string;
  /** path-changed: whether the path can be used now, why, and when it is tried again. */
  state?: "usable" | "unusable";
  retryInMs?: number;
}

export type HostEvent = ForwardEvent | AgentEvent;

const FORWARDER_NAMES: Record<string, string> = {
  auto: "the auto forwarder (direct by IP where it can, else porthole's data path, else gRPC)",
  fast: "porthole's data path (gRPC where it is not offered)",
  grpc: "the gRPC forwarder",
  ssh: "the SSH forwarder",
};

function isForwardEvent(e: HostEvent): e is ForwardEvent {
  return "protocol" in e;
}

/** The text form, worded as Lima's host agent logs it. */
export function formatEventText(e: HostEvent): string {
  if (!isForwardEvent(e)) {
    const why = e.error ? `: ${q(e.error)}` : "";
    switch (e.type) {
      case "guest-connected":
        return `Connected to guest agent at ${q(e.guest)}`;
      case "guest-unreachable":
        return `Waiting for guest agent at ${q(e.guest)}${why}`;
      case "stock-guest":
        return `The guest agent at ${q(e.guest)} is a stock Lima guest agent: ${q(e.message)}`;
      case "guest-disconnected":
        return `Lost guest agent at ${q(e.guest)}${why}; reconnecting`;
      case "config-loaded":
        return `Loaded ${e.rules} portForwards rule(s) from ${q(e.file)}`;
      case "config-rejected":
        return `Config ${q(e.file)} rejected, keeping the rules in force:\n${(e.error ?? "").split("\n").map(q).join("\n")}`;
      case "warning":
        return `Warning: ${q(e.message)}`;
      case "forwarder-selected":
        return `Using ${FORWARDER_NAMES[e.forwarder ?? ""] ?? q(e.forwarder)} (${q(e.reason)})${e.message ? `; ${q(e.message)}` : ""}`;
      case "ssh-connected":
        return `SSH connected to the guest over ${q(e.via)}`;
      case "ssh-disconnected":
        return `SSH connection to the guest lost${why}; reconnecting`;
      case "ssh-unreachable":
        return `Cannot reach the guest's sshd${why}; retrying`;
      case "path-changed": {
        const retry = e.retryInMs !== undefined ? `; trying it again in ${(e.retryInMs / 1000).toFixed(1)}s` : "";
        return e.state === "usable"
          ? `Using the ${e.path} path to ${e.address}: ${e.reason}`
          : `Not using the ${e.path} path to ${e.address}: ${e.reason}${retry}`;
      }
      case "relay-selected":
        return `Relay: ${e.message}`;
      case "forward-added":
        return `Added a static forward: ${q(e.message)}`;
      case "forward-removed":
        return `Removed the static forward ${q(e.message)}`;
      case "auto-forwarding-paused":
        return `Auto-forwarding paused: ${q(e.message)}`;
      case "auto-forwarding-resumed":
        return `Auto-forwarding resumed: ${q(e.message)}`;
      case "on-forward-failed":
        return `--on-forward command failed ${q(e.message)}`;
    }
  }
  const proto = q(e.protocol.toUpperCase());
  const by = e.owner ? ` (by ${q(formatOwner(e.owner))})` : "";
  switch (e.type) {
    case "forwarding":
      return e.reverse
        ? `Forwarding ${proto} from host ${q(e.hostAddr)} to guest ${q(e.guestAddr)} (reverse)`
        : `Forwarding ${proto} from ${q(e.guestAddr)} to ${q(e.hostAddr)}${e.requestedHostAddr ? ` (${q(e.requestedHostAddr)} was taken)` : ""}${e.path && e.path !== "grpc" ? ` (${q(e.path)})` : ""}${e.label ? ` [${q(e.label)}]` : ""}${by}`;
    case "stopping":
      return `Stopping forwarding ${proto} from ${q(e.guestAddr)} to ${q(e.hostAddr)}`;
    case "not-forwarding":
      return `Not forwarding ${proto} ${q(e.guestAddr)}${e.error ? ` (${q(e.error)})` : ""}${by}`;
    case "failed": {
      const retry = e.retryInMs !== undefined ? `; retrying in ${(e.retryInMs / 1000).toFixed(1)}s` : "";
      return `Failed to forward ${proto} from ${q(e.guestAddr)} to ${q(e.hostAddr)}: ${q(e.error)}${retry}`;
    }
  }
}

export function formatEventJSON(e: HostEvent, now = new Date()): string {
  return JSON.stringify({ time: now.toISOString(), ...e });
}
