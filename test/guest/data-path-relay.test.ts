// The guest end of the data path (guest/data-server.ts) in this process, over a real unix
// socket and a real TCP target: after the header and the status byte, the bytes of the
// stream go through the native relay, counted there.
import { afterEach, beforeAll, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeDataHeader, STATUS_CONNECTED } from "../../src/core/data-header.ts";
import { handleDataStream, newDataSecret } from "../../src/guest/data-server.ts";
import { prepareRelay, relayStatus } from "../../src/transport/fast-relay.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

beforeAll(async () => {
  expect((await prepareRelay(() => {}, {})).mode).toBe("native");
});

function listen(server: net.Server, at: string | number): Promise<void> {
  cleanups.push(() => server.close());
  return new Promise((resolve) => (typeof at === "string" ? server.listen(at, resolve) : server.listen(at, "127.0.0.1", resolve)));
}

test("a data stream's bytes, both ways, go through the native relay after the header (bytes sent with the header too)", async () => {
  const target = net.createServer({ allowHalfOpen: true }, (s) => s.pipe(s));
  await listen(target, 0);
  const secret = newDataSecret();
  const path = join(tmpdir(), `porthole-data-test-${process.pid}.sock`);
  await listen(net.createServer({ allowHalfOpen: true }, (s) => handleDataStream(s, secret)), path);

  const before = relayStatus();
  const first = randomBytes(1000); // arrives in the same write as the header
  const rest = randomBytes(3 << 20);
  const stream = net.connect({ path, allowHalfOpen: true });
  const reply = new Promise<Buffer>((resolve) => {
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => resolve(Buffer.concat(chunks)));
  });
  const header = encodeDataHeader(secret, { protocol: "tcp", address: `127.0.0.1:${(target.address() as net.AddressInfo).port}` });
  stream.write(Buffer.concat([Buffer.from(header), first]));
  stream.end(rest);
  const got = await reply;
  expect(got[0]).toBe(STATUS_CONNECTED);
  expect(sha256(got.subarray(1))).toBe(sha256(Buffer.concat([first, rest])));
  const after = relayStatus();
  expect(after.nativeRelays - before.nativeRelays).toBe(1);
  // The whole echo (target to host) and the part of the upload that JavaScript had not read
  // with the header: all spliced.
  expect(after.bytesSpliced - before.bytesSpliced).toBeGreaterThan(first.length + rest.length);
  expect(after.javascriptRelays).toBe(before.javascriptRelays);
});
