// The framing that lets a data-path stream say EOF or reset: whatever way the bytes are cut
// up in transit, the decoder gives back the same data and the same end.
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { dataFrameHeader, END_EOF, END_RESET, FrameDecoder } from "../../src/core/data-frames.ts";

function decodeAll(wire: Buffer, cuts: number[]): { data: Buffer; ends: string[]; bad: string[]; partial: boolean } {
  const d = new FrameDecoder();
  const data: Buffer[] = [];
  const ends: string[] = [];
  const bad: string[] = [];
  let at = 0;
  for (const cut of [...cuts, wire.length]) {
    for (const item of d.push(wire.subarray(at, cut))) {
      if (item.kind === "data") data.push(Buffer.from(item.data));
      else if (item.kind === "end") ends.push(item.how);
      else bad.push(item.reason);
    }
    at = cut;
  }
  return { data: Buffer.concat(data), ends, bad, partial: d.partial };
}

describe("data frames", () => {
  test("data then EOF, or data then reset, survive any cutting of the bytes", () => {
    for (let round = 0; round < 300; round++) {
      const pieces = Array.from({ length: 1 + (round % 5) }, () => randomBytes(1 + Math.floor(Math.random() * 3000)));
      const end = round % 2 ? END_EOF : END_RESET;
      const wire = Buffer.concat([...pieces.flatMap((p) => [dataFrameHeader(p.length), p]), end]);
      const cuts = Array.from({ length: round % 7 }, () => Math.floor(Math.random() * wire.length)).sort((a, b) => a - b);
      const out = decodeAll(wire, cuts);
      expect(out.data.equals(Buffer.concat(pieces))).toBe(true);
      expect(out.ends).toEqual([round % 2 ? "eof" : "reset"]);
      expect(out.bad).toEqual([]);
    }
  });

  test("a stream cut off in the middle of a frame is partial; one without an end frame has no end", () => {
    const wire = Buffer.concat([dataFrameHeader(10), Buffer.alloc(4)]);
    expect(decodeAll(wire, [])).toMatchObject({ ends: [], bad: [], partial: true });
    expect(decodeAll(Buffer.concat([dataFrameHeader(2), Buffer.alloc(2)]), [])).toMatchObject({ ends: [], partial: false });
  });

  test("a zero or oversized length, or bytes after the end, are refused", () => {
    expect(decodeAll(Buffer.alloc(4), []).bad[0]).toContain("invalid frame header");
    expect(decodeAll(Buffer.from([0x80, 0, 0, 0]), []).bad[0]).toContain("invalid frame header");
    expect(decodeAll(Buffer.from("HTTP/1.1 200 OK\r\n"), []).bad[0]).toContain("invalid frame header");
    expect(decodeAll(Buffer.concat([END_EOF, Buffer.from("x")]), []).bad).toEqual(["bytes after the end of the stream"]);
    expect(() => dataFrameHeader(0)).toThrow();
  });

  test("fuzz: random bytes never throw", () => {
    for (let i = 0; i < 2000; i++) {
      const d = new FrameDecoder();
      expect(() => d.push(randomBytes(Math.floor(Math.random() * 64)))).not.toThrow();
    }
  });
});
