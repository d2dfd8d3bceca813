// The native relay's framed side (PHDATA2, core/data-frames.ts) against the JavaScript
// framing, in this process over real sockets: a plain TCP connection joined to a unix stream
// whose far end is driven by the test with the JavaScript encoder (dataFrameHeader, END_*)
// and read back with the JavaScript FrameDecoder. The same tests run against the native
// relay (splice, and read/send as over vsock) and the JavaScript spliceFramed fallback, so the
// native side is held to exactly the fallback's semantics; each counts the bytes on the relay
// that was asked to carry them, so a relay that silently fell back cannot pass for another.
import { afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dataFrameHeader, END_EOF, END_RESET, FrameDecoder, type StreamEnd } from "../../src/core/data-frames.ts";
import { joinFramed, prepareRelay, relayStatus } from "../../src/transport/fast-relay.ts";
import { nativeMoved } from "../lab.ts";

// A reset waits up to 3 s for the peer's send queue to drain (by design): under a loaded
// machine that plus the set-up came near bun's 5 s default.
setDefaultTimeout(20_000);

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
let counter = 0;

/** A server whose first accepted connection is handed to `take`; returns its address. */
function serveOnce(unix: boolean, take: (s: net.Socket) => void): Promise<net.NetConnectOpts> {
  return new Promise((resolve) => {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, take);
    cleanups.push(() => server.close());
    if (unix) {
      const path = join(tmpdir(), `porthole-framed-test-${process.pid}-${++counter}.sock`);
      server.listen(path, () => resolve({ path, allowHalfOpen: true }));
    } else {
      server.listen(0, "127.0.0.1", () => resolve({ port: (server.address() as net.AddressInfo).port, host: "127.0.0.1", allowHalfOpen: true }));
    }
  });
}

function connected(opts: net.NetConnectOpts): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(opts, () => resolve(s));
    s.once("error", reject);
    cleanups.push(() => s.destroy());
  });
}

/**
 * A joined pair: `peer` is the plain side's far end (a TCP client), `far` the framed
 * stream's far end (a unix client the test writes frames to). `initial`: bytes of the
 * stream the relay is told it already read; `write` first: what `far` sends before the join.
 */
async function joined(initial = Buffer.alloc(0), earlyFrames = Buffer.alloc(0)) {
  const bad: string[] = [];
  const pair = async (unix: boolean) => {
    let take!: (s: net.Socket) => void;
    const accepted = new Promise<net.Socket>((r) => (take = r));
    const client = await connected(await serveOnce(unix, take));
    return [client, await accepted] as const;
  };
  const [peer, plainSide] = await pair(false);
  const [far, framedSide] = await pair(true);
  cleanups.push(() => (plainSide.destroy(), framedSide.destroy()));
  if (earlyFrames.length) {
    far.write(earlyFrames);
    await Bun.sleep(20); // in the stream's socket buffer before the relay starts
  }
  joinFramed(plainSide, framedSide, initial, (why) => bad.push(why));
  return { peer, far, bad };
}

/** How a socket's reading ended (EOF, or the error's code) and what it received. */
function outcome(socket: net.Socket): Promise<{ data: Buffer; how: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const done = (how: string) => resolve({ data: Buffer.concat(chunks), how });
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.once("end", () => done("EOF"));
    socket.once("error", (err: NodeJS.ErrnoException) => done(err.code ?? "error"));
    socket.once("close", () => done("closed"));
  });
}

/** Decodes what the far end of the stream receives, until its end frame (or the stream's close). */
function framesFrom(far: net.Socket): { done: Promise<{ data: Buffer; end?: StreamEnd; bad?: string; closed: boolean }>; ended: Promise<StreamEnd> } {
  const decoder = new FrameDecoder();
  const chunks: Buffer[] = [];
  let end: StreamEnd | undefined;
  let bad: string | undefined;
  let onEnd!: (how: StreamEnd) => void;
  const ended = new Promise<StreamEnd>((r) => (onEnd = r));
  far.on("data", (chunk: Buffer) => {
    for (const item of decoder.push(chunk)) {
      if (item.kind === "data") chunks.push(Buffer.from(item.data));
      else if (item.kind === "end") onEnd((end = item.how));
      else bad ??= item.reason;
    }
  });
  const done = new Promise<{ data: Buffer; end?: StreamEnd; bad?: string; closed: boolean }>((resolve) => {
    // The relay ended or closed the stream (the test's far end is half-open: "end" is that).
    const over = () => resolve({ data: Buffer.concat(chunks), end, bad, closed: true });
    far.once("error", () => {});
    far.once("end", over);
    far.once("close", over);
  });
  return { done, ended };
}

/** Data as frames of the given sizes (cycled), as the JavaScript encoder sends them. */
function framed(data: Buffer, sizes = [65536]): Buffer {
  const parts: Buffer[] = [];
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, data.length - at);
    parts.push(dataFrameHeader(n), data.subarray(at, at + n));
    at += n;
  }
  return Buffer.concat(parts);
}

/** Writes bytes in small pieces with pauses, so that headers arrive split. */
async function trickle(socket: net.Socket, bytes: Buffer, piece = 3): Promise<void> {
  for (let at = 0; at < bytes.length; at += piece) {
    socket.write(bytes.subarray(at, at + piece));
    await Bun.sleep(2);
  }
}

const modes = [
  { name: "native relay (splice)", env: "", mode: "native", counter: "bytesSpliced" },
  { name: "native relay (read/send)", env: "copy", mode: "native-copy", counter: "bytesCopied" },
  { name: "JavaScript spliceFramed", env: "0", mode: "javascript", counter: undefined },
] as const;

describe.each(modes)("framed stream joined by the $name", ({ env, mode, counter }) => {
  beforeAll(async () => {
    expect((await prepareRelay(() => {}, { PORTHOLE_NATIVE_RELAY: env })).mode).toBe(mode);
  });

  /** The relay asked for carried `bytes` payload bytes (both ways together) since `before`. */
  const carried = (before: ReturnType<typeof relayStatus>, bytes: number) => {
    const after = relayStatus();
    if (counter) {
      expect(after.nativeRelays - before.nativeRelays).toBe(1);
      expect(nativeMoved(before, after, counter, bytes > 1 << 20)).toBe(bytes);
      expect(after.javascriptRelays).toBe(before.javascriptRelays);
    } else {
      expect(after.javascriptRelays - before.javascriptRelays).toBe(1);
      expect(after.nativeRelays).toBe(before.nativeRelays);
    }
  };

  /**
   * What reached the plain side's peer before a reset: everything, natively (the relay waits,
   * bounded, for the kernel's send queue to drain before it resets). The JavaScript relay
   * cannot see that queue: bytes still in it are lost to the reset, so only a prefix is sure.
   */
  const expectDeliveredBeforeReset = (data: Buffer, sent: Buffer) => {
    if (counter) expect(sha256(data)).toBe(sha256(sent));
    else expect(data.equals(sent.subarray(0, data.length))).toBe(true);
  };

  test("plain -> frames: what the encoder sends decodes with the JavaScript FrameDecoder, EOF as END_EOF, and the stream closes after both ends", async () => {
    const before = relayStatus();
    const { peer, far } = await joined();
    const got = framesFrom(far);
    const peerEnd = outcome(peer);
    const payload = randomBytes(3 << 20);
    peer.end(payload);
    expect(await got.ended).toBe("eof");
    far.end(END_EOF); // the other direction's end: only now may the stream close
    const { data, end, bad, closed } = await got.done;
    expect({ end, bad, closed }).toEqual({ end: "eof", bad: undefined, closed: true });
    expect(sha256(data)).toBe(sha256(payload));
    expect(await peerEnd).toEqual({ data: Buffer.alloc(0), how: "EOF" });
    carried(before, payload.length);
  });

  test("frames -> plain: frames of many sizes with headers split across writes arrive whole, END_EOF as EOF", async () => {
    const before = relayStatus();
    const { peer, far } = await joined();
    const got = framesFrom(far);
    const peerEnd = outcome(peer);
    const small = randomBytes(2000);
    await trickle(far, framed(small, [1, 2, 3, 5, 700])); // headers in pieces of 3 bytes
    const big = randomBytes(2 << 20);
    far.end(Buffer.concat([framed(big, [65536, 1, 300_000, 7]), END_EOF]));
    const { data, how } = await peerEnd;
    expect(how).toBe("EOF");
    expect(sha256(data)).toBe(sha256(Buffer.concat([small, big])));
    peer.end();
    expect((await got.done).end).toBe("eof");
    carried(before, small.length + big.length);
  });

  test("bytes already read (initial) holding partial frames are decoded first, then the rest of the stream", async () => {
    const before = relayStatus();
    const payload = randomBytes(10_000);
    const stream = Buffer.concat([framed(payload, [3000, 4000, 3000]), END_EOF]);
    // initial: a whole frame, part of the next, and half of a header after it; the rest
    // waits in the socket before the join, and more comes after it.
    const cut = 4 + 3000 + 4 + 1000;
    const { peer, far } = await joined(stream.subarray(0, cut + 4 + 4000 + 2), stream.subarray(cut + 4 + 4000 + 2, cut + 4 + 4000 + 2 + 10));
    const peerEnd = outcome(peer);
    const got = framesFrom(far);
    // (the early bytes and initial overlap nothing: initial ends where the early bytes begin)
    far.end(stream.subarray(cut + 4 + 4000 + 2 + 10));
    const { data, how } = await peerEnd;
    expect(how).toBe("EOF");
    expect(sha256(data)).toBe(sha256(payload));
    peer.end();
    expect((await got.done).end).toBe("eof");
    carried(before, payload.length);
  });

  for (const [what, header] of [
    ["a zero length", Buffer.from([0, 0, 0, 0])],
    ["a length above 16 MiB", Buffer.from([0x7f, 0xff, 0xff, 0xff])],
  ] as const) {
    test(`a bad header (${what}) resets the plain side after the data before it, closes the stream and says why`, async () => {
      const { peer, far, bad } = await joined();
      const got = framesFrom(far);
      const peerEnd = outcome(peer);
      const payload = randomBytes(50_000);
      far.write(Buffer.concat([framed(payload), header, randomBytes(100)]));
      const { data, how } = await peerEnd;
      expect(how).toBe("ECONNRESET");
      expectDeliveredBeforeReset(data, payload);
      expect((await got.done).closed).toBe(true);
      for (let i = 0; i < 200 && bad.length === 0; i++) await Bun.sleep(10); // the relay's record follows the reset
      expect(bad).toEqual([expect.stringContaining("invalid frame header")]);
    });
  }

  test("a stream that closes without an end frame (its agent died) resets the plain side after the data it carried", async () => {
    const { peer, far } = await joined();
    const peerEnd = outcome(peer);
    const payload = randomBytes(200_000);
    far.end(framed(payload));
    const { data, how } = await peerEnd;
    expect(how).toBe("ECONNRESET");
    expectDeliveredBeforeReset(data, payload);
  });

  test("a stream that closes in the middle of a frame resets the plain side after the bytes of that frame that came", async () => {
    const { peer, far } = await joined();
    const peerEnd = outcome(peer);
    const part = randomBytes(500);
    far.end(Buffer.concat([dataFrameHeader(1000), part]));
    const { data, how } = await peerEnd;
    expect(how).toBe("ECONNRESET");
    expectDeliveredBeforeReset(data, part);
  });

  test("END_RESET: the bytes before it arrive, then the reset; the plain side's END_RESET goes back and the stream closes", async () => {
    const before = relayStatus();
    const { peer, far } = await joined();
    const got = framesFrom(far);
    const peerEnd = outcome(peer);
    const payload = randomBytes(300_000);
    far.write(Buffer.concat([framed(payload), END_RESET]));
    const { data, how } = await peerEnd;
    expect(how).toBe("ECONNRESET");
    expectDeliveredBeforeReset(data, payload);
    expect(await got.ended).toBe("reset");
    far.end();
    expect((await got.done).end).toBe("reset");
    carried(before, payload.length);
  });

  test("END_RESET while the plain side's peer is not reading: the bytes waiting in the kernel still arrive before the reset", async () => {
    const { peer, far } = await joined();
    peer.pause();
    let how = "";
    peer.once("error", (err: NodeJS.ErrnoException) => (how = err.code ?? "error"));
    const closed = new Promise((resolve) => peer.once("close", resolve));
    const payload = randomBytes(2 << 20);
    far.write(Buffer.concat([framed(payload), END_RESET]));
    await Bun.sleep(300); // the reset is due while the bytes wait for the peer to read them
    const chunks: Buffer[] = [];
    peer.on("data", (c: Buffer) => chunks.push(c));
    peer.resume(); // reads from now on
    await closed;
    expect(how).toBe("ECONNRESET");
    expectDeliveredBeforeReset(Buffer.concat(chunks), payload);
  });

  test("the plain side resets: what it sent before arrives as frames, then END_RESET", async () => {
    const { peer, far } = await joined();
    const got = framesFrom(far);
    const sent = randomBytes(100_000);
    peer.write(sent);
    await new Promise<void>((resolve) => {
      let n = 0;
      far.on("data", (c: Buffer) => (n += c.length) >= sent.length && resolve());
    });
    peer.resetAndDestroy();
    expect(await got.ended).toBe("reset");
    far.end(END_EOF);
    const { data, end } = await got.done;
    expect(end).toBe("reset");
    expect(sha256(data)).toBe(sha256(sent));
  });

  test("the plain side half-closes and then resets while the far side still sends: its END_EOF went, so the stream is closed (the far agent resets its side)", async () => {
    const { peer, far } = await joined();
    const got = framesFrom(far);
    peer.on("error", () => {});
    peer.end("request");
    expect(await got.ended).toBe("eof");
    // The far side answers on and on; the peer takes some, then resets.
    const drip = setInterval(() => far.destroyed || far.write(framed(Buffer.alloc(16 << 10))), 10);
    far.once("close", () => clearInterval(drip));
    await new Promise((r) => peer.once("data", r));
    peer.resetAndDestroy();
    const { end, closed } = await got.done;
    expect({ end, closed }).toEqual({ end: "eof", closed: true });
  });

  test("END_EOF is a half-close: the plain side reads EOF while it still sends, and its data and EOF still go out as frames", async () => {
    const { peer, far } = await joined();
    const got = framesFrom(far);
    const toPeer = randomBytes(256 << 10);
    far.end(Buffer.concat([framed(toPeer), END_EOF]));
    const reply = randomBytes(1 << 20);
    const fromFar = await new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      peer.on("data", (c: Buffer) => chunks.push(c));
      peer.once("end", () => {
        resolve(Buffer.concat(chunks));
        peer.end(reply); // only after the EOF: the other direction still flows
      });
    });
    expect(sha256(fromFar)).toBe(sha256(toPeer));
    const { data, end, closed } = await got.done;
    expect({ end, closed }).toEqual({ end: "eof", closed: true });
    expect(sha256(data)).toBe(sha256(reply));
  });
});
