// The Tunnel message's wire form, by hand: it carries every forwarded byte, and protobufjs
// builds each message through a list of write operations and a fresh buffer, then
// `toObject` copies it into another object. Here a data message is one buffer: the 5-byte
// gRPC message header, the protobuf fields, the bytes. grpc-js frames every message into a
// new buffer of its own; transport/grpc-tuning.ts lets it send this one as it is (the header
// is already there). Decoding returns the bytes as a view of the received message, no copy.
// The fields are Lima's TunnelMessage plus porthole's extension (proto/porthole.proto).
import type { TunnelMessage } from "./guest-service.ts";

/** A serialized message's gRPC frame (header included), for the sender that can use it. */
const frames = new WeakMap<Buffer, Buffer>();

export function framedMessage(serialized: Buffer): Buffer | undefined {
  return frames.get(serialized);
}

const STRING_FIELDS = [
  [1, "id"],
  [2, "protocol"],
  [4, "guest_addr"],
  [5, "udp_target_addr"],
] as const;
const DATA_FIELD = 3;
const HALF_CLOSE_FIELD = 100;
const EOF_FIELD = 101;
const DATAGRAMS_FIELD = 102;
const UDP_BATCH_FIELD = 103;
const UDP_DELIVERED_FIELD = 104;
const UDP_CREDIT_FIELD = 105;
/** Tags of fields 100..105 take two bytes. */
const LONG_TAG_BYTES = 2;
const GRPC_HEADER_BYTES = 5;

const varintBytes = (n: number) => (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5);

function writeVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n & 0x7f) | 0x80;
    n >>>= 7;
  }
  buf[at++] = n;
  return at;
}

export function encodeTunnelMessage(message: Partial<TunnelMessage>): Buffer {
  const frame = encodeTunnelFrame(message);
  const serialized = frame.subarray(GRPC_HEADER_BYTES);
  frames.set(serialized, frame);
  return serialized;
}

/** From this size a data message's bytes are written as they are, after a small head (no copy). */
const OWN_BUFFER_BYTES = 4096;

/**
 * A message as gRPC sends it on HTTP/2, in the buffers to write one after the other: for a data
 * message (id and data only, as relays send them) a head (the 5-byte header, the id, the data
 * field's tag and length) and then the data buffer itself, not copied; otherwise one frame.
 */
export function tunnelFrameParts(message: Partial<TunnelMessage>): Buffer[] {
  const data = message.data;
  if (!data || data.length < OWN_BUFFER_BYTES || message.protocol || message.guest_addr || message.udp_target_addr || message.half_close || message.eof || message.datagrams?.length || message.udp_batch || message.udp_delivered || message.udp_credit) {
    return [encodeTunnelFrame(message)];
  }
  const id = message.id ?? "";
  const idLength = Buffer.byteLength(id);
  const idBytes = idLength ? 1 + varintBytes(idLength) + idLength : 0;
  const headBytes = GRPC_HEADER_BYTES + idBytes + 1 + varintBytes(data.length);
  const head = Buffer.allocUnsafe(headBytes);
  head[0] = 0;
  head.writeUInt32BE(headBytes - GRPC_HEADER_BYTES + data.length, 1);
  let at = GRPC_HEADER_BYTES;
  if (idLength) {
    head[at++] = (1 << 3) | 2;
    at = writeVarint(head, at, idLength);
    at += head.write(id, at, idLength, "utf8");
  }
  head[at++] = (DATA_FIELD << 3) | 2;
  writeVarint(head, at, data.length);
  return [head, data];
}

/** A message as gRPC sends it on HTTP/2: the 5-byte header (uncompressed, the length), then the fields. */
export function encodeTunnelFrame(message: Partial<TunnelMessage>): Buffer {
  let size = 0;
  const strings: [number, string, number][] = [];
  for (const [field, name] of STRING_FIELDS) {
    const value = message[name];
    if (!value) continue; // proto3: the default is not sent
    const length = Buffer.byteLength(value);
    strings.push([field, value, length]);
    size += 1 + varintBytes(length) + length;
  }
  const data = message.data;
  if (data?.length) size += 1 + varintBytes(data.length) + data.length;
  if (message.half_close) size += LONG_TAG_BYTES + 1;
  if (message.eof) size += LONG_TAG_BYTES + 1;
  for (const d of message.datagrams ?? []) size += LONG_TAG_BYTES + varintBytes(d.length) + d.length;
  if (message.udp_batch) size += LONG_TAG_BYTES + 1;
  if (message.udp_delivered) size += LONG_TAG_BYTES + varintBytes(message.udp_delivered);
  if (message.udp_credit) size += LONG_TAG_BYTES + 1;

  const frame = Buffer.allocUnsafe(GRPC_HEADER_BYTES + size);
  frame[0] = 0; // not compressed
  frame.writeUInt32BE(size, 1);
  let at = GRPC_HEADER_BYTES;
  // In field-number order, as protobuf encoders write them (data, field 3, after id and protocol).
  const writeString = ([field, value, length]: [number, string, number]) => {
    frame[at++] = (field << 3) | 2;
    at = writeVarint(frame, at, length);
    at += frame.write(value, at, length, "utf8");
  };
  let next = 0;
  while (next < strings.length && strings[next]![0] < DATA_FIELD) writeString(strings[next++]!);
  if (data?.length) {
    frame[at++] = (DATA_FIELD << 3) | 2;
    at = writeVarint(frame, at, data.length);
    frame.set(data, at);
    at += data.length;
  }
  while (next < strings.length) writeString(strings[next++]!);
  if (message.half_close) at = writeVarint(frame, writeVarint(frame, at, HALF_CLOSE_FIELD << 3), 1);
  if (message.eof) at = writeVarint(frame, writeVarint(frame, at, EOF_FIELD << 3), 1);
  for (const d of message.datagrams ?? []) {
    at = writeVarint(frame, writeVarint(frame, at, (DATAGRAMS_FIELD << 3) | 2), d.length);
    frame.set(d, at);
    at += d.length;
  }
  if (message.udp_batch) at = writeVarint(frame, writeVarint(frame, at, UDP_BATCH_FIELD << 3), 1);
  if (message.udp_delivered) at = writeVarint(frame, writeVarint(frame, at, UDP_DELIVERED_FIELD << 3), message.udp_delivered);
  if (message.udp_credit) at = writeVarint(frame, writeVarint(frame, at, UDP_CREDIT_FIELD << 3), 1);
  return frame;
}

const EMPTY = Buffer.alloc(0);

/** Decodes a message (unknown fields skipped, as protobuf requires); throws on a malformed one. */
export function decodeTunnelMessage(buf: Buffer): TunnelMessage {
  const message: TunnelMessage = {
    id: "", protocol: "", data: EMPTY, guest_addr: "", udp_target_addr: "", half_close: false, eof: false, datagrams: [], udp_batch: false,
    udp_delivered: 0, udp_credit: false,
  };
  let at = 0;
  const varint = (): number => {
    let n = 0;
    for (let shift = 0; ; shift += 7) {
      if (at >= buf.length) throw new Error("a Tunnel message ends inside a number");
      const byte = buf[at++]!;
      if (shift < 28) n |= (byte & 0x7f) << shift;
      else if (shift < 63) n += (byte & 0x7f) * 2 ** shift; // beyond 2^53 only booleans and skipped fields care
      else throw new Error("a Tunnel message has a number longer than 10 bytes");
      if (!(byte & 0x80)) return n;
    }
  };
  while (at < buf.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 2) {
      const length = varint();
      const end = at + length;
      if (end > buf.length) throw new Error("a Tunnel message field runs past its end");
      if (field === DATA_FIELD) message.data = buf.subarray(at, end);
      else if (field === DATAGRAMS_FIELD) message.datagrams.push(buf.subarray(at, end));
      else {
        const name = STRING_FIELDS.find(([f]) => f === field)?.[1];
        if (name) message[name] = buf.toString("utf8", at, end);
      }
      at = end;
    } else if (wire === 0) {
      const value = varint();
      if (field === HALF_CLOSE_FIELD) message.half_close = value !== 0;
      else if (field === EOF_FIELD) message.eof = value !== 0;
      else if (field === UDP_BATCH_FIELD) message.udp_batch = value !== 0;
      else if (field === UDP_DELIVERED_FIELD) message.udp_delivered = Math.min(value, 2 ** 31); // a credit; an untrusted peer's huge one frees no more than its budget
      else if (field === UDP_CREDIT_FIELD) message.udp_credit = value !== 0;
    } else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else throw new Error(`a Tunnel message has a field of wire type ${wire}`);
    if (at > buf.length) throw new Error("a Tunnel message field runs past its end");
  }
  return message;
}
