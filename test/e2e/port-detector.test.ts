// The port detector: kernel events (eBPF) drive detection in a real network namespace, the
// forced poll still works, sockets of other namespaces are not forwarded, and no program stays attached to the machine's cgroup2 root once the agent is
// gone (checked with bpftool).
import { describe, expect } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { e2eTest, freePort, Guest, refusedSoon, runPorthole, startHostAgent, tryConnect, useHarness, type Proc } from "./harness.ts";
import { defer, PORTHOLE, Proc as Child, traceCalls } from "../lab.ts";
import { waitUntil } from "../wait.ts";

useHarness();

const statusOf = (guest: Guest) => runPorthole(["status", "--control", join(guest.dir, "state", "control.sock")]);
const statusJSONOf = (guest: Guest) => JSON.parse(runPorthole(["status", "--control", join(guest.dir, "state", "control.sock"), "--json"]).stdout);

/** The cgroup2 mount (the root the agent attaches its post-bind programs to). */
function cgroup2Root(): string {
  const line = readFileSync("/proc/self/mounts", "utf8").split("\n").find((l) => l.split(" ")[2] === "cgroup2");
  if (!line) throw new Error("no cgroup2 mount");
  return line.split(" ")[1]!;
}

/** The BPF links an agent process holds (from /proc/PID/fdinfo): link id, type and program id. */
function linksOf(pid: number): { link: number; type: string; prog: number }[] {
  const links: { link: number; type: string; prog: number }[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== "anon_inode:bpf_link") continue;
      const info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8");
      const field = (name: string) => new RegExp(`${name}:\\s*(\\S+)`).exec(info)?.[1] ?? "";
      links.push({ link: Number(field("link_id")), type: field("link_type"), prog: Number(field("prog_id")) });
    } catch {
      // the fd closed meanwhile
    }
  }
  return links;
}

/** Ids of every BPF link on the machine, as bpftool lists them. */
function machineLinks(): number[] {
  const r = spawnSync("bpftool", ["-j", "link", "show"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`bpftool link show: ${r.stderr}`);
  return (JSON.parse(r.stdout.trim() || "[]") as { id: number }[]).map((l) => l.id);
}

/** Program ids attached to the cgroup2 root, as bpftool (not our code) lists them. */
function attachedToRoot(): number[] {
  const r = spawnSync("bpftool", ["-j", "cgroup", "show", cgroup2Root()], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`bpftool cgroup show: ${r.stderr}`);
  return (JSON.parse(r.stdout.trim() || "[]") as { id: number }[]).map((p) => p.id);
}

/** The helpers the agent's sock_ops (listen) program calls, as bpftool (not our code) prints its instructions. */
function listenProgramCalls(pid: number): string {
  const links = linksOf(pid);
  const name = (id: number) => (JSON.parse(spawnSync("bpftool", ["-j", "prog", "show", "id", String(id)], { encoding: "utf8" }).stdout || "{}") as { name?: string }).name;
  const listen = links.filter((l) => name(l.prog) === "ph_listen");
  if (listen.length !== 1) throw new Error(`no single ph_listen program among the agent's links: ${JSON.stringify(links)}`);
  const dump = spawnSync("bpftool", ["prog", "dump", "xlated", "id", String(listen[0]!.prog)], { encoding: "utf8" });
  if (dump.status !== 0 || !dump.stdout.includes("call ")) throw new Error(`bpftool prog dump xlated: ${dump.stderr || dump.stdout}`);
  return dump.stdout;
}

/** A guest agent whose full scans are a minute apart: only kernel events can find a port in time. */
async function eventOnlyPair(extra: string[] = [], command = PORTHOLE): Promise<{ guest: Guest; agent: Proc; host: ReturnType<typeof startHostAgent> }> {
  const guest = Guest.create();
  const agent = await guest.startAgent(["--scan-interval", "60000", ...extra], command);
  const host = startHostAgent(guest);
  await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
  return { guest, agent, host };
}

describe("port detector", () => {
  e2eTest("ebpf is the detector in use (status, status --json, the agent's log) and finds TCP and UDP ports without a scan", async () => {
    const { guest, agent, host } = await eventOnlyPair();
    expect(agent.stderr.join("\n")).toContain("port detector: ebpf (kernel events");
    expect(statusOf(guest).stdout).toContain("guest port detector: ebpf");
    expect(statusJSONOf(guest).guest.portDetector).toStartWith("port detector: ebpf");

    const [tcpPort, udpPort] = [await freePort(), await freePort()];
    const tcp = await guest.startEcho("127.0.0.1", tcpPort);
    await host.waitForForwarding(tcpPort, 5000);
    expect(await tryConnect(tcpPort)).toBe("connected");
    await guest.startServer("udp-echo", [["127.0.0.1", udpPort]]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${udpPort}`, "the UDP forward", 5000);

    // A listener closing (its socket-destroy event) ends the forward. The BPF program does not
    // report closes as well: it never asks for the listener's state changes.
    expect(agent.stderr.join("\n")).toContain("closes through socket-destroy events");
    expect(listenProgramCalls(agent.child.pid!)).not.toContain("cb_flags_set");
    await tcp.kill();
    expect(await refusedSoon(tcpPort, "127.0.0.1", 5000)).toBe("ECONNREFUSED");
  });

  e2eTest("without socket-destroy events (PORTHOLE_DESTROY_EVENTS=0) the agent says so, and the BPF program's close event alone ends a listener's forward", async () => {
    const { guest, agent, host } = await eventOnlyPair([], ["env", "PORTHOLE_DESTROY_EVENTS=0", ...PORTHOLE]);
    expect(agent.stderr.join("\n")).toContain("listeners' closes through BPF; no socket-destroy events (PORTHOLE_DESTROY_EVENTS=0)");
    expect(listenProgramCalls(agent.child.pid!)).toContain("cb_flags_set");
    const port = await freePort();
    const tcp = await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port, 5000);
    // Full scans are a minute apart and no destroy event is watched: only the close event is left.
    await tcp.kill();
    expect(await refusedSoon(port, "127.0.0.1", 5000)).toBe("ECONNREFUSED");
  });

  e2eTest("a burst of closes that overruns the destroy-event socket leaves the agent event-driven: no 10 ms poll after it (strace), and a UDP close is still noticed", async () => {
    const { guest, agent, host } = await eventOnlyPair();
    // 3,000 listeners, closed at once when their process ends: ~3,000 destroy events at once,
    // more than the netlink socket's buffer holds (the runtime then drops that fd).
    const script = "import socket,sys\ns=[socket.socket() for _ in range(3000)]\nfor x in s: x.bind(('127.0.0.1',0)); x.listen()\nprint('bound',flush=True)\nsys.stdin.read()";
    const many = guest.spawn(["sh", "-c", `ulimit -n 8192 && exec /usr/bin/python3 -c "${script}"`], "3,000 listeners", { stdin: true });
    await many.waitForLine(/^bound/);
    // The agent held still while they close, so that the events pile up whatever the machine's
    // speed (an agent that happened to read fast enough saw no overrun: a flaky test).
    process.kill(agent.child.pid!, "SIGSTOP");
    try {
      await many.kill();
    } finally {
      process.kill(agent.child.pid!, "SIGCONT");
    }
    // The overrun happened (the agent says so, once), and the agent took in the burst.
    await agent.waitForLine(/a burst of TCP socket closes overran the kernel's destroy events/, "stderr", 10_000);
    await Bun.sleep(500);
    expect(agent.stderr.filter((l) => l.includes("overran")).length).toBe(1);
    expect(agent.stderr.join("\n")).not.toContain("degraded");
    // Polling the destroy events would read the socket every 10 ms (~200 recvfrom in 2 s).
    const stop = await traceCalls(agent.child.pid!, join(guest.dir, "agent.strace"), ["recvfrom"]);
    await Bun.sleep(2000);
    const reads = (await stop()).filter((l) => l.includes("recvfrom(")).length;
    expect(reads).toBeLessThan(40);

    const udpPort = await freePort();
    const udp = await guest.startServer("udp-bind", [["127.0.0.1", udpPort]]);
    const isUdp = (type: string) => (e: { type: string; protocol?: unknown; hostAddr?: unknown }) => e.type === type && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${udpPort}`;
    await host.waitForEvent(isUdp("forwarding"), "the UDP forward", 5000);
    await udp.kill();
    await host.waitForEvent(isUdp("stopping"), "the UDP forward to stop (the agent's re-scan is a minute away)", 5000);
  });

  e2eTest("--detector poll: the agent says it polls and why, and still forwards a new port", async () => {
    const guest = Guest.create();
    const agent = await guest.startAgent(["--detector", "poll"]);
    expect(agent.stderr.join("\n")).toContain("port detector: poll every 50 ms (--detector poll was given)");
    expect(linksOf(agent.child.pid!)).toEqual([]); // nothing attached
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    expect(statusOf(guest).stdout).toContain("guest port detector: poll every 50 ms");
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    expect(await tryConnect(port)).toBe("connected");
  });

  e2eTest("a listener in another network namespace is not forwarded", async () => {
    const { guest, host } = await eventOnlyPair();
    const other = Guest.create();
    const [otherPort, ownPort] = [await freePort(), await freePort()];
    await other.startEcho("127.0.0.1", otherPort);
    await guest.startEcho("127.0.0.1", ownPort);
    await host.waitForForwarding(ownPort, 5000);
    expect(host.events.some((e) => e.hostAddr === `127.0.0.1:${otherPort}`)).toBe(false);
    expect(statusJSONOf(guest).forwards.map((f: { hostAddr: string }) => f.hostAddr)).not.toContain(`127.0.0.1:${otherPort}`);
  });

  e2eTest("the kernel names the process that bound a port: the agent finds the owner in its fds, without a pass over every process (strace)", async () => {
    const { guest, agent, host } = await eventOnlyPair();
    // strace (not our code) records every file the agent opens while a new server's port is found.
    const log = join(guest.dir, "agent.strace");
    const strace = new Child(spawn("strace", ["-f", "-e", "trace=openat", "-o", log, "-p", String(agent.child.pid)], { stdio: ["ignore", "pipe", "pipe"] }), "strace");
    defer(() => strace.kill("SIGKILL"));
    await strace.waitForLine(/attached/, "stderr");
    const port = await freePort();
    const server = guest.spawn(["/usr/bin/python3", "-u", "-m", "http.server", String(port), "--bind", "127.0.0.1"], "http.server");
    await server.waitForLine(/Serving HTTP/);
    await host.waitForForwarding(port, 5000); // told once its owner is known
    expect(JSON.stringify(statusJSONOf(guest).forwards)).toContain("http.server");
    strace.child.kill("SIGINT");
    await strace.exited;
    const opened = readFileSync(log, "utf8");
    expect(opened).toContain(`"/proc/${server.child.pid}/fd"`);
    expect(opened).not.toMatch(/openat\(AT_FDCWD, "\/proc", /); // no listing of every process
  });

  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    e2eTest(`after the agent ends (${signal}) none of its programs stays attached to the cgroup2 root`, async () => {
      const guest = Guest.create();
      const agent = await guest.startAgent();
      const links = linksOf(agent.child.pid!);
      expect(links.map((l) => l.type)).toEqual(["cgroup", "cgroup", "cgroup"]); // sock_ops (listen), post-bind IPv4 and IPv6
      const cgroupProgs = links.map((l) => l.prog);
      expect(attachedToRoot()).toEqual(expect.arrayContaining(cgroupProgs));
      expect(machineLinks()).toEqual(expect.arrayContaining(links.map((l) => l.link)));
      await agent.kill(signal);
      await waitUntil("the post-bind programs to be detached", () => !attachedToRoot().some((id) => cgroupProgs.includes(id)));
      await waitUntil("the links to be gone", () => !machineLinks().some((id) => links.some((l) => l.link === id)));
    });
  }
});
