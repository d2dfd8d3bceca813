import { expect, test } from "bun:test";
import { applyDiff, diffPorts, isEmptyDiff, portKey, toPortSet } from "../../src/core/ports.ts";

const tcp = (ip: string, port: number) => ({ protocol: "tcp", ip, port });

test("diff lists what was added and what was removed", () => {
  const before = toPortSet([tcp("127.0.0.1", 80), tcp("::", 443)]);
  const after = toPortSet([tcp("::", 443), tcp("0.0.0.0", 8080)]);
  expect(diffPorts(before, after)).toEqual({ added: [tcp("0.0.0.0", 8080)], removed: [tcp("127.0.0.1", 80)] });
});

test("an unchanged set gives an empty diff", () => {
  const set = toPortSet([tcp("127.0.0.1", 80)]);
  expect(isEmptyDiff(diffPorts(set, toPortSet([tcp("127.0.0.1", 80)])))).toBe(true);
});

test("the same address on TCP and UDP are different ports", () => {
  const diff = diffPorts(toPortSet([tcp("127.0.0.1", 53)]), toPortSet([{ protocol: "udp", ip: "127.0.0.1", port: 53 }]));
  expect(diff.added.length + diff.removed.length).toBe(2);
});

test("applying a diff reproduces the later set", () => {
  const before = toPortSet([tcp("127.0.0.1", 80), tcp("::1", 81)]);
  const after = toPortSet([tcp("::1", 81), tcp("::", 82)]);
  applyDiff(before, diffPorts(before, after));
  expect([...before.keys()].sort()).toEqual([...after.keys()].sort());
  expect(portKey(tcp("::1", 81))).toBe("tcp [::1]:81");
});
