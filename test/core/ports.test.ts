import { expect, test } from "bun:test";
import { applyDiff, diffPorts, invalidGuestPort, isEmptyDiff, portKey, toPortSet } from "../../src/core/ports.ts";

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

test("a guest's port is refused when its address is not one a socket can have, and the refusal quotes at most 64 characters of it", () => {
  // The runtimes' isIPv6 takes an IPv6 zone of any length: a guest could hand the host megabytes per port.
  const huge = `fe80::1%${"a".repeat(1_000_000)}`;
  const why = invalidGuestPort(tcp(huge, 80));
  expect(why).toBe(`${JSON.stringify(huge.slice(0, 64))}… (1000008 characters) is not an IP address`);
  expect(invalidGuestPort({ protocol: "x".repeat(100_000), ip: "127.0.0.1", port: 80 })!.length).toBeLessThan(200);
  expect(invalidGuestPort(tcp("fe80::1%eth0", 80))).toBeUndefined(); // a zone as an interface names it
  expect(invalidGuestPort(tcp("fe80::1%br-0a1b2c3d4e5f", 80))).toBeUndefined();
  expect(invalidGuestPort(tcp("fe80::1%eth0 \n", 80))).toBe('"fe80::1%eth0 \\n" is not an IP address');
  expect(invalidGuestPort(tcp("fe80::1%", 80))).toBeDefined();
  expect(invalidGuestPort(tcp("::ffff:192.168.100.200", 80))).toBeUndefined();
  expect(invalidGuestPort(tcp("0000:0000:0000:0000:0000:ffff:192.168.100.200", 80))).toBeUndefined(); // 45 characters
});
