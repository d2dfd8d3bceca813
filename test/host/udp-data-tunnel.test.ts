// The host's UDP flow over a data stream (host/udp-data-tunnel.ts), with a stand-in guest that
// writes datagram frames (core/datagram-frames.ts) as a porthole guest's stream does.
import { afterEach, expect, test } from "bun:test";
import * as net from "node:net";
import { datagramFrameSize, writeDatagramFrame } from "../../src/core/datagram-frames.ts";
import { UdpDataTunnel } from "../../src/host/udp-data-tunnel.ts";
import type { TunnelMessage } from "../../src/proto/guest-service.ts";
import { datagramsOf, MAX_DATAGRAMS_PER_MESSAGE } from "../../src/transport/datagram-batch.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

test("thousands of tiny datagrams in one read of the stream are told in messages of at most a batch each: none refused, every byte credited", async () => {
  const count = 20_000;
  const size = 10;
  const server = net.createServer((guest) => {
    const out = Buffer.alloc(count * datagramFrameSize(size));
    let at = 0;
    for (let i = 0; i < count; i++) at = writeDatagramFrame(out, at, Buffer.alloc(size, i % 251));
    guest.write(out, () => setTimeout(() => guest.end(), 100));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => server.close());
  const stream = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  const tunnel = new UdpDataTunnel(new Promise((resolve) => stream.once("connect", () => resolve({ stream }))));
  cleanups.push(() => tunnel.cancel());
  let got = 0;
  let refused = 0;
  let bytes = 0;
  let most = 0;
  tunnel.on("data", (message: TunnelMessage) => {
    const of = datagramsOf(message);
    most = Math.max(most, message.datagrams.length);
    got += of.datagrams.length;
    refused += of.refused;
    for (const d of of.datagrams) bytes += d.length;
  });
  await new Promise((resolve) => tunnel.once("end", resolve));
  expect(most).toBeLessThanOrEqual(MAX_DATAGRAMS_PER_MESSAGE);
  expect(refused).toBe(0); // before: all past the first 4,096 of a read, and a warning that the guest was not porthole
  expect(got).toBe(count);
  expect(bytes).toBe(count * size);
});

test("a datagram is reported handed on only once its stream took it (the flow's budget counts it queued till then, dialling included)", async () => {
  let answer!: (dialled: { stream: net.Socket }) => void;
  const tunnel = new UdpDataTunnel(new Promise((resolve) => (answer = resolve)));
  cleanups.push(() => tunnel.cancel());
  let handed = 0;
  for (let i = 0; i < 3; i++) tunnel.write({ data: Buffer.from("x") }, () => void handed++);
  await Bun.sleep(20);
  expect(handed).toBe(0); // still dialling: they wait
  const received: Buffer[] = [];
  const server = net.createServer((guest) => guest.on("data", (c: Buffer) => received.push(c)));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => server.close());
  const stream = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise((resolve) => stream.once("connect", resolve));
  answer({ stream });
  while (handed < 3) await Bun.sleep(5);
  while (Buffer.concat(received).length < 3 * datagramFrameSize(1)) await Bun.sleep(5);
});
