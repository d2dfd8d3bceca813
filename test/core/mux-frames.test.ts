import { describe, expect, test } from "bun:test";
import { creditFrame, formatMuxTarget, h2Frame, HTTP2_PREFACE, MAX_PROBE_ANSWER_BYTES, MUX_ACCEPT, MUX_MAX_FRAME, MUX_PROBE, muxDataHeader, MuxDecoder, muxFrame, MuxKind, parseMuxTarget, ProbeReader } from "../../src/core/mux-frames.ts";

const h2 = (type: number, flags: number, payload = Buffer.alloc(0)) => h2Frame(type, flags, payload);

describe("mux frames", () => {
  test("frames split at every byte come back whole, DATA as views as it arrives", () => {
    const wire = Buffer.concat([muxFrame(1, MuxKind.OPEN, Buffer.from("tcp 127.0.0.1:80")), muxDataHeader(1, 5), Buffer.from("hello"), creditFrame(1, 4096), muxFrame(1, MuxKind.EOF)]);
    const d = new MuxDecoder();
    const items = [...wire].flatMap((byte) => d.push(Buffer.of(byte)));
    const data = Buffer.concat(items.flatMap((i) => (i.kind === "DATA" ? [i.data] : [])));
    expect(data.toString()).toBe("hello");
    expect(items.filter((i) => i.kind !== "DATA").map((i) => i.kind)).toEqual(["OPEN", "CREDIT", "EOF"]);
    const open = items.find((i) => i.kind === "OPEN") as { payload: Buffer };
    expect(open.payload.toString()).toBe("tcp 127.0.0.1:80");
  });

  test("garbage is refused: an unknown kind, an oversized frame, an empty DATA, a short CREDIT", () => {
    for (const bad of [muxFrame(1, 99), Buffer.concat([muxDataHeader(1, MUX_MAX_FRAME + 1)]), muxFrame(1, MuxKind.DATA), muxFrame(1, MuxKind.CREDIT, Buffer.of(1))]) {
      const items = new MuxDecoder().push(bad);
      expect(items.at(-1)!.kind).toBe("bad");
    }
  });

  test("targets round-trip, and anything else is an error", () => {
    for (const t of [{ kind: "agent" }, { kind: "tcp", address: "[::1]:8080" }, { kind: "unix", path: "/run/x.sock" }] as const) {
      expect(parseMuxTarget(formatMuxTarget(t))).toEqual(t);
    }
    expect(parseMuxTarget("unix relative")).toHaveProperty("error");
    expect(parseMuxTarget("udp 1.2.3.4:5")).toHaveProperty("error");
  });
});

describe("the probe", () => {
  test("is the HTTP/2 preface and one SETTINGS frame (no PING, nothing else)", () => {
    expect(MUX_PROBE.subarray(0, 24)).toEqual(HTTP2_PREFACE);
    expect(MUX_PROBE[24 + 3]).toBe(4); // SETTINGS
    expect(MUX_PROBE.length).toBe(24 + 9 + 6);
  });

  test("a porthole guest's answer: accepted, with the mux bytes after it", () => {
    const r = new ProbeReader().push(Buffer.concat([MUX_ACCEPT, Buffer.from("rest")]));
    expect(r).toEqual({ state: "accepted", rest: Buffer.from("rest") });
  });

  test("a stock server's answer: its frames pass on except the ACK of the probe's SETTINGS, in any split", () => {
    const settings = h2(4, 0, Buffer.from([0, 3, 0, 0, 0, 100]));
    const windowUpdate = h2(8, 0, Buffer.from([0, 0, 1, 0]));
    const ack = h2(4, 1);
    const after = h2(6, 0, Buffer.alloc(8));
    const wire = Buffer.concat([settings, windowUpdate, ack, after]);
    for (let split = 1; split < wire.length; split++) {
      const reader = new ProbeReader();
      let r = reader.push(wire.subarray(0, split));
      let unread = wire.subarray(split); // once the probe is over, later bytes are not the reader's
      if (r.state === "more") (r = reader.push(unread)), (unread = Buffer.alloc(0));
      if (r.state !== "stock") throw new Error(`split ${split}: ${r.state}`);
      expect(r.pass).toEqual(Buffer.concat([settings, windowUpdate]));
      expect(Buffer.concat([r.rest, unread]).equals(after)).toBe(true);
    }
  });

  test("an answer that goes on past 64 KiB without the ACK is refused, whatever its frames", () => {
    const reader = new ProbeReader();
    expect(reader.push(h2(4, 0, Buffer.from([0, 3, 0, 0, 0, 100]))).state).toBe("more");
    const frame = h2(0, 0, Buffer.alloc(16_000)); // DATA, never what a stock server sends before its ACK
    let r: ReturnType<ProbeReader["push"]> = { state: "more" };
    let pushed = 0;
    for (let i = 0; i < 10_000 && r.state === "more"; i++) (r = reader.push(frame)), (pushed += frame.length);
    expect(r).toEqual({ state: "bad", reason: "the agent sent more than 64 KiB without acknowledging the probe's SETTINGS" });
    expect(pushed).toBeLessThanOrEqual(MAX_PROBE_ANSWER_BYTES + frame.length);
  });

  test("an answer trickled a byte at a time is joined once per frame, not once per byte (no quadratic copying)", () => {
    const reader = new ProbeReader();
    const answer = Buffer.concat([h2(4, 0, Buffer.alloc(60_000 - (60_000 % 6))), h2(4, 1, Buffer.alloc(0))]); // a big SETTINGS, then the ACK
    const concat = Buffer.concat;
    let joins = 0;
    Buffer.concat = ((list: readonly Uint8Array[], total?: number) => (joins++, concat(list, total))) as typeof Buffer.concat;
    let r: ReturnType<ProbeReader["push"]> = { state: "more" };
    try {
      for (let i = 0; i < answer.length && r.state === "more"; i++) r = reader.push(answer.subarray(i, i + 1));
    } finally {
      Buffer.concat = concat;
    }
    expect(r.state).toBe("stock");
    expect(joins).toBeLessThan(10); // a join per byte was 60,000 copies of up to 60 KB
  });

  test("anything but SETTINGS or the answer first is refused", () => {
    expect(new ProbeReader().push(h2(6, 0, Buffer.alloc(8))).state).toBe("bad");
    expect(new ProbeReader().push(Buffer.concat([h2(0xf1, 0, Buffer.from("nonsense-here!"))])).state).toBe("bad");
  });
});
