import { describe, expect, test } from "bun:test";
import { h2Frame, HTTP2_PREFACE, muxFrame, MUX_PROBE, MuxKind } from "../../src/core/mux-frames.ts";
import { NEW_SESSION, SessionStarts, type Segment } from "../../src/core/session-starts.ts";

/** Each session's bytes, in order (the first: what came before any new session). */
function sessions(segments: Segment[]): Buffer[] {
  const out: Buffer[][] = [[]];
  for (const s of segments) {
    if (s === NEW_SESSION) out.push([]);
    else out.at(-1)!.push(s);
  }
  return out.map((parts) => Buffer.concat(parts));
}

/** The stream fed whole, and in pieces of every size from 1 to 13 bytes: the same sessions each way. */
function split(stream: Buffer, then?: (t: SessionStarts) => void, more?: Buffer): Buffer[][] {
  const results: Buffer[][] = [];
  for (const size of [stream.length + (more?.length ?? 0), 1, 2, 5, 9, 13]) {
    const t = new SessionStarts();
    const segs: Segment[] = [];
    for (let i = 0; i < stream.length; i += size) segs.push(...t.push(stream.subarray(i, i + size)));
    then?.(t);
    if (more) for (let i = 0; i < more.length; i += size) segs.push(...t.push(more.subarray(i, i + size)));
    results.push(sessions(segs));
  }
  return results;
}

const grpcStart = Buffer.concat([HTTP2_PREFACE, h2Frame(0x4, 0, Buffer.from([0, 4, 0, 0x10, 0, 0, 0, 5, 0, 0, 0x40, 0]))]);
/** A HEADERS frame on stream 1 and a DATA frame (whose payload carries a preface) after it. */
const grpcRequest = Buffer.concat([
  Buffer.from([0, 0, 3, 0x1, 0x4, 0, 0, 0, 1, 0x82, 0x86, 0x84]),
  Buffer.from([0, 0, 40, 0x0, 0x0, 0, 0, 0, 1]),
  HTTP2_PREFACE,
  Buffer.alloc(16, 7),
]);

describe("SessionStarts: where a new host connection begins on a port that outlives its hosts", () => {
  test("a new gRPC client's preface where a frame header should stand starts a new session; each session gets exactly its bytes, however the stream is cut", () => {
    const first = Buffer.concat([grpcStart, grpcRequest]);
    const second = Buffer.concat([grpcStart, grpcRequest]);
    for (const result of split(Buffer.concat([first, second]))) expect(result).toEqual([first, second]);
  });

  test("a mux probe after mux frames starts a new session; a preface inside a mux DATA payload does not", () => {
    const first = Buffer.concat([MUX_PROBE, muxFrame(1, MuxKind.OPEN, Buffer.from("agent")), muxFrame(1, MuxKind.DATA, Buffer.concat([HTTP2_PREFACE, Buffer.alloc(5)])), muxFrame(3, MuxKind.EOF)]);
    const second = Buffer.concat([MUX_PROBE, muxFrame(1, MuxKind.OPEN, Buffer.from("agent"))]);
    for (const result of split(Buffer.concat([first, second]))) expect(result).toEqual([first, second]);
    for (const result of split(Buffer.concat([first, grpcStart]))) expect(result).toEqual([first, grpcStart]);
  });

  test("a preface inside an HTTP/2 DATA payload is data, not a new session", () => {
    const one = Buffer.concat([grpcStart, grpcRequest, grpcRequest]);
    for (const result of split(one)) expect(result).toEqual([one]);
  });

  test("a host killed mid-frame: its frame swallows the next preface, and once the session's reader gives up (lose) the next preface starts a session", () => {
    const cut = Buffer.concat([grpcStart, grpcRequest.subarray(0, 20)]);
    const swallowed = grpcStart; // read as the rest of the cut frame's payload
    const next = Buffer.concat([grpcStart, grpcRequest]);
    for (const result of split(Buffer.concat([cut, swallowed]), (t) => t.lose(), next)) {
      expect(result).toEqual([Buffer.concat([cut, swallowed]), next]);
    }
  });

  test("garbage instead of a preface goes to the session (its reader refuses it); the next preface starts a new session", () => {
    const garbage = Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\nPRI * HTTP/2.0"); // ends with a preface's first bytes
    for (const result of split(Buffer.concat([garbage, grpcStart]))) expect(result).toEqual([garbage, grpcStart]);
  });

  test("a mux frame of no known kind loses the framing; the next preface starts a new session", () => {
    const first = Buffer.concat([MUX_PROBE, Buffer.from([0, 0, 0, 1, 0x63, 0, 0, 0, 2, 1, 2]), Buffer.alloc(30, 9)]);
    for (const result of split(Buffer.concat([first, MUX_PROBE]))) expect(result).toEqual([first, MUX_PROBE]);
  });

  test("a client that sends only part of the preface yet is held, not lost; the rest completes it", () => {
    const t = new SessionStarts();
    expect(sessions(t.push(HTTP2_PREFACE.subarray(0, 10)))).toEqual([Buffer.alloc(0)]);
    expect(sessions(t.push(Buffer.concat([HTTP2_PREFACE.subarray(10), grpcStart.subarray(24)])))).toEqual([grpcStart]);
  });

  test("a frame cut short by a killed host, its rest read from the next host's first bytes: once the stream stalls, those bytes from the preface on start a new session", () => {
    for (const mux of [false, true]) {
      const start = mux ? MUX_PROBE : grpcStart;
      // A 1,000-byte frame of which 100 bytes came before the host died.
      const cut = mux ? Buffer.concat([muxFrame(1, MuxKind.DATA, Buffer.alloc(1000, 3)).subarray(0, 109)]) : Buffer.concat([Buffer.from([0, 3, 0xe8, 0, 0, 0, 0, 0, 1]), Buffer.alloc(100, 3)]);
      const next = Buffer.concat([start, mux ? muxFrame(1, MuxKind.OPEN, Buffer.from("agent")) : grpcRequest]);
      for (const size of [next.length, 1, 7]) {
        const t = new SessionStarts();
        const segs: Segment[] = [...t.push(Buffer.concat([start, cut]))];
        expect(t.waiting).toBe(false);
        for (let i = 0; i < next.length; i += size) segs.push(...t.push(next.subarray(i, i + size)));
        expect(t.waiting).toBe(true);
        segs.push(...t.stalled());
        expect(t.waiting).toBe(false);
        const got = sessions(segs);
        expect(got).toHaveLength(2);
        expect(got[0]).toEqual(Buffer.concat([start, cut, next])); // the old session read them as its frame's rest
        expect(got[1]).toEqual(next);
      }
    }
  });

  test("a whole frame that carries a preface leaves nothing waiting: data is data", () => {
    const t = new SessionStarts();
    t.push(Buffer.concat([grpcStart, grpcRequest]));
    expect(t.waiting).toBe(false);
    expect(t.stalled()).toEqual([]);
  });

  test("past 64 KiB after a preface inside one frame, the frame is taken for its sender's own payload", () => {
    const t = new SessionStarts();
    t.push(Buffer.concat([MUX_PROBE, muxFrame(1, MuxKind.DATA, Buffer.alloc(200_000)).subarray(0, 100), HTTP2_PREFACE]));
    expect(t.waiting).toBe(true);
    t.push(Buffer.alloc(70_000));
    expect(t.waiting).toBe(false);
  });
});

