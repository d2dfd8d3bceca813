// A guest's Hello as the host keeps it: bounded, without control characters, addresses checked.
import { expect, test } from "bun:test";
import { checkedHello } from "../../src/core/guest-hello.ts";
import type { HelloResponse } from "../../src/proto/guest-service.ts";

const base: HelloResponse = {
  version: "porthole 1.0", features: ["eof"], ephemeral_port_low: 32768, ephemeral_port_high: 60999,
  data_endpoints: [], data_secret: "", addresses: [],
};

test("a well-behaved Hello is kept as it is", () => {
  const hello = { ...base, addresses: ["192.168.5.15"], port_detector: "port detector: ebpf (…)", data_endpoints: ["/run/a.sock"] };
  expect(checkedHello(hello)).toEqual(hello);
});

test("a hostile Hello: escapes and newlines replaced, sizes and counts bounded, addresses only where they could be the guest's", () => {
  const hello = checkedHello({
    ...base,
    version: "1.0\u001b[2J\nforged line" + "x".repeat(10_000),
    features: Array.from({ length: 10_000 }, (_, i) => `f${i}`),
    addresses: ["127.0.0.1", "not an address", "10.0.2.15", "\u001b[31m"],
    port_detector: "ebpf\u001b]0;owned\u0007" + "y".repeat(10_000),
    data_endpoints: Array.from({ length: 1000 }, () => "/x"),
  });
  expect(hello.version.length).toBeLessThanOrEqual(64);
  expect(hello.version).not.toMatch(/[\u0000-\u001f]/);
  expect(hello.features).toHaveLength(64);
  expect(hello.addresses).toEqual(["10.0.2.15"]);
  expect(hello.port_detector!.length).toBeLessThanOrEqual(512);
  expect(hello.port_detector).not.toMatch(/[\u0000-\u001f]/);
  expect(hello.data_endpoints).toHaveLength(16);
});

test("a data secret is kept only in the form a porthole guest hands out (it goes into every data-stream header the host writes)", () => {
  const secret = "0123456789abcdef0123456789abcdef0123456789abcdef";
  expect(checkedHello({ ...base, data_secret: secret }).data_secret).toBe(secret);
  expect(checkedHello({ ...base, data_secret: "a".repeat(1 << 20) }).data_secret).toBe("");
  expect(checkedHello({ ...base, data_secret: "0123456789abcdef 0123" }).data_secret).toBe("");
  expect(checkedHello({ ...base, data_secret: "short" }).data_secret).toBe("");
  expect(checkedHello({ ...base, data_secret: undefined as unknown as string }).data_secret).toBe("");
});
