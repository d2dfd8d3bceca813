// The guest's sessions on a virtio-serial port that outlives its hosts, over an in-process
// stand-in for the port's stream (the e2e tests in test/e2e/transports.test.ts use a pty).
import { afterEach, describe, expect, test } from "bun:test";
import type * as net from "node:net";
import type { Duplex } from "node:stream";
import { h2Frame, HTTP2_PREFACE, muxFrame, MUX_PROBE, MuxKind } from "../../src/core/mux-frames.ts";
import { memoryPair } from "../../src/transport/memory-pair.ts";
import { serveSessions } from "../../src/transport/serial-sessions.ts";
import { waitUntil } from "../wait.ts";

const grpcStart = Buffer.concat([HTTP2_PREFACE, h2Frame(0x4, 0, Buffer.from([0, 4, 0, 0x10, 0, 0]))]);

/** Each test's port stand-ins: closed after it (the sessions and any stall timer with them). */
const ports: Duplex[] = [];
afterEach(() => ports.splice(0).forEach((end) => end.destroy()));

/** A port stand-in: what the test writes as "the host", the sessions each seen, and what reached the host. */
function port(options: { read?: boolean } = {}) {
  const [guestEnd, hostEnd] = memoryPair();
  ports.push(hostEnd);
  const sessions: { socket: Duplex; got: Buffer[]; closed: boolean }[] = [];
  const toHost: Buffer[] = [];
  const log: string[] = [];
  hostEnd.on("data", (c: Buffer) => toHost.push(c));
  serveSessions(guestEnd as net.Socket, (socket) => {
    const s = { socket, got: [] as Buffer[], closed: false };
    sessions.push(s);
    socket.on("close", () => (s.closed = true));
    socket.on("error", () => {});
    // The first session reads only if asked (a reader that stopped); later ones always.
    if (options.read !== false || sessions.length > 1) socket.on("data", (c: Buffer) => s.got.push(c));
  }, "serial test", (l) => log.push(l));
  return { host: hostEnd, sessions, toHost, log };
}

/** Until the stand-in has seen n sessions. */
const sessionsSeen = (p: ReturnType<typeof port>, n: number) => waitUntil(`${n} session(s)`, () => p.sessions.length >= n);
/** Until a session has read `bytes` bytes. */
const read = (s: { got: Buffer[] }, bytes: number) => waitUntil(`${bytes} bytes read`, () => Buffer.concat(s.got).length >= bytes);
/** Until a second session has read `first`: then exactly two sessions, the second with exactly those bytes. */
async function expectSecondSessionGot(p: ReturnType<typeof port>, first: Buffer): Promise<void> {
  await sessionsSeen(p, 2);
  await read(p.sessions[1]!, first.length);
  expect(p.sessions).toHaveLength(2);
  expect(Buffer.concat(p.sessions[1]!.got)).toEqual(Buffer.from(first));
}

describe("serial sessions: one host connection after another on one open port", () => {
  test("a new host's preface closes the old session and starts a new one with exactly its bytes; only the live session's writes reach the port", async () => {
    const p = port();
    const first = Buffer.concat([MUX_PROBE, muxFrame(1, MuxKind.OPEN, Buffer.from("agent"))]);
    p.host.write(first);
    await sessionsSeen(p, 1);
    await read(p.sessions[0]!, first.length);
    expect(p.sessions).toHaveLength(1);
    const old = p.sessions[0]!.socket;
    p.host.write(grpcStart);
    await sessionsSeen(p, 2);
    await read(p.sessions[1]!, grpcStart.length);
    await waitUntil("the old session closed", () => p.sessions[0]!.closed);
    expect(p.sessions).toHaveLength(2);
    expect(p.sessions[0]!.closed).toBe(true);
    expect(Buffer.concat(p.sessions[0]!.got)).toEqual(first);
    expect(Buffer.concat(p.sessions[1]!.got)).toEqual(grpcStart);
    old.write("late words of the old session"); // refused: that session is closed
    p.sessions[1]!.socket.write("SETTINGS");
    await waitUntil("the new session's words on the port", () => Buffer.concat(p.toHost).length >= "SETTINGS".length);
    expect(Buffer.concat(p.toHost).toString()).toBe("SETTINGS");
    expect(p.log).toEqual([expect.stringContaining("a new host connection began on the port")]);
  });

  test("an old session that stopped reading does not keep the new host from being served, whether its preface comes in the same write or later", async () => {
    const p = port({ read: false });
    // One write: the old host's start and a 2 MiB frame (more than the old session takes and its queue holds), then the new host's preface.
    p.host.write(Buffer.concat([MUX_PROBE, muxFrame(1, MuxKind.DATA, Buffer.alloc(2 << 20)), grpcStart]));
    await expectSecondSessionGot(p, grpcStart);
    p.host.write(h2Frame(0x4, 0x1, Buffer.alloc(0)));
    await read(p.sessions[1]!, grpcStart.length + 9);
    expect(Buffer.concat(p.sessions[1]!.got)).toEqual(Buffer.concat([grpcStart, h2Frame(0x4, 0x1, Buffer.alloc(0))]));
  });

  test("the old host's last frame, then the new host's preface in a later write, while the old session reads nothing", async () => {
    const p = port({ read: false });
    p.host.write(Buffer.concat([MUX_PROBE, muxFrame(1, MuxKind.DATA, Buffer.alloc(256 << 10))]));
    await sessionsSeen(p, 1);
    p.host.write(grpcStart);
    await expectSecondSessionGot(p, grpcStart);
  });

  test("bytes this side holds back (a session that reads slowly) are no stall: a frame carrying a preface is not cut while the port waits", async () => {
    const p = port({ read: false });
    // A whole 1 MiB frame (more than the session's queue: the port is held back), then most of
    // a frame whose payload begins with a client preface (a forwarded h2c connection's first bytes).
    const frame = muxFrame(1, MuxKind.DATA, Buffer.concat([grpcStart, Buffer.alloc((1 << 20) - grpcStart.length)]));
    p.host.write(Buffer.concat([MUX_PROBE, muxFrame(1, MuxKind.DATA, Buffer.alloc(1 << 20)), frame.subarray(0, 10 << 10)]));
    await new Promise((r) => setTimeout(r, 1300));
    expect(p.sessions).toHaveLength(1);
  });

  test("a session that ends leaves the port open: bytes until the next preface are dropped, then a new session starts", async () => {
    const p = port();
    p.host.write(grpcStart);
    await sessionsSeen(p, 1);
    p.sessions[0]!.socket.destroy(); // its reader gave up (say, on a protocol error)
    await waitUntil("the session closed", () => p.sessions[0]!.closed);
    p.host.write(Buffer.from("stray bytes of the old host"));
    p.host.write(MUX_PROBE);
    await expectSecondSessionGot(p, MUX_PROBE);
  });

  test("a host killed mid-frame: the next host's bytes, read as that frame's rest, start a new session once the stream stalls for a second", async () => {
    const p = port();
    p.host.write(Buffer.concat([MUX_PROBE, muxFrame(1, MuxKind.DATA, Buffer.alloc(5000)).subarray(0, 1000)]));
    await sessionsSeen(p, 1);
    p.host.write(grpcStart);
    await read(p.sessions[0]!, MUX_PROBE.length + 1000 + grpcStart.length);
    expect(p.sessions).toHaveLength(1);
    await sessionsSeen(p, 2); // after the stall (a second)
    await read(p.sessions[1]!, grpcStart.length);
    expect(p.sessions).toHaveLength(2);
    expect(p.sessions[0]!.closed).toBe(true);
    expect(Buffer.concat(p.sessions[1]!.got)).toEqual(grpcStart);
  });
});
