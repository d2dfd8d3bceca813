// Node's (nghttp2) and Bun's node:http2 servers refuse a request whose `:authority` is empty
// with RST_STREAM PROTOCOL_ERROR before grpc-js sees it; grpc-go sends exactly that when dialled
// with the passthrough resolver and an empty target, which is how Lima's host agent calls its
// guest agent. This relay sits between an accepted agent connection and the runtime's HTTP/2
// server: it reads the client's frames, and if the first request's `:authority` is empty it
// re-encodes every request header block of that connection with `:authority: localhost`
// (decoded with the client's HPACK state, re-encoded without the dynamic table, so the server's
// table stays empty and in step). A client that sends an authority (grpc-js, C-core by default)
// gets a plain byte relay after its first request. Server-to-client bytes are never touched.
import type * as net from "node:net";
import hpack from "hpack.js";

const PREFACE_BYTES = 24;
const FRAME_HEADER_BYTES = 9;
const HEADERS = 0x1;
const CONTINUATION = 0x9;
const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY = 0x20;
/** SETTINGS_MAX_FRAME_SIZE's default; the servers here never raise it. */
const MAX_FRAME_BYTES = 16_384;
/** SETTINGS_HEADER_TABLE_SIZE's default, the most a client's encoder may use. */
const HEADER_TABLE_BYTES = 4096;
const FILLED_AUTHORITY = "localhost";

type Mode = "undecided" | "rewrite" | "pass";

/**
 * Joins `client` (an accepted agent connection; `first` holds the bytes already read from it,
 * starting with the HTTP/2 preface) to `server` (the runtime's HTTP/2 server). Half-close and
 * errors propagate as a plain relay's do. `onEmptyAuthority` is called once per connection
 * whose requests needed the fix.
 */
export function relayFixingAuthority(client: net.Socket, server: net.Socket, first: Buffer, onEmptyAuthority: () => void): void {
  server.pipe(client);
  for (const [one, other] of [[client, server], [server, client]] as const) {
    one.once("error", () => resetSocket(other));
    one.once("close", () => other.writableEnded || resetSocket(other));
  }

  let mode: Mode = "undecided";
  let pending: Buffer = Buffer.alloc(0);
  let prefaceLeft = PREFACE_BYTES;
  /** Bytes left of a frame that passes through unchanged (DATA, SETTINGS, …). */
  let passLeft = 0;
  /** The header block being collected (HEADERS + CONTINUATION frames), raw and as fragments. */
  let block: { raw: Buffer[]; fragments: Buffer[]; streamId: number; flags: number; priority?: Buffer } | undefined;
  const decoder = hpack.decompressor.create({ table: { maxSize: HEADER_TABLE_BYTES } });
  const encoder = hpack.compressor.create({ table: { maxSize: HEADER_TABLE_BYTES } });

  const send = (bytes: Buffer) => {
    if (bytes.length && !server.write(bytes)) client.pause();
  };
  server.on("drain", () => client.resume());

  const finishBlock = () => {
    const b = block!;
    block = undefined;
    decoder.write(Buffer.concat(b.fragments));
    decoder.execute();
    const headers: { name: string; value: string; neverIndex?: boolean }[] = [];
    for (let h = decoder.read(); h !== null; h = decoder.read()) headers.push(h);
    if (mode === "undecided") {
      const authority = headers.find((h) => h.name === ":authority");
      mode = authority && authority.value === "" ? "rewrite" : "pass";
      if (mode === "rewrite") onEmptyAuthority();
      else return send(Buffer.concat(b.raw));
    }
    const fixed = headers.map((h) => ({
      name: h.name,
      value: h.name === ":authority" && h.value === "" ? FILLED_AUTHORITY : h.value,
      neverIndex: h.neverIndex,
      incremental: false,
    }));
    encoder.write(fixed);
    const chunks: Buffer[] = [];
    for (let c = encoder.read(); c !== null; c = encoder.read()) chunks.push(Buffer.from(c));
    send(headerFrames(Buffer.concat(chunks), b.streamId, b.flags & END_STREAM, b.priority));
  };

  const consume = () => {
    while (pending.length) {
      if (mode === "pass" && !block) {
        send(pending);
        pending = Buffer.alloc(0);
        client.off("data", onData);
        client.pipe(server);
        return;
      }
      if (prefaceLeft) {
        const n = Math.min(prefaceLeft, pending.length);
        send(pending.subarray(0, n));
        pending = pending.subarray(n);
        prefaceLeft -= n;
        continue;
      }
      if (passLeft) {
        const n = Math.min(passLeft, pending.length);
        send(pending.subarray(0, n));
        pending = pending.subarray(n);
        passLeft -= n;
        continue;
      }
      if (pending.length < FRAME_HEADER_BYTES) return;
      const length = pending.readUIntBE(0, 3);
      const type = pending[3]!;
      if (type !== HEADERS && type !== CONTINUATION) {
        // Not a header block: forwarded as it comes, without waiting for the whole frame.
        send(pending.subarray(0, FRAME_HEADER_BYTES));
        pending = pending.subarray(FRAME_HEADER_BYTES);
        passLeft = length;
        continue;
      }
      if (pending.length < FRAME_HEADER_BYTES + length) return;
      const frame = pending.subarray(0, FRAME_HEADER_BYTES + length);
      pending = pending.subarray(FRAME_HEADER_BYTES + length);
      const flags = frame[4]!;
      const streamId = frame.readUInt32BE(5) & 0x7fffffff;
      let payload = frame.subarray(FRAME_HEADER_BYTES);
      if (type === HEADERS) {
        let priority: Buffer | undefined;
        if (flags & PADDED) payload = payload.subarray(1, payload.length - payload[0]!);
        if (flags & PRIORITY) {
          priority = payload.subarray(0, 5);
          payload = payload.subarray(5);
        }
        block = { raw: [], fragments: [], streamId, flags, priority };
      }
      if (!block) {
        // A CONTINUATION without HEADERS: let the server refuse it.
        send(frame);
        continue;
      }
      block.raw.push(frame);
      block.fragments.push(payload);
      if (flags & END_HEADERS) finishBlock();
    }
  };

  const onData = (chunk: Buffer) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    try {
      consume();
    } catch {
      // A header block that does not decode: the connection cannot go on in step.
      resetSocket(client);
      resetSocket(server);
    }
  };
  client.on("data", onData);
  client.on("end", () => server.end());
  onData(first);
  client.resume();
}

/** One HEADERS frame and as many CONTINUATION frames as the block needs. */
function headerFrames(block: Buffer, streamId: number, endStream: number, priority: Buffer | undefined): Buffer {
  const frames: Buffer[] = [];
  let first = true;
  let rest = block;
  do {
    const room = MAX_FRAME_BYTES - (first && priority ? 5 : 0);
    const part = rest.subarray(0, room);
    rest = rest.subarray(part.length);
    const body = first && priority ? Buffer.concat([priority, part]) : part;
    const header = Buffer.alloc(FRAME_HEADER_BYTES);
    header.writeUIntBE(body.length, 0, 3);
    header[3] = first ? HEADERS : CONTINUATION;
    header[4] = (rest.length ? 0 : END_HEADERS) | (first ? endStream | (priority ? PRIORITY : 0) : 0);
    header.writeUInt32BE(streamId, 5);
    frames.push(header, body);
    first = false;
  } while (rest.length);
  return Buffer.concat(frames);
}

/** Closes with a reset where the runtime can send one (runtime/ sits below transport/'s helper). */
function resetSocket(socket: net.Socket): void {
  if (socket.destroyed) return;
  try {
    if (typeof socket.resetAndDestroy === "function") return void socket.resetAndDestroy();
  } catch {
    // not connected, or no reset here: a plain close will do
  }
  socket.destroy();
}
