// How the watcher finds listening sockets: netlink sock_diag through the native shim (a
// LISTEN-only dump costs ~0.1 ms even with 10,000 established sockets, and destroy events
// report a close within a millisecond), or /proc/net where the shim cannot load.
import { DIAG_RECORD_BYTES, diagRecordsToPorts, diagRecordsToSockets, onlyConnectedCloses, parseDiagRecords } from "../core/diag-record.ts";
import type { NativeShim } from "../runtime/native-api.ts";
import { socketFromFd } from "../runtime/fd-socket.ts";
import { loadNative } from "../runtime/native.ts";
import { scanProcNet, type ScanResult } from "./watcher.ts";

export interface Scanner {
  name: string;
  scan(): Promise<ScanResult>;
  /** Calls `onClose` soon after a socket closes, where the scanner can tell; returns a stop. */
  watchCloses?(onClose: () => void): () => void;
}

const MAX_RECORDS = 65536;
/** UDP is dumped on every UDP_EVERY-th scan (and after any close). */
const UDP_EVERY = 5;
/** Where the runtime cannot watch the netlink socket: how often to look for destroy events. */
const EVENT_POLL_MS = 10;

export function procNetScanner(dir = "/proc/net"): Scanner {
  return { name: `/proc/net (${dir})`, scan: () => scanProcNet(dir) };
}

export function netlinkScanner(shim: NativeShim): Scanner {
  // Small to start (a large buffer costs on every call) and grown when a dump overflows it.
  let buf = new Uint8Array(1024 * DIAG_RECORD_BYTES);
  const last: { tcp: Buffer; udp: Buffer } = { tcp: Buffer.alloc(0), udp: Buffer.alloc(0) };
  let lastPorts: ScanResult["ports"] = [];
  let lastSockets: ScanResult["sockets"] = new Map();
  let scans = 0;
  let udpDue = true;
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
    name: "netlink sock_diag",
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
      if ((tcp as Buffer).equals(last.tcp) && (udp as Buffer).equals(last.udp)) return { ports: lastPorts, sockets: lastSockets, errors: [], unchanged: true };
      last.tcp = tcp as Buffer;
      last.udp = udp as Buffer;
      const both = Buffer.concat([last.tcp, last.udp]);
      const records = parseDiagRecords(both, both.length / DIAG_RECORD_BYTES);
      lastPorts = diagRecordsToPorts(records);
      lastSockets = diagRecordsToSockets(records);
      return { ports: lastPorts, sockets: lastSockets, errors: [] };
    },
    watchCloses(notify) {
      const onClose = () => {
        udpDue = true;
        notify();
      };
      const fd = shim.diagSubscribe();
      if (fd < 0) return () => {};
      // The runtime's event loop watches the netlink socket like any socket: a destroy event
      // wakes it and the watcher re-scans, unless the event names only connected sockets
      // (every forwarded connection closing would cost a dump). Where the runtime will not
      // adopt the fd, poll it instead.
      let socket: import("node:net").Socket;
      try {
        socket = socketFromFd(fd);
      } catch {
        return pollEvents(shim, fd, onClose);
      }
      let stopPolling: (() => void) | undefined;
      socket.on("data", (chunk: Buffer) => {
        if (!onlyConnectedCloses(chunk)) onClose();
      });
      socket.once("error", () => {
        // The runtime closed that fd (a burst overran the socket, ENOBUFS): something did
        // close, so re-scan, and go on with a fresh subscription, polled. Never touch the old
        // fd number again: it may already belong to another socket.
        onClose();
        const fresh = shim.diagSubscribe();
        if (fresh >= 0) stopPolling = pollEvents(shim, fresh, onClose);
      });
      return () => (stopPolling ? stopPolling() : socket.destroy());
    },
  };
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
 * plain words, what that costs and what to do. The agent serves either way.
 */
export async function bestScanner(log: (line: string) => void): Promise<Scanner> {
  const { shim, error } = await loadNative();
  if (shim) {
    const probe = await netlinkScanner(shim).scan();
    if (!probe.errors.length) return netlinkScanner(shim); // a fresh one: no "unchanged" from the probe
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
  return procNetScanner();
}
