// Sets of guest ports (IPPort) and the diffs that GetEvents streams.
import type { IPPort } from "../proto/guest-service.ts";
import type { PortOwner } from "./port-owner.ts";
import { formatHostPort, isIP } from "./address.ts";

/** A guest port as the host and the watcher hold it: Lima's IPPort and, where known, its owner. */
export interface GuestPort extends IPPort {
  owner?: PortOwner;
}

export function portKey(p: IPPort): string {
  return `${p.protocol} ${formatHostPort(p.ip, p.port)}`;
}

export type PortSet = Map<string, GuestPort>;

export function toPortSet(ports: Iterable<GuestPort>): PortSet {
  const set: PortSet = new Map();
  for (const p of ports) set.set(portKey(p), p);
  return set;
}

export interface PortDiff {
  added: GuestPort[];
  removed: GuestPort[];
}

export function diffPorts(before: PortSet, after: PortSet): PortDiff {
  const added = [...after].filter(([k]) => !before.has(k)).map(([, p]) => p);
  const removed = [...before].filter(([k]) => !after.has(k)).map(([, p]) => p);
  return { added, removed };
}

export function isEmptyDiff(d: PortDiff): boolean {
  return d.added.length === 0 && d.removed.length === 0;
}

/** Applies a diff in place. */
export function applyDiff(set: PortSet, d: PortDiff): void {
  for (const p of d.removed) set.delete(portKey(p));
  for (const p of d.added) set.set(portKey(p), p);
}

/** The longest IPv6 text (45 characters) with a zone of an interface name (at most 15). */
const MAX_IP_TEXT = 45 + 1 + 15;
/** An IPv6 zone as a guest's interface names it (the runtimes' isIPv6 takes any text after "%"). */
const ZONE = /%[0-9A-Za-z_.-]{1,15}$/;

/** A guest's value in an error message: quoted, and cut short (the guest chooses its length). */
function shown(value: unknown): string {
  const text = String(value);
  return text.length > 64 ? `${JSON.stringify(text.slice(0, 64))}… (${text.length} characters)` : JSON.stringify(text);
}

/** Why a port the guest reported cannot be used, or undefined if it can. */
export function invalidGuestPort(p: IPPort): string | undefined {
  if (p.protocol !== "tcp" && p.protocol !== "udp") return `protocol ${shown(p.protocol)} is not tcp or udp`;
  if (typeof p.ip !== "string" || p.ip.length > MAX_IP_TEXT || !isIP(p.ip) || (p.ip.includes("%") && !ZONE.test(p.ip))) return `${shown(p.ip)} is not an IP address`;
  if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) return `${p.port} is not a port (1-65535)`;
  return undefined;
}

/** More distinct guest ports than any real guest has: the rest are ignored (memory stays bounded). */
export const MAX_GUEST_PORTS = 10_000;
