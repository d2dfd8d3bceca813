// What `porthole status` shows, and the same as Prometheus text metrics. No I/O.
import { formatOwner, type PortOwner } from "./port-owner.ts";
export interface ForwardRow {
  key?: string;
  protocol: string;
  guestAddr: string;
  hostAddr?: string;
  requestedHostAddr?: string;
  path?: string;
  rule?: number | string;
  label?: string;
  state: string;
  lastError?: string;
  reason?: string;
  since?: string;
  connections?: number;
  bytesIn?: number;
  bytesOut?: number;
  /** UDP: datagrams from clients dropped because the agent channel lagged (their flow's budget was spent). */
  datagramsDropped?: number;
  /** UDP: datagrams the native pump carried (both ways) on this forward's flows, none of them through JavaScript. */
  datagramsPumped?: number;
  reverse?: boolean;
  /** Who holds the guest socket (pid, command, user, container), where the guest agent says. */
  owner?: PortOwner;
  /** Per data path the connections of this forward really took: counts and bytes. */
  paths?: Record<string, PathTraffic>;
  /** Listens whether or not the guest does (a static rule, or added with `porthole forward add`). */
  static?: boolean;
}

/** One data path's traffic (direct, fast, grpc, ssh). */
export interface PathTraffic {
  connections: number;
  open: number;
  bytesIn: number;
  bytesOut: number;
  fallbacks: number;
  /** direct-kernel only: rewritten connections that never connected (each took the rewrite away). */
  failed?: number;
}

/** Which relay moves the bytes of forwarded connections, and what it moved. */
export interface RelayStatus {
  /** "native" (splice), "native-copy" (read/send) or "javascript". */
  mode: string;
  /** Why JavaScript relays, when it does. */
  reason?: string;
  /** Connections handed to the native relay, those open now, and the bytes it moved. */
  nativeRelays: number;
  open: number;
  bytesSpliced: number;
  bytesCopied: number;
  /**
   * Clients accepted and dialled in the relay thread (no JavaScript per connection: a forward's
   * data path or direct path). The thread tells of them, and of their ends, in batches at most
   * 5 ms late: these counts (and `open`) may lag that much.
   */
  acceptedNatively?: number;
  /** Clients accepted in the relay thread whose dial there failed (refused, unreachable…): handed back to JavaScript, which reset them or sent them on by another path. */
  acceptHandedBack?: number;
  /** How often the relay thread woke the event loop with records (a batch of them each). */
  recordReads?: number;
  /** Connections the JavaScript relay carried. */
  javascriptRelays: number;
  /** Connections the native relay ended with a reset (an error on either side). */
  resets: number;
}

export interface AgentStatus {
  agent: {
    version: string;
    pid: number;
    guest: string;
    guestConnected: boolean;
    forwarder: string;
    forwarderReason: string;
    startedAt: string;
    /** `paused` after `porthole forward pause`: guest ports are not forwarded, static forwards stay. */
    autoForwarding?: "on" | "paused";
    /** --host-ip: where forwards listen when their rule names no hostIP. */
    hostIP?: string;
    configFile?: string;
  };
  /** portDetector: how the guest agent notices ports ("port detector: ebpf (…)" or "port detector: poll …"). */
  guest: { version?: string; lima?: boolean; addresses: string[]; portDetector?: string };
  /** Per data path, for the whole agent: what connections really took. */
  paths?: Record<string, PathTraffic>;
  forwards: ForwardRow[];
  notForwarded: ForwardRow[];
  events: Record<string, number>;
  relay?: RelayStatus;
}

function bytes(n = 0): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function since(iso: string | undefined, now: number): string {
  if (!iso) return "";
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${Math.round(s / 3600)}h`;
}

/** A readable table: one line per forward, then the ports not forwarded. */
export function formatStatusTable(status: AgentStatus, now = Date.now()): string {
  const a = status.agent;
  const lines = [
    `porthole host agent ${a.version} (pid ${a.pid}), guest ${a.guest}: ${a.guestConnected ? "connected" : "not connected"}; ${a.forwarder} forwarder (${a.forwarderReason})`,
  ];
  if (a.autoForwarding === "paused") lines.push("auto-forwarding: PAUSED (guest ports are not forwarded; static forwards stay; porthole forward resume turns it back on)");
  if (a.hostIP) lines.push(`host IP: ${a.hostIP} (where forwards listen unless their rule says otherwise)`);
  if (status.guest.lima) lines.push("guest agent: stock Lima (gRPC tunnels only: no data path or direct path, a guest EOF ends the connection, no reverse sockets)");
  if (status.guest.portDetector) lines.push(`guest ${status.guest.portDetector}`);
  if (status.guest.addresses.length) lines.push(`guest addresses: ${status.guest.addresses.join(", ")} (reachable by IP where the network allows)`);
  const header = ["PROTO", "GUEST", "HOST", "STATE", "PATH", "RULE", "OWNER", "CONNS", "IN", "OUT", "SINCE", "NOTE"];
  const rows = [...status.forwards, ...status.notForwarded].map((f) => [
    f.protocol,
    f.guestAddr,
    f.hostAddr ?? "",
    f.state,
    f.path ?? "",
    `${f.rule ?? ""}${f.label ? ` (${f.label})` : ""}${f.static ? " static" : ""}`,
    formatOwner(f.owner),
    f.connections === undefined ? "" : String(f.connections),
    f.bytesIn === undefined ? "" : bytes(f.bytesIn),
    f.bytesOut === undefined ? "" : bytes(f.bytesOut),
    since(f.since, now),
    f.lastError ?? f.reason ?? (f.requestedHostAddr ? `${f.requestedHostAddr} was taken` : f.reverse ? "reverse" : f.datagramsDropped ? `${f.datagramsDropped} datagrams dropped (agent channel or agent lagged)` : ""),
  ]);
  if (!rows.length) return [...lines, "no forwards"].join("\n");
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  return [...lines, "", fmt(header), ...rows.map(fmt)].join("\n");
}

function labels(l: Record<string, string | undefined>): string {
  return Object.entries(l)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}="${String(v).replace(/["\\\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`))}"`)
    .join(",");
}

/** Prometheus text exposition format (version 0.0.4). */
export function formatMetrics(status: AgentStatus): string {
  const out: string[] = [];
  const metric = (name: string, type: string, help: string, samples: [Record<string, string | undefined>, number][]) => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [l, v] of samples) out.push(`${name}${Object.keys(l).length ? `{${labels(l)}}` : ""} ${v}`);
  };
  const id = (f: ForwardRow) => ({ protocol: f.protocol, host: f.hostAddr, guest: f.guestAddr, label: f.label });
  metric("porthole_guest_connected", "gauge", "1 while the host agent is connected to the guest agent.", [[{}, status.agent.guestConnected ? 1 : 0]]);
  const states = ["forwarding", "failed", "waiting", "not-forwarding"];
  const rows = [...status.forwards, ...status.notForwarded];
  metric("porthole_forwards", "gauge", "Forwards by state.", states.map((s) => [{ state: s }, rows.filter((f) => f.state === s).length]));
  metric("porthole_connections_open", "gauge", "Open connections (or UDP flows) per forward.", status.forwards.map((f) => [id(f), f.connections ?? 0]));
  metric("porthole_bytes_total", "counter", "Bytes carried per forward; in = client to guest, out = guest to client.", status.forwards.flatMap((f) => [
    [{ ...id(f), direction: "in" }, f.bytesIn ?? 0] as [Record<string, string | undefined>, number],
    [{ ...id(f), direction: "out" }, f.bytesOut ?? 0] as [Record<string, string | undefined>, number],
  ]));
  metric("porthole_udp_datagrams_dropped_total", "counter", "UDP datagrams from clients dropped because the agent channel lagged (the flow's budget was spent) or the host agent read its socket too late (the kernel dropped them).", status.forwards.filter((f) => f.datagramsDropped !== undefined).map((f) => [id(f), f.datagramsDropped!]));
  metric("porthole_path_connections_total", "counter", "Connections by the data path they really took (direct, fast, grpc, ssh).", Object.entries(status.paths ?? {}).map(([path, t]) => [{ path }, t.connections]));
  metric("porthole_path_fallbacks_total", "counter", "Connections that could not take a data path and went by another.", Object.entries(status.paths ?? {}).map(([path, t]) => [{ path }, t.fallbacks]));
  metric("porthole_path_bytes_total", "counter", "Bytes by data path; in = client to guest, out = guest to client.", Object.entries(status.paths ?? {}).flatMap(([path, t]) => [
    [{ path, direction: "in" }, t.bytesIn] as [Record<string, string | undefined>, number],
    [{ path, direction: "out" }, t.bytesOut] as [Record<string, string | undefined>, number],
  ]));
  metric("porthole_events_total", "counter", "Events by type since the agent started.", Object.entries(status.events).map(([type, n]) => [{ type }, n]));
  return `${out.join("\n")}\n`;
}
