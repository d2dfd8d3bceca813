// The empty-:authority relay at the frame level: header blocks split over CONTINUATION frames,
// with padding and priority, and indexed from the client's dynamic table, come out decodable
// with `:authority: localhost`; every other frame and byte passes unchanged.
import { describe, expect, test } from "bun:test";
import * as net from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import hpack from "hpack.js";
import { relayFixingAuthority } from "../../src/runtime/h2-authority.ts";

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

function parseFrames(bytes: Buffer): { type: number; flags: number; stream: number; payload: Buffer }[] {
  const out = [];
  for (let at = 0; at + 9 <= bytes.length; ) {
    const length = bytes.readUIntBE(at, 3);
    out.push({ type: bytes[at + 3]!, flags: bytes[at + 4]!, stream: bytes.readUInt32BE(at + 5), payload: bytes.subarray(at + 9, at + 9 + length) });
    at += 9 + length;
  }
  return out;
}

/** Sends `bytes` (after the preface) through the relay in small pieces; returns what the server side got. */
async function relay(bytes: Buffer, onFix: () => void): Promise<Buffer> {
  const dir = mkdtempSync(join(tmpdir(), "porthole-h2a-"));
  try {
    const pair = async (name: string): Promise<[net.Socket, net.Socket]> => {
      const path = join(dir, name);
      const accepted = new Promise<net.Socket>((resolve) => {
        const server = net.createServer((s) => (server.close(), resolve(s)));
        server.listen(path);
      });
      await new Promise((r) => setTimeout(r, 20));
      const client = net.connect(path);
      return [client, await accepted];
    };
    const [peer, clientSide] = await pair("client.sock");
    const [serverSide, server] = await pair("server.sock");
    const got: Buffer[] = [];
    server.on("data", (d: Buffer) => got.push(d));
    const ended = new Promise((r) => server.once("end", r));
    clientSide.pause();
    relayFixingAuthority(clientSide, serverSide, PREFACE.subarray(0, 24), onFix);
    for (let i = 0; i < bytes.length; i += 7) peer.write(bytes.subarray(i, i + 7));
    peer.end();
    await ended;
    for (const s of [peer, clientSide, serverSide, server]) s.destroy();
    return Buffer.concat(got);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("the empty-:authority relay", () => {
  test("re-encodes every header block of a client that sends an empty :authority, and passes DATA as it is", async () => {
    const encoder = hpack.compressor.create({ table: { maxSize: 4096 } });
    const encode = (headers: [string, string][]) => {
      encoder.write(headers.map(([name, value]) => ({ name, value })));
      const parts: Buffer[] = [];
      for (let c = encoder.read(); c !== null; c = encoder.read()) parts.push(Buffer.from(c));
      return Buffer.concat(parts);
    };
    const request = (path: string): [string, string][] => [[":method", "POST"], [":scheme", "http"], [":path", path], [":authority", ""], ["content-type", "application/grpc"], ["te", "trailers"]];
    const first = encode(request("/GuestService/GetInfo"));
    const second = encode(request("/GuestService/GetEvents")); // indexes the dynamic table entries of the first
    const settings = frame(4, 0, 0, Buffer.alloc(0));
    // The first block: PADDED and PRIORITY, split over a CONTINUATION frame.
    const padded = Buffer.concat([Buffer.from([3]), Buffer.from([0, 0, 0, 0, 16]), first.subarray(0, 5), Buffer.alloc(3)]);
    const data = frame(0, 1, 1, Buffer.from("\0\0\0\0\0"));
    const input = Buffer.concat([
      PREFACE, settings,
      frame(1, 0x8 | 0x20, 1, padded), frame(9, 0x4, 1, first.subarray(5)),
      data,
      frame(1, 0x4 | 0x1, 3, second),
    ]);
    let fixes = 0;
    const out = await relay(input.subarray(24), () => fixes++);
    expect(out.subarray(0, 24).equals(PREFACE)).toBe(true);
    const frames = parseFrames(out.subarray(24));
    expect(frames.map((f) => [f.type, f.stream])).toEqual([[4, 0], [1, 1], [0, 1], [1, 3]]);
    expect(frames[1]!.flags & 0x20).toBe(0x20); // the priority is kept
    expect(frames[2]!.payload.equals(data.subarray(9))).toBe(true);
    expect(frames[3]!.flags & 0x1).toBe(1); // END_STREAM kept
    const decoder = hpack.decompressor.create({ table: { maxSize: 4096 } });
    const decode = (block: Buffer) => {
      decoder.write(block);
      decoder.execute();
      const h: Record<string, string> = {};
      for (let x = decoder.read(); x !== null; x = decoder.read()) h[x.name] = x.value;
      return h;
    };
    expect(decode(frames[1]!.payload.subarray(5))).toMatchObject({ ":authority": "localhost", ":path": "/GuestService/GetInfo" });
    expect(decode(frames[3]!.payload)).toMatchObject({ ":authority": "localhost", ":path": "/GuestService/GetEvents", te: "trailers" });
    expect(fixes).toBe(1);
  });

  test("a client that sends an authority gets its bytes unchanged", async () => {
    const encoder = hpack.compressor.create({ table: { maxSize: 4096 } });
    encoder.write([{ name: ":method", value: "POST" }, { name: ":authority", value: "localhost" }, { name: ":path", value: "/x" }]);
    const block = Buffer.from(encoder.read()!);
    const input = Buffer.concat([frame(4, 0, 0, Buffer.alloc(0)), frame(1, 0x4, 1, block), frame(0, 1, 1, Buffer.from("abc"))]);
    let fixes = 0;
    const out = await relay(input, () => fixes++);
    expect(out.equals(Buffer.concat([PREFACE, input]))).toBe(true);
    expect(fixes).toBe(0);
  });
});
