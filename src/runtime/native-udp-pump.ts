// UDP flows pumped in the shim's thread of their own (native/udp_pump.c): a connected UDP
// socket <-> a data stream of datagram frames (core/datagram-frames.ts), the flow's budget and
// credits kept there too, with no JavaScript between. Through the event loops, a busy machine
// that did not schedule the host agent in time overflowed its UDP socket and held up the
// credits (2-40% of a 1 Gbit/s flood lost). The loop hears only of a pump's end (an eventfd
// watched through the relay thread) and reads its counters when asked.
import { check, type NativeShim } from "./native-api.ts";
import { EPOLLIN, safely, type NativeRelayLoop } from "./native-relay.ts";

/** A pump's counters (native/udp_pump.c's ST_ names, in order). */
export interface PumpStats {
  /** Datagrams (and their bytes) read from the UDP socket and written to the stream. */
  toStream: number;
  toStreamBytes: number;
  /** Datagrams (and their bytes) read from the stream and handed to the UDP socket. */
  toUdp: number;
  toUdpBytes: number;
  /** Dropped over the flow's budget (the far end had not credited enough yet). */
  overBudget: number;
  /** From the stream, refused by the UDP socket (its buffer full, an ICMP error): lost. */
  unsent: number;
  /** Dropped by the kernel at the UDP socket before the pump read them. */
  kernelDrops: number;
  /** 0 running; 1 the far end ended it, 2 ended here, 3 reset or failed, 4 the far end broke its framing. */
  end: number;
  err: number;
  /** Messages that handed those datagrams to the kernel: fewer where datagrams of one size went as one (UDP_SEGMENT). */
  udpSends: number;
}

export const PUMP_END_EOF = 1;
export const PUMP_END_CLOSED = 2;
export const PUMP_END_RESET = 3;
export const PUMP_END_BAD = 4;

const FIELDS = 10;
/** The shim's pump slots (native/udp_pump.c PUMP_MAX). */
const PUMP_SLOTS = 4096;
/** In a reaped id: the pump runs on, and dropped over its budget for the first time. */
const FIRST_DROP = 1 << 30;

export class UdpPump {
  private last: PumpStats | undefined;

  constructor(
    private readonly pumps: UdpPumps,
    readonly id: number,
  ) {}

  /** Its counters now (the last ones once it ended). */
  stats(): PumpStats {
    return this.last ?? this.pumps.read(this.id) ?? zeroStats();
  }

  /** A datagram that reached JavaScript after the pump took the flow (framed), `payload` bytes of it counting against the budget. */
  write(frames: Uint8Array, payload: number): void {
    if (!this.last) this.pumps.shim.udpPumpWrite(this.id, frames, frames.length, payload);
  }

  /** Ends the flow from this side (the stream's end after what is queued). */
  close(): void {
    if (!this.last) this.pumps.shim.udpPumpClose(this.id);
  }

  abort(): void {
    if (!this.last) this.pumps.shim.udpPumpAbort(this.id);
  }

  /** The pump ended: its last counters. */
  settle(stats: PumpStats): void {
    this.last = stats;
  }
}

export class UdpPumps {
  private readonly live = new Map<number, { pump: UdpPump; onEnd: (stats: PumpStats) => void; onFirstDrop?: () => void }>();
  private readonly ids = new Int32Array(256);
  private readonly out = new BigUint64Array(FIELDS);
  private readonly empty = new Uint8Array(1);

  private constructor(
    readonly shim: NativeShim,
    private readonly loop: NativeRelayLoop,
    private readonly notifyFd: number,
  ) {
    this.arm();
  }

  static start(shim: NativeShim, loop: NativeRelayLoop): UdpPumps {
    return new UdpPumps(shim, loop, check(shim, shim.udpPumpStart(), "UDP pump thread"));
  }

  /**
   * Pumps `udpFd` (a connected UDP socket) <-> `streamFd` (a data stream after its header and
   * status byte); both are dup()ed, the caller closes its own. `toStream`: frames to write
   * first (`queued` payload bytes of them count against the budget); `fromStream`: bytes
   * already read from the stream. `group`: the listening fd whose port the UDP socket shares
   * (-1: none). Throws a NativeError where the pump cannot take them.
   */
  add(
    udpFd: number,
    streamFd: number,
    options: { toStream?: Uint8Array; queued?: number; fromStream?: Uint8Array; budget: number; group?: number },
    onEnd: (stats: PumpStats) => void,
    onFirstDrop?: () => void,
  ): UdpPump {
    const to = options.toStream ?? this.empty;
    const from = options.fromStream ?? this.empty;
    const added = this.shim.udpPumpAdd(udpFd, streamFd, to, options.toStream?.length ?? 0, options.queued ?? 0, from, options.fromStream?.length ?? 0, options.budget, options.group ?? -1);
    // ENOSPC from the shim: every one of its pump slots is taken (not a disk, not an fd limit).
    if (added < 0 && this.shim.errnoName(added) === "ENOSPC") throw new Error(`the pump carries ${PUMP_SLOTS} flows already`);
    const id = check(this.shim, added, "UDP pump");
    const pump = new UdpPump(this, id);
    this.live.set(id, { pump, onEnd, onFirstDrop });
    return pump;
  }

  /** A UDP socket sharing `listenFd`'s address and port, connected to `peer` (the shim's 20-byte address). */
  flowSocket(listenFd: number, peer: Uint8Array, bufferBytes: number): number {
    return check(this.shim, this.shim.udpFlowSocket(listenFd, peer, bufferBytes), "UDP flow socket");
  }

  read(id: number): PumpStats | undefined {
    if (this.shim.udpPumpStats(id, this.out) < 0) return undefined;
    const n = Array.from(this.out, Number);
    return { toStream: n[0]!, toStreamBytes: n[1]!, toUdp: n[2]!, toUdpBytes: n[3]!, overBudget: n[4]!, unsent: n[5]!, kernelDrops: n[6]!, end: n[7]!, err: n[8]!, udpSends: n[9]! };
  }

  private arm(): void {
    this.loop.watchOnce(this.notifyFd, EPOLLIN, () => {
      try {
        this.reap();
      } finally {
        this.arm();
      }
    });
  }

  private reap(): void {
    for (;;) {
      const n = this.shim.udpPumpReap(this.ids, this.ids.length);
      for (let i = 0; i < n; i++) {
        if (this.ids[i]! & FIRST_DROP) {
          // a handler's failure must not keep the others from being heard
          safely(() => this.live.get(this.ids[i]! & ~FIRST_DROP)?.onFirstDrop?.(), "a UDP pump's drop handler");
          continue;
        }
        const id = this.ids[i]!;
        const stats = this.read(id) ?? zeroStats();
        this.shim.udpPumpFree(id);
        const entry = this.live.get(id);
        this.live.delete(id);
        if (!entry) continue;
        entry.pump.settle(stats);
        safely(() => entry.onEnd(stats), "a UDP pump's end handler"); // nor one flow's end handler the others'
      }
      if (n < this.ids.length) return;
    }
  }
}

function zeroStats(): PumpStats {
  return { toStream: 0, toStreamBytes: 0, toUdp: 0, toUdpBytes: 0, overBudget: 0, unsent: 0, kernelDrops: 0, end: 0, err: 0, udpSends: 0 };
}

let shared: UdpPumps | undefined;

/** The process's pump thread, started at the first use. */
export function sharedUdpPumps(shim: NativeShim, loop: NativeRelayLoop): UdpPumps {
  return (shared ??= UdpPumps.start(shim, loop));
}
