// The guest's in-place look at an agent connection's first bytes: garbage is told at once,
// porthole's host by the mark in its SETTINGS, everyone else goes to the relay.
import { describe, expect, test } from "bun:test";
import { classifyClientPreface, PORTHOLE_CLIENT_WINDOW } from "../../src/core/h2-client-preface.ts";
import { HTTP2_PREFACE } from "../../src/core/mux-frames.ts";

/** A SETTINGS frame (stream 0) with these id/value pairs. */
function settings(...pairs: [number, number][]): Buffer {
  const body = Buffer.alloc(pairs.length * 6);
  pairs.forEach(([id, value], i) => (body.writeUInt16BE(id, i * 6), body.writeUInt32BE(value, i * 6 + 2)));
  const header = Buffer.alloc(9);
  header.writeUIntBE(body.length, 0, 3);
  header[3] = 0x4;
  return Buffer.concat([header, body]);
}

describe("the client's preface, peeked at", () => {
  const marked = Buffer.concat([HTTP2_PREFACE, settings([2, 0], [4, PORTHOLE_CLIENT_WINDOW], [6, 16384])]);

  test("porthole's host: its SETTINGS carry the marked stream window", () => {
    expect(classifyClientPreface(marked)).toEqual({ kind: "settings", portholeHost: true });
  });

  test("any other client (grpc-go's 512 MiB window as Lima sets it, C-core, no window at all) is not porthole's host", () => {
    for (const other of [settings([4, 512 << 20]), settings([4, 65535]), settings(), settings([4, PORTHOLE_CLIENT_WINDOW + 1])]) {
      expect(classifyClientPreface(Buffer.concat([HTTP2_PREFACE, other]))).toEqual({ kind: "settings", portholeHost: false });
    }
  });

  test("every prefix of a valid preface asks for more; garbage is told as soon as a byte differs", () => {
    for (let n = 1; n < marked.length; n++) expect(classifyClientPreface(marked.subarray(0, n))).toEqual({ kind: "more" });
    expect(classifyClientPreface(Buffer.from("GET / HTTP/1.1\r\n"))).toEqual({ kind: "garbage", bytes: 16 });
    expect(classifyClientPreface(Buffer.from("PRX"))).toEqual({ kind: "garbage", bytes: 3 });
  });

  test("a preface followed by something other than SETTINGS is left for HTTP/2 to refuse", () => {
    const ping = Buffer.from([0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(classifyClientPreface(Buffer.concat([HTTP2_PREFACE, ping]))).toEqual({ kind: "no-settings" });
    const ragged = Buffer.from([0, 0, 5, 0x4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]);
    expect(classifyClientPreface(Buffer.concat([HTTP2_PREFACE, ragged]))).toEqual({ kind: "no-settings" });
  });
});
