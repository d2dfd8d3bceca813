// The data path's header is a trust boundary: anything that can reach the data endpoint can
// send it. Well-formed headers round-trip; everything else is refused with a reason, and no
// input (random or mutated) makes the parser throw or accept a target it should not dial.
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { encodeDataHeader, MAX_HEADER, parseDataHeader } from "../../src/core/data-header.ts";

const SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef";

describe("data header", () => {
  test("a header round-trips, with the bytes after it kept", () => {
    for (const framed of [false, true]) {
      const line = encodeDataHeader(SECRET, { protocol: "tcp", address: "127.0.0.1:8080" }, framed);
      const r = parseDataHeader(Buffer.concat([Buffer.from(line), Buffer.from("rest")]));
      expect(r).toMatchObject({ kind: "ok", secret: SECRET, target: { protocol: "tcp", address: "127.0.0.1:8080" }, framed });
      if (r.kind === "ok") expect(r.rest.toString()).toBe("rest");
    }
    expect(parseDataHeader(Buffer.from(encodeDataHeader(SECRET, { protocol: "unix", address: "/run/app.sock" })))).toMatchObject({ kind: "ok", target: { protocol: "unix", address: "/run/app.sock" } });
    expect(parseDataHeader(Buffer.from(encodeDataHeader(SECRET, { protocol: "tcp", address: "[::1]:22" })))).toMatchObject({ kind: "ok" });
    // A UDP flow (only to a guest that lists "udp-data-path").
    expect(parseDataHeader(Buffer.from(encodeDataHeader(SECRET, { protocol: "udp", address: "127.0.0.1:53" }, true)))).toMatchObject({ kind: "ok", target: { protocol: "udp", address: "127.0.0.1:53" } });
  });

  test("an incomplete header asks for more, up to the limit", () => {
    expect(parseDataHeader(Buffer.from("PHDATA2 abc"))).toEqual({ kind: "need-more" });
    expect(parseDataHeader(Buffer.alloc(MAX_HEADER + 1, 0x41))).toMatchObject({ kind: "bad", reason: "header too long" });
  });

  test.each([
    ["GET / HTTP/1.1\n", "not a porthole data stream"],
    [`PHDATA1 ${SECRET} tcp 127.0.0.1:80 extra\n`, "not a porthole data stream"],
    [`PHDATA1 ${SECRET} sctp 127.0.0.1:80\n`, 'protocol "sctp"'],
    [`PHDATA2 ${SECRET} udp localhost:53\n`, "a UDP target must be an IP address and port"],
    [`PHDATA1 not-hex tcp 127.0.0.1:80\n`, "malformed secret"],
    [`PHDATA1 ${SECRET} tcp example.com:80\n`, "a TCP target must be an IP address and port"],
    [`PHDATA1 ${SECRET} tcp 127.0.0.1:0\n`, "a TCP target needs a port from 1 to 65535"],
    [`PHDATA1 ${SECRET} tcp 127.0.0.1:70000\n`, "is not a port"],
    [`PHDATA1 ${SECRET} unix relative.sock\n`, "a unix socket target must be an absolute path"],
    [`PHDATA1 ${SECRET} unix /${"a".repeat(200)}\n`, "longer than 107 bytes"],
    [`PHDATA1 ${SECRET} tcp 127.0.0.1:80\r\n`, "control or non-ASCII bytes"],
    [`PHDATA1 ${SECRET} unix /tmp/\u00e9.sock\n`, "control or non-ASCII bytes"],
  ])("%j is refused: %s", (text, reason) => {
    const r = parseDataHeader(Buffer.from(text, "latin1"));
    expect(r.kind).toBe("bad");
    if (r.kind === "bad") expect(r.reason).toContain(reason);
  });

  test("fuzz: 20,000 random and mutated inputs never throw, and every accepted one is a header we would write", () => {
    const valid = Buffer.from(encodeDataHeader(SECRET, { protocol: "tcp", address: "10.0.0.1:443" }, true));
    const alphabet = Buffer.from(" \n:/[].0123456789abcdefPHDATA12tcpunix\0\r\xff", "latin1");
    let accepted = 0;
    for (let i = 0; i < 20_000; i++) {
      let input: Buffer;
      if (i % 2) {
        input = Buffer.from(valid);
        for (let m = 0; m < 1 + (i % 4); m++) {
          const at = Math.floor(Math.random() * input.length);
          input[at] = alphabet[Math.floor(Math.random() * alphabet.length)]!;
        }
      } else {
        input = i % 4 ? randomBytes(Math.floor(Math.random() * 200)) : Buffer.from(Array.from(randomBytes(80), (b) => alphabet[b % alphabet.length]!));
      }
      const r = parseDataHeader(input);
      if (r.kind !== "ok") continue;
      accepted++;
      // Anything accepted must re-encode to exactly the line that was parsed.
      const line = encodeDataHeader(r.secret, r.target, r.framed);
      expect(input.subarray(0, line.length).toString("latin1")).toBe(line);
    }
    expect(accepted).toBeGreaterThan(0); // the mutations do keep some valid headers
  });
});
