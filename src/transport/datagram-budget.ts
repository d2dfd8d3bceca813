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
 * Credited, the budget also grows by what the far end reported delivered in the last
 * RATE_WINDOW_MS: bytes in flight are then about a bandwidth-delay product, sized by the rate
 * the far end really delivers, so the tail a client leaves behind stays short in time (about
 * RATE_WINDOW_MS at that rate, plus the fixed part), not only in bytes. 128 KiB alone is
 * spent once per round trip between the agents (3-5 ms under a flood here): a 1 Gbit/s flood
 * over a data stream got 0.47 Gbit/s through with 10 ms, 0.72-0.76 with 20-30 ms
 * (bench/profile.ts --udp 1G, single runs; the drops were all over budget, none in the guest).
 */
export const RATE_WINDOW_MS = 20;
/** A credited flow never has more than this in flight, whatever its far end reports. */
export const CREDITED_MAX_BYTES = 4 << 20;

export class DatagramBudget {
  private inFlight = 0;
  /** Credited: delivery reports of the last RATE_WINDOW_MS (time, bytes), oldest first, and their sum. */
  private readonly recent: { at: number; bytes: number }[] = [];
  private recentBytes = 0;

  /**
   * `credited`: bytes stay in flight until `delivered` reports them, not when written.
   * `ownStream`: the flow has a stream of its own (a data stream), so the credited window may
   * grow with the delivered rate; a flow that shares the HTTP/2 session with every tunnel keeps
   * the fixed part (more in flight there delays the others: a flood's queued datagrams made
   * iperf3's control connection give up, test/e2e/udp-flood.test.ts).
   */
  constructor(
    private readonly credited = false,
    private readonly limit = credited ? CREDITED_BUDGET_BYTES : DATAGRAM_BUDGET_BYTES,
    private readonly now: () => number = () => performance.now(),
    private readonly ownStream = true,
  ) {}

  /**
   * Writes `data` through `write` (which calls `done` once the bytes left for the
   * connection) if the budget allows; false: dropped.
   */
  send(data: Buffer, write: (done: () => void) => void): boolean {
    const wanted = this.inFlight + data.length;
    if (this.inFlight > 0 && wanted > this.limit && wanted > this.window()) return false;
    this.inFlight += data.length;
    let counted = !this.credited;
    write(() => {
      if (!counted) return;
      counted = false;
      this.inFlight -= data.length;
    });
    return true;
  }

  /** The far end reports `bytes` delivered (credited flows); more than in flight frees (and counts) no more. */
  delivered(bytes: number): void {
    if (!this.credited) return;
    const freed = Math.min(Math.max(0, bytes), this.inFlight);
    this.inFlight -= freed;
    if (!freed) return;
    this.recent.push({ at: this.now(), bytes: freed });
    this.recentBytes += freed;
  }

  /** Credited: the fixed part plus what was delivered lately, up to the maximum. */
  private window(): number {
    if (!this.credited || !this.ownStream) return this.limit;
    const cutoff = this.now() - RATE_WINDOW_MS;
    while (this.recent.length && this.recent[0]!.at < cutoff) this.recentBytes -= this.recent.shift()!.bytes;
    return Math.min(CREDITED_MAX_BYTES, this.limit + this.recentBytes);
  }
}

/**
 * The receiving end of a credited flow: counts the bytes it handed to its UDP socket and
 * reports them once per turn of the event loop (one small message, not one per datagram).
 */
export class DeliveryReport {
  private bytes = 0;
  private scheduled = false;

  constructor(private readonly report: (bytes: number) => void) {}

  add(bytes: number): void {
    this.bytes += bytes;
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      const bytes = this.bytes;
      this.bytes = 0;
      if (bytes > 0) this.report(bytes);
    });
  }
}
