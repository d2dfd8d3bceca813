// A stream ends the way its far end ended it, on every data path: data then EOF, or data then
// a reset; and when the guest agent dies, a reset, never a clean EOF. The guest servers that
// reset are CPython's (test/fixtures/reset-server.py); each test also checks, from
// `porthole status --json`, which path the connections really took and which relay carried
// them: the direct and fast paths run with the native relay (the data path's framed streams
// through its framed side) and with the JavaScript one (PORTHOLE_NATIVE_RELAY=0).
import { describe, expect } from "bun:test";
import * as net from "node:net";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { e2eTest, exchange, freePort, Guest, pathsOf, readToEnd, runPorthole, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const relays = [
  { relay: "the native relay", env: "", mode: "native" },
  { relay: "the JavaScript relay", env: "0", mode: "javascript" },
] as const;

/** The guest agent inherits the test's environment: PORTHOLE_NATIVE_RELAY=env (unset when empty) for its start. */
async function startGuestAgent(guest: Guest, env: string) {
  const saved = process.env.PORTHOLE_NATIVE_RELAY;
  if (env) process.env.PORTHOLE_NATIVE_RELAY = env;
  else delete process.env.PORTHOLE_NATIVE_RELAY;
  try {
    return await guest.startAgent();
  } finally {
    if (saved === undefined) delete process.env.PORTHOLE_NATIVE_RELAY;
    else process.env.PORTHOLE_NATIVE_RELAY = saved;
  }
}

/** The host agent's relay: its mode and how many connections each relay carried. */
function relayOf(control: string): { mode: string; nativeRelays: number; javascriptRelays: number; resets: number } {
  const r = runPorthole(["status", "--control", control, "--json"]);
  if (r.code !== 0) throw new Error(`porthole status: ${r.stderr}`);
  return JSON.parse(r.stdout).relay;
}

/**
 * Connections that went over a relay were carried by the one asked for (none fell back):
 * `connections` of them, or at most that many when a reset may come before the relay starts.
 */
function expectRelay(control: string, mode: string, connections: number, atMost = false): void {
  const relay = relayOf(control);
  expect(relay.mode).toBe(mode);
  const [mine, other] = mode === "native" ? [relay.nativeRelays, relay.javascriptRelays] : [relay.javascriptRelays, relay.nativeRelays];
  expect(other).toBe(0);
  if (atMost) expect(mine).toBeLessThanOrEqual(connections);
  else expect(mine).toBe(connections);
}

/** A guest (linked to the host by IP for `direct`), its agent, and a host agent forwarding over `path`. */
async function setUp(path: "direct" | "fast" | "grpc", env = "") {
  const guest = Guest.create();
  if (path === "direct") guest.linkToHost();
  const agent = await startGuestAgent(guest, env);
  const host = startHostAgent(guest, path === "direct" ? [] : ["--forwarder", path], { env: env ? { PORTHOLE_NATIVE_RELAY: env } : {} });
  await host.waitForEvent((e) => e.type === "guest-connected", "connect");
  if (path === "direct") await host.waitForEvent((e) => e.type === "path-changed" && e.state === "usable", "the direct path proved");
  // The direct path needs a guest socket reachable by IP; the tunnels reach any.
  const bind = path === "direct" ? "0.0.0.0" : "127.0.0.1";
  return { guest, agent, host, bind, control: join(guest.dir, "state", "control.sock") };
}

const cases = [
  ...(["direct", "fast"] as const).flatMap((path) => relays.map((r) => ({ path, ...r }))),
  { path: "grpc", relay: "grpc-js", env: "", mode: undefined },
] as const;

describe.each(cases)("stream ends over $path with $relay", ({ path, env, mode }) => {
  e2eTest("a guest server that sends 100 KB and then resets: all 100 KB arrive, then the reset, 20 times in 20", async () => {
    const { guest, host, bind, control } = await setUp(path, env);
    const port = await freePort();
    await guest.startResetServer(bind, port, 100_000);
    expect((await host.waitForForwarding(port)).path).toBe(path);
    const results = [];
    for (let i = 0; i < 20; i++) results.push(await readToEnd(port));
    expect(results).toEqual(Array.from({ length: 20 }, () => ({ end: "ECONNRESET", bytes: 100_000 })));
    expect(pathsOf(control, port)).toEqual({ [path]: 20 });
    if (mode) expectRelay(control, mode, 20);
  });

  e2eTest("a guest server that resets its client at once: the host client sees a reset, 50 times in 50", async () => {
    const { guest, host, bind, control } = await setUp(path, env);
    const port = await freePort();
    await guest.startResetServer(bind, port, 0);
    await host.waitForForwarding(port);
    const ends = await Promise.all(Array.from({ length: 50 }, () => readToEnd(port, { data: Buffer.from("hello") })));
    expect(ends.map((r) => r.end)).toEqual(Array(50).fill("ECONNRESET"));
    expect(pathsOf(control, port)).toEqual({ [path]: 50 });
    if (mode) expectRelay(control, mode, 50, true); // most are reset before their relay starts
  });
});

// The native relay checks a finished connect for queued data before its error (SO_ERROR
// alone says ECONNRESET and loses the data). Bun's and Node's own connect do not (they report
// the reset as a failed connect), so the JavaScript relay and gRPC are not held to this.
describe.each(cases.filter((c) => c.mode === "native"))("a late look at a connect over $path with $relay", ({ path, env, mode }) => {
  e2eTest("a connect that completes, gets data and a reset while its dialling agent is stopped: the data arrives, then the reset", async () => {
    const { guest, agent, host, bind, control } = await setUp(path, env);
    const port = await freePort();
    const server = await guest.startResetServer(bind, port, 10_000, "gated");
    await host.waitForForwarding(port);
    // The agent that dials the guest server: the host agent by IP (direct), the guest agent (data path).
    const [dialler, inGuest] = path === "direct" ? [host.proc, false] : [agent, true];
    const result = readToEnd(port, { timeoutMs: 20_000 });
    // Its SYN is dropped (the listener is full): the connect waits for the SYN sent again, 1 s later.
    const synSent = () => {
      const ss = ["ss", "-Htn", "state", "syn-sent", `( dport = :${port} )`];
      const r = inGuest ? spawnSync("ip", ["netns", "exec", guest.ns, ...ss]) : spawnSync(ss[0]!, ss.slice(1));
      return r.stdout.toString().trim() !== "" || undefined;
    };
    await dialler.waitFor(synSent, "the dial in flight");
    dialler.child.kill("SIGSTOP");
    try {
      server.child.stdin!.write("open\n");
      await server.waitForLine(/^reset 1/); // connected, 10 KB sent and acknowledged, then reset
    } finally {
      dialler.child.kill("SIGCONT");
    }
    expect(await result).toEqual({ end: "ECONNRESET", bytes: 10_000 });
    expect(pathsOf(control, port)).toEqual({ [path]: 1 });
    if (mode) expectRelay(control, mode, 1);
  });
});

const dying = [...relays.map((r) => ({ path: "fast" as const, ...r })), { path: "grpc" as const, relay: "grpc-js", env: "", mode: undefined }];

describe.each(dying)("the guest agent dies mid-download over $path with $relay", ({ path, env, mode }) => {
  e2eTest.each(["SIGKILL", "SIGTERM"] as const)("killed with %s: the host client sees a reset, not a clean EOF", async (signal) => {
    const { guest, agent, host, control } = await setUp(path, env);
    const port = await freePort();
    await guest.startServer("source", [["127.0.0.1", port]]);
    await host.waitForForwarding(port);
    // An endless download: any EOF would be a lie (a truncated file taken for a whole one).
    const result = await readToEnd(port, { stopAfter: [8 << 20, () => agent.child.kill(signal)] });
    expect(result.end).toBe("ECONNRESET");
    expect(result.bytes).toBeGreaterThanOrEqual(8 << 20);
    expect(pathsOf(control, port)).toEqual({ [path]: 1 });
    if (mode) expectRelay(control, mode, 1);
  });
});

describe("the data endpoint (anything in reach may connect)", () => {
  /** Sends `text` on a fresh data-path stream; resolves when the agent closed it. */
  const probe = (path: string, text: string) =>
    new Promise<void>((resolve) => {
      const s = net.connect(path);
      s.once("connect", () => s.end(Buffer.from(text, "latin1")));
      s.once("close", () => resolve());
      s.once("error", () => {});
      s.resume();
    });

  e2eTest.each([
    ["a wrong secret", `PHDATA2 ${"ab".repeat(24)} tcp 127.0.0.1:80\n`, "wrong secret"],
    ["a bad header", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad header"],
  ])("%s is refused and logged, and 50 more add no more than one line", async (_what, text, words) => {
    const guest = Guest.create();
    const agent = await guest.startAgent();
    const data = `${guest.socket}.data`;
    for (let i = 0; i < 51; i++) await probe(data, text);
    const lines = () => agent.stderr.filter((l) => l.includes("data path: refused"));
    await agent.waitFor(() => lines().length || undefined, "the refusal in the log");
    expect(lines()).toHaveLength(1);
    expect(lines()[0]).toContain(words);
    expect(agent.running).toBe(true);
  });

  e2eTest("300 random and mutated headers are each closed, and the data path goes on carrying real connections", async () => {
    const { guest, agent, host, control } = await setUp("fast");
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    const valid = Buffer.from(`PHDATA2 ${"ab".repeat(24)} tcp 127.0.0.1:${port}\n`);
    for (let i = 0; i < 300; i++) {
      const input = i % 3 ? Buffer.from(valid) : randomBytes(1 + (i % 200));
      if (i % 3) for (let m = 0; m <= i % 5; m++) input[Math.floor(Math.random() * input.length)] = Math.floor(Math.random() * 256);
      await probe(`${guest.socket}.data`, input.toString("latin1"));
    }
    expect(agent.running).toBe(true);
    expect((await exchange(port, Buffer.from("still here"))).toString()).toBe("still here");
    expect(pathsOf(control, port)).toEqual({ fast: 1 });
  });
});

