// The shim's UDP pump (native/udp_pump.c through runtime/native-udp-pump.ts): a host-style
// flow socket sharing a listening socket's port, pumped to a TCP stream whose far end is a
// second pump (guest-style, a socket connected to node:dgram's echo server). Every datagram is
// counted by the pumps' own counters, the far end's framing is checked by our decoder, and the
// budget drops what the far end has not credited.
import { afterEach, beforeAll, describe, expect, test } from "bun:test";
import * as dgram from "node:dgram";
import * as net from "node:net";
import { creditFrames, DatagramFrameDecoder, writeDatagramFrame } from "../../src/core/datagram-frames.ts";
import type { NativeShim } from "../../src/runtime/native-api.ts";
import { loadNative } from "../../src/runtime/native.ts";
import { sharedRelayLoop, socketFd, type NativeRelayLoop } from "../../src/runtime/native-relay.ts";
import { NativeUdpSocket } from "../../src/runtime/native-udp.ts";
import { PUMP_END_BAD, PUMP_END_EOF, PUMP_END_RESET, sharedUdpPumps, type PumpStats, type UdpPumps } from "../../src/runtime/native-udp-pump.ts";
import { waitUntil } from "../wait.ts";

let shim: NativeShim;
let loop: NativeRelayLoop;
let pumps: UdpPumps;
beforeAll(async () => {
  const loaded = await loadNative();
  if (!loaded.shim) throw new Error(`the native shim did not load: ${loaded.error} (run make shim)`);
  shim = loaded.shim;
  loop = sharedRelayLoop(shim);
  pumps = sharedUdpPumps(shim, loop);
});

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

async function bound(): Promise<dgram.Socket> {
  const s = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => s.bind(0, "127.0.0.1", resolve));
  cleanups.push(() => s.close());
  return s;
}

/** A connected TCP pair on loopback: [client, accepted]. */
async function streamPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }); // the far end answers an end itself (or not)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
  const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise<void>((resolve) => client.once("connect", () => resolve()));
  const other = await accepted;
  server.close();
  cleanups.push(() => (client.destroy(), other.destroy()));
  return [client, other];
}

/** The shim's 20-byte address of a node:dgram socket on 127.0.0.1 (or `host`). */
function raw(port: number, host = "127.0.0.1"): Uint8Array {
  const out = new Uint8Array(20);
  expect(shim.udpAddress(Buffer.from(`${host}\0`), port, out)).toBe(0);
  return out;
}

describe("native UDP pump", () => {
  test("a client's datagrams (0 to 60,000 bytes) reach the server through two pumps and back, whole and in order, each counted by both pumps; the listener sees none", async () => {
    const server = await bound();
    server.on("message", (m, info) => server.send(m, info.port, info.address));
    const listener = NativeUdpSocket.open(shim, loop, { local: { host: "127.0.0.1", port: 0 }, bufferBytes: 1 << 20 });
    cleanups.push(() => listener.close());
    const atListener: Buffer[] = [];
    listener.receive((d) => atListener.push(...d));
    const client = await bound();
    const echoed: Buffer[] = [];
    client.on("message", (m) => echoed.push(m));

    const [hostEnd, guestEnd] = await streamPair();
    const flowFd = pumps.flowSocket(listener.fd, raw(client.address().port), 1 << 20);
    const serverFd = NativeUdpSocket.open(shim, loop, { peer: { host: "127.0.0.1", port: server.address().port }, bufferBytes: 1 << 20 }).fd;
    const ends: PumpStats[] = [];
    const host = pumps.add(flowFd, socketFd(hostEnd)!, { budget: 1 << 20 }, (s) => ends.push(s));
    const guest = pumps.add(serverFd, socketFd(guestEnd)!, { budget: 1 << 20 }, (s) => ends.push(s));
    shim.close(flowFd);
    shim.close(serverFd);
    hostEnd.destroy();
    guestEnd.destroy();

    const sizes = [0, 1, 2, 1400, 9000, 60_000, 3];
    for (const [i, n] of sizes.entries()) {
      client.send(Buffer.alloc(n, i + 1), listener.localPort(), "127.0.0.1");
      await waitUntil(`the echo of datagram ${i}`, () => echoed.length === i + 1);
    }
    expect(echoed.map((e) => e.length)).toEqual(sizes);
    echoed.forEach((e, i) => expect(e.equals(Buffer.alloc(sizes[i]!, i + 1))).toBe(true));
    expect(atListener.length).toBe(0);
    const bytes = sizes.reduce((a, b) => a + b, 0);
    expect(host.stats()).toMatchObject({ toStream: sizes.length, toStreamBytes: bytes, toUdp: sizes.length, toUdpBytes: bytes, overBudget: 0, end: 0 });
    expect(guest.stats()).toMatchObject({ toStream: sizes.length, toStreamBytes: bytes, toUdp: sizes.length, toUdpBytes: bytes, overBudget: 0, end: 0 });

    // Another client of the same port still reaches the listener, not the flow's socket.
    const other = await bound();
    other.send(Buffer.from("elsewhere"), listener.localPort(), "127.0.0.1");
    await waitUntil("the other client's datagram at the listener", () => atListener.length === 1);
    expect(String(atListener[0])).toBe("elsewhere");

    host.close();
    await waitUntil("both pumps ended", () => ends.length === 2);
    expect(ends.map((e) => e.end).sort()).toEqual([PUMP_END_EOF, 2].sort());
  });

  test("datagrams of one size in a row go to the UDP socket as a few messages (UDP_SEGMENT), and each arrives whole and in order, shorter and empty ones among them", async () => {
    const server = NativeUdpSocket.open(shim, loop, { local: { host: "127.0.0.1", port: 0 }, bufferBytes: 1 << 20 });
    cleanups.push(() => server.close());
    const got: Buffer[] = [];
    server.receive((d) => got.push(...d));
    const toServer = NativeUdpSocket.open(shim, loop, { peer: { host: "127.0.0.1", port: server.localPort() }, bufferBytes: 1 << 20 }).fd;
    const [pumped, far] = await streamPair();
    const pump = pumps.add(toServer, socketFd(pumped)!, { budget: 1 << 20 }, () => {});
    shim.close(toServer);
    pumped.destroy();

    const sizes = [...Array(40).fill(1400), 700, 0, ...Array(20).fill(1400), 3, 60_000, 60_000];
    const datagrams = sizes.map((n, i) => Buffer.alloc(n, i));
    const frames = Buffer.alloc(sizes.reduce((a, n) => a + 4 + n, 0));
    let at = 0;
    for (const d of datagrams) at = writeDatagramFrame(frames, at, d);
    far.write(frames);
    await waitUntil("every datagram at the server", () => got.length === sizes.length);
    expect(got.map((d) => d.length)).toEqual(sizes);
    got.forEach((d, i) => expect(d.equals(datagrams[i]!)).toBe(true));
    const stats = pump.stats();
    expect(stats).toMatchObject({ toUdp: sizes.length, toUdpBytes: sizes.reduce((a, n) => a + n, 0), unsent: 0 });
    expect(stats.udpSends).toBeLessThanOrEqual(sizes.length / 4);
  });

  test("over its budget the pump drops (counted), and a credit from the far end lets more through; a broken frame ends it as bad", async () => {
    const listener = NativeUdpSocket.open(shim, loop, { local: { host: "127.0.0.1", port: 0 }, bufferBytes: 1 << 20 });
    cleanups.push(() => listener.close());
    listener.receive(() => {});
    const client = await bound();
    const [pumped, far] = await streamPair();
    const flowFd = pumps.flowSocket(listener.fd, raw(client.address().port), 1 << 20);
    const ends: PumpStats[] = [];
    const pump = pumps.add(flowFd, socketFd(pumped)!, { budget: 100_000 }, (s) => ends.push(s));
    shim.close(flowFd);
    pumped.destroy();
    const decoder = new DatagramFrameDecoder();
    const got: Buffer[] = [];
    far.on("data", (chunk: Buffer) => got.push(...decoder.push(chunk).datagrams));
    far.resume();

    for (let i = 0; i < 30; i++) client.send(Buffer.alloc(10_000, i), listener.localPort(), "127.0.0.1");
    await waitUntil("30 datagrams dealt with", () => pump.stats().toStream + pump.stats().overBudget === 30);
    expect(pump.stats()).toMatchObject({ toStream: 10, overBudget: 20 });
    await waitUntil("10 framed datagrams at the far end", () => got.length === 10);
    expect(got.every((d, i) => d.equals(Buffer.alloc(10_000, i)))).toBe(true);

    far.write(creditFrames(50_000));
    await new Promise((r) => setTimeout(r, 50));
    for (let i = 0; i < 6; i++) client.send(Buffer.alloc(10_000, 100 + i), listener.localPort(), "127.0.0.1");
    await waitUntil("6 more dealt with", () => pump.stats().toStream + pump.stats().overBudget === 36);
    expect(pump.stats()).toMatchObject({ toStream: 15, overBudget: 21 });

    // Datagrams from the stream go to the client; then a head over 65,535 that is no credit.
    const frame = Buffer.alloc(4 + 5);
    writeDatagramFrame(frame, 0, Buffer.from("hello"));
    const replies: Buffer[] = [];
    client.on("message", (m) => replies.push(m));
    far.write(frame);
    await waitUntil("the framed reply at the client", () => replies.length === 1);
    expect(String(replies[0])).toBe("hello");
    far.write(Buffer.from([0x00, 0x01, 0x00, 0x00]));
    await waitUntil("the pump ended", () => ends.length === 1);
    expect(ends[0]).toMatchObject({ end: PUMP_END_BAD, err: 0x10000, toUdp: 1 });
  });

  test("a flow's budget grows with what the far end delivers: to 40 ms of its rate, never below the budget given nor above 4 times it", () => {
    const MiB = 1 << 20;
    // 500 Mbit/s is 62,500 bytes a ms: 40 ms of it is 2.5 MB.
    expect(shim.udpPumpGrownBudget(MiB, 62_500 * 16, 16)).toBe(2_500_000);
    expect(shim.udpPumpGrownBudget(MiB, 12_500 * 20, 20)).toBe(MiB); // 100 Mbit/s: the budget given
    expect(shim.udpPumpGrownBudget(MiB, 1_000_000_000, 16)).toBe(4 * MiB); // a flood, or a lying peer: 4 times at most
    expect(shim.udpPumpGrownBudget(MiB, 0, 10_000)).toBe(MiB); // idle
    expect(shim.udpPumpGrownBudget(100_000, 5_000_000, 0)).toBe(100_000);
    expect(shim.udpPumpGrownBudget(0, 1, 1)).toBeLessThan(0);
  });

  test("IPv6: a flow socket on an IPv6-only listener's port answers its client from that port; the frames come back to it whole", async () => {
    const listener = NativeUdpSocket.open(shim, loop, { local: { host: "::1", port: 0 }, v6only: true, bufferBytes: 1 << 20 });
    cleanups.push(() => listener.close());
    const atListener: Buffer[] = [];
    listener.receive((d) => atListener.push(...d));
    const client = dgram.createSocket({ type: "udp6", ipv6Only: true });
    await new Promise<void>((resolve) => client.bind(0, "::1", resolve));
    cleanups.push(() => client.close());
    const replies: { data: Buffer; from: dgram.RemoteInfo }[] = [];
    client.on("message", (data, from) => replies.push({ data, from }));
    const [pumped, far] = await streamPair();
    const flowFd = pumps.flowSocket(listener.fd, raw(client.address().port, "::1"), 1 << 20);
    const pump = pumps.add(flowFd, socketFd(pumped)!, { budget: 1 << 20 }, () => {});
    shim.close(flowFd);
    pumped.destroy();
    // The far end sends every datagram back as it came (frames as they are, credits dropped).
    const decoder = new DatagramFrameDecoder();
    far.on("data", (chunk: Buffer) => {
      for (const d of decoder.push(chunk).datagrams) {
        const frame = Buffer.alloc(4 + d.length);
        writeDatagramFrame(frame, 0, d);
        far.write(frame);
      }
    });
    far.resume();
    for (const n of [5, 1400, 20_000]) client.send(Buffer.alloc(n, n & 0xff), listener.localPort(), "::1");
    await waitUntil("three replies", () => replies.length === 3);
    expect(replies.map((r) => r.data.length)).toEqual([5, 1400, 20_000]);
    expect(replies.every((r) => r.from.port === listener.localPort() && r.from.address === "::1")).toBe(true);
    expect(atListener.length).toBe(0);
    expect(pump.stats()).toMatchObject({ toStream: 3, toUdp: 3, toUdpBytes: 21_405 });
    pump.abort();
  });

  /** A client's flow on `listener`'s port, pumped to one end of a stream pair (the other end: `far`). */
  async function flowOn(listener: NativeUdpSocket) {
    const client = await bound();
    const [pumped, far] = await streamPair();
    const flowFd = pumps.flowSocket(listener.fd, raw(client.address().port), 1 << 20);
    const ends: PumpStats[] = [];
    const pump = pumps.add(flowFd, socketFd(pumped)!, { budget: 1 << 20 }, (s) => ends.push(s));
    shim.close(flowFd);
    pumped.destroy();
    return { far, pump, ends };
  }

  test("a flow ended here lets go of the forward's port at once (a new listener binds it) and ends its stream with EOF; the far end's EOF finishes it", async () => {
    const listener = NativeUdpSocket.open(shim, loop, { local: { host: "127.0.0.1", port: 0 }, bufferBytes: 1 << 20 });
    const port = listener.localPort();
    const { far, pump, ends } = await flowOn(listener);
    let farEnded = false;
    far.on("end", () => (farEnded = true));
    far.resume();

    listener.close();
    pump.close();
    const again = NativeUdpSocket.open(shim, loop, { local: { host: "127.0.0.1", port }, bufferBytes: 0 });
    cleanups.push(() => again.close());
    expect(again.localPort()).toBe(port);
    await waitUntil("the far end's EOF", () => farEnded);
    expect(ends.length).toBe(0); // it waits for the far end's end
    far.end();
    await waitUntil("the pump ended", () => ends.length === 1);
    expect(ends[0]!.end).toBe(2); // ended here, answered by the far end
  });

  test("the far end's reset of the stream ends the flow as reset (ECONNRESET), not as an EOF", async () => {
    const listener = NativeUdpSocket.open(shim, loop, { local: { host: "127.0.0.1", port: 0 }, bufferBytes: 1 << 20 });
    cleanups.push(() => listener.close());
    const { far, ends } = await flowOn(listener);
    far.resetAndDestroy();
    await waitUntil("the pump ended", () => ends.length === 1);
    expect(ends[0]).toMatchObject({ end: PUMP_END_RESET, err: 104 }); // ECONNRESET
  });

  test("a flow aborted here resets its stream: the far end gets ECONNRESET, not an EOF", async () => {
    const listener = NativeUdpSocket.open(shim, loop, { local: { host: "127.0.0.1", port: 0 }, bufferBytes: 1 << 20 });
    cleanups.push(() => listener.close());
    const { far, pump, ends } = await flowOn(listener);
    const farEnd = new Promise<string>((resolve) => {
      far.once("end", () => resolve("EOF"));
      far.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    far.resume();
    pump.abort();
    expect(await farEnd).toBe("ECONNRESET");
    await waitUntil("the pump ended", () => ends.length === 1);
    expect(ends[0]!.end).toBe(PUMP_END_RESET);
  });

  test("a flow ended here whose far end never ends its stream is finished after 5 s (ETIMEDOUT), without any other event to wake the pump", async () => {
    const listener = NativeUdpSocket.open(shim, loop, { local: { host: "127.0.0.1", port: 0 }, bufferBytes: 1 << 20 });
    cleanups.push(() => listener.close());
    const { far, pump, ends } = await flowOn(listener);
    far.resume(); // reads, never ends
    pump.close();
    await waitUntil("the pump ended by its deadline", () => ends.length === 1, 10_000);
    expect(ends[0]).toMatchObject({ end: 2, err: 110 }); // ETIMEDOUT
  }, 15_000);
});
