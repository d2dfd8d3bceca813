// A forward's listeners on the host: retry with backoff, next-free, and 127.0.0.1:P with its
// [::1]:P companion standing or falling together. Real sockets on loopback, no guest: each
// accepted connection is answered by the test's own handler.
import { afterEach, expect, test } from "bun:test";
import * as net from "node:net";
import { backoffDelay } from "../../src/core/backoff.ts";
import type { ForwardEvent } from "../../src/core/forward-event.ts";
import type { PlannedForward } from "../../src/core/forward-plan.ts";
import { TcpForward } from "../../src/host/tcp-forward.ts";
import { freePort, tryConnect } from "../lab.ts";
import { waitUntil } from "../wait.ts";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

function plan(port: number, extra: Partial<PlannedForward> = {}): PlannedForward {
  return {
    key: `tcp 127.0.0.1:${port}`,
    protocol: "tcp",
    host: { kind: "tcp", ip: "127.0.0.1", port },
    guestAddr: `127.0.0.1:${port}`,
    origin: "built-in",
    static: false,
    ipv6Companion: true,
    udp: { idleTimeoutMs: 60_000, maxFlows: 16 },
    onConflict: "fail",
    ...extra,
  };
}

/** A TcpForward whose connections are answered "guest" by the test, with its events. */
function start(p: PlannedForward): { forward: TcpForward; events: ForwardEvent[]; next: (m: (e: ForwardEvent) => boolean) => Promise<ForwardEvent> } {
  const events: ForwardEvent[] = [];
  const waiters: (() => void)[] = [];
  const forward = new TcpForward(p, (socket) => socket.end("guest"), (e) => {
    events.push(e);
    waiters.splice(0).forEach((w) => w());
  });
  cleanups.push(() => forward.destroy());
  const next = async (m: (e: ForwardEvent) => boolean) => {
    for (;;) {
      const found = events.find(m);
      if (found) return found;
      await new Promise<void>((r) => waiters.push(r));
    }
  };
  return { forward, events, next };
}

async function squat(port: number, host: string): Promise<net.Server> {
  const server = net.createServer((s) => s.end("squatter"));
  await new Promise<void>((r) => server.listen({ port, host, ipv6Only: true }, r));
  cleanups.push(() => new Promise((r) => server.close(r)));
  return server;
}

/** What a client reads from host:port: "guest", "squatter", or the connect error. */
function read(port: number, host: string): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host });
    let got = "";
    s.setEncoding("utf8");
    s.on("data", (d: string) => (got += d));
    s.on("end", () => resolve(got));
    s.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

test("backoff grows from the minimum to the cap, with full jitter below the ceiling", () => {
  const opts = { minMs: 500, maxMs: 10_000 };
  expect(backoffDelay(0, opts, () => 1)).toBe(500);
  expect(backoffDelay(1, opts, () => 1)).toBe(1000);
  expect(backoffDelay(3, opts, () => 1)).toBe(4000);
  expect(backoffDelay(10, opts, () => 1)).toBe(10_000);
  expect(backoffDelay(1e9, opts, () => 1)).toBe(10_000);
  expect(backoffDelay(5, opts, () => 0)).toBe(500);
});

test("127.0.0.1:P taken by another program: [::1]:P is not bound to the guest either, and both come once it is free", async () => {
  const port = await freePort();
  const squatter = await squat(port, "127.0.0.1");
  const { forward, events, next } = start(plan(port));
  const failed = await next((e) => e.type === "failed");
  expect(failed.hostAddr).toBe(`127.0.0.1:${port}`);
  expect(failed.error).toContain("address already in use");
  expect(failed.error).toContain(`not listening on [::1]:${port} either`);
  expect(failed.retryInMs).toBe(500); // the first retry: the backoff's minimum
  // A client that resolves localhost to ::1 must not reach the guest while 127.0.0.1 is another program's.
  expect(await read(port, "::1")).toBe("ECONNREFUSED");
  expect(await read(port, "127.0.0.1")).toBe("squatter");
  expect(forward.status().map((s) => [s.hostAddr, s.state])).toEqual([[`127.0.0.1:${port}`, "failed"], [`[::1]:${port}`, "failed"]]);

  const second = await next((e) => e !== failed && e.type === "failed");
  expect(second.retryInMs).toBeGreaterThanOrEqual(500);
  expect(second.retryInMs).toBeLessThanOrEqual(1000);
  await new Promise<void>((r) => squatter.close(() => r()));
  await next((e) => e.type === "forwarding" && e.hostAddr === `[::1]:${port}`);
  expect(events.filter((e) => e.type === "forwarding").map((e) => e.hostAddr)).toEqual([`127.0.0.1:${port}`, `[::1]:${port}`]);
  expect(await read(port, "127.0.0.1")).toBe("guest");
  expect(await read(port, "::1")).toBe("guest");
});

test("[::1]:P taken by another program: 127.0.0.1:P is not bound either", async () => {
  const port = await freePort();
  await squat(port, "::1");
  const { next } = start(plan(port));
  const failed = await next((e) => e.type === "failed");
  expect(failed.error).toStartWith(`[::1]:${port}: address already in use`);
  expect(await tryConnect(port, "127.0.0.1")).not.toBe("connected");
});

test("next-free moves both listeners to the same free port", async () => {
  const port = await freePort();
  await squat(port, "::1"); // only the companion's address is taken
  const { events, next } = start(plan(port, { onConflict: "next-free" }));
  await next((e) => e.type === "forwarding" && (e.hostAddr ?? "").startsWith("[::1]"));
  const forwarding = events.filter((e) => e.type === "forwarding");
  const moved = Number(forwarding[0]!.hostAddr!.split(":").pop());
  expect(moved).toBeGreaterThan(port);
  expect(forwarding.map((e) => [e.hostAddr, e.requestedHostAddr])).toEqual([
    [`127.0.0.1:${moved}`, `127.0.0.1:${port}`],
    [`[::1]:${moved}`, `[::1]:${port}`],
  ]);
  expect(events.filter((e) => e.type === "failed")).toEqual([]);
  expect(await read(moved, "::1")).toBe("guest");
  expect(await read(port, "127.0.0.1")).toBe("ECONNREFUSED");
});

test("closing stops both listeners; open connections go on, are counted, and end on destroy", async () => {
  const port = await freePort();
  const held: net.Socket[] = [];
  const events: ForwardEvent[] = [];
  const forward = new TcpForward(plan(port), (socket) => void held.push(socket), (e) => events.push(e));
  cleanups.push(() => forward.destroy());
  await waitUntil("both listeners forwarding", () => events.filter((e) => e.type === "forwarding").length >= 2);
  const client = net.connect({ port, host: "::1" });
  cleanups.push(() => client.destroy());
  await new Promise((r) => client.once("connect", r));
  await waitUntil("the connection handed over", () => held.length > 0);
  forward.close();
  expect(events.filter((e) => e.type === "stopping")).toHaveLength(2);
  expect(await tryConnect(port, "::1")).not.toBe("connected");
  expect(forward.openConnections).toBe(1);
  expect(forward.status()[0]!.connections).toBe(1);
  const closed = new Promise((r) => client.once("close", r));
  forward.destroy();
  await closed;
  expect(forward.openConnections).toBe(0);
});
