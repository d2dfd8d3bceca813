// UDP between porthole agents: batches keep each datagram's bounds and leave at the end of the
// turn (or once full); the budget drops, rather than queues, what the connection has not taken.
import { describe, expect, test } from "bun:test";
import type { TunnelMessage } from "../../src/proto/guest-service.ts";
import { DatagramBatcher, datagramsOf, MAX_DATAGRAMS_PER_MESSAGE, MAX_UDP_PAYLOAD } from "../../src/transport/datagram-batch.ts";
import { DatagramBudget, DeliveryReport, MAX_QUEUED_DATAGRAMS } from "../../src/transport/datagram-budget.ts";
import { prepareDatagrams, pumpRefusedFlow } from "../../src/transport/datagram-socket.ts";

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
    const of = (message: TunnelMessage) => datagramsOf(message).datagrams;
    expect(of(m({ datagrams: [Buffer.from("a"), Buffer.from("b")] }))).toEqual([Buffer.from("a"), Buffer.from("b")]);
    expect(of(m({ data: Buffer.from("x") }))).toEqual([Buffer.from("x")]);
    expect(of(m({}))).toEqual([Buffer.alloc(0)]);
    expect(of(m({ udp_delivered: 1400 }))).toEqual([]); // a porthole peer's report carries none
  });

  test("what no UDP socket can send is left out and counted: a datagram over 65,527 bytes, more than a batch ever holds", () => {
    const m = (fields: Partial<TunnelMessage>) => ({ data: Buffer.alloc(0), datagrams: [], ...fields }) as TunnelMessage;
    expect(datagramsOf(m({ data: Buffer.alloc(MAX_UDP_PAYLOAD) }))).toEqual({ datagrams: [Buffer.alloc(MAX_UDP_PAYLOAD)], refused: 0, refusedBytes: 0 });
    expect(datagramsOf(m({ data: Buffer.alloc(16 << 20) }))).toEqual({ datagrams: [], refused: 1, refusedBytes: 16 << 20 });
    const many = datagramsOf(m({ datagrams: Array.from({ length: MAX_DATAGRAMS_PER_MESSAGE + 10 }, () => Buffer.alloc(3)) }));
    expect([many.datagrams.length, many.refused, many.refusedBytes]).toEqual([MAX_DATAGRAMS_PER_MESSAGE, 10, 30]); // the refused bytes are credited back by the caller
  });

  test("a batch of empty datagrams goes out at MAX_DATAGRAMS_PER_MESSAGE, however few bytes it holds", () => {
    const sent: Partial<TunnelMessage>[] = [];
    const batcher = new DatagramBatcher((message) => sent.push(message));
    for (let i = 0; i < MAX_DATAGRAMS_PER_MESSAGE; i++) batcher.add(Buffer.alloc(0), () => {});
    expect(sent.map((s) => s.datagrams!.length)).toEqual([MAX_DATAGRAMS_PER_MESSAGE]);
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

  test("credited: what was written stays in flight until the far end reports it delivered, and never more than the budget", () => {
    const budget = new DatagramBudget(true, 3000);
    const write = (done: () => void) => done(); // handed to the connection at once
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
    budget.delivered(1400);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
    budget.delivered(1e9); // a report of more than was sent frees the budget, no more
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(true);
    expect(budget.send(Buffer.alloc(1400), write)).toBe(false);
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

describe("flows the native UDP pump refuses", () => {
  test("are said once, with the first reason, however many there are", async () => {
    const said: string[] = [];
    await prepareDatagrams((line) => said.push(line), {});
    const before = said.length;
    pumpRefusedFlow("the pump is full (4,096 flows)");
    pumpRefusedFlow("another reason");
    const told = said.slice(before);
    expect(told.length).toBe(1);
    expect(told[0]).toContain("instead of the native pump (the pump is full (4,096 flows))");
  });
});

describe("datagrams queued but not yet handed on", () => {
  test("empty datagrams, which cost no bytes of the budget, are bounded by count until they are handed to the connection", () => {
    for (const credited of [true, false]) {
      const budget = new DatagramBudget(credited, 1024 * 1024);
      const handed: (() => void)[] = [];
      let taken = 0;
      for (let i = 0; i < 3 * MAX_QUEUED_DATAGRAMS; i++) if (budget.send(Buffer.alloc(0), (done) => handed.push(done))) taken++;
      expect(taken).toBe(MAX_QUEUED_DATAGRAMS); // a far end that stopped reading no longer lets them pile up
      for (const done of handed.splice(0)) done();
      expect(budget.send(Buffer.alloc(0), (done) => handed.push(done))).toBe(true);
    }
  });
});
