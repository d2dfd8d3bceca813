// A UDP flow's data stream (transport/datagram-stream.ts) over a real unix socket pair: the
// datagrams of one turn leave in one write, each keeps its bounds (empty and 60,000-byte ones
// too), credits travel with them, and either end's EOF ends the flow on both.
import { describe, expect, test } from "bun:test";
import type * as net from "node:net";
import { DatagramStream } from "../../src/transport/datagram-stream.ts";
import { socketPair } from "../../src/transport/socketpair.ts";
import { waitUntil } from "../wait.ts";

async function pair(): Promise<[net.Socket, net.Socket]> {
  const p = await socketPair();
  if (!p) throw new Error("the native shim did not load (make builds it)");
  return p;
}

function receiver(stream: net.Socket) {
  const got = { datagrams: [] as Buffer[], delivered: 0, ended: 0, bad: undefined as string | undefined };
  const flow = new DatagramStream(stream, {
    onDatagrams: (datagrams, delivered) => {
      got.datagrams.push(...datagrams.map((d) => Buffer.from(d)));
      got.delivered += delivered;
    },
    onEnd: (bad) => {
      got.ended++;
      got.bad = bad;
    },
  });
  return { got, flow };
}

/** The length of each write made to `socket`, as it is made. */
function countWrites(socket: net.Socket): number[] {
  const writes: number[] = [];
  const write = socket.write.bind(socket);
  socket.write = ((chunk: Buffer, ...rest: never[]) => (writes.push(chunk.length), write(chunk, ...rest))) as typeof socket.write;
  return writes;
}

describe("DatagramStream", () => {
  test("the datagrams of one turn leave in one write, whole, with the turn's credits", async () => {
    const [a, b] = await pair();
    const writes = countWrites(a);
    const sender = new DatagramStream(a, { onDatagrams: () => {}, onEnd: () => {} });
    const { got } = receiver(b);
    const sent = [Buffer.from("one"), Buffer.alloc(0), Buffer.alloc(60_000, 1), Buffer.from("last")];
    for (const d of sent) sender.send(d);
    sender.report(1234);
    await waitUntil("all four datagrams", () => got.datagrams.length === 4, 5000);
    expect(got.datagrams).toEqual(sent);
    expect(got.delivered).toBe(1234);
    expect(writes.length).toBe(1);
    a.destroy();
    b.destroy();
  });

  test("a credit report is written at once, not a turn later (the far end's budget waits on it)", async () => {
    const [a, b] = await pair();
    const writes = countWrites(a);
    const sender = new DatagramStream(a, { onDatagrams: () => {}, onEnd: () => {} });
    const { got } = receiver(b);
    sender.report(4321);
    expect(writes).toEqual([4]); // one credit frame, before this turn ends
    await waitUntil("the credit", () => got.delivered === 4321, 5000);
    a.destroy();
    b.destroy();
  });

  test("one end's EOF ends the flow on both, once each", async () => {
    const [a, b] = await pair();
    const left = receiver(a);
    const right = receiver(b);
    left.flow.send(Buffer.from("x"));
    left.flow.end(); // what was queued leaves first
    await waitUntil("both ends to end", () => left.got.ended === 1 && right.got.ended === 1, 5000);
    expect(right.got.datagrams).toEqual([Buffer.from("x")]);
    expect(right.got.bad).toBeUndefined();
    await Bun.sleep(20);
    expect([left.got.ended, right.got.ended]).toEqual([1, 1]);
  });

  test("a peer that breaks the framing ends the flow with the reason, and the stream is closed", async () => {
    const [a, b] = await pair();
    const { got } = receiver(b);
    let peerSawEnd = false;
    a.on("error", () => {});
    a.on("end", () => (peerSawEnd = true)).on("close", () => (peerSawEnd = true)).resume();
    a.write(Buffer.from([0x00, 0x01, 0x00, 0x00])); // a 65,536-byte datagram: too large
    await waitUntil("the flow to end", () => got.ended === 1, 5000);
    expect(got.bad).toContain("65536 bytes");
    await waitUntil("the peer to see the stream closed", () => peerSawEnd, 5000);
    a.destroy();
  });
});
