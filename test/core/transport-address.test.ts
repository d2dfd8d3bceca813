import { expect, test } from "bun:test";
import { grpcTarget, parseTransportAddress } from "../../src/core/transport-address.ts";
import { backoffDelay } from "../../src/core/backoff.ts";

test("unix and tcp addresses", () => {
  expect(parseTransportAddress("unix:///run/porthole/guest.sock")).toEqual({ kind: "unix", path: "/run/porthole/guest.sock" });
  expect(parseTransportAddress("tcp://127.0.0.1:2222")).toEqual({ kind: "tcp", host: "127.0.0.1", port: 2222 });
  expect(grpcTarget(parseTransportAddress("tcp://[::1]:2222"))).toBe("[::1]:2222");
  expect(grpcTarget(parseTransportAddress("unix:///a/b.sock"))).toBe("unix:///a/b.sock");
});

test.each([
  ["/run/x.sock", /not an address/],
  ["unix://relative.sock", /must be absolute/],
  ["tcp://127.0.0.1", /not host:port/],
  ["tcp://127.0.0.1:0", /port 0/],
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
