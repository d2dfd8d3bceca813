// A log that something outside may drive at any rate: a few lines per interval, then the count of the unsaid.
import { expect, test } from "bun:test";
import { rateLimitedLog } from "../../src/core/log-text.ts";

test("at most `burst` lines per interval; the next line says how many were left unsaid", () => {
  const lines: string[] = [];
  let now = 1_000;
  const log = rateLimitedLog((l) => lines.push(l), 5000, (n) => `and ${n} more`, 2, () => now);
  for (let i = 0; i < 100_000; i++) log(`report ${i}`);
  expect(lines).toEqual(["report 0", "report 1"]);
  now += 5000;
  log("later");
  now += 1;
  log("again");
  log("over");
  expect(lines).toEqual(["report 0", "report 1", "later (and 99998 more)", "again"]);
  now += 5000;
  log("last");
  expect(lines).toEqual(["report 0", "report 1", "later (and 99998 more)", "again", "last (and 1 more)"]);
});

test("one line per interval by default (the guest's refusals of strangers' data streams)", () => {
  const lines: string[] = [];
  let now = 0;
  const log = rateLimitedLog((l) => lines.push(l), 10_000, (n) => `and ${n} more refused`, undefined, () => now);
  log("a");
  log("b");
  now = 10_000;
  log("c");
  expect(lines).toEqual(["a", "c (and 1 more refused)"]);
});
