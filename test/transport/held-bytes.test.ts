// Bytes held for an endpoint that cannot take them (transport/held-bytes.ts): they cost about
// what they are, whatever the frames they came in, and come out whole and in order.
import { expect, test } from "bun:test";
import { compactView, HeldBytes } from "../../src/transport/held-bytes.ts";

test("100,000 one-byte views of 64 KiB read buffers are held as a few buffers of their own, in order", () => {
  const held = new HeldBytes();
  for (let i = 0; i < 100_000; i++) {
    const read = Buffer.alloc(64 * 1024, i % 251);
    held.add(read.subarray(100, 101));
  }
  expect(held.bytes).toBe(100_000);
  const parts = held.take();
  expect(parts.length).toBeLessThanOrEqual(2);
  for (const p of parts) expect(p.buffer.byteLength).toBeLessThanOrEqual(64 * 1024); // none of the read buffers kept
  const all = Buffer.concat(parts);
  expect(all.length).toBe(100_000);
  expect(all.every((b, i) => b === i % 251)).toBe(true);
  expect(held.take()).toEqual([]);
  expect(held.bytes).toBe(0);
});

test("a large piece that fills its buffer is kept as it is (no copy on the bulk path); one that uses little of it is copied out", () => {
  const held = new HeldBytes();
  const bulk = Buffer.alloc(64 * 1024, 1);
  const sliver = Buffer.alloc(1 << 20, 2).subarray(0, 20_000);
  held.add(Buffer.from("ab"));
  held.add(bulk);
  held.add(sliver);
  const parts = held.take();
  expect(parts.map((p) => p.length)).toEqual([2, 64 * 1024, 20_000]);
  expect(parts[1]).toBe(bulk);
  expect(parts[2]!.buffer.byteLength).toBeLessThan(1 << 20);
});

test("compactView copies a small view of a large buffer and passes anything else as it is", () => {
  const big = Buffer.alloc(64 * 1024);
  expect(compactView(big.subarray(0, 10)).buffer).not.toBe(big.buffer);
  expect(compactView(big.subarray(0, 32 * 1024))).toHaveLength(32 * 1024);
  expect(compactView(big.subarray(0, 32 * 1024)).buffer).toBe(big.buffer);
});
