// UDP through the shim's batched sockets (native/udp.c): the agents read with recvmmsg() and
// write with sendmmsg() several datagrams per call (seen by strace, not by our own counters: the
// runtime's own UDP sockets call recvmmsg too, but send one datagram per sendmmsg),
// and every datagram still arrives whole and alone; with PORTHOLE_NATIVE_UDP=0 the runtime's
// sockets carry the same traffic and a warning says why, once.
import { describe, expect } from "bun:test";
import { spawn } from "node:child_process";
import * as dgram from "node:dgram";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { e2eTest, freePort, Guest, startHostAgent, useHarness } from "./harness.ts";
import { defer, PORTHOLE, Proc as Child } from "../lab.ts";
import { waitUntil } from "../wait.ts";

useHarness();

/** COUNT datagrams of different sizes (0 to 9,000 bytes), each filled with its own index. */
function datagrams(count: number): Buffer[] {
  return Array.from({ length: count }, (_, i) => {
    const d = Buffer.alloc((i * 397) % 9001, i % 251);
    if (d.length >= 4) d.writeUInt32BE(i, 0);
    return d;
  });
}

/** Sends each datagram to 127.0.0.1:port, in bursts (each waits for the one before to come back), and collects what comes back. */
async function echoThrough(port: number, sent: Buffer[], burst: number): Promise<Buffer[]> {
  const client = dgram.createSocket("udp4");
  defer(() => void client.close());
  const received: Buffer[] = [];
  client.on("message", (m) => received.push(m));
  await new Promise<void>((resolve) => client.bind(0, "127.0.0.1", resolve));
  for (let at = 0; at < sent.length; at += burst) {
    const want = Math.min(sent.length, at + burst);
    for (const d of sent.slice(at, want)) client.send(d, port, "127.0.0.1");
    await waitUntil(`${want} datagrams back (got ${received.length})`, () => received.length >= want, 10_000);
  }
  return received;
}

/** Every received datagram is one that was sent, byte for byte (none merged, split or changed), and all came back. */
function expectWhole(sent: Buffer[], received: Buffer[]): void {
  const key = (d: Buffer) => d.toString("base64");
  const sentKeys = new Map<string, number>();
  for (const d of sent) sentKeys.set(key(d), (sentKeys.get(key(d)) ?? 0) + 1);
  for (const d of received) {
    const k = key(d);
    expect(sentKeys.get(k) ?? 0).toBeGreaterThan(0);
    sentKeys.set(k, sentKeys.get(k)! - 1);
  }
  expect(received.length).toBe(sent.length);
}

/** The largest result of the named call in an strace log (the number of datagrams it moved). */
function largestResult(log: string, call: string): number {
  let largest = -1;
  for (const m of log.matchAll(new RegExp(`${call}\\(.*\\) = (\\d+)`, "g"))) largest = Math.max(largest, Number(m[1]));
  return largest;
}

function traceCalls(pid: number, file: string): Child {
  const strace = new Child(spawn("strace", ["-f", "-e", "trace=recvmmsg,sendmmsg", "-o", file, "-p", String(pid)], { stdio: ["ignore", "pipe", "pipe"] }), "strace");
  defer(() => strace.kill("SIGKILL"));
  return strace;
}

describe("UDP in batches", () => {
  e2eTest("with the shim the agents write several datagrams per sendmmsg, and 400 datagrams of 0-9,000 bytes come back whole (strace)", async () => {
    const guest = Guest.create();
    const agent = await guest.startAgent();
    const host = startHostAgent(guest, []);
    const port = await freePort();
    await guest.startServer("udp-echo", [["127.0.0.1", port]]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
    const hostLog = join(guest.dir, "host.strace");
    const guestLog = join(guest.dir, "guest.strace");
    const traces = [traceCalls(host.proc.child.pid!, hostLog), traceCalls(agent.child.pid!, guestLog)];
    await Promise.all(traces.map((t) => t.waitForLine(/attached/, "stderr")));

    const sent = datagrams(400);
    expectWhole(sent, await echoThrough(port, sent, 10)); // a burst stays inside a flow's 128 KiB budget

    for (const t of traces) t.child.kill("SIGINT");
    await Promise.all(traces.map((t) => t.exited));
    const [hostCalls, guestCalls] = [readFileSync(hostLog, "utf8"), readFileSync(guestLog, "utf8")];
    // Both agents use the shim's sockets (the runtime's own also call recvmmsg, but send one datagram per sendmmsg):
    // a burst that waited in the host's socket left in one message and one sendmmsg in the guest (the echoes likewise back).
    for (const calls of [hostCalls, guestCalls]) {
      expect(largestResult(calls, "recvmmsg")).toBeGreaterThan(0);
      expect(largestResult(calls, "sendmmsg")).toBeGreaterThan(0);
    }
    expect(Math.max(largestResult(hostCalls, "sendmmsg"), largestResult(guestCalls, "sendmmsg"))).toBeGreaterThan(1);
  });

  e2eTest("socat as the guest's UDP server (not our code): datagrams of 1 to 60,000 bytes come back byte for byte through the shim's sockets", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest, []);
    const port = await freePort();
    // One child per datagram echoes it through a pipe of its own; -b lets a 60,000-byte datagram through whole.
    // (Not EXEC:cat: cat may read a large datagram from its pipe in two parts and socat then sends two datagrams.)
    guest.spawn(["socat", "-b", "65536", `UDP4-RECVFROM:${port},bind=127.0.0.1,fork`, "PIPE"], "socat");
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
    const sent = [1, 100, 1400, 8192, 9000, 30_000, 60_000].map((n, i) => Buffer.alloc(n, i + 65));
    expectWhole(sent, await echoThrough(port, sent, 1));
    expect(host.events.some((e) => e.type === "warning" && /UDP forwards use the runtime's sockets/.test(String(e.message)))).toBe(false);
  });

  e2eTest("PORTHOLE_NATIVE_UDP=0: the runtime's sockets carry every datagram whole, and a warning says why, once", async () => {
    const guest = Guest.create();
    const agent = await guest.startAgent([], ["env", "PORTHOLE_NATIVE_UDP=0", ...PORTHOLE]);
    const host = startHostAgent(guest, [], { env: { PORTHOLE_NATIVE_UDP: "0" } });
    const port = await freePort();
    await guest.startServer("udp-echo", [["127.0.0.1", port]]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
    const sent = datagrams(100);
    expectWhole(sent, await echoThrough(port, sent, 10));
    const warnings = host.events.filter((e) => e.type === "warning" && /UDP forwards use the runtime's sockets/.test(String(e.message)));
    expect(warnings.length).toBe(1);
    expect(String(warnings[0]!.message)).toContain("PORTHOLE_NATIVE_UDP=0");
    expect(agent.stderr.filter((l) => /UDP forwards use the runtime's sockets.*PORTHOLE_NATIVE_UDP=0/.test(l)).length).toBe(1);
  });
});
