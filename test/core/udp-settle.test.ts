import { expect, test } from "bun:test";
import { UdpSettler } from "../../src/core/udp-settle.ts";

const udp = (port: number) => ({ protocol: "udp", ip: "0.0.0.0", port });
const tcp = (port: number) => ({ protocol: "tcp", ip: "127.0.0.1", port });

test("TCP listeners at once; an unconnected UDP socket once it has stayed bound long enough, whatever its port", () => {
  const s = new UdpSettler(2000);
  expect(s.settle([tcp(8080), udp(40011), udp(53)], 0)).toEqual({ ports: [tcp(8080)], pending: true });
  expect(s.settle([tcp(8080), udp(40011), udp(53)], 1999)).toEqual({ ports: [tcp(8080)], pending: true });
  expect(s.settle([tcp(8080), udp(40011), udp(53)], 2000)).toEqual({ ports: [tcp(8080), udp(40011), udp(53)], pending: false });
});

test("a short-lived UDP socket (a client's query) is never reported, and a new one on the same port starts over", () => {
  const s = new UdpSettler(2000);
  s.settle([udp(51820)], 0);
  expect(s.settle([], 500)).toEqual({ ports: [], pending: false });
  expect(s.settle([udp(51820)], 2100)).toEqual({ ports: [], pending: true });
  expect(s.settle([udp(51820)], 4100).ports).toEqual([udp(51820)]);
});
