// The parser against tables captured from a real kernel (see fixtures/proc-net/capture.py).
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { decodeProcAddress, parseProcNet } from "../../src/core/proc-net.ts";
import { portKey } from "../../src/core/ports.ts";

const fixture = (name: string) => readFileSync(`${import.meta.dir}/../fixtures/proc-net/${name}`, "latin1");
const keys = (text: string, proto: "tcp" | "udp") => parseProcNet(text, proto).map(portKey).sort();

describe("/proc/net parser", () => {
  test("TCP: only LISTEN sockets, IPv4", () => {
    // 127.0.0.2:7000 also has two established sockets, which must not count.
    expect(keys(fixture("tcp"), "tcp")).toEqual(["tcp 0.0.0.0:3000", "tcp 127.0.0.1:8080", "tcp 127.0.0.2:7000"]);
  });
  test("TCP: IPv6, with the IPv4-mapped bind printed as IPv4", () => {
    expect(keys(fixture("tcp6"), "tcp")).toEqual(["tcp 127.0.0.1:5000", "tcp [::1]:4010", "tcp [::]:3000", "tcp [::]:6000"]);
  });
  test("UDP: bound and unconnected only", () => {
    expect(keys(fixture("udp"), "udp")).toEqual(["udp 127.0.0.1:5353"]);
    expect(keys(fixture("udp6"), "udp")).toEqual(["udp [::]:5353"]);
  });
  test("address words are in host byte order", () => {
    expect(decodeProcAddress("0100007F")).toBe("127.0.0.1");
    expect(decodeProcAddress("00000000000000000000000001000000")).toBe("::1");
    expect(decodeProcAddress("B80D0120000000000000000001000000")).toBe("2001:db8::1");
  });
  test("ignores a header-only table and junk lines", () => {
    expect(parseProcNet("  sl  local_address\n", "tcp")).toEqual([]);
    expect(parseProcNet("header\ngarbage\n\n", "udp")).toEqual([]);
  });
});
