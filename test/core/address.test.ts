import { describe, expect, test } from "bun:test";
import {
  formatHostPort,
  formatIPv6Bytes,
  ipEquals,
  isUnspecified,
  parseHostPort,
  unmapIPv4,
} from "../../src/core/address.ts";

const v6 = (...words: number[]) => new Uint8Array(words.flatMap((w) => [w >> 8, w & 0xff]));

describe("IPv6 formatting", () => {
  test.each([
    [v6(0, 0, 0, 0, 0, 0, 0, 0), "::"],
    [v6(0, 0, 0, 0, 0, 0, 0, 1), "::1"],
    [v6(0xfe80, 0, 0, 0, 0x1, 0x2, 0x3, 0x4), "fe80::1:2:3:4"],
    [v6(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), "2001:db8::1:0:0:1"], // first of two equal runs
    [v6(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1), "2001:db8:0:1:1:1:1:1"], // a single zero word stays
    [v6(0, 0, 0, 0, 0, 0xffff, 0x7f00, 0x0001), "127.0.0.1"], // IPv4-mapped prints as IPv4
    [v6(0, 0, 0, 0, 0, 0xffff, 0, 0), "0.0.0.0"],
  ])("%p -> %s", (bytes, text) => {
    expect(formatIPv6Bytes(bytes)).toBe(text);
  });
});

describe("host:port", () => {
  test("formats IPv6 in brackets", () => {
    expect(formatHostPort("::1", 80)).toBe("[::1]:80");
    expect(formatHostPort("127.0.0.1", 80)).toBe("127.0.0.1:80");
  });
  test("parses what it formats", () => {
    expect(parseHostPort("[::]:8080")).toEqual({ host: "::", port: 8080 });
    expect(parseHostPort("0.0.0.0:1")).toEqual({ host: "0.0.0.0", port: 1 });
    expect(parseHostPort("localhost:22")).toEqual({ host: "localhost", port: 22 });
  });
  test.each(["::1:80", "127.0.0.1", "[::1]", "1.2.3.4:70000", "[zz]:1", ":80"])("rejects %s", (text) => {
    expect(() => parseHostPort(text)).toThrow();
  });
});

describe("address equality", () => {
  test("IPv4 equals its IPv4-mapped IPv6 form", () => {
    expect(ipEquals("127.0.0.1", "::ffff:127.0.0.1")).toBe(true);
    expect(ipEquals("127.0.0.1", "127.0.0.2")).toBe(false);
    expect(unmapIPv4("::FFFF:10.0.0.1")).toBe("10.0.0.1");
  });
  test("unspecified addresses", () => {
    expect(isUnspecified("0.0.0.0")).toBe(true);
    expect(isUnspecified("::")).toBe(true);
    expect(isUnspecified("::1")).toBe(false);
  });
});
