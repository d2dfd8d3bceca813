// CPU profiles of both agents while iperf3 runs through one forwarder: the agents run from
// source under Bun's sampling profiler (`--cpu-prof-md`, a grep-friendly summary written at
// exit), with a guest in a network namespace as `make bench` has it.
//   bun bench/profile.ts [--forwarder grpc|ssh|auto] [--duration S] [--reverse] [--udp RATE] [--out DIR] [--no-prof] [--conns] [--channel tcp]
// --channel tcp: the agent channel is one TCP stream with a token (the single-stream case: the
// lean multiplexer with --forwarder auto, gRPC tunnels with grpc).
import { iperf, IperfServer } from "../test/iperf.ts";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { e2eBlocker, freePort, Guest, runCleanups, startHostAgent } from "../test/lab.ts";
import { missingSettings } from "../src/runtime/allocator.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : fallback;
};
const FORWARDER = flag("forwarder", "grpc");
const DURATION = flag("duration", "8");
const OUT = flag("out", "/tmp/porthole-profile");
const UDP = flag("udp", "");
const MAIN = join(import.meta.dir, "../src/cli/main.ts");
// The agents' start-up settings (runtime/allocator.ts), given to them here so that they need
// not restart themselves for them, which the profiler does not survive; only to the agents:
// glibc's memcpy choice would change sshd's and iperf3's CPU as well.
const AGENT_ENV = missingSettings(process.env);
const envCommand = Object.entries(AGENT_ENV).map(([k, v]) => `${k}=${v}`);

/** utime + stime (clock ticks, 100 per second) and minor page faults of a process. */
function stat(pid: number): { ticks: number; minflt: number } {
  const text = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { ticks: Number(f[11]) + Number(f[12]), minflt: Number(f[7]) };
}

/** CPU ticks of the guest's sshd processes, by pid (the SSH forwarder's peer: is it the ceiling?). */
function sshdTicks(netns: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const pid of (spawnSync("ip", ["netns", "pids", netns], { encoding: "utf8" }).stdout ?? "").split("\n").filter(Boolean)) {
    try {
      if (!readFileSync(`/proc/${pid}/comm`, "utf8").startsWith("sshd")) continue;
      out.set(Number(pid), stat(Number(pid)).ticks);
    } catch {
      // exited
    }
  }
  return out;
}

/** The kernel's `Udp:` counters (/proc/net/snmp) in this namespace or in `netns`. */
function udpCounters(netns?: string): Record<string, number> {
  const text = netns ? spawnSync("ip", ["netns", "exec", netns, "cat", "/proc/net/snmp"], { encoding: "utf8" }).stdout : readFileSync("/proc/net/snmp", "utf8");
  const [names, values] = text.split("\n").filter((l) => l.startsWith("Udp:"));
  const keys = names!.split(/\s+/).slice(1);
  const nums = values!.split(/\s+/).slice(1).map(Number);
  return Object.fromEntries(keys.map((k, i) => [k, nums[i]!]));
}

/** The kernel's drop count of the UDP sockets bound to `port` (/proc/net/udp's last column): per socket, so other work on the machine does not count. */
function socketDrops(port: number, netns?: string): number {
  let drops = 0;
  for (const file of ["/proc/net/udp", "/proc/net/udp6"]) {
    const text = netns ? spawnSync("ip", ["netns", "exec", netns, "cat", file], { encoding: "utf8" }).stdout : readFileSync(file, "utf8");
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 12 && parseInt(f[1]!.split(":")[1]!, 16) === port) drops += Number(f[f.length - 1]);
    }
  }
  return drops;
}

function counterDelta(before: Record<string, number>, after: Record<string, number>): string {
  return ["InDatagrams", "RcvbufErrors", "SndbufErrors", "InErrors", "OutDatagrams"].map((k) => `${k} +${after[k]! - before[k]!}`).join(", ");
}

async function main(): Promise<void> {
  const blocker = e2eBlocker();
  if (blocker) throw new Error(blocker);
  mkdirSync(OUT, { recursive: true });
  // --no-prof: the same run without the profiler (its own cost), for CPU and page-fault figures.
  const profiled = (name: string) => [
    "env",
    ...envCommand,
    ...(args.includes("--no-prof") ? [process.execPath, MAIN] : [process.execPath, "--cpu-prof-md", `--cpu-prof-dir=${OUT}`, `--cpu-prof-name=${name}.md`, MAIN]),
  ];
  const guest = Guest.create();
  const { guestIP } = guest.linkToHost();
  const sshd = FORWARDER === "ssh" ? await guest.startSshd() : undefined;
  const tcpChannel = flag("channel", "unix") === "tcp";
  const token = tcpChannel ? guest.writeFile("token", "profile-token-0123456789abcdef\n") : "";
  const agentAddress = tcpChannel ? `tcp://${guestIP}:${await freePort()}` : "";
  const guestAgent = tcpChannel
    ? guest.spawn([...profiled(`guest-${FORWARDER}-tcp`), "guest", "--listen", agentAddress, "--token-file", token], "guest agent")
    : await guest.startAgent([], profiled(`guest-${FORWARDER}`));
  if (tcpChannel) await guestAgent.waitForLine(/serving on/, "stderr");
  const channelFlags = tcpChannel ? ["--guest", agentAddress, "--token-file", token] : [];
  const CONNS = args.includes("--conns"); // new connections (1-byte echo each) instead of iperf3
  const iperfPort = await freePort();
  if (CONNS) await guest.startServer("echo", [["127.0.0.1", iperfPort]]);
  else guest.spawn(["iperf3", "-s", "-p", String(iperfPort)], "iperf3 server");
  const hostPort = await freePort();
  const config = guest.writeFile("profile.yaml", `portForwards:\n- {guestPort: ${iperfPort}, hostPort: ${hostPort}, static: true}\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n`);
  const sshFlags = sshd ? ["--ssh", `tcp://${guestIP}:22`, "--ssh-user", "root", "--ssh-identity", sshd.clientKey, "--ssh-skip-host-key-check"] : [];
  const host = startHostAgent(guest, ["--config", config, "--forwarder", FORWARDER, ...sshFlags, ...channelFlags], { command: profiled(`host-${FORWARDER}${tcpChannel ? "-tcp" : ""}`) });
  await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, "the forward", 30_000);
  await Bun.sleep(500);
  const extra = UDP ? ["-u", "-b", UDP, "-l", "1400", "-w", "4M"] : args.includes("--reverse") ? ["-R"] : [];
  const pids = { host: host.proc.child.pid!, guest: guestAgent.child.pid! };
  const before = { host: stat(pids.host), guest: stat(pids.guest) };
  const sshdBefore = sshd ? sshdTicks(guest.ns) : new Map<number, number>();
  const started = performance.now();
  if (CONNS) {
    let conns = 0;
    while (performance.now() - started < Number(DURATION) * 1000) {
      await new Promise<void>((resolve, reject) => {
        const c = net.connect({ port: hostPort, host: "127.0.0.1", noDelay: true }, () => c.write("x"));
        c.once("data", () => (c.destroy(), resolve()));
        c.once("error", reject);
      });
      conns++;
    }
    const seconds = (performance.now() - started) / 1000;
    console.log(`${FORWARDER} new connections: ${(conns / seconds).toFixed(0)}/s`);
    for (const side of ["host", "guest"] as const) {
      const cpu = (stat(pids[side]).ticks - before[side].ticks) / seconds;
      console.log(`  ${side} agent: ${cpu.toFixed(0)}% of a core, ${((cpu * 10) / (conns / seconds)).toFixed(2)} ms of CPU per connection`);
    }
  } else {
  const snmpBefore = { host: udpCounters(), guest: udpCounters(guest.ns) };
  const hostSocketDropsBefore = socketDrops(hostPort);
  // PROFILE_PERF=1: perf's view of both agents (kernel time included) for 4 s of the run.
  if (process.env.PROFILE_PERF) {
    for (const side of ["host", "guest"] as const) {
      spawn("perf", ["record", "-F", "499", "-g", "-o", join(OUT, `perf-${side}.data`), "-p", String(pids[side]), "--", "sleep", "4"], { stdio: "ignore" });
    }
  }
  const { gbps, loss } = await iperf(new IperfServer(iperfPort, guest.ns), hostPort, "127.0.0.1", extra, Number(DURATION));
  if (UDP) {
    console.log(`  host namespace Udp: ${counterDelta(snmpBefore.host, udpCounters())} (shared with the machine's other work)`);
    console.log(`  guest namespace Udp: ${counterDelta(snmpBefore.guest, udpCounters(guest.ns))}`);
    console.log(`  host agent's UDP socket: ${socketDrops(hostPort) - hostSocketDropsBefore} datagrams dropped by the kernel (its receive buffer full)`);
    const r = spawnSync(process.execPath, [MAIN, "status", "--control", join(guest.dir, "state", "control.sock"), "--json"], { encoding: "utf8" });
    try {
      const f = JSON.parse(r.stdout).forwards.find((x: { hostAddr: string; protocol: string }) => x.protocol === "udp" && x.hostAddr === `127.0.0.1:${hostPort}`);
      console.log(`  host agent: ${f.bytesIn} bytes in, ${f.datagramsDropped} datagrams dropped over budget`);
    } catch {
      console.log(`  porthole status: ${r.stderr || r.stdout}`);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(`${FORWARDER} ${extra.join(" ")}: ${gbps.toFixed(2)} Gbit/s${UDP ? `, loss ${loss!.toFixed(1)}%` : ""}`);
  for (const side of ["host", "guest"] as const) {
    const after = stat(pids[side]);
    const cpu = (after.ticks - before[side].ticks) / seconds; // % of a core
    const faults = after.minflt - before[side].minflt;
    console.log(`  ${side} agent: ${cpu.toFixed(0)}% of a core, ${(cpu / gbps).toFixed(1)}% per Gbit/s, ${(faults / ((gbps * seconds * 1e9) / 8 / 4096)).toFixed(2)} page faults per 4 KiB carried`);
  }
  if (sshd) {
    let ticks = 0;
    for (const [pid, after] of sshdTicks(guest.ns)) ticks += after - (sshdBefore.get(pid) ?? 0);
    console.log(`  guest sshd: ${(ticks / seconds).toFixed(0)}% of a core, ${(ticks / seconds / gbps).toFixed(1)}% per Gbit/s`);
  }
  }
  // SIGINT: the agents exit through their own handlers, and the profiler writes at exit.
  host.proc.child.kill("SIGINT");
  guestAgent.child.kill("SIGINT");
  await Bun.sleep(2000);
  console.log(`profiles in ${OUT}`);
}

main()
  .catch((err: Error) => {
    console.error(`profile: ${err.message}`);
    process.exitCode = 1;
  })
  .finally(() => runCleanups());
