import { describe, expect, test } from "bun:test";
import { creditFrames, DatagramFrameDecoder, datagramFrameSize, MAX_DATAGRAM, writeDatagramFrame } from "../../src/core/datagram-frames.ts";

function encode(datagrams: Buffer[], credit = 0): Buffer {
  const out = Buffer.alloc(datagrams.reduce((n, d) => n + datagramFrameSize(d.length), 0));
  let at = 0;
  for (const d of datagrams) at = writeDatagramFrame(out, at, d);
  return Buffer.concat([out, creditFrames(credit)]);
}

describe("datagram frames", () => {
  const datagrams = [Buffer.from("a"), Buffer.alloc(0), Buffer.alloc(1400, 7), Buffer.alloc(MAX_DATAGRAM, 9), Buffer.from("end")];

  test("datagrams keep their bounds (empty and largest ones too), however the stream splits the bytes", () => {
    const wire = encode(datagrams, 5000);
    for (const cut of [1, 2, 3, 4, 5, 6, 1405, 1410, 9000, wire.length - 1]) {
      const decoder = new DatagramFrameDecoder();
      const a = decoder.push(wire.subarray(0, cut));
      const b = decoder.push(wire.subarray(cut));
      expect([...a.datagrams, ...b.datagrams]).toEqual(datagrams);
      expect(a.delivered + b.delivered).toBe(5000);
      expect(decoder.midFrame).toBe(false);
    }
    // One byte at a time.
    const decoder = new DatagramFrameDecoder();
    const got: Buffer[] = [];
    let delivered = 0;
    for (let i = 0; i < wire.length; i++) {
      const r = decoder.push(wire.subarray(i, i + 1));
      got.push(...r.datagrams);
      delivered += r.delivered;
    }
    expect(got).toEqual(datagrams);
    expect(delivered).toBe(5000);
  });

  test("a credit too large for one frame goes as several", () => {
    const wire = creditFrames(5e9);
    expect(wire.length).toBe(12);
    expect(new DatagramFrameDecoder().push(wire).delivered).toBe(5e9);
    expect(creditFrames(0).length).toBe(0);
  });

  test("a length past the largest datagram breaks the stream, and nothing after it is read", () => {
    const bad = Buffer.alloc(8);
    bad.writeUInt32BE(MAX_DATAGRAM + 1);
    const decoder = new DatagramFrameDecoder();
    expect(decoder.push(bad).bad).toContain("65536 bytes");
    expect(decoder.push(encode([Buffer.from("x")])).bad).toBeDefined();
    expect(() => writeDatagramFrame(Buffer.alloc(70_000), 0, Buffer.alloc(MAX_DATAGRAM + 1))).toThrow(RangeError);
  });

  test("a stream that stops inside a frame says so", () => {
    const decoder = new DatagramFrameDecoder();
    decoder.push(encode([Buffer.alloc(100)]).subarray(0, 50));
    expect(decoder.midFrame).toBe(true);
  });
});
