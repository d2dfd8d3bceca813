// UDP's own flow control over a stream call: a datagram is written only while the flow's
// bytes in flight stay under a budget; past it the datagram is dropped, as UDP allows. Queued
// instead, a flood's datagrams filled the shared HTTP/2 connection and delayed every TCP
// tunnel and the agent's control stream behind them. The caller tells its user that it drops.
//
// In flight ends where the peer allows: for a stock Lima peer, once the bytes are handed to
// the connection; between porthole agents (`udp_credit`), once the far end reports them
// delivered to its UDP socket. Handed to the connection is not enough there: HTTP/2's 16 MiB
// stream windows let a flood queue megabytes in the agents, which kept arriving at the guest
// server hundreds of milliseconds after the client stopped (iperf3's next test took such a
// stale datagram for its own and hung).

import { oncePerTurn } from "./once-per-turn.ts";

/** About 4 ms at 1 Gbit/s: enough to ride out a busy turn, too little to delay other streams. */
export const DATAGRAM_BUDGET_BYTES = 512 * 1024;
/**
 * Credited, the fixed part of the budget: what may wait anywhere between the two sockets when
 * nothing was delivered lately. At the ~100 Mbit/s a busy guest agent delivers, 512 KiB was a
 * tail of ~50 ms, enough for iperf3's next test to receive a stale datagram still (bench, "UDP
 * beside TCP").
 */
export const CREDITED_BUDGET_BYTES = 128 * 1024;
/**
 * Credited, on a data stream of the flow's own (transport/datagram-stream.ts): nothing else
 * waits behind its bytes, so the budget is sized for the credit's round trip, not for other
 * streams. 128 KiB carries 1 Gbit/s only if the credits come back within 1 ms; through both
 * agents' event loops on a busy 2-core machine they took ~4 ms, and ~70% of a 1 Gbit/s flood
 * was dropped over budget while neither agent used half a core (bench/profile.ts --udp 1G,
 * 2026-11-30). 1 MiB is ~8 ms at a gigabit: the tail a stopped client leaves stays far
 * shorter than the 4 MiB grown budget's (below), which reached iperf3's next test.
 */
export const STREAM_BUDGET_BYTES = 1024 * 1024;
/*
 * The native pump (native/udp_pump.c) grows a data stream's budget from this one to what the
 * far end delivers in 40 ms, at most 4 MiB: a pump thread that waits a few ms for a CPU then
 * no longer drops. Not here: on the shared HTTP/2 session a grown budget's bytes queued ahead
 * of every tunnel. A grown budget's tail (up to ~40 ms of datagrams after a client stops) is
 * no news to a UDP application, but iperf3's server takes the first datagram its new listener
 * gets for the next client's hello: back-to-back iperf3 runs wait for the last one's datagrams
 * to stop arriving (test/iperf.ts).
 */

/**
 * Datagrams written and not yet handed to the connection, at most: bytes alone do not bound
 * them (an empty datagram costs no bytes of the budget, but a frame and a Buffer each), and a
 * far end that stops reading would otherwise let a flood of empty datagrams queue without end.
 */
export const MAX_QUEUED_DATAGRAMS = 8192;

export class DatagramBudget {
  private inFlight = 0;
  private queued = 0;

  /** `credited`: bytes stay in flight until `delivered` reports them, not when written. */
  constructor(
    private readonly credited = false,
    private readonly limit = credited ? CREDITED_BUDGET_BYTES : DATAGRAM_BUDGET_BYTES,
  ) {}

  /**
   * Writes `data` through `write` (which calls `done` once the bytes left for the
   * connection) if the budget allows; false: dropped.
   */
  send(data: Buffer, write: (done: () => void) => void): boolean {
    if (this.queued >= MAX_QUEUED_DATAGRAMS) return false;
    if (this.inFlight > 0 && this.inFlight + data.length > this.limit) return false;
    this.inFlight += data.length;
    this.queued++;
    let handed = false;
    write(() => {
      if (handed) return;
      handed = true;
      this.queued--;
      if (!this.credited) this.inFlight -= data.length;
    });
    return true;
  }

  /** The far end reports `bytes` delivered (credited flows); more than in flight frees no more. */
  delivered(bytes: number): void {
    if (!this.credited) return;
    this.inFlight -= Math.min(Math.max(0, bytes), this.inFlight);
  }
}

/**
 * The receiving end of a credited flow: counts the bytes it handed to its UDP socket and
 * reports them once per turn of the event loop (one small message, not one per datagram).
 */
export class DeliveryReport {
  private bytes = 0;
  private readonly reportSoon = oncePerTurn(() => {
    const bytes = this.bytes;
    this.bytes = 0;
    if (bytes > 0) this.report(bytes);
  });

  constructor(private readonly report: (bytes: number) => void) {}

  add(bytes: number): void {
    this.bytes += bytes;
    this.reportSoon();
  }
}
