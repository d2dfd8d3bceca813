// The arm64 binary (dist/porthole-linux-arm64) run under qemu-user (Debian's
// qemu-aarch64-static, with libc6:arm64 through multiarch) against the x86-64 one: the guest
// role in a network namespace serving the x86-64 host agent, and the host role against the
// x86-64 guest agent, TCP and UDP with the data checked, over gRPC and over the data path (the
// arm64 shim's relay and UDP pump threads doing the work). qemu-user refuses NETLINK_SOCK_DIAG
// sockets (EPROTONOSUPPORT), so here the arm64 agent must say so once and read /proc/net;
// netlink detection by the arm64 shim is proven on a real aarch64 kernel in test/vm.
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import * as dgram from "node:dgram";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { echoRoundTrip, e2eTest, exchange, fakeVirtioPort, freePort, Guest, pathsOf, PORTHOLE, startHostAgent, statusJSON, useHarness, type HostAgentProc, type Proc } from "../e2e/harness.ts";

useHarness();

const REPO = resolve(import.meta.dir, "../..");
const ARM64_BIN = process.env.PORTHOLE_ARM64_BIN ?? join(REPO, "dist/porthole-linux-arm64");
const ARM64 = ["qemu-aarch64-static", ARM64_BIN];
const BUNDLE = join(REPO, "dist/porthole.mjs");
/** Bun's arm64 runtime as `make` fetched it from npm for cross-compiling (scripts/bun-runtime.mjs). */
const BUN_VERSION = JSON.parse(readFileSync(join(REPO, "package-lock.json"), "utf8")).packages["node_modules/bun"].version;
const ARM64_BUN = process.env.PORTHOLE_ARM64_BUN ?? join(REPO, `node_modules/.cache/porthole/bun-linux-aarch64-${BUN_VERSION}/bun`);
/** Bun's start-up under emulation takes seconds, not milliseconds. */
const SLOW_MS = 60_000;

function arm64Blocker(): string | undefined {
  if (!existsSync(ARM64_BIN)) return `${ARM64_BIN} is missing: make dist/porthole-linux-arm64 (make test does)`;
  if (!existsSync(ARM64_BUN) || !existsSync(BUNDLE)) return `${ARM64_BUN} or ${BUNDLE} is missing: make dist (make test builds both)`;
  if (spawnSync("sh", ["-c", "command -v qemu-aarch64-static"]).status !== 0) return "qemu-aarch64-static is missing: apt-get install qemu-user-static";
  if (!existsSync("/lib/ld-linux-aarch64.so.1")) return "libc6:arm64 is missing: dpkg --add-architecture arm64 && apt-get install libc6:arm64";
  return undefined;
}
const blocker = arm64Blocker();
if (blocker && process.env.CI) throw new Error(`${blocker}; CI=true forbids skipping the arm64 tests`);
const arm64Test = (blocker ? e2eTest.skip : e2eTest) as typeof e2eTest;

async function startArm64Guest(guest: Guest, listen: string): Promise<Proc> {
  const agent = guest.spawn([...ARM64, "guest", "--listen", listen], "arm64 guest agent (qemu-user)");
  await agent.waitForLine(/serving on/, "stderr", SLOW_MS);
  return agent;
}

/** One datagram to 127.0.0.1:port and its echo, sent again until it comes back. */
async function udpEcho(port: number, text: string): Promise<string> {
  const client = dgram.createSocket("udp4");
  try {
    const reply = new Promise<string>((resolve) => client.on("message", (m) => resolve(m.toString())));
    const timer = setInterval(() => client.send(text, port, "127.0.0.1"), 300);
    client.send(text, port, "127.0.0.1");
    const got = await reply;
    clearInterval(timer);
    return got;
  } finally {
    client.close();
  }
}

describe("the arm64 binary under qemu-user", () => {
  arm64Test("--version: arm64, Bun, and the arm64 shim loaded (not the x86-64 one)", () => {
    const r = spawnSync(ARM64[0]!, [...ARM64.slice(1), "--version"], { encoding: "utf8", timeout: SLOW_MS });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("architecture: arm64 (linux)");
    expect(r.stdout).toContain("runtime: bun ");
    expect(r.stdout).toContain("native shim: loaded (arm64)");
  });

  arm64Test("the Node/Deno bundle ships both shims and, run by an arm64 runtime (Bun's, under qemu-user), loads the arm64 one", () => {
    const r = spawnSync("qemu-aarch64-static", [ARM64_BUN, BUNDLE, "--version"], { encoding: "utf8", timeout: SLOW_MS, env: { ...process.env, BUN_BE_BUN: "1" } });
    expect(r.stderr).toBe("");
    expect(r.stdout).toContain("architecture: arm64 (linux)");
    expect(r.stdout).toContain("native shim: loaded (arm64)");
  });

  arm64Test("guest role: serves the x86-64 host agent over unix; TCP (1 MiB echo) and UDP forwarded intact; netlink refused by qemu-user is said once", async () => {
    const guest = Guest.create();
    const agent = await startArm64Guest(guest, `unix://${guest.socket}`);
    const degraded = agent.stderr.filter((l) => l.startsWith("degraded:"));
    // The arm64 shim loaded (a missing shim would say so); only qemu-user's netlink refusal remains.
    expect(degraded).toHaveLength(1);
    expect(degraded[0]).toContain("netlink sock_diag is refused here");
    expect(degraded[0]).toContain("EPROTONOSUPPORT");
    // Without netlink, no kernel events either: the detector is said once, polling.
    expect(agent.stderr.filter((l) => l.startsWith("port detector:"))).toEqual(["port detector: poll every 500 ms (netlink sock_diag is refused here)"]);
    const host = startHostAgent(guest, ["--forwarder", "grpc"]);
    await host.waitForEvent((e) => e.type === "guest-connected", "the x86-64 host agent to reach the arm64 guest agent", SLOW_MS);
    await forwardsTcpAndUdp(guest, host, "datagram to the arm64 guest");
    expect(agent.stderr.filter((l) => l.startsWith("degraded:"))).toHaveLength(1);
    expect(agent.stderr.join("\n")).not.toContain("closed a connection");
    // The arm64 shim peeked at the connection (MSG_PEEK): no relay in front of HTTP/2.
    expect(agent.stderr.filter((l) => l.includes("porthole's host agent is served by HTTP/2 directly"))).toHaveLength(1);
  });

  arm64Test("guest role: grpc-go as Lima's host agent (empty :authority) gets GetInfo, GetEvents and TCP and UDP Tunnels from the arm64 guest agent", async () => {
    const peer = join(REPO, "dist/lima-go-peer");
    if (!existsSync(peer)) throw new Error(`${peer} is missing: make dist/lima-go-peer (make test builds it)`);
    const guest = Guest.create();
    const agent = await startArm64Guest(guest, `unix://${guest.socket}`);
    const [tcp, udp] = [await freePort(), await freePort()];
    await guest.startEcho("127.0.0.1", tcp);
    await guest.startServer("udp-echo", [["127.0.0.1", udp]]);
    const lima = guest.spawn([peer, "host", guest.socket, `127.0.0.1:${tcp}`, `127.0.0.1:${udp}`], "grpc-go Lima host");
    const steps = () => lima.stdout.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { step?: string; error?: string; echo?: string });
    await lima.waitFor(() => steps().find((s) => s.error || s.step === "Tunnel udp"), "the grpc-go host's last step", SLOW_MS);
    expect(steps().find((s) => s.error)).toBeUndefined();
    expect(steps().find((s) => s.step === "Tunnel tcp")?.echo).toBe("hello from grpc-go");
    expect(steps().find((s) => s.step === "Tunnel udp")?.echo).toBe("one datagram");
    expect(agent.stderr.filter((l) => l.includes("a client sends an empty :authority"))).toHaveLength(1);
  });

  arm64Test("guest role over a virtio-serial port: the arm64 shim's socketpair carries the agent channel", async () => {
    const guest = Guest.create();
    const port = await fakeVirtioPort(guest);
    await startArm64Guest(guest, `serial://${port.device}`);
    const host = startHostAgent(guest, ["--guest", `unix://${port.chardev}`, "--forwarder", "grpc"]);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect over the port", SLOW_MS);
    const echo = await freePort();
    await guest.startEcho("127.0.0.1", echo);
    await host.waitForForwarding(echo, SLOW_MS);
    expect((await exchange(echo, Buffer.from("arm64 over serial"))).toString()).toBe("arm64 over serial");
  });

  arm64Test("host role: the arm64 host agent forwards the x86-64 guest agent's TCP (1 MiB echo) and UDP intact", async () => {
    const guest = Guest.create();
    const agent = await guest.startAgent([], PORTHOLE);
    expect(agent.stderr.join("\n")).toContain("watching sockets with netlink sock_diag on kernel events");
    const host = startHostAgent(guest, ["--forwarder", "grpc"], { command: ARM64 });
    await host.waitForEvent((e) => e.type === "guest-connected", "the arm64 host agent to connect", SLOW_MS);
    await forwardsTcpAndUdp(guest, host, "datagram through the arm64 host");
  });

  // --kernel-direct is not claimed on aarch64 (its programs ran only on x86-64 kernels here):
  // what is proven is that an arm64 host agent that cannot load them says why and relays.
  arm64Test("host role with --kernel-direct where bpf() is missing (qemu-user: ENOSYS): a warning says why, once, and the relay carries the direct forward", async () => {
    const guest = Guest.create();
    const { guestIP } = guest.linkToHost();
    await guest.startAgent([], PORTHOLE);
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    await guest.startEcho("0.0.0.0", guestPort);
    const config = guest.writeFile("kd.yaml", `portForwards:\n- {guestIP: ${guestIP}, guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n`);
    const host = startHostAgent(guest, ["--config", config, "--kernel-direct"], { command: ARM64 });
    const isWarning = (e: { type: string; message?: unknown }) => e.type === "warning" && String(e.message).startsWith("--kernel-direct");
    const warned = await host.waitForEvent(isWarning, "the --kernel-direct warning", SLOW_MS);
    expect(String(warned.message)).toContain("ENOSYS");
    expect(String(warned.message)).toEndWith("direct forwards go through the relay");
    await host.waitForEvent((e) => e.type === "path-changed" && e.path === "direct" && e.state === "usable", "the direct path proved", SLOW_MS);
    await host.waitForForwarding(hostPort, SLOW_MS);
    const control = join(guest.dir, "state", "control.sock");
    // A static forward listens before its path is chosen: its clients go direct once the forward says so.
    await host.proc.waitFor(() => statusJSON(control).forwards.find((f) => f.hostAddr === `127.0.0.1:${hostPort}`)?.path === "direct" || undefined, "the forward on the direct path", SLOW_MS);
    for (const text of ["one", "two", "three"]) expect((await exchange(hostPort, Buffer.from(text))).toString()).toBe(text);
    expect(pathsOf(control, hostPort)).toEqual({ direct: 3 });
    expect(host.events.filter(isWarning)).toHaveLength(1);
    expect(host.events.filter((e) => e.type === "relay-selected" && String(e.message).startsWith("--kernel-direct"))).toEqual([]);
  });
});

describe("the arm64 shim's threads under qemu-user: the data path's relay and the UDP pump", () => {
  arm64Test("guest role: the x86-64 host's data path (--forwarder fast) to the arm64 guest agent, whose relay thread carries TCP and whose pump carries UDP (their CPU, and the host's path counters)", async () => {
    const guest = Guest.create();
    const agent = await startArm64Guest(guest, `unix://${guest.socket}`);
    const host = startHostAgent(guest, ["--forwarder", "fast"]);
    await host.waitForEvent((e) => e.type === "guest-connected", "the x86-64 host agent to reach the arm64 guest agent", SLOW_MS);
    const pid = agent.child.pid!;
    const before = { relay: threadCpuNs(pid, "porthole-relay"), pump: threadCpuNs(pid, "ph-udp-pump") };
    await forwardsTcpAndUdp(guest, host, "datagram to the arm64 guest's pump", 8 << 20);
    const control = join(guest.dir, "state", "control.sock");
    const rows = statusJSON(control).forwards;
    const tcp = rows.find((f) => f.protocol === "tcp" && f.path === "fast");
    const udp = rows.find((f) => f.protocol === "udp");
    // The host sent both over the data path (porthole's own streams to the guest's data endpoint).
    expect(tcp?.bytesIn ?? 0).toBeGreaterThanOrEqual(8 << 20);
    expect(udp?.paths?.fast?.connections).toBe(1);
    // In the arm64 guest agent, the shim's relay thread moved the TCP bytes and its pump thread
    // the datagrams: both threads exist and used CPU (qemu-user passes their names through).
    expect(threadCpuNs(pid, "porthole-relay")).toBeGreaterThan(Math.max(before.relay, 0));
    expect(threadCpuNs(pid, "ph-udp-pump")).toBeGreaterThan(Math.max(before.pump, 0));
    expect(agent.stderr.join("\n")).toContain("forwarded connections are relayed natively");
    expect(agent.stderr.join("\n")).not.toContain("through the event loops");
  });

  arm64Test("host role: the arm64 host agent's relay thread carries the data path (native relay counters, every byte) and its pump the UDP flow (datagramsPumped)", async () => {
    const guest = Guest.create();
    await guest.startAgent([], PORTHOLE);
    const host = startHostAgent(guest, ["--forwarder", "fast"], { command: ARM64 });
    await host.waitForEvent((e) => e.type === "guest-connected", "the arm64 host agent to connect", SLOW_MS);
    await forwardsTcpAndUdp(guest, host, "datagram through the arm64 host's pump", 8 << 20);
    const control = join(guest.dir, "state", "control.sock");
    const s = statusJSON(control) as ReturnType<typeof statusJSON> & { relay?: { mode: string; nativeRelays: number; bytesSpliced: number; bytesCopied: number } };
    expect(s.relay?.mode).toBe("native");
    expect(s.relay?.nativeRelays).toBeGreaterThanOrEqual(1);
    // Both directions of the 8 MiB echo went through the relay thread, not JavaScript.
    expect((s.relay?.bytesSpliced ?? 0) + (s.relay?.bytesCopied ?? 0)).toBeGreaterThanOrEqual(2 * (8 << 20));
    const udp = s.forwards.find((f) => f.protocol === "udp");
    expect(udp?.datagramsPumped ?? 0).toBeGreaterThanOrEqual(1);
    expect(host.proc.stderr.join("\n")).not.toContain("through the event loops");
  });
});

/** CPU time (ns, from schedstat) used so far by the threads of pid named `name` (-1: no such thread). */
function threadCpuNs(pid: number, name: string): number {
  let total = -1;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      if (readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim() !== name) continue;
      total = Math.max(total, 0) + Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      // the thread ended
    }
  }
  return total;
}

/** A guest TCP echo server carries 1 MiB intact through its forward, and a UDP echo a datagram. */
async function forwardsTcpAndUdp(guest: Guest, host: HostAgentProc, datagram: string, bytes = 1 << 20): Promise<void> {
  const tcp = await freePort();
  await guest.startEcho("127.0.0.1", tcp);
  await host.waitForForwarding(tcp, SLOW_MS);
  const { sent, received, receivedBytes } = await echoRoundTrip(tcp, bytes);
  expect([receivedBytes, received]).toEqual([bytes, sent]);
  const udp = await freePort();
  await guest.startServer("udp-echo", [["127.0.0.1", udp]]);
  await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${udp}`, "the UDP forward", SLOW_MS);
  expect(await udpEcho(udp, datagram)).toBe(datagram);
}
