// The lean-mux session (transport/lean-mux.ts) between two real unix sockets: what a far side
// that breaks the format or its credit does (the session ends, its streams are reset, the
// process goes on), and a refused target.
import { afterEach, describe, expect, test } from "bun:test";
// (The raw agent stream is a unix socket, as a serial port's chardev socket is.)
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import { creditFrame, MUX_WINDOW, muxDataHeader, muxFrame, MuxKind } from "../../src/core/mux-frames.ts";
import { MuxRefused, MuxSession } from "../../src/transport/lean-mux.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

/** Two connected sockets: unix, or TCP on loopback (where a reset can be seen: unix sockets have none). */
async function pair(tcp = false): Promise<[net.Socket, net.Socket]> {
  const dir = mkdtempSync(join(tmpdir(), "ph-mux-"));
  const path = join(dir, "s");
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((r) => (tcp ? server.listen(0, "127.0.0.1", r) : server.listen(path, r)));
  const accepted = new Promise<net.Socket>((r) => server.once("connection", r));
  const client = tcp ? net.connect({ port: (server.address() as net.AddressInfo).port, host: "127.0.0.1", allowHalfOpen: true }) : net.connect({ path, allowHalfOpen: true });
  const other = await accepted;
  cleanups.push(() => (client.destroy(), other.destroy(), server.close(), rmSync(dir, { recursive: true, force: true })));
  return [client, other];
}

/** How a socket ended: "eof", or its error code. */
const ending = (s: net.Socket) =>
  new Promise<string>((resolve) => {
    s.once("end", () => resolve("eof"));
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
    s.resume();
  });

/** A host session on one end of a pair with one stream opened; the test plays the guest on the other end by hand. */
async function openedByFakeGuest() {
  const [raw, guestSide] = await pair();
  let closed = "";
  const session = new MuxSession(raw, "host", { onClose: (why) => (closed = why) });
  const frames: Buffer[] = [];
  guestSide.on("data", (c: Buffer) => frames.push(c));
  const opening = session.open("tcp 127.0.0.1:1");
  await Bun.sleep(20);
  guestSide.write(muxFrame(1, MuxKind.OPENED));
  const id = await opening;
  return { session, guestSide, id, closed: () => closed, frames };
}

/** The same, its stream attached to a real TCP connection whose client the test holds. */
async function hostWithFakeGuest() {
  const { session, guestSide, id, closed, frames } = await openedByFakeGuest();
  const [client, endpoint] = await pair(true); // the host client, and the socket the session relays
  session.attach(id, endpoint);
  return { session, guestSide, client, closed, frames };
}

describe("a far side the host cannot trust", () => {
  test("garbage ends the session with the reason, and its client is reset", async () => {
    const { session, guestSide, client, closed } = await hostWithFakeGuest();
    const end = ending(client);
    guestSide.write(Buffer.from("GET / HTTP/1.1\r\n\r\n"));
    expect(await end).toBe("ECONNRESET");
    expect(session.isClosed).toBe(true);
    expect(closed()).toContain("broke the mux format");
  });

  test("DATA after its own EOF ends the session", async () => {
    const { guestSide, client, closed } = await hostWithFakeGuest();
    const end = ending(client);
    guestSide.write(Buffer.concat([muxDataHeader(1, 5), Buffer.from("hello"), muxFrame(1, MuxKind.EOF)]));
    expect(await end).toBe("eof"); // the EOF, as the guest sent it
    guestSide.write(Buffer.concat([muxDataHeader(1, 1), Buffer.from("!")]));
    await Bun.sleep(50);
    expect(closed()).toContain("data after its EOF");
  });

  test("a guest may not open streams; credit beyond a window is refused", async () => {
    const first = await hostWithFakeGuest();
    first.guestSide.write(muxFrame(7, MuxKind.OPEN, Buffer.from("agent")));
    await Bun.sleep(50);
    expect(first.closed()).toContain("opened a stream");
    const second = await hostWithFakeGuest();
    second.guestSide.write(creditFrame(1, 2 * MUX_WINDOW));
    await Bun.sleep(50);
    expect(second.closed()).toContain("more credit than a window");
  });

  test("a refusal rejects the open with the guest's words", async () => {
    const [raw, guestSide] = await pair();
    const session = new MuxSession(raw, "host");
    const opening = session.open("tcp 127.0.0.1:1");
    guestSide.write(muxFrame(1, MuxKind.REFUSED, Buffer.from("127.0.0.1:1: connect ECONNREFUSED")));
    const err = await opening.catch((e: Error) => e);
    expect(err).toBeInstanceOf(MuxRefused);
    expect((err as Error).message).toContain("ECONNREFUSED");
    expect(session.isClosed).toBe(false);
  });

  test("a refusal's words are taken up to 2,000 bytes (a 1 MiB refusal is not logged and kept whole)", async () => {
    const [raw, guestSide] = await pair();
    const session = new MuxSession(raw, "host");
    const opening = session.open("tcp 127.0.0.1:1");
    guestSide.write(muxFrame(1, MuxKind.REFUSED, Buffer.alloc(1 << 20, "x")));
    const err = await opening.catch((e: Error) => e);
    expect(err).toBeInstanceOf(MuxRefused);
    expect((err as Error).message).toBe(`${"x".repeat(2000)}…`);
  });

  test("an open the guest never answers is given up after the timeout: rejected, and the stream reset towards the guest", async () => {
    const [raw, guestSide] = await pair();
    const session = new MuxSession(raw, "host", {}, undefined, 200);
    const seen: Buffer[] = [];
    const reset = muxFrame(1, MuxKind.RESET);
    const resetSeen = new Promise<void>((resolve) =>
      guestSide.on("data", (c: Buffer) => {
        seen.push(c);
        if (Buffer.concat(seen).includes(reset)) resolve();
      }),
    );
    const err = await session.open("tcp 127.0.0.1:1").catch((e: Error) => e);
    expect((err as Error).message).toContain("no answer");
    await resetSeen; // the stream reset towards the guest (the test times out otherwise)
    expect(Buffer.concat(seen).includes(reset)).toBe(true);
    guestSide.write(muxFrame(1, MuxKind.OPENED)); // a late answer changes nothing
    await Bun.sleep(20);
    expect(session.isClosed).toBe(false);
  });

  test("tiny DATA frames to a client that does not read are held joined (not a write each), then all arrive in order, EOF last", async () => {
    const { session, guestSide, id } = await openedByFakeGuest();
    // An endpoint that takes nothing until told: its writes queue, then ask for a drain.
    let release: (() => void) | undefined;
    const taken: Buffer[] = [];
    const endpoint = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, done) {
        if (release) return void (taken.push(chunk), done());
        release = () => ((release = () => {}), taken.push(chunk), done());
      },
      final(done) {
        ended = true;
        done();
      },
    });
    let ended = false;
    let writeCalls = 0;
    const write = endpoint.write.bind(endpoint) as (chunk: Buffer) => boolean;
    endpoint.write = ((chunk: Buffer) => (writeCalls++, write(chunk))) as typeof endpoint.write;
    session.attach(id, endpoint);
    const frames = 200_000;
    const wire = Buffer.concat(Array.from({ length: frames }, (_, i) => Buffer.concat([muxDataHeader(id, 1), Buffer.of(i % 251)])));
    guestSide.write(Buffer.concat([wire, muxFrame(id, MuxKind.EOF)]));
    while (session.totals.received < frames) await Bun.sleep(10);
    await Bun.sleep(50);
    // Without holding, every frame was a write of its own (200,000 Buffers, each a view of its read buffer).
    expect(writeCalls).toBeLessThan(endpoint.writableHighWaterMark + 100); // one by one up to the endpoint's high-water mark, then held
    expect(ended).toBe(false); // the EOF waits behind the held bytes
    release!();
    while (!ended) await Bun.sleep(10);
    const got = Buffer.concat(taken);
    expect(got.length).toBe(frames);
    expect(got.every((b, i) => b === i % 251)).toBe(true);
  });

  test("a client that half-closes and then resets reaches the guest as EOF, then a reset (its target is not left half-open)", async () => {
    const { guestSide, client, frames } = await hostWithFakeGuest();
    const seen = (frame: Buffer) => Buffer.concat(frames).includes(frame);
    client.end();
    while (!seen(muxFrame(1, MuxKind.EOF))) await Bun.sleep(5);
    client.resetAndDestroy();
    const deadline = Date.now() + 3000;
    while (!seen(muxFrame(1, MuxKind.RESET)) && Date.now() < deadline) await Bun.sleep(5);
    expect(seen(muxFrame(1, MuxKind.RESET))).toBe(true);
    guestSide.destroy();
  });

  test("the agent stream closing resets every open stream (never a clean EOF)", async () => {
    const { guestSide, client } = await hostWithFakeGuest();
    const end = ending(client);
    guestSide.destroy();
    expect(await end).toBe("ECONNRESET");
  });
});
