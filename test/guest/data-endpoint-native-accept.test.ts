// The guest's data endpoint accepted in the shim's relay thread (transport/data-listen.ts,
// native/relay.c "data listeners"), in this process over a real unix socket with real TCP and
// unix targets: a well-formed PHDATA2 stream is dialled there (counted by the listener as
// carried), everything else is handed to the JavaScript data server untouched (counted as
// handed), which refuses it with its reason as before.
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeDataHeader, STATUS_CONNECTED, STATUS_FAILED } from "../../src/core/data-header.ts";
import { dataFrameHeader, END_EOF, FrameDecoder } from "../../src/core/data-frames.ts";
import { newDataSecret, serveDataEndpoint } from "../../src/guest/data-server.ts";
import { prepareRelay, relayStatus } from "../../src/transport/fast-relay.ts";
import type { Served } from "../../src/transport/serve.ts";
import { freePort } from "../lab.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

const secret = newDataSecret();
const endpoint = join(tmpdir(), `porthole-native-accept-${process.pid}.sock`);
const refusals: string[] = [];
let served: Served;
let echoPort = 0;
let echo: net.Server;

beforeAll(async () => {
  expect((await prepareRelay(() => {}, {})).mode).toBe("native");
  // An echo server that ends its side once the client ended (half-close kept).
  echo = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
  await new Promise<void>((resolve) => echo.listen(0, "127.0.0.1", resolve));
  echoPort = (echo.address() as net.AddressInfo).port;
  served = await serveDataEndpoint({ kind: "unix", path: endpoint }, secret, (why) => refusals.push(why), { log: () => {} });
  expect(served.nativeStats).toBeDefined();
});
afterAll(() => {
  served.close();
  echo.close();
});

const stats = () => served.nativeStats!();

/** Connects to the endpoint, sends `parts` (one write each, a tick apart), ends when `end`; resolves with all it got and how it ended. */
function exchange(parts: Buffer[], end = true): Promise<{ got: Buffer; how: "eof" | "error" }> {
  return new Promise((resolve) => {
    const s = net.connect({ path: endpoint, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    s.on("data", (c: Buffer) => chunks.push(c));
    s.once("end", () => (s.destroy(), resolve({ got: Buffer.concat(chunks), how: "eof" })));
    s.once("error", () => resolve({ got: Buffer.concat(chunks), how: "error" }));
    s.once("close", () => resolve({ got: Buffer.concat(chunks), how: "error" }));
    void (async () => {
      for (const p of parts) {
        s.write(p);
        await Bun.sleep(20);
      }
      if (end) s.end();
    })();
  });
}

const encodeFrame = (data: Buffer) => (data === END_EOF ? END_EOF : Buffer.concat([dataFrameHeader(data.length), data]));
function decodeFrames(bytes: Buffer): { data: Buffer; end?: "eof" | "reset" } {
  const parts: Buffer[] = [];
  let end: "eof" | "reset" | undefined;
  for (const item of new FrameDecoder().push(bytes)) {
    if (item.kind === "data") parts.push(item.data);
    else if (item.kind === "end") end = item.how;
    else throw new Error(item.reason);
  }
  return { data: Buffer.concat(parts), end };
}

const header = (target: string, protocol: "tcp" | "unix" = "tcp", magic2 = true, key = secret) => Buffer.from(encodeDataHeader(key, { protocol, address: target }, magic2));

test("well-formed streams never reach JavaScript: the relay thread dials, answers the status byte and relays (echo through frames, the client's end frame comes back as EOF)", async () => {
  const before = stats();
  const js = relayStatus().javascriptRelays;
  for (let i = 0; i < 20; i++) {
    const payload = randomBytes(1000 + i);
    const { got, how } = await exchange([Buffer.concat([header(`127.0.0.1:${echoPort}`), encodeFrame(payload), encodeFrame(END_EOF)])]);
    expect(how).toBe("eof");
    expect(got[0]).toBe(STATUS_CONNECTED);
    const { data, end } = decodeFrames(got.subarray(1));
    expect(data.equals(payload)).toBe(true);
    expect(end).toBe("eof"); // the echo server's EOF, after the half-close it saw
  }
  const after = stats();
  expect(after.carried - before.carried).toBe(20);
  expect(after.handed - before.handed).toBe(0);
  expect(relayStatus().javascriptRelays).toBe(js);
});

test("a header that arrives in pieces is still taken natively", async () => {
  const before = stats();
  const h = header(`127.0.0.1:${echoPort}`);
  const { got } = await exchange([h.subarray(0, 11), h.subarray(11), Buffer.concat([encodeFrame(Buffer.from("hi")), encodeFrame(END_EOF)])]);
  expect(got[0]).toBe(STATUS_CONNECTED);
  expect(decodeFrames(got.subarray(1)).data.toString()).toBe("hi");
  expect(stats().carried - before.carried).toBe(1);
});

test("a unix socket target is dialled natively too", async () => {
  const path = join(tmpdir(), `porthole-native-accept-target-${process.pid}.sock`);
  const target = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
  await new Promise<void>((resolve) => target.listen(path, resolve));
  cleanups.push(() => target.close());
  const before = stats();
  const { got } = await exchange([Buffer.concat([header(path, "unix"), encodeFrame(Buffer.from("over unix")), encodeFrame(END_EOF)])]);
  expect(got[0]).toBe(STATUS_CONNECTED);
  expect(decodeFrames(got.subarray(1)).data.toString()).toBe("over unix");
  expect(stats().carried - before.carried).toBe(1);
});

test("a target that refuses: the stream hears the failure status, then EOF (no reset before the host read it)", async () => {
  const closed = await freePort();
  const before = stats();
  const { got, how } = await exchange([Buffer.concat([header(`127.0.0.1:${closed}`), encodeFrame(Buffer.from("early bytes"))])], false);
  expect(how).toBe("eof");
  expect([...got]).toEqual([STATUS_FAILED]);
  expect(stats().carried - before.carried).toBe(1);
});

test("every other stream goes to JavaScript untouched, which serves or refuses it with its reason", async () => {
  const before = stats();
  refusals.length = 0;
  // An unframed PHDATA1 stream: served by JavaScript as before (status byte, then plain bytes).
  const plain = await exchange([Buffer.concat([header(`127.0.0.1:${echoPort}`, "tcp", false), Buffer.from("plain")])]);
  expect(plain.got[0]).toBe(STATUS_CONNECTED);
  expect(plain.got.subarray(1).toString()).toBe("plain");
  // A wrong secret, something that is no data stream, and an EOF before the header's end: refused.
  const wrong = await exchange([header(`127.0.0.1:${echoPort}`, "tcp", true, newDataSecret())]);
  expect(wrong.got.length).toBe(0);
  const http = await exchange([Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n")]);
  expect(http.got.length).toBe(0);
  const cut = await exchange([header(`127.0.0.1:${echoPort}`).subarray(0, 30)]);
  expect(cut.got.length).toBe(0);
  // A target spelled otherwise than the host writes it (a leading zero): JavaScript decides (refuses).
  const odd = await exchange([Buffer.from(`PHDATA2 ${secret} tcp 127.0.0.01:${echoPort}\n`)]);
  expect(odd.got.length).toBe(0);
  const after = stats();
  expect(after.handed - before.handed).toBe(5);
  expect(after.carried - before.carried).toBe(0);
  expect(refusals.some((r) => r.includes("wrong secret"))).toBe(true);
  expect(refusals.some((r) => r.includes("bad header"))).toBe(true);
  expect(refusals.some((r) => r.includes("before its header was complete"))).toBe(true);
});
