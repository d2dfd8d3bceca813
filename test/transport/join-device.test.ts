// A character device (a virtio-serial port) joined to a socket by the native relay. A FIFO
// stands in for the port here: it is no socket, and its read end reads EOF once its writer
// closes, as a port does once its host went away.
import { afterEach, beforeAll, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { closeSync, constants, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import type * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { joinDevice, prepareRelay } from "../../src/transport/fast-relay.ts";
import { socketPair } from "../../src/transport/socketpair.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).reverse().forEach((f) => f()));

beforeAll(async () => {
  expect((await prepareRelay(() => {}, {})).mode).toBe("native");
});

/** A FIFO's read end (the relay's "device") and its write end (the port's far end). */
function fifo(): { device: number; writer: number } {
  const dir = mkdtempSync(join(tmpdir(), "porthole-fifo-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "port");
  expect(spawnSync("mkfifo", [path]).status).toBe(0);
  const device = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const writer = openSync(path, constants.O_WRONLY);
  return { device, writer };
}

function collect(socket: net.Socket): { data: () => Buffer; closed: Promise<void> } {
  const chunks: Buffer[] = [];
  socket.on("data", (c: Buffer) => chunks.push(c));
  socket.on("error", () => {});
  return { data: () => Buffer.concat(chunks), closed: new Promise((r) => socket.once("close", () => r())) };
}

test("the device's EOF (its far end went away) ends the relay: the socket side gets what was read, then is closed, without waiting for it", async () => {
  const { device, writer } = fifo();
  const [inner, outer] = (await socketPair())!;
  cleanups.push(() => inner.destroy());
  // Not reading yet: a half-close would leave the relay waiting for this side's own end
  // (as an agent's connection with bytes still queued for a port nobody reads any more).
  inner.pause();
  let ended!: () => void;
  const relayEnded = new Promise<void>((r) => (ended = r));
  const relay = joinDevice(device, outer, () => ended());
  expect("abort" in relay).toBe(true); // joined, not refused
  closeSync(device); // the relay holds its own copies
  outer.destroy();
  writeSync(writer, "from the port");
  closeSync(writer); // the far end goes: the device reads EOF
  // The relay ends on its own (a half-close would wait for the socket side to close first).
  await relayEnded;
  const got = collect(inner);
  inner.resume();
  await got.closed;
  expect(got.data().toString()).toBe("from the port");
});

test("abort() ends a relay whose device never ends", async () => {
  const { device, writer } = fifo();
  cleanups.push(() => closeSync(writer));
  const [inner, outer] = (await socketPair())!;
  cleanups.push(() => inner.destroy());
  const got = collect(inner);
  let ended!: () => void;
  const relayEnded = new Promise<void>((r) => (ended = r));
  const relay = joinDevice(device, outer, () => ended());
  if (!("abort" in relay)) throw new Error(`not joined: ${relay.notJoined}`);
  closeSync(device);
  outer.destroy();
  relay.abort();
  await relayEnded;
  await got.closed;
});
