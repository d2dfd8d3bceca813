import { expect, test } from "bun:test";
import { DiffBatch } from "../../src/core/diff-batch.ts";

const tcp = (port: number, ip = "127.0.0.1") => ({ protocol: "tcp", ip, port });

test("disjoint changes join one diff, in the order they came; take() empties the batch", () => {
  const batch = new DiffBatch();
  expect(batch.empty).toBe(true);
  batch.add({ added: [tcp(8080)], removed: [] });
  expect(batch.accepts({ added: [tcp(9090)], removed: [tcp(7070)] })).toBe(true);
  batch.add({ added: [tcp(9090)], removed: [tcp(7070)] });
  expect(batch.take()).toEqual({ added: [tcp(8080), tcp(9090)], removed: [tcp(7070)] });
  expect(batch.empty).toBe(true);
  expect(batch.take()).toEqual({ added: [], removed: [] });
});

test("a change that names a batched port again (closed after opening, reopened after closing) is refused; another address or protocol is not the same port", () => {
  const batch = new DiffBatch();
  batch.add({ added: [tcp(8080)], removed: [tcp(9090)] });
  expect(batch.accepts({ added: [], removed: [tcp(8080)] })).toBe(false);
  expect(batch.accepts({ added: [tcp(9090)], removed: [] })).toBe(false);
  expect(batch.accepts({ added: [tcp(8080, "::1"), { protocol: "udp", ip: "127.0.0.1", port: 8080 }], removed: [] })).toBe(true);
  batch.take();
  expect(batch.accepts({ added: [], removed: [tcp(8080)] })).toBe(true);
});
