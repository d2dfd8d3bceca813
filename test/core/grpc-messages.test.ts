// gRPC's length-prefixed messages split across chunks at every byte, and refused when malformed.
import { expect, test } from "bun:test";
import { MESSAGE_HEADER_BYTES, MessageDecoder, percentDecode, percentEncode } from "../../src/core/grpc-messages.ts";

const frame = (body: Buffer, flag = 0) => {
  const h = Buffer.alloc(5);
  h[0] = flag;
  h.writeUInt32BE(body.length, 1);
  return Buffer.concat([h, body]);
};

test("messages come out whole wherever the chunks split them, and a message inside one chunk is a view of it", () => {
  const bodies = [Buffer.from("a"), Buffer.alloc(0), Buffer.alloc(300, 7), Buffer.from("last")];
  const wire = Buffer.concat(bodies.map((b) => frame(b)));
  for (let cut = 0; cut <= wire.length; cut++) {
    const d = new MessageDecoder(1000);
    const out = [...d.push(wire.subarray(0, cut)), ...d.push(wire.subarray(cut))];
    expect(out.map((i) => (i.kind === "message" ? i.data.toString("hex") : i.reason))).toEqual(bodies.map((b) => b.toString("hex")));
    expect(d.pending).toBe(0);
  }
  const whole = new MessageDecoder(1000).push(wire);
  expect((whole[2] as { data: Buffer }).data.buffer).toBe(wire.buffer);
});

test("a compressed flag, an unknown flag and a message over the limit are refused, then nothing more comes", () => {
  for (const [wire, reason] of [[frame(Buffer.from("x"), 1), /compressed/], [frame(Buffer.from("x"), 9), /flag of 9/], [frame(Buffer.alloc(11)), /11 bytes/]] as const) {
    const d = new MessageDecoder(10);
    const out = d.push(Buffer.concat([frame(Buffer.from("ok")), wire]));
    expect(out[0]).toEqual({ kind: "message", data: Buffer.from("ok") });
    expect(out[1]!.kind).toBe("bad");
    expect((out[1] as { reason: string }).reason).toMatch(reason);
    expect(d.push(frame(Buffer.from("more")))).toEqual([]);
  }
  // A header split so that its length arrives later: still refused once whole.
  const d = new MessageDecoder(10);
  const big = frame(Buffer.alloc(20));
  expect(d.push(big.subarray(0, 3))).toEqual([]);
  expect(d.push(big.subarray(3, 6))[0]!.kind).toBe("bad");
});

test("grpc-message's percent-encoding round-trips text with '%' and non-ASCII", () => {
  const text = "dial 127.0.0.1:1: refused ✗ 100%";
  expect(percentEncode(text)).toBe("dial 127.0.0.1:1: refused %E2%9C%97 100%25");
  expect(percentDecode(percentEncode(text))).toBe(text);
});

test("a message that starts with a 1-byte chunk and comes in 16 KiB pieces is copied about once, not once per piece", () => {
  const length = 16 << 20;
  const message = Buffer.alloc(MESSAGE_HEADER_BYTES + length, 7);
  message[0] = 0;
  message.writeUInt32BE(length, 1);
  const decoder = new MessageDecoder(length);
  const concat = Buffer.concat;
  let copied = 0;
  Buffer.concat = ((list: readonly Uint8Array[], total?: number) => {
    const joined = concat(list, total);
    copied += joined.length;
    return joined;
  }) as typeof Buffer.concat;
  const out = [];
  try {
    out.push(...decoder.push(message.subarray(0, 1)));
    for (let at = 1; at < message.length; at += 16_384) out.push(...decoder.push(message.subarray(at, Math.min(at + 16_384, message.length))));
  } finally {
    Buffer.concat = concat;
  }
  expect(out).toHaveLength(1);
  expect(out[0]!.kind === "message" && out[0]!.data.length).toBe(length);
  // Joined once when the header was whole (a few bytes then) and once when the message was: ~1x, where it was ~500x.
  expect(copied).toBeLessThan(2 * message.length);
});
