import { expect, test } from "bun:test";
import { formatTransportAddress, parseTransportAddress } from "../../src/core/transport-address.ts";
import { backoffDelay } from "../../src/core/backoff.ts";

test.each([
  ["unix:///run/porthole/guest.sock", { kind: "unix", path: "/run/porthole/guest.sock" }],
  ["tcp://127.0.0.1:2222", { kind: "tcp", host: "127.0.0.1", port: 2222 }],
  ["tcp://[::1]:2222", { kind: "tcp", host: "::1", port: 2222 }],
  ["vsock://42:2222", { kind: "vsock", cid: 42, port: 2222 }], // parsed only: no test connects vsock
  ["vsock://:2222", { kind: "vsock", port: 2222 }],
  ["serial:///dev/virtio-ports/io.lima-vm.guest_agent.0", { kind: "serial", path: "/dev/virtio-ports/io.lima-vm.guest_agent.0" }],
])("%s parses and prints back", (text, parsed) => {
  expect(parseTransportAddress(text)).toEqual(parsed as never);
  expect(formatTransportAddress(parseTransportAddress(text))).toBe(text);
});

test.each([
  ["/run/x.sock", /not an address/],
  ["unix://relative.sock", /must be absolute/],
  ["serial://ttyS0", /must be absolute/],
  ["tcp://127.0.0.1", /not host:port/],
  ["tcp://127.0.0.1:0", /port 0/],
  ["vsock://host:22", /use vsock:\/\/CID:PORT/],
  ["vsock://42:99999999999", /is not a vsock port/],
  ["http://x:1", /unsupported scheme "http"/],
])("%s is a clear error", (text, message) => {
  expect(() => parseTransportAddress(text)).toThrow(message);
});

test("backoff grows, stays within bounds and is jittered", () => {
  const opts = { minMs: 100, maxMs: 2000 };
  expect(backoffDelay(0, opts, () => 1)).toBe(100);
  expect(backoffDelay(3, opts, () => 1)).toBe(800);
  expect(backoffDelay(50, opts, () => 1)).toBe(2000);
  expect(backoffDelay(50, opts, () => 0)).toBe(100);
});
