// UDP between porthole agents: batches keep each datagram's bounds and leave at the end of the
// turn (or once full); the budget drops, rather than queues, what the connection has not taken.
import { describe, expect, test } from "bun:test";
import type { TunnelMessage } from "../../src/proto/guest-service.ts";
import { DatagramBatcher, datagramsOf } from "../../src/transport/datagram-batch.ts";
import { CREDITED_MAX_BYTES, DatagramBudget, DeliveryReport, RATE_WINDOW_MS } from "../../src/transport/datagram-budget.ts";

const turn = () => new Promise((r) => setImmediate(r));

describe("DatagramBatcher", () => {
  test("datagrams of one turn leave as one message, in order and each whole; each is acknowledged once it left", async () => {
    const sent: { message: Partial<TunnelMessage>; done: () => void }[] = [];
    const batcher = new DatagramBatcher((message, done) => sent.push({ message, done }));
    const acked: number[] = [];
    const datagrams = [Buffer.from("one"), Buffer.alloc(0), Buffer.from("three")];
    datagrams.forEach((d, i) => batcher.add(d, () => acked.push(i)));
    expect(sent).toHaveLength(0);
    await turn();
    expect(sent).toHaveLength(1);
    expect(sent[0]!.message.datagrams).toEqual(datagrams);
    expect(acked).toEqual([]);
    sent[0]!.done();
    expect(acked).toEqual([0, 1, 2]);
    batcher.add(Buffer.from("next turn"), () => {});
    await turn();
    expect(sent).toHaveLength(2);
  });

  test("a batch that reaches 64 KiB leaves at once", () => {
    const sent: Partial<TunnelMessage>[] = [];
    const batcher = new DatagramBatcher((message) => sent.push(message));
    for (let i = 0; i < 50; i++) batcher.add(Buffer.alloc(1400), () => {});
    expect(sent).toHaveLength(1);
    expect(sent[0]!.datagrams).toHaveLength(47); // 47 × 1400 ≥ 64 KiB
  });

  test("a message carries a batch, or Lima's one datagram in data (an empty one included)", () => {
    const m = (fields: Partial<TunnelMessage>) => ({ data: Buffer.alloc(0), datagrams: [], ...fields }) as TunnelMessage;
    expect(datagramsOf(m({ datagrams: [Buffer.from("a"), Buffer.from("b")] }))).toEqual([Buffer.from("a"), Buffer.from("b")]);
    expect(datagramsOf(m({ data: Buffer.from("x") }))).toEqual([Buffer.from("x")]);
    expect(datagramsOf(m({}))).toEqual([Buffer.alloc(0)]);
    expect(datagramsOf(m({ udp_delivered: 1400 }))).toEqual([]); // a porthole peer's report carries none
  });
});

describe("DatagramBudget", () => {
  test("past the budget datagrams are dropped; what left frees its share", () => {
    const budget = new DatagramBudget(false, 3000);
    const pending: (() => void)[] = [];
    const write = (done: () => void) => void pending.push(done);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
    pending.shift()!();
    pending[0]!(); // a second call of the same callback frees nothing more
    pending[0]!();
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
  });

  test("a datagram larger than the budget still goes when nothing is in flight", () => {
    const budget = new DatagramBudget(false, 1000);
    expect(budget.send(Buffer.alloc(60_000), () => {})).toBe(true);
  });

  test("credited: what was written stays in flight until the far end reports it delivered", () => {
    let now = 0;
    const budget = new DatagramBudget(true, 3000, () => now);
    const write = (done: () => void) => done(); // handed to the connection at once
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
    budget.delivered(1400);
    now += RATE_WINDOW_MS + 1; // that delivery no longer widens the budget
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
    budget.delivered(1e9); // a report of more than was sent frees the budget, no more
    now += RATE_WINDOW_MS + 1;
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
  });

  test("credited: the budget grows by what was delivered in the last RATE_WINDOW_MS, then shrinks back", () => {
    let now = 0;
    const budget = new DatagramBudget(true, 3000, () => now);
    const write = (done: () => void) => done();
    const fill = () => {
      let n = 0;
      while (budget.send(Buffer.alloc(1000), write)) n++;
      return n;
    };
    expect(fill()).toBe(3); // the fixed part: 3000 bytes in flight
    budget.delivered(3000); // delivered in this window: 3000 more may be in flight
    expect(fill()).toBe(6);
    now += RATE_WINDOW_MS / 2;
    budget.delivered(6000); // both reports count while both are recent
    expect(fill()).toBe(12);
    now += RATE_WINDOW_MS / 2 + 1; // the first report is old now
    budget.delivered(12_000);
    expect(fill()).toBe(3 + 6 + 12); // the fixed part and the two recent reports
    budget.delivered(1e9);
    now += RATE_WINDOW_MS + 1; // nothing delivered lately: back to the fixed part
    expect(fill()).toBe(3);
  });

  test("credited on the shared HTTP/2 session (no stream of its own): the budget stays the fixed part, however much was delivered", () => {
    const budget = new DatagramBudget(true, 3000, () => 0, false);
    const write = (done: () => void) => done();
    const fill = () => {
      let n = 0;
      while (budget.send(Buffer.alloc(1000), write)) n++;
      return n;
    };
    expect(fill()).toBe(3);
    budget.delivered(3000);
    expect(fill()).toBe(3);
  });

  test("credited: a far end that reports more than was in flight widens the budget by no more, and never past the maximum", () => {
    let now = 0;
    const budget = new DatagramBudget(true, 3000, () => now);
    const write = (done: () => void) => done();
    budget.send(Buffer.alloc(1000), write);
    budget.delivered(1e12);
    let n = 0;
    while (budget.send(Buffer.alloc(1000), write)) n++;
    expect(n).toBe(4); // 3000 + the 1000 really delivered
  });

  test("credited: however much was delivered lately, no more than CREDITED_MAX_BYTES is in flight", () => {
    const budget = new DatagramBudget(true, 3000, () => 0);
    const write = (done: () => void) => done();
    for (let sent = 0; sent < 2 * CREDITED_MAX_BYTES; sent += 60_000) {
      expect(budget.send(Buffer.alloc(60_000), write)).toBe(true);
      budget.delivered(60_000);
    }
    let inFlight = 0;
    while (budget.send(Buffer.alloc(60_000), write)) inFlight += 60_000;
    expect(inFlight).toBeLessThanOrEqual(CREDITED_MAX_BYTES);
    expect(inFlight).toBeGreaterThan(CREDITED_MAX_BYTES - 60_000);
  });

  test("uncredited: a report changes nothing (a stock Lima peer never sends one)", () => {
    const budget = new DatagramBudget(false, 3000);
    const pending: (() => void)[] = [];
    const write = (done: () => void) => void pending.push(done);
    budget.send(Buffer.alloc(1400), write);
    budget.send(Buffer.alloc(1400), write);
    budget.delivered(2800);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
  });
});

describe("DeliveryReport", () => {
  test("what was delivered in one turn is reported once, as one sum; nothing delivered, nothing said", async () => {
    const reports: number[] = [];
    const report = new DeliveryReport((bytes) => reports.push(bytes));
    report.add(1400);
    report.add(600);
    report.add(0);
    expect(reports).toEqual([]);
    await turn();
    expect(reports).toEqual([2000]);
    report.add(0);
    await turn();
    expect(reports).toEqual([2000]);
  });
});
