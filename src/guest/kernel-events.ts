// Kernel port events: the shim's BPF programs on the cgroup2 root (listen(), a UDP bind, and a
// listener's close where the agent has no socket-destroy events; sockets of other network
// namespaces filtered out in the kernel) write to a ring buffer whose fd the relay thread
// watches for the event loop, so the watcher dumps sock_diag right after a change instead of
// polling. An event only says "look now": what is forwarded always comes from the dump of
// this namespace.
import { formatIPv4Bytes, formatIPv6Bytes } from "../core/address.ts";
import type { NativeShim } from "../runtime/native-api.ts";
import { EPOLLIN, sharedRelayLoop } from "../runtime/native-relay.ts";

/** Protocol bits of an event batch. */
export const EVENT_TCP = 1;
export const EVENT_UDP = 2;

/** A port an event named: look at it alone (in one family where the event said which). */
export interface EventPort {
  protocol: "tcp" | "udp";
  port: number;
  /** 1 IPv4, 2 IPv6, 3 both. */
  families: number;
  /** Reported as the close began, before the kernel unhashed the socket: look again shortly if it is still there. */
  closing?: boolean;
  /** A UDP bind: a client that binds connects right after, so look a moment later. */
  bound?: boolean;
  /** Only a close: nothing to look at unless the state has a socket there. */
  closeOnly?: boolean;
  /** The process that called listen() or bind(), where the kernel told: its owner, most likely. */
  pid?: number;
  /** The socket's address, where the kernel told (16 bytes, IPv4 in the first 4): look up that one socket, no dump. */
  addr?: Uint8Array;
  /** That address as ports print it. */
  ip?: string;
}

/** What a batch of events names: ports to look at, and protocols to scan whole (an event without a port). */
export interface EventBatch {
  ports: EventPort[];
  /** EVENT_TCP | EVENT_UDP: scan these protocols whole. */
  whole: number;
}

export interface KernelEvents {
  /** Calls onEvents after each batch of events; returns a stop (which detaches the programs). */
  watch(onEvents: (batch: EventBatch) => void): () => void;
  /** Events consumed since the start. */
  total(): number;
}

const MESSAGE_BYTES = 16384;
/** u32 words per drained record (native/kernel_events.c PH_EV_WORDS): what, who, the address. */
export const EVENT_WORDS = 6;
const EV_ADDR = 4;

/**
 * Loads and attaches the programs, or says why they cannot run here (with the verifier's log
 * if it refused them). `closes`: listeners' closes come as events too (for an agent without
 * socket-destroy events, which report every close already: a second report wakes it twice).
 */
export function startKernelEvents(shim: NativeShim, closes: boolean): { events?: KernelEvents; error?: string; note?: string } {
  const msg = new Uint8Array(MESSAGE_BYTES);
  const fd = shim.eventsStart(msg, msg.length, closes ? 1 : 0);
  const text = Buffer.from(msg.subarray(0, Math.max(0, msg.indexOf(0)))).toString("utf8");
  if (fd < 0) return { error: text || `${shim.errnoName(fd)} (${shim.strerror(fd)})` };
  let loop: ReturnType<typeof sharedRelayLoop>;
  try {
    loop = sharedRelayLoop(shim);
    if (loop.broken) throw new Error(loop.broken);
  } catch (err) {
    shim.eventsStop();
    return { error: `the native event thread cannot watch the ring buffer (${(err as Error).message})` };
  }
  const out = new Uint32Array(4 + EVENT_WORDS * 256);
  return {
    ...(text ? { note: text } : {}),
    events: {
      watch(onEvents) {
        let stopped = false;
        let cancel = () => {};
        const arm = () => {
          if (stopped) return;
          // One-shot: armed again after each drain (a record written meanwhile leaves the
          // fd readable, so re-arming reports it at once).
          cancel = loop.watchOnce(fd, EPOLLIN, () => {
            const n = shim.eventsDrain(out, out.length);
            if (n > 0) onEvents(toBatch(out, n));
            arm();
          });
        };
        arm();
        return () => {
          stopped = true;
          cancel();
          loop.unwatch(fd);
          shim.eventsStop();
        };
      },
      total: () => out[2]! + out[3]! * 2 ** 32,
    },
  };
}

/** The drained records as ports (each once) and the protocols to scan whole. */
export function toBatch(out: Uint32Array, count: number): EventBatch {
  const flags = out[1]!;
  const whole = (flags & 4 ? EVENT_TCP : 0) | (flags & 8 ? EVENT_UDP : 0);
  const seen = new Set<number>();
  const ports: EventBatch["ports"] = [];
  const seenAt = new Set<string>();
  for (let i = 0; i < Math.min(count, Math.floor((out.length - 4) / EVENT_WORDS)); i++) {
    const at = 4 + EVENT_WORDS * i;
    const rec = out[at]!;
    const pid = out[at + 1]!;
    const protocol = rec & 0xff;
    const flags = (rec >>> 8) & 0xff;
    const port = rec >>> 16;
    const families = flags & 2 ? 2 : 1;
    const closing = (flags & 1) !== 0;
    let by: Partial<EventPort> = pid ? { pid } : {};
    if (flags & EV_ADDR) {
      const addr = new Uint8Array(out.buffer, out.byteOffset + (at + 2) * 4, 16).slice();
      const ip = families === 2 ? formatIPv6Bytes(addr) : formatIPv4Bytes(addr);
      if (seenAt.has(`${rec} ${ip}`)) continue;
      seenAt.add(`${rec} ${ip}`);
      by = { ...by, addr, ip };
    } else {
      if (!port || seen.has(rec)) continue;
      seen.add(rec);
    }
    if (!port) continue;
    if (protocol === 6 && !(whole & EVENT_TCP)) ports.push({ protocol: "tcp", port, families, ...(closing ? { closing, closeOnly: true, ...(by.addr ? { addr: by.addr, ip: by.ip } : {}) } : by) });
    else if (protocol === 17 && !(whole & EVENT_UDP)) ports.push({ protocol: "udp", port, families, bound: true, ...by });
  }
  return { ports, whole };
}
