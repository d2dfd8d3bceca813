// The subnet check: an address is a direct-path candidate only on a network this host has
// (IPv4 and IPv6), never the host's own address, never through loopback.
import { describe, expect, test } from "bun:test";
import { ipToBigInt, onLocalSubnet, type InterfaceAddress } from "../../src/core/subnet.ts";

const ifs: InterfaceAddress[] = [
  { address: "127.0.0.1", netmask: "255.0.0.0", family: "IPv4", internal: true },
  { address: "192.168.5.2", netmask: "255.255.255.0", family: "IPv4", internal: false },
  { address: "fd00:1::1", netmask: "ffff:ffff:ffff:ffff::", family: "IPv6", internal: false },
  { address: "10.0.0.1", netmask: "255.255.255.252", family: 4, internal: false },
];

describe("onLocalSubnet", () => {
  test.each([
    ["192.168.5.15", true],
    ["192.168.6.15", false],
    ["192.168.5.2", false], // the host itself
    ["127.0.0.2", false], // loopback interfaces never count
    ["10.0.0.2", true],
    ["10.0.0.5", false], // outside the /30
    ["fd00:1::abcd", true],
    ["fd00:2::abcd", false],
    ["fd00:1::1", false],
    ["::ffff:192.168.5.15", false], // a mapped address is not an IPv6 address on fd00:1::/64
    ["not an ip", false],
  ])("%s -> %p", (ip, expected) => {
    expect(onLocalSubnet(ip, ifs)).toBe(expected);
  });

  test("IPv6 parsing handles ::, embedded IPv4 and full forms alike", () => {
    expect(ipToBigInt("::1")).toBe(1n);
    expect(ipToBigInt("::ffff:1.2.3.4")).toBe(0xffff01020304n);
    expect(ipToBigInt("fd00:0:0:0:0:0:0:1")).toBe(ipToBigInt("fd00::1"));
    expect(ipToBigInt("1.2.3.4")).toBe(0x01020304n);
    expect(ipToBigInt("1.2.3")).toBeUndefined();
  });
});
