// The in-process stream pair that replaces a socketpair behind the preface check: bytes both
// ways in order, backpressure (a writer waits for a slow reader), EOF and destroy carried across.
import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { memoryPair } from "../../src/transport/memory-pair.ts";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("memoryPair", () => {
  test("16 MiB from outer to inner arrive intact and in order; its EOF reaches inner, whose own EOF (not half-open) comes back", async () => {
    const [inner, outer] = memoryPair();
    const data = randomBytes(16 << 20);
    const got: Buffer[] = [];
    const innerEnded = new Promise<void>((r) => inner.on("end", r));
    inner.on("data", (c: Buffer) => got.push(c));
    const replies: Buffer[] = [];
    const outerEnded = new Promise<void>((r) => outer.on("end", r));
    outer.on("data", (c: Buffer) => replies.push(c));
    for (let i = 0; i < data.length; i += 65536) outer.write(data.subarray(i, i + 65536));
    outer.end();
    await innerEnded;
    expect(sha(Buffer.concat(got))).toBe(sha(data));
    // inner does not stay half-open (an accepted socket's behaviour): its EOF reaches outer.
    await outerEnded;
    expect(Buffer.concat(replies).length).toBe(0);
  });

  test("a reader that does not read holds the writer back (backpressure), and reading releases it", async () => {
    const [inner, outer] = memoryPair();
    let written = 0;
    const chunk = Buffer.alloc(65536);
    while (outer.write(chunk)) written += chunk.length;
    expect(written).toBeLessThan(1 << 20); // the writer was told to wait long before 1 MiB
    const drained = new Promise<void>((r) => outer.once("drain", r));
    inner.resume();
    await drained;
  });

  test("destroying one end destroys the other (a reset reaches the HTTP/2 side)", async () => {
    const [inner, outer] = memoryPair();
    const closed = new Promise<void>((r) => inner.once("close", r));
    outer.destroy();
    await closed;
    expect(inner.destroyed).toBe(true);
  });
});
