// The SSH forwarder against OpenSSH's `ssh -L` through the same guest sshd, in alternating
// runs (the machine is shared: a pair run back to back sees about the same load). Each run
// prints the throughput and, per Gbit/s, the CPU of the host side (the agent or ssh) and of
// the guest's sshd session, and sshd's context switches: which side is the ceiling.
//   bun bench/ssh-vs-openssh.ts [--pairs N] [--duration S] [--reverse] [--binary A,B]
// --binary: porthole binaries to alternate (default: PORTHOLE_BIN or the source), each against
// ssh -L, for before/after comparisons of the agent.
import { spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as net from "node:net";
import { iperf, IperfServer } from "../test/iperf.ts";
import { e2eBlocker, freePort, Guest, PORTHOLE, Proc, runCleanups, startHostAgent, type Sshd } from "../test/lab.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : fallback;
};
const PAIRS = Number(flag("pairs", "2"));
const DURATION = Number(flag("duration", "5"));
const EXTRA = args.includes("--reverse") ? ["-R"] : [];
const BINARIES = flag("binary", "").split(",").filter(Boolean);

/** utime + stime (ticks of 10 ms), stime alone, and context switches of a process. */
function usage(pid: number): { ticks: number; sys: number; switches: number } {
  try {
    return readUsage(pid);
  } catch {
    return { ticks: 0, sys: 0, switches: 0 }; // exited
  }
}

function readUsage(pid: number): { ticks: number; sys: number; switches: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const sw = [...status.matchAll(/(?:non)?voluntary_ctxt_switches:\s+(\d+)/g)].reduce((a, m) => a + Number(m[1]), 0);
  return { ticks: Number(f[11]) + Number(f[12]), sys: Number(f[12]), switches: sw };
}

/** The guest's sshd session processes (not the listener), by pid. */
function sshdSessions(netns: string): number[] {
  const pids = (spawnSync("ip", ["netns", "pids", netns], { encoding: "utf8" }).stdout ?? "").split("\n").filter(Boolean).map(Number);
  return pids.filter((pid) => {
    try {
      return readFileSync(`/proc/${pid}/comm`, "utf8").startsWith("sshd") && !readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("-D");
    } catch {
      return false;
    }
  });
}

async function waitAccepting(port: number): Promise<void> {
  for (let i = 0; i < 300; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host: "127.0.0.1" }, () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await Bun.sleep(50);
  }
  throw new Error(`nothing accepts on 127.0.0.1:${port}`);
}

async function main(): Promise<void> {
  const blocker = e2eBlocker();
  if (blocker) throw new Error(blocker);
  const guest = Guest.create();
  const { guestIP } = guest.linkToHost();
  const sshd: Sshd = await guest.startSshd();
  const guestAgent = await guest.startAgent();
  const iperfPort = await freePort();
  guest.spawn(["iperf3", "-s", "-p", String(iperfPort)], "iperf3 server");
  const server = new IperfServer(iperfPort, guest.ns);

  type Side = { name: string; start(hostPort: number): Promise<{ pid: number; stop: () => Promise<void> }> };
  const sshL: Side = {
    name: "ssh -L",
    async start(hostPort) {
      const child = spawn("ssh", ["-N", "-F", "/dev/null", "-i", sshd.clientKey, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com", "-o", "Compression=no",
        "-L", `127.0.0.1:${hostPort}:127.0.0.1:${iperfPort}`, `root@${guestIP}`], { stdio: "ignore" });
      const proc = new Proc(child, "ssh -L");
      await waitAccepting(hostPort);
      await Bun.sleep(1000); // the probe's channel reaches the iperf3 server late; let it pass
      return { pid: child.pid!, stop: () => proc.kill() };
    },
  };
  const porthole = (binary: string[], name: string): Side => ({
    name,
    async start(hostPort) {
      const config = guest.writeFile(`ssh-vs-${hostPort}.yaml`, `portForwards:\n- {guestPort: ${iperfPort}, hostPort: ${hostPort}, static: true}\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n`);
      const host = startHostAgent(guest, ["--config", config, "--forwarder", "ssh", "--ssh", `tcp://${guestIP}:22`, "--ssh-user", "root",
        "--ssh-identity", sshd.clientKey, "--ssh-skip-host-key-check", "--state-dir", `${guest.dir}/state-${hostPort}`], { command: binary });
      await host.waitForEvent((e) => e.type === "ssh-connected", "the SSH connection", 20_000);
      await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, "the forward", 20_000);
      return { pid: host.proc.child.pid!, stop: () => host.proc.kill() };
    },
  });
  const agents = BINARIES.length ? BINARIES.map((b, i) => porthole([b], `porthole SSH [${i}] ${b}`)) : [porthole(PORTHOLE, "porthole SSH")];
  const sides = [...agents, sshL];
  console.log(`iperf3 -t ${DURATION} ${EXTRA.join(" ")} through each, ${PAIRS} rounds (${new Date().toISOString()})`);
  for (let round = 0; round < PAIRS; round++) {
    for (const side of sides) {
      const hostPort = await freePort();
      const before = new Set(sshdSessions(guest.ns));
      const { pid, stop } = await side.start(hostPort);
      try {
        const sessions = sshdSessions(guest.ns).filter((p) => !before.has(p));
        const u0 = { host: usage(pid), sshd: sessions.map(usage) };
        const t0 = performance.now();
        const { gbps } = await iperf(server, hostPort, "127.0.0.1", EXTRA, DURATION);
        const seconds = (performance.now() - t0) / 1000;
        const hostAfter = usage(pid);
        const host = (hostAfter.ticks - u0.host.ticks) / seconds;
        const hostSwitches = hostAfter.switches - u0.host.switches;
        const hostSys = (hostAfter.sys - u0.host.sys) / seconds;
        const after = sessions.map(usage);
        // (A process that left meanwhile, sshd's pre-authentication child, counts nothing.)
        const sshdCpu = after.reduce((a, u, i) => a + Math.max(0, u.ticks - u0.sshd[i]!.ticks), 0) / seconds;
        const switches = after.reduce((a, u, i) => a + Math.max(0, u.switches - u0.sshd[i]!.switches), 0);
        const gbit = gbps * seconds;
        console.log(`${side.name.padEnd(14)} ${gbps.toFixed(2)} Gbit/s; host side ${host.toFixed(0)}% of a core (${(host / gbps).toFixed(1)}% per Gbit/s, ${(hostSys / gbps).toFixed(1)} of it in the kernel, ` +
          `${(hostSwitches / gbit).toFixed(0)} context switches per Gbit); sshd ${sshdCpu.toFixed(0)}% (${(sshdCpu / gbps).toFixed(1)}% per Gbit/s, ${(switches / gbit).toFixed(0)} switches per Gbit)`);
      } finally {
        await stop();
      }
    }
  }
  await guestAgent.kill();
}

main()
  .catch((err: Error) => {
    console.error(`ssh-vs-openssh: ${err.message}`);
    process.exitCode = 1;
  })
  .finally(() => runCleanups());
