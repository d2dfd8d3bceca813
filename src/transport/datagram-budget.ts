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
 * Credited, what may wait anywhere between the two sockets is bounded twice. Up to 128 KiB
 * always: at the ~100 Mbit/s a busy guest agent delivered, 512 KiB was a tail of ~50 ms, enough
 * for iperf3's next test to receive a stale datagram still (bench, "UDP beside TCP"). Beyond
 * it, up to 1 MiB while the oldest datagram in flight left less than 10 ms ago: the budget is
 * spent in one round trip between the agents, and on a loaded machine that round trip took
 * several milliseconds, so 128 KiB alone held a flood to ~128 KiB per round trip. The age rule
 * keeps the tail what it was: past 128 KiB nothing is sent while the far end lags by 10 ms.
 */
export const CREDITED_BUDGET_BYTES = 1024 * 1024;
export const CREDITED_STEADY_BYTES = 128 * 1024;
export const CREDITED_STALE_MS = 10;

export interface BudgetOptions {
  /** Credited: in flight beyond this only while the oldest datagram in flight is younger than staleMs. */
  steadyBytes?: number;
  staleMs?: number;
  now?: () => number;
}

export class DatagramBudget {
  private inFlight = 0;
  private readonly steadyBytes: number;
  private readonly staleMs: number;
  private readonly now: () => number;
  // Credited: when the bytes in flight left, oldest first, by millisecond (delivery is in order).
  private times: number[] = [];
  private sizes: number[] = [];
  private head = 0;

  /** `credited`: bytes stay in flight until `delivered` reports them, not when written. */
  constructor(
    private readonly credited = false,
    private readonly limit = credited ? CREDITED_BUDGET_BYTES : DATAGRAM_BUDGET_BYTES,
    options: BudgetOptions = {},
  ) {
    const defaults = credited && limit === CREDITED_BUDGET_BYTES;
    this.steadyBytes = options.steadyBytes ?? (defaults ? CREDITED_STEADY_BYTES : limit);
    this.staleMs = options.staleMs ?? CREDITED_STALE_MS;
    this.now = options.now ?? (() => performance.now());
  }

  /**
   * Writes `data` through `write` (which calls `done` once the bytes left for the
   * connection) if the budget allows; false: dropped.
   */
  send(data: Buffer, write: (done: () => void) => void): boolean {
    if (this.inFlight > 0 && this.inFlight + data.length > this.limit) return false;
    if (this.inFlight + data.length > this.steadyBytes && this.inFlight > 0 && this.now() - this.times[this.head]! >= this.staleMs) return false;
    this.inFlight += data.length;
    if (this.credited) this.leaving(data.length);
    let counted = !this.credited;
    write(() => {
      if (!counted) return;
      counted = false;
      this.inFlight -= data.length;
    });
    return true;
  }

  /** The far end reports `bytes` delivered (credited flows); more than in flight frees no more. */
  delivered(bytes: number): void {
    if (!this.credited) return;
    this.inFlight = Math.max(0, this.inFlight - bytes);
    while (bytes > 0 && this.head < this.sizes.length) {
      const first = this.sizes[this.head]!;
      if (first > bytes) {
        this.sizes[this.head] = first - bytes;
        break;
      }
      bytes -= first;
      this.head++;
    }
    if (this.inFlight === 0 || this.head === this.sizes.length) [this.times, this.sizes, this.head] = [[], [], 0];
    else if (this.head > 1024 && this.head * 2 > this.sizes.length) {
      this.times = this.times.slice(this.head);
      this.sizes = this.sizes.slice(this.head);
      this.head = 0;
    }
  }

  private leaving(bytes: number): void {
    if (this.steadyBytes >= this.limit) return; // no age rule: no times to keep
    const t = Math.floor(this.now());
    const last = this.sizes.length - 1;
    if (last >= this.head && this.times[last] === t) this.sizes[last]! += bytes;
    else {
      this.times.push(t);
      this.sizes.push(bytes);
    }
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
