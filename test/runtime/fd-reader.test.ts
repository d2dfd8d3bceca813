// readFd, the runtime's cheapest reader of a connected fd (Bun's socket API on Bun): what the
// far end writes arrives whole and in order, its close ends the reader once, and closing the
// reader closes the fd. On a real socketpair from the native shim.
import { beforeAll, expect, test } from "bun:test";
import * as net from "node:net";
import { readFd, socketFromFd } from "../../src/runtime/fd-socket.ts";
import { check, type NativeShim } from "../../src/runtime/native-api.ts";
import { loadNative } from "../../src/runtime/native.ts";

let shim: NativeShim;
beforeAll(async () => {
  const loaded = await loadNative();
  if (!loaded.shim) throw new Error(`the native shim did not load: ${loaded.error} (run make shim)`);
  shim = loaded.shim;
});

function pair(): [number, net.Socket] {
  const fds = new Int32Array(2);
  check(shim, shim.socketpair(fds), "socketpair");
  return [fds[0]!, socketFromFd(fds[1]!)];
}

test("what the far end writes arrives in order, and its close ends the reader once, without an error", async () => {
  const [fd, far] = pair();
  const got: Buffer[] = [];
  const ends: (Error | undefined)[] = [];
  const ended = new Promise<void>((resolve) => {
    readFd(fd, { data: (c) => got.push(Buffer.from(c)), end: (err) => (ends.push(err), resolve()) });
  });
  const sent = Buffer.alloc(1 << 20, 7).map((_, i) => i % 251);
  for (let at = 0; at < sent.length; at += 64 << 10) far.write(sent.subarray(at, at + (64 << 10)));
  far.end();
  await ended;
  await Bun.sleep(50); // a second end would come now
  expect(Buffer.concat(got).equals(sent)).toBe(true);
  expect(ends).toEqual([undefined]);
});

test("closing the reader closes its fd: the far end sees the close", async () => {
  const [fd, far] = pair();
  const reader = readFd(fd, { data: () => {}, end: () => {} });
  await Bun.sleep(20); // adopted
  const farClosed = new Promise<void>((resolve) => far.once("close", () => resolve()));
  far.on("error", () => {});
  far.resume();
  reader.close();
  await farClosed;
});
