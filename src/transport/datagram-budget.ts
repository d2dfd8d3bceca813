// UDP's own flow control over a stream call: a datagram is written only while the flow's
// bytes not yet handed to the connection stay under a budget; past it the datagram is dropped,
// as UDP allows. Queued instead, a flood's datagrams filled the shared HTTP/2 connection and
// delayed every TCP tunnel and the agent's control stream behind them (iperf3's own control
// connection gave up). The caller tells its user that it drops.

/** About 4 ms at 1 Gbit/s: enough to ride out a busy turn, too little to delay other streams. */
export const DATAGRAM_BUDGET_BYTES = 512 * 1024;

export class DatagramBudget {
  private inFlight = 0;

  constructor(private readonly limit = DATAGRAM_BUDGET_BYTES) {}

  /**
   * Writes `data` through `write` (which calls `done` once the bytes left for the
   * connection) if the budget allows; false: dropped.
   */
  send(data: Buffer, write: (done: () => void) => void): boolean {
    if (this.inFlight > 0 && this.inFlight + data.length > this.limit) return false;
    this.inFlight += data.length;
    let counted = true;
    write(() => {
      if (!counted) return;
      counted = false;
      this.inFlight -= data.length;
    });
    return true;
  }
}
