// How the watcher finds listening sockets: netlink sock_diag through the native shim (a
// LISTEN-only dump costs ~0.1 ms even with 10,000 established sockets, and destroy events
// report a close within a millisecond), or /proc/net where the shim cannot load. What tells
// it to look (the detector): kernel events (eBPF, kernel-events.ts) with a slow safety
// re-scan, or polling where those cannot run.
import { closedListeners, DIAG_RECORD_BYTES, diagRecordsToPorts, diagRecordsToSockets, parseDiagRecords } from "../core/diag-record.ts";
import type { NativeShim } from "../runtime/native-api.ts";
import { readFd, type FdReader } from "../runtime/fd-socket.ts";
import { fdLimitHint } from "../runtime/fd-limit.ts";
import { loadNative } from "../runtime/native.ts";
import { scanProcNet, type ScanResult } from "./watcher.ts";
import { EVENT_TCP, EVENT_UDP, startKernelEvents, type EventBatch, type KernelEvents } from "./kernel-events.ts";

export interface Scanner {
  name: string;
  scan(): Promise<ScanResult>;
  /** The sockets on one local port only (where the scanner can ask for that); families: 1 IPv4, 2 IPv6, 3 both. */
  scanPort?(protocol: "tcp" | "udp", port: number, families: number): ScanResult;
  /** The listener or unconnected UDP socket a packet to addr:port reaches (one hash lookup in the kernel; addr 16 bytes). */
  scanSocket?(protocol: "tcp" | "udp", family: 4 | 6, addr: Uint8Array, port: number): ScanResult;
  /**
   * Calls `onChange` soon after a socket may have opened or closed, where the scanner can
   * tell: the ports named (look at those), and the protocols to scan whole; returns a stop.
   */
  watchChanges?(onChange: (change: EventBatch) => void): () => void;
}

/** Which detector tells the watcher to look, and why that one. */
export interface Detector {
  /** "ebpf" (kernel events) or "poll". */
  name: "ebpf" | "poll";
  /** How often the watcher scans: the safety re-scan with events, the poll without. */
  intervalMs: number;
  /** One plain sentence: what runs and, for polling, why and what to do. */
  description: string;
}

export type DetectorChoice = "auto" | "ebpf" | "poll";
export const DETECTOR_CHOICES: DetectorChoice[] = ["auto", "ebpf", "poll"];
/** With kernel events, a full scan this often catches anything they missed (a UDP socket bound by sendto(), say). */
export const SAFETY_RESCAN_MS = 5000;
const NETLINK_POLL_MS = 50;
const PROC_POLL_MS = 500;

const MAX_RECORDS = 65536;
/** UDP is dumped on every UDP_EVERY-th scan (and after any close). */
const UDP_EVERY = 5;
/** Where the runtime cannot watch the netlink socket: how often to look for destroy events. */
const EVENT_POLL_MS = 10;
/** A destroy-event subscription the runtime drops more often than this is polled instead. */
const MAX_RENEWALS = 10;
const RENEWAL_WINDOW_MS = 1000;

export function procNetScanner(dir = "/proc/net"): Scanner {
  return { name: `/proc/net (${dir})`, scan: () => scanProcNet(dir) };
}

/**
 * `log`: where an overrun of the destroy events is said (once, and again if it turns to
 * polling). `destroyEvents`: "off" where they are not to be watched, "bpf-closes" where the
 * BPF programs report listeners' closes because the first try to subscribe was refused.
 */
export function netlinkScanner(shim: NativeShim, events?: KernelEvents, log: (line: string) => void = () => {}, destroyEvents: DestroyEvents = "on"): Scanner {
  // Small to start (a large buffer costs on every call) and grown when a dump overflows it.
  let buf = new Uint8Array(1024 * DIAG_RECORD_BYTES);
  const last: { tcp: Buffer; udp: Buffer } = { tcp: Buffer.alloc(0), udp: Buffer.alloc(0) };
  let lastPorts: ScanResult["ports"] = [];
  let lastSockets: ScanResult["sockets"] = new Map();
  let scans = 0;
  let udpDue = true;
  /** A port was looked at alone since the last full dump: the next one is news whatever its bytes. */
  let stale = false;
  const one = new Uint8Array(64 * DIAG_RECORD_BYTES);
  /** One protocol's dump as bytes (a copy), or the error. */
  const dump = (protocols: number): Buffer | string => {
    let n = shim.diagListeners(buf, buf.length, protocols);
    // Only a negative result is an errno: 105 records are not ENOBUFS (whose number is 105).
    while (n < 0 && shim.errnoName(n) === "ENOBUFS" && buf.length < MAX_RECORDS * DIAG_RECORD_BYTES) {
      buf = new Uint8Array(buf.length * 4);
      n = shim.diagListeners(buf, buf.length, protocols);
    }
    if (n < 0) return `sock_diag dump: ${shim.errnoName(n)} (${shim.strerror(n)})`;
    return Buffer.from(buf.subarray(0, n * DIAG_RECORD_BYTES));
  };
  return {
    name: events ? "netlink sock_diag on kernel events" : "netlink sock_diag",
    scan: async () => {
      // TCP every scan; UDP (whose dump walks the whole UDP table) every UDP_EVERY scans, and
      // at once after a socket closed.
      const withUdp = udpDue || ++scans % UDP_EVERY === 0;
      udpDue = false;
      const tcp = dump(1);
      const udp = withUdp ? dump(2) : last.udp;
      const error = [tcp, udp].find((d): d is string => typeof d === "string");
      if (error) return { ports: [], errors: [error] };
      // The kernel walks its tables in a stable order: the same bytes mean the same sockets,
      // and an idle guest costs a dump and a memcmp per scan, not a thousand objects.
      if (!stale && (tcp as Buffer).equals(last.tcp) && (udp as Buffer).equals(last.udp)) return { ports: lastPorts, sockets: lastSockets, errors: [], unchanged: true };
      stale = false;
      last.tcp = tcp as Buffer;
      last.udp = udp as Buffer;
      const both = Buffer.concat([last.tcp, last.udp]);
      const records = parseDiagRecords(both, both.length / DIAG_RECORD_BYTES);
      lastPorts = diagRecordsToPorts(records);
      lastSockets = diagRecordsToSockets(records);
      return { ports: lastPorts, sockets: lastSockets, errors: [] };
    },
    scanPort(protocol, port, families) {
      const n = shim.diagPort(one, one.length, protocol === "tcp" ? 1 : 2, port, families);
      if (n < 0) return { ports: [], errors: [`sock_diag dump of port ${port}: ${shim.errnoName(n)} (${shim.strerror(n)})`] };
      stale = true;
      // The next full scan must carry this protocol's dump, not the copy from before.
      if (protocol === "udp") udpDue = true;
      const records = parseDiagRecords(one, n);
      return { ports: diagRecordsToPorts(records), sockets: diagRecordsToSockets(records), errors: [] };
    },
    scanSocket(protocol, family, addr, port) {
      const n = shim.diagSocket(one, one.length, protocol === "tcp" ? 1 : 2, family === 4 ? 2 : 10, addr, port);
      if (n < 0) return { ports: [], errors: [`sock_diag lookup of port ${port}: ${shim.errnoName(n)} (${shim.strerror(n)})`] };
      stale = true;
      if (protocol === "udp") udpDue = true;
      if (n === 0) return { ports: [], sockets: new Map(), errors: [] };
      const records = parseDiagRecords(one, n);
      return { ports: diagRecordsToPorts(records), sockets: diagRecordsToSockets(records), errors: [] };
    },
    watchChanges(notify) {
      // A whole TCP scan is every scan; a whole UDP one needs the UDP dump too.
      const onBatch = (batch: EventBatch) => {
        if (batch.whole & EVENT_UDP) udpDue = true;
        notify(batch);
      };
      const stopEvents = events?.watch(onBatch);
      const stopCloses = destroyEvents === "off" ? () => {} : watchDestroyEvents(shim, onBatch, log, destroyEvents === "bpf-closes");
      return () => {
        stopCloses();
        stopEvents?.();
      };
    },
  };
}

/**
 * The socket-destroy multicast groups, one socket per protocol (so an event says TCP or UDP),
 * watched by the event loop (or polled where it cannot): a closed listener or unconnected UDP
 * socket names its port (looked at alone, if the state has a socket there); connected
 * sockets closing (every forwarded connection) are skipped; anything unreadable means scan
 * that protocol whole, and so does an overrun (after which a fresh subscription is watched).
 */
function watchDestroyEvents(shim: NativeShim, onBatch: (batch: EventBatch) => void, log: (line: string) => void, bpfCloses: boolean): () => void {
  let overrunSaid = false;
  const stops = (["tcp", "udp"] as const).map((protocol) => {
    const whole = protocol === "tcp" ? EVENT_TCP : EVENT_UDP;
    const onClose = () => onBatch({ ports: [], whole });
    let stopped = false;
    let stopCurrent = () => {};
    const renewals: number[] = [];
    const unsubscribed = (err: number) => {
      const name = shim.errnoName(err);
      const noticed =
        protocol === "tcp" && bpfCloses
          ? "a closed TCP listener is reported by the BPF program instead"
          : `a closed ${protocol.toUpperCase()} port is noticed by the next re-scan instead of at once`;
      const todo =
        name === "EMFILE" || name === "ENFILE"
          ? fdLimitHint()
          : "check that the agent runs as root with the inet_diag module loaded";
      log(`degraded: the kernel refused a subscription to ${protocol.toUpperCase()} socket-destroy events (${name}: ${shim.strerror(err)}), so ${noticed}; ${todo}`);
    };
    const subscribe = (): void => {
      // 4: connected sockets' closes (every connection the guest closes) are dropped in the kernel.
      const fd = shim.diagSubscribeTo(whole | 4);
      if (fd < 0) return unsubscribed(fd);
      // The runtime's event loop watches the netlink socket like any socket. Where the runtime
      // will not adopt the fd (or keeps dropping it), poll it instead.
      let reader: FdReader;
      try {
        reader = readFd(fd, {
          data: (chunk) => {
            const closed = closedListeners(chunk);
            if (!closed) return onClose();
            if (!closed.length) return;
            onBatch({ ports: closed.map((c) => ({ protocol, port: c.port, families: c.family === 4 ? 1 : 2, closeOnly: true })), whole: 0 });
          },
          end: () => overrun(),
        });
      } catch (err) {
        stopCurrent = pollEvents(shim, fd, onClose);
        return log(
          `degraded: this runtime cannot watch the ${protocol.toUpperCase()} socket-destroy events (${(err as Error).message}), ` +
            `so the agent reads them every ${EVENT_POLL_MS} ms (more CPU while idle); the porthole binary (Bun) watches them by events`,
        );
      }
      stopCurrent = () => reader.close();
    };
    const overrun = (): void => {
      if (stopped) return;
      // The runtime closed that fd: a burst of closes overran the socket (ENOBUFS). Something
      // closed, so scan this protocol whole once, and go on with a fresh subscription, still
      // watched by the event loop (never the old fd number again: it may be another socket's
      // by now). A poll in its place would cost a wake-up every 10 ms and a whole scan per
      // close from then on: a tenth of a core under a churn of binds.
      onClose();
      const now = Date.now();
      while (renewals.length && now - renewals[0]! > RENEWAL_WINDOW_MS) renewals.shift();
      renewals.push(now);
      if (renewals.length <= MAX_RENEWALS) {
        if (!overrunSaid) {
          overrunSaid = true;
          log(
            `port detector: a burst of ${protocol.toUpperCase()} socket closes overran the kernel's destroy events; the agent ` +
              "scanned for them whole and watches a fresh subscription (said once; nothing to do)",
          );
        }
        return subscribe();
      }
      const fresh = shim.diagSubscribeTo(whole | 4);
      if (fresh < 0) return unsubscribed(fresh);
      stopCurrent = pollEvents(shim, fresh, onClose);
      log(
        `degraded: ${protocol.toUpperCase()} socket closes overran the kernel's destroy events more than ${MAX_RENEWALS} times ` +
          `in a second, so the agent now reads them every ${EVENT_POLL_MS} ms and scans ${protocol.toUpperCase()} whole on ` +
          "every close (more CPU under a churn of ports); restart the agent to watch them by events again",
      );
    };
    subscribe();
    return () => {
      stopped = true;
      stopCurrent();
    };
  });
  return () => stops.forEach((stop) => stop());
}

function pollEvents(shim: NativeShim, fd: number, onClose: () => void): () => void {
  const events = new Uint8Array(1024 * DIAG_RECORD_BYTES);
  const timer = setInterval(() => {
    if (shim.diagReadEvents(fd, events, events.length) > 0) onClose();
  }, EVENT_POLL_MS);
  timer.unref?.();
  return () => {
    clearInterval(timer);
    shim.close(fd);
  };
}

/**
 * netlink where the shim loads (checked with a real dump), else /proc/net, saying once, in
 * plain words, what that costs and what to do; and the detector: kernel events where the BPF
 * programs load (auto, ebpf), else polling (saying why). The agent serves either way.
 */
export async function bestScanner(log: (line: string) => void, choice: DetectorChoice = "auto"): Promise<{ scanner: Scanner; detector: Detector }> {
  const { shim, error } = await loadNative();
  if (shim) {
    const probe = await netlinkScanner(shim).scan();
    if (!probe.errors.length) {
      if (choice === "poll") return { scanner: netlinkScanner(shim, undefined, log), detector: polling(NETLINK_POLL_MS, "--detector poll was given") };
      // Closes come as socket-destroy events where those can be had; the BPF programs report
      // listeners' closes only where they cannot (two reports of one close cost two wake-ups).
      const destroy = destroyEventsHere(shim);
      const started = startKernelEvents(shim, destroy.mode !== "on");
      if (started.events) {
        const closes = destroy.why
          ? `listeners' closes through BPF; no socket-destroy events (${destroy.why}), so a closed UDP port waits for the re-scan`
          : "closes through socket-destroy events";
        return {
          // A fresh scanner: no "unchanged" from the probe. Where the kernel refused the trial, the
          // scanner still subscribes (and says, with what to do, when refused again).
          scanner: netlinkScanner(shim, started.events, log, destroy.mode),
          detector: {
            name: "ebpf",
            intervalMs: SAFETY_RESCAN_MS,
            description:
              `port detector: ebpf (kernel events: listen() and UDP binds through BPF programs on the cgroup2 root, ${closes}; ` +
              `a safety re-scan every ${SAFETY_RESCAN_MS / 1000} s${started.note ? `; ${started.note}` : ""})`,
          },
        };
      }
      const [reason, verifier] = splitVerifierLog(started.error ?? "unknown");
      if (verifier) log(`eBPF verifier log: ${verifier}`);
      if (choice === "ebpf") throw new Error(`--detector ebpf: the eBPF programs could not load here (${reason}); use --detector auto or poll`);
      return {
        scanner: netlinkScanner(shim, undefined, log),
        detector: polling(
          NETLINK_POLL_MS,
          `the eBPF programs could not load (${reason}); run the agent as root (or with CAP_BPF and CAP_NET_ADMIN) on a ` +
            "kernel with BPF and cgroup2 (5.8 or later), for ports noticed at once and an agent that costs nothing while idle",
        ),
      };
    }
    log(
      `degraded: netlink sock_diag is refused here (${probe.errors[0]}; an emulator such as qemu-user, or a kernel ` +
        "without the inet_diag, tcp_diag and udp_diag modules, refuses it), so the agent reads /proc/net instead: " +
        "new and closed ports are noticed on the next poll instead of at once. Everything else works.",
    );
  } else {
    log(
      `degraded: the native shim did not load (${error}), so the agent reads /proc/net instead of netlink (ports are ` +
        "noticed on the next poll instead of at once) and cannot serve vsock:// or serial:// addresses; unix:// and tcp:// " +
        "work. Use the porthole binary built for this machine (`porthole --version` shows its architecture), or keep " +
        "porthole-shim-<arch>.so beside porthole.mjs.",
    );
  }
  return { scanner: procNetScanner(), detector: polling(PROC_POLL_MS, shim ? "netlink sock_diag is refused here" : "the native shim did not load") };
}

type DestroyEvents = "on" | "off" | "bpf-closes";

/**
 * Whether this agent can watch socket-destroy events (a trial subscription to TCP's), and why
 * not where it cannot. PORTHOLE_DESTROY_EVENTS=0 goes without them (for tests of that case).
 */
function destroyEventsHere(shim: NativeShim): { mode: DestroyEvents; why?: string } {
  if (process.env.PORTHOLE_DESTROY_EVENTS === "0") return { mode: "off", why: "PORTHOLE_DESTROY_EVENTS=0" };
  const fd = shim.diagSubscribeTo(EVENT_TCP | 4);
  if (fd < 0) return { mode: "bpf-closes", why: `the kernel refused the subscription: ${shim.errnoName(fd)}` };
  shim.close(fd);
  return { mode: "on" };
}

function polling(intervalMs: number, why: string): Detector {
  return { name: "poll", intervalMs, description: `port detector: poll every ${intervalMs} ms (${why})` };
}

/** The shim's message, and the verifier's log it may carry (said on its own line). */
function splitVerifierLog(message: string): [string, string | undefined] {
  const at = message.indexOf("; verifier log: ");
  if (at < 0) return [message, undefined];
  return [message.slice(0, at), message.slice(at + "; verifier log: ".length).trim().replace(/\n/g, " | ")];
}
