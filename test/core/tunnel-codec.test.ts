// The hand-written Tunnel codec against protobufjs reading the same .proto files: what one
// writes, the other reads, field for field, with unknown fields skipped and bad input refused.
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { loadRoot, type TunnelMessage } from "../../src/proto/guest-service.ts";
import { decodeTunnelMessage, encodeTunnelFrame, encodeTunnelMessage, framedMessage, tunnelFrameParts } from "../../src/proto/tunnel-codec.ts";

const root = loadRoot();
const Extended = root.lookupType("porthole.ExtendedTunnelMessage");
const Lima = root.lookupType("TunnelMessage");

const samples: Partial<TunnelMessage>[] = [
  { id: "tcp-8080-0", protocol: "tcp", guest_addr: "127.0.0.1:8080", half_close: true },
  { id: "tcp-8080-0", data: randomBytes(70_000) },
  { id: "udp-53-127.0.0.1:5353", data: Buffer.from([0]) },
  { id: "x", eof: true },
  { data: randomBytes(300) },
  { id: "ünïcødé ✓", udp_target_addr: "[::1]:53", protocol: "udp", udp_batch: true },
  { datagrams: [randomBytes(1400), Buffer.alloc(0), randomBytes(200)] },
  { id: "udp-53-127.0.0.1:5353", protocol: "udp", udp_batch: true, udp_credit: true },
  { udp_delivered: 524_288 },
  { datagrams: [randomBytes(10)], udp_delivered: 1400 },
  {},
];

const full = (m: Partial<TunnelMessage>) => ({
  id: m.id ?? "", protocol: m.protocol ?? "", data: Buffer.from(m.data ?? []), guest_addr: m.guest_addr ?? "",
  udp_target_addr: m.udp_target_addr ?? "", half_close: m.half_close ?? false, eof: m.eof ?? false,
  datagrams: (m.datagrams ?? []).map((d) => Buffer.from(d)), udp_batch: m.udp_batch ?? false,
  udp_delivered: m.udp_delivered ?? 0, udp_credit: m.udp_credit ?? false,
});
const plain = (m: TunnelMessage) => ({ ...m, data: Buffer.from(m.data), datagrams: m.datagrams.map((d) => Buffer.from(d)) });

describe("Tunnel codec", () => {
  test("what it encodes, protobufjs decodes to the same fields, and the gRPC frame header precedes it", () => {
    for (const m of samples) {
      const bytes = encodeTunnelMessage(m);
      const decoded = Extended.toObject(Extended.decode(bytes), { defaults: true }) as TunnelMessage;
      expect(plain(decoded)).toEqual(full(m));
      const frame = framedMessage(bytes)!;
      expect(frame[0]).toBe(0);
      expect(frame.readUInt32BE(1)).toBe(bytes.length);
      expect(frame.subarray(5).equals(bytes)).toBe(true);
    }
  });

  test("what protobufjs encodes (Lima's message and porthole's), it decodes to the same fields", () => {
    for (const m of samples) {
      const ours = decodeTunnelMessage(Buffer.from(Extended.encode(Extended.fromObject(m)).finish()));
      expect(plain(ours)).toEqual(full(m));
      const { half_close: _h, eof: _e, datagrams: _d, udp_batch: _u, udp_delivered: _c, udp_credit: _k, ...limaFields } = m;
      const fromLima = decodeTunnelMessage(Buffer.from(Lima.encode(Lima.fromObject(limaFields)).finish()));
      expect(plain(fromLima)).toEqual(full(limaFields));
    }
  });

  test("unknown fields of every wire type are skipped", () => {
    // field 6 varint 300, field 7 fixed64, field 8 bytes "zz", field 9 fixed32, then id "a"
    const bytes = Buffer.from("30ac02" + "39" + "0102030405060708" + "42027a7a" + "4d" + "01020304" + "0a0161", "hex");
    expect(decodeTunnelMessage(bytes)).toMatchObject({ id: "a", data: Buffer.alloc(0) });
  });

  test("truncated fields, overlong lengths and group wire types are refused with a reason", () => {
    expect(() => decodeTunnelMessage(Buffer.from("1a05abcd", "hex"))).toThrow("runs past its end");
    expect(() => decodeTunnelMessage(Buffer.from("0a", "hex"))).toThrow("ends inside a number");
    expect(() => decodeTunnelMessage(Buffer.from("0b", "hex"))).toThrow("wire type 3");
    expect(() => decodeTunnelMessage(Buffer.from("39" + "0102", "hex"))).toThrow("runs past its end");
    expect(() => decodeTunnelMessage(Buffer.from("08" + "ffffffffffffffffffff01", "hex"))).toThrow("longer than 10 bytes");
  });
});

test("a data message's parts (a head, then the data buffer itself) join to the same frame as one buffer would be", () => {
  for (const m of [...samples, { id: "tcp-1-2", data: randomBytes(70_000) }, { data: randomBytes(5000) }, { id: "ünï", data: randomBytes(4096) }]) {
    const parts = tunnelFrameParts(m);
    expect(Buffer.concat(parts).equals(encodeTunnelFrame(m))).toBe(true);
    if (parts.length > 1) expect(parts[parts.length - 1]).toBe(m.data as Buffer); // not copied
  }
  expect(tunnelFrameParts({ id: "x", data: randomBytes(70_000) }).length).toBe(2);
});
