import { expect, test } from "bun:test";
import { UdpSettler } from "../../src/core/udp-settle.ts";

const udp = (port: number) => ({ protocol: "udp", ip: "0.0.0.0", port });
const tcp = (port: number) => ({ protocol: "tcp", ip: "127.0.0.1", port });

test("TCP listeners and UDP sockets outside the ephemeral range at once; one inside it once it has stayed bound long enough", () => {
  const s = new UdpSettler(2000, [32768, 60999]);
  expect(s.settle([tcp(8080), udp(40011), udp(53)], 0)).toEqual({ ports: [tcp(8080), udp(53)], pending: true });
  expect(s.settle([tcp(8080), udp(40011), udp(53)], 1999)).toEqual({ ports: [tcp(8080), udp(53)], pending: true });
  expect(s.settle([tcp(8080), udp(40011), udp(53)], 2000)).toEqual({ ports: [tcp(8080), udp(40011), udp(53)], pending: false });
});

test("the ephemeral range is the guest's own", () => {
  const s = new UdpSettler(2000, [10000, 20000]);
  expect(s.settle([udp(40011), udp(15000)], 0)).toEqual({ ports: [udp(40011)], pending: true });
});

test("a short-lived UDP socket (a client's query) is never reported, and a new one on the same port starts over", () => {
  const s = new UdpSettler(2000);
  s.settle([udp(51820)], 0);
  expect(s.settle([], 500)).toEqual({ ports: [], pending: false });
  expect(s.settle([udp(51820)], 2100)).toEqual({ ports: [], pending: true });
  expect(s.settle([udp(51820)], 4100).ports).toEqual([udp(51820)]);
});
