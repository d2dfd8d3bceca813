// `make bench`: porthole against the alternatives, on this machine, with real iperf3 and a
// guest in a network namespace. Prints a table shaped like Lima's published one (rows TCP,
// TCP Reverse, UDP; a column per path) with ratios to OpenSSH `ssh -L` and to direct
// loopback, then latency, port detection and cost, and writes the same as JSON.
//   bun bench/run.ts [--smoke] [--duration S] [--runs N] [--json FILE] [--only detection,cost,…] [--detector auto|ebpf|poll]
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { iperf, IperfServer, type IperfResult } from "../test/iperf.ts";
import type { NativeShim } from "../src/runtime/native-api.ts";
import { loadNative } from "../src/runtime/native.ts";
import { e2eBlocker, fakeVirtioPort, freePort, freePortBase, Guest, pathsOf, PORTHOLE, Proc, rssMiB, runCleanups, startHostAgent, statusJSON, tryConnect, type Sshd } from "../test/lab.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : fallback;
};
const SMOKE = args.includes("--smoke");
const DURATION = Number(flag("duration", SMOKE ? "1" : "5"));
const RUNS = Number(flag("runs", SMOKE ? "1" : "3"));
const JSON_OUT = flag("json", "dist/bench.json");
const DETECT_TRIES = SMOKE ? 5 : 50;
/** The UDP row's offered rate (as in the issue-15 table); the rows below offer a gigabit. */
const UDP_RATE = "200M";
/** "UDP flood": iperf3 -u offering 1 Gbit/s; "UDP beside TCP" / "TCP beside UDP": the same while a
 * TCP transfer runs through the same forwarder (both must finish: a flood must not starve TCP). */
const UDP_FLOOD_RATE = SMOKE ? "100M" : "1G"; // the smoke run checks the harness, not the machine
/**
 * iperf3 -u as every UDP row runs it, in every column alike: 1,400-byte datagrams, and 4 MiB socket
 * buffers (`-w`, the system's maximum here). With the default ~200 KiB the iperf3 server itself lost
 * 31-40% of a 1 Gbit/s flood arriving by IP on the loaded machine (0-7% with -w 4M, same runs).
 */
const UDP_ARGS = ["-u", "-l", "1400", "-w", "4M"];
/** --only grpc,fast,detection,…: measure just these (for working on one path). */
const ONLY = flag("only", "").split(",").filter(Boolean);
const wanted = (name: string) => ONLY.length === 0 || ONLY.includes(name);
/** --detector: passed to the guest agent (unset: its default, and nothing passed, so older binaries run too). */
const DETECTOR = flag("detector", "");
const BURST = SMOKE ? 100 : 1000;
/** Listeners added for the second idle measurement (issue 17's "beside 5,000"). */
const MORE_LISTENERS = SMOKE ? 100 : 4000;
const CHURN_RATE = 100;

type Path = "direct" | "byIP" | "sshL" | "grpc" | "ssh" | "fast" | "fast-copy" | "fast-js" | "porthole-direct" | "porthole-kernel" | "serial-grpc" | "serial-mux" | "tcp-grpc" | "tcp-mux" | "haproxy";
const COLUMNS: [Path, string][] = [
  ["direct", "direct loopback"],
  ["byIP", "by IP (veth)"],
  ["sshL", "OpenSSH ssh -L"],
  ["grpc", "porthole gRPC"],
  ["ssh", "porthole SSH"],
  ["fast", "porthole data path"],
  ["fast-copy", "data path, read/send (vsock-shaped)"],
  ["fast-js", "data path, JavaScript relay"],
  ["porthole-direct", "porthole direct"],
  ["porthole-kernel", "porthole direct, --kernel-direct"],
  ["haproxy", "HAProxy to the guest's IP (splice)"],
  ["tcp-grpc", "single stream (tcp://): gRPC"],
  ["tcp-mux", "single stream (tcp://): lean mux"],
  ["serial-grpc", "single stream (virtio-serial stand-in): gRPC"],
  ["serial-mux", "single stream (virtio-serial stand-in): lean mux"],
];

interface Results {
  machine: string;
  settings: { duration: number; runs: number; smoke: boolean };
  throughput: Record<string, Partial<Record<Path, number>>>; // Gbit/s, medians
  /** Agent CPU (% of one core) per Gbit/s while iperf3 ran, per row and path. */
  cpuPerGbit: Record<string, Partial<Record<Path, { host: number; guest: number }>>>;
  udpLoss: Partial<Record<Path, number>>;
  /** Loss (%) per UDP row ("UDP", "UDP flood", "UDP beside TCP") and path. */
  udpLossByRow: Record<string, Partial<Record<Path, number>>>;
  latency: Record<string, { rrPerSec: number; connPerSec: number; cpuPerConnUs?: { host: number; guest: number } }>;
  /** The guest agent's "port detector: …" line (absent from older agents). */
  detector: string;
  detection: {
    openP50: number;
    openP95: number;
    closeP50: number;
    closeP95: number;
    tries: number;
    /** UDP: bind() -> the host's forwarding event, close() -> its stopping event (ms; event times have ms resolution). */
    udpOpenP50?: number;
    udpOpenP95?: number;
    udpCloseP95?: number;
    /** BURST listeners opened at once: from the first listen() until the host forwards the last. */
    burstMs?: number;
    burst?: number;
  };
  cost: {
    guestIdleCpuPercent: number;
    hostRssMiB: number;
    listeners: number;
    established: number;
    connections: number;
    /** Guest agent CPU while CHURN_RATE sockets a second are bound and closed (beside the same load). */
    churnCpuPercent?: number;
    churnRate?: number;
    /** Guest agent CPU while idle once MORE_LISTENERS more listeners joined the load. */
    guestIdleManyCpuPercent?: number;
    manyListeners?: number;
  };
  /** Measurements that failed (left out of the table). */
  failures: string[];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.ceil((p / 100) * xs.length) - 1)]!;
const log = (line: string) => process.stderr.write(`[bench] ${line}\n`);
const now = () => performance.timeOrigin + performance.now();

async function waitAccepting(port: number, host = "127.0.0.1", timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if ((await tryConnect(port, host)) === "connected") return;
    await Bun.sleep(50);
  }
  throw new Error(`nothing accepts on ${host}:${port}`);
}


/** The native client (bench/rr.c, built by `make bench` as dist/rr). */
const RR = flag("rr", join(import.meta.dir, "../dist/rr"));
/** New connections per round at most: each leaves a TIME_WAIT socket on a port of the ephemeral range. */
const CRR_MAX = 4000;

/** Runs the native client once: its rate, and how many round trips or connections it made. */
async function rrClient(mode: "rr" | "crr", host: string, port: number, seconds: number): Promise<{ rate: number; count: number }> {
  if (!existsSync(RR)) throw new Error(`${RR} is missing: \`make dist/rr\` builds it (make bench does)`);
  const child = spawn(RR, [mode, host, String(port), String(seconds), ...(mode === "crr" ? [String(CRR_MAX)] : [])], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => {
    child.once("error", (e) => ((err += e.message), resolve(null)));
    child.once("close", resolve);
  });
  const [rate, count] = out.trim().split(/ \S+ /).map(Number) as [number, number];
  if (code !== 0 || !Number.isFinite(rate) || !Number.isFinite(count)) throw new Error(`${RR} ${mode} ${host}:${port} failed (exit ${code}): ${err.trim() || out.trim()}`);
  return { rate, count };
}

/**
 * A native echo server in the guest (rr serve) on a port of its own: a JavaScript one would
 * cost more per connection than the forwarders measured, and each measurement's connections
 * leave TIME_WAIT sockets to its port that would slow the next one's connect() to the same.
 */
async function nativeEcho(guest: Guest): Promise<{ port: number; stop(): Promise<void> }> {
  const port = await freePort();
  const server = guest.spawn([RR, "serve", String(port), "0.0.0.0"], `rr echo ${port}`);
  await server.waitForLine(/^listening/);
  return { port, stop: () => server.kill() };
}

/**
 * Round trips per second over one connection, and new connections per second (each one round
 * trip), by the native client, so that the client's own cost per connection (some 500 µs in
 * a JavaScript client here) does not hide the forwarder's. One round per pass: `into` gathers
 * the rounds of every pass (a burst of other work on this small machine moves one round, not
 * the median), with both agents' CPU per new connection over all of them.
 */
interface LatencyRounds { trips: number[]; conns: number[]; used: number[]; total: number }
async function latency(into: LatencyRounds, port: number, host = "127.0.0.1", pids?: { host?: number; guest?: number }): Promise<{ rrPerSec: number; connPerSec: number; cpuPerConnUs?: { host: number; guest: number } }> {
  const seconds = Math.max(1, DURATION / 2 / RUNS);
  // Both agents' CPU over the new connections (ticks of 10 ms): per connection, less noisy than the rate.
  const ticks = () => [pids?.host, pids?.guest].map((pid) => (pid ? cpuTicks(pid) : 0));
  into.trips.push((await rrClient("rr", host, port, seconds)).rate);
  const ticksBefore = ticks();
  const { rate, count } = await rrClient("crr", host, port, seconds);
  into.total += count;
  ticks().forEach((t, i) => (into.used[i]! += t - ticksBefore[i]!));
  into.conns.push(rate);
  const perConn = into.used.map((t) => (t * 10_000) / Math.max(1, into.total)); // µs per connection
  return { rrPerSec: median(into.trips), connPerSec: median(into.conns), ...(pids ? { cpuPerConnUs: { host: perConn[0]!, guest: perConn[1]! } } : {}) };
}

interface Mode {
  path: Path;
  /** Starts whatever forwards guest port `guestPort` to host port `hostPort` (and `second`'s
   * guest port to its host port); returns a stop. */
  start(guestPort: number, hostPort: number, second?: [number, number]): Promise<() => Promise<void>>;
  udp: boolean;
  /** The agents' pids while started (for CPU per Gbit/s). */
  pids?: { host?: number; guest?: number };
}

async function main(): Promise<void> {
  const blocker = e2eBlocker();
  if (blocker) throw new Error(`${blocker}: the benchmark runs a guest in a network namespace`);
  for (const tool of ["iperf3", "ssh", "/usr/sbin/sshd"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is missing: make bench installs iperf3 and openssh (make system-deps)`);
  }
  const guest = Guest.create();
  const { guestIP } = guest.linkToHost();
  const sshd = await guest.startSshd();
  const guestAgent = await guest.startAgent(DETECTOR ? ["--detector", DETECTOR] : []);
  const detector = guestAgent.stderr.find((l) => l.startsWith("port detector:")) ?? "(not said: an agent from before the detectors)";
  log(detector);
  const [iperfPort, echoPort, iperfPort2] = [await freePort(), await freePort(), await freePort()];
  guest.spawn(["iperf3", "-s", "-p", String(iperfPort)], "iperf3 server");
  guest.spawn(["iperf3", "-s", "-p", String(iperfPort2)], "iperf3 server (UDP beside TCP)");
  const guestServers: [IperfServer, IperfServer] = [new IperfServer(iperfPort, guest.ns), new IperfServer(iperfPort2, guest.ns)];
  await guest.startServer("echo", [["0.0.0.0", echoPort]]);

  const results: Results = {
    machine: `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${readFileSync("/proc/sys/kernel/osrelease", "utf8").trim()}`,
    settings: { duration: DURATION, runs: RUNS, smoke: SMOKE },
    detector,
    throughput: { TCP: {}, "TCP Reverse": {}, UDP: {}, "UDP flood": {}, "UDP beside TCP": {}, "TCP beside UDP": {} },
    cpuPerGbit: { TCP: {}, "TCP Reverse": {} },
    udpLoss: {},
    udpLossByRow: { UDP: {}, "UDP flood": {}, "UDP beside TCP": {} },
    latency: {},
    detection: { openP50: 0, openP95: 0, closeP50: 0, closeP95: 0, tries: 0 },
    cost: { guestIdleCpuPercent: 0, hostRssMiB: 0, listeners: 0, established: 0, connections: 0 },
    failures: [],
  };

  /** Which paths carried a column's connections (counted by the agent): a column measures its
   * path, or says it did not (the readiness probe may still go another way: one is allowed). */
  const checkPaths = (control: string, hostPort: number, path: Path, expected: string) => {
    const paths = pathsOf(control, hostPort);
    log(`${path}: connections by path ${JSON.stringify(paths)}`);
    const total = Object.values(paths).reduce((a, b) => a + b, 0);
    // --kernel-direct: the warm-up's two connections (iperf3's control and data) went through the relay.
    const others = path === "porthole-kernel" ? 2 : 1;
    if (total - (paths[expected] ?? 0) > others) results.failures.push(`${path}: connections went by ${JSON.stringify(paths)}, not ${expected}`);
  };

  /** `relay`: PORTHOLE_NATIVE_RELAY for both agents (a guest agent of their own). */
  const porthole = (path: Path, forwarder: string, extra: (s: Sshd) => string[] = () => [], relay?: string): Mode => {
    const mode: Mode = {
      path,
      udp: path === "grpc" || path === "fast", // fast: UDP flows on data streams of their own
      async start(guestPort, hostPort, second) {
        // Static: iperf3 opens its UDP socket only when a UDP test starts, too late for detection,
        // and re-opens its TCP listener after each test. A static forward dials the guest's
        // 127.0.0.1 (only a tunnel reaches it), so the direct column's names the guest's IP.
        const direct = path === "porthole-direct" || path === "porthole-kernel";
        const at = direct ? `guestIP: ${guestIP}, ` : "";
        const secondRule = second ? `- {${at}guestPort: ${second[0]}, hostPort: ${second[1]}, static: true}\n` : "";
        const config = guest.writeFile(`bench-${path}.yaml`, `portForwards:\n- {${at}guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n${secondRule}- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n`);
        let ownGuest: Proc | undefined;
        let guestFlags: string[] = [];
        if (relay !== undefined) {
          const socket = `${guest.dir}/guest-${path}.sock`;
          ownGuest = guest.spawn(["env", `PORTHOLE_NATIVE_RELAY=${relay}`, ...PORTHOLE, "guest", "--listen", `unix://${socket}`], `guest agent (${path})`);
          await ownGuest.waitForLine(/serving on/, "stderr");
          guestFlags = ["--guest", `unix://${socket}`, "--state-dir", `${guest.dir}/state-${path}`];
        }
        const env: Record<string, string> = relay !== undefined ? { PORTHOLE_NATIVE_RELAY: relay } : {};
        const host = startHostAgent(guest, ["--config", config, "--forwarder", forwarder, ...guestFlags, ...extra(sshd)], { env });
        // The direct path is used once the guest agent proved it answers at the guest's address.
        if (direct) await host.waitForEvent((e) => e.type === "path-changed" && e.state === "usable", "the direct path's proof", 20_000);
        await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, "the forward", 20_000);
        if (second) await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${second[1]}`, "the second forward", 20_000);
        // A static forward listens before the guest agent answers: connections made before
        // its path is known take another one (gRPC) than the column's. Wait for the column's.
        const control = `${guestFlags.length ? `${guest.dir}/state-${path}` : `${guest.dir}/state`}/control.sock`;
        // --kernel-direct: the first client is relayed (it proves the port takes connections by IP), the rest rewritten.
        const expected = path === "porthole-direct" ? "direct" : path === "porthole-kernel" ? "direct-kernel" : path === "grpc" || path === "ssh" ? path : "fast";
        const pathNow = () => statusJSON(control).forwards.find((f) => f.hostAddr === `127.0.0.1:${hostPort}`)?.path;
        const planned = expected === "direct-kernel" ? "direct" : expected; // a forward's planned path; the kernel's is by connection
        for (let i = 0; i < 200 && pathNow() !== planned; i++) await Bun.sleep(100);
        // (No probe connection here: it would reach the guest's iperf3 server, which serves one
        // test at a time and takes it for a client.)
        mode.pids = { host: host.proc.child.pid, guest: (ownGuest ?? guestAgent).child.pid };
        return async () => {
          checkPaths(control, hostPort, path, expected);
          await host.proc.kill();
          await ownGuest?.kill();
        };
      },
    };
    return mode;
  };
  /**
   * The QEMU case: the whole agent connection over one stream, with gRPC tunnels
   * (`--forwarder grpc`) or the lean multiplexer (the default between porthole agents). The
   * stream: tcp:// with a token (over the veth), or a virtio-serial stand-in (a pty for the
   * guest's device, socat for QEMU's chardev socket, as the serial tests use).
   */
  const singleStream = (path: "serial-grpc" | "serial-mux" | "tcp-grpc" | "tcp-mux"): Mode => {
    const mode: Mode = {
      path,
      udp: false,
      async start(guestPort, hostPort) {
        let channel: string[];
        let agent: Proc;
        let stand: Proc | undefined;
        if (path.startsWith("serial")) {
          const port = await fakeVirtioPort(guest);
          stand = port.proc;
          agent = guest.spawn([...PORTHOLE, "guest", "--listen", `serial://${port.device}`], `guest agent (${path})`);
          await agent.waitForLine(/serving on/, "stderr");
          for (let i = 0; i < 100 && !existsSync(port.chardev); i++) await Bun.sleep(50);
          channel = ["--guest", `unix://${port.chardev}`];
        } else {
          const token = guest.writeFile("bench-token", "bench-token-0123456789abcdef\n");
          const address = `tcp://${guestIP}:${await freePort()}`;
          agent = guest.spawn([...PORTHOLE, "guest", "--listen", address, "--token-file", token], `guest agent (${path})`);
          await agent.waitForLine(/serving on/, "stderr");
          channel = ["--guest", address, "--token-file", token];
        }
        const config = guest.writeFile(`bench-${path}.yaml`, `portForwards:\n- {guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n`);
        const state = `${guest.dir}/state-${path}`;
        const forwarder = path.endsWith("grpc") ? "grpc" : "auto";
        const host = startHostAgent(guest, ["--config", config, "--forwarder", forwarder, ...channel, "--state-dir", state]);
        await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, "the forward", 20_000);
        const control = `${state}/control.sock`;
        const expected = path.endsWith("grpc") ? "grpc" : "mux";
        const pathNow = () => statusJSON(control).forwards.find((f) => f.hostAddr === `127.0.0.1:${hostPort}`)?.path;
        for (let i = 0; i < 200 && pathNow() !== expected; i++) await Bun.sleep(100);
        mode.pids = { host: host.proc.child.pid, guest: agent.child.pid };
        return async () => {
          checkPaths(control, hostPort, path, expected);
          await host.proc.kill();
          await agent.kill();
          await stand?.kill();
        };
      },
    };
    return mode;
  };
  const sshFlags = (s: Sshd) => ["--ssh", `tcp://${guestIP}:22`, "--ssh-user", "root", "--ssh-identity", s.clientKey, "--ssh-skip-host-key-check"];
  const modes: Mode[] = [
    porthole("grpc", "grpc"),
    porthole("ssh", "ssh", sshFlags),
    porthole("fast", "fast"),
    porthole("fast-copy", "fast", undefined, "copy"),
    porthole("fast-js", "fast", undefined, "0"),
    porthole("porthole-direct", "auto"),
    porthole("porthole-kernel", "auto", () => ["--kernel-direct"]),
    singleStream("tcp-grpc"),
    singleStream("tcp-mux"),
    singleStream("serial-grpc"),
    singleStream("serial-mux"),
    {
      // The same job as porthole direct (one relay in front of the guest's IP) done by a relay
      // we did not write: HAProxy in TCP mode, one thread, splice() both ways. What any one
      // relay costs on this machine, beside what porthole's costs.
      path: "haproxy",
      udp: false,
      async start(guestPort, hostPort) {
        const haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].find((p) => existsSync(p));
        if (!haproxy) throw new Error("haproxy is missing: make bench installs it (make system-deps)");
        const config = guest.writeFile(`haproxy-${hostPort}.cfg`, [
          "global", "  nbthread 1", "defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 60s", "  timeout server 60s", "  option splice-auto",
          `listen fwd`, `  bind 127.0.0.1:${hostPort}`, `  server guest ${guestIP}:${guestPort}`, "",
        ].join("\n"));
        const proc = new Proc(spawn(haproxy, ["-db", "-f", config], { stdio: "ignore" }), "haproxy");
        await waitAccepting(hostPort);
        await Bun.sleep(1000); // as for ssh -L: the probe's connection must be gone before iperf3 starts
        return () => proc.kill();
      },
    },
    {
      path: "sshL",
      udp: false,
      async start(guestPort, hostPort) {
        const child = spawn("ssh", ["-N", "-F", "/dev/null", "-i", sshd.clientKey, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
          "-o", "BatchMode=yes", "-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com", "-o", "Compression=no",
          "-L", `127.0.0.1:${hostPort}:127.0.0.1:${guestPort}`, `root@${guestIP}`], { stdio: "ignore" });
        const proc = new Proc(child, "ssh -L");
        await waitAccepting(hostPort);
        // The probe's own channel reaches the guest server late; let it pass before iperf3
        // starts, or the server (one test at a time) takes it for a client.
        await Bun.sleep(1000);
        return () => proc.kill();
      },
    },
  ];

  // Throughput: the ceiling on loopback, the guest by IP, then each forwarder, in RUNS passes:
  // each pass measures every column once (one iperf3 run per row), so that the machine's drift
  // over the run (on this small machine `ssh -L` alone moved 1,246-1,532 new connections/s
  // between runs) falls on every column alike and each ratio compares columns measured minutes
  // apart, not a quarter of an hour. The figures are the medians over the passes.
  const samples = new Map<string, number[]>();
  const add = (key: string, value: number) => {
    const list = samples.get(key) ?? [];
    list.push(value);
    samples.set(key, list);
    return median(list);
  };
  const record = (row: string, path: Path, values: number[]) => {
    let m = 0;
    for (const v of values) m = add(`gbps ${row} ${path}`, v);
    results.throughput[row]![path] = m;
    log(`${row.padEnd(11)} ${path.padEnd(16)} ${values.map((v) => v.toFixed(2)).join(", ")} Gbit/s (median so far ${m.toFixed(2)})`);
  };
  /** The agents' CPU over a row's runs of every pass: ticks, seconds, and the runs' rates. */
  const cpuSpent = new Map<string, { ticks: number[]; seconds: number; rates: number[] }>();
  // One failed measurement is reported and left out; the rest of the table still fills.
  const attempt = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (err) {
      results.failures.push(`${what}: ${(err as Error).message}`);
      log(`FAILED ${what}: ${(err as Error).message}`);
    }
  };
  /** One iperf3 run of a row, with the agents' CPU per Gbit/s over all passes so far. */
  const tcpRow = async (row: string, path: Path, server: IperfServer, port: number, host: string, extra: string[], pids?: Mode["pids"]) => {
    const ticks = () => [pids?.host, pids?.guest].map((pid) => (pid ? cpuTicks(pid) : 0));
    const before = ticks();
    const started = now();
    const gbps = (await iperf(server, port, host, extra, DURATION)).gbps;
    const seconds = (now() - started) / 1000;
    record(row, path, [gbps]);
    if (!pids) return;
    const after = ticks();
    const spent = cpuSpent.get(`${row} ${path}`) ?? { ticks: [0, 0], seconds: 0, rates: [] };
    spent.ticks = spent.ticks.map((t, i) => t + after[i]! - before[i]!);
    spent.seconds += seconds;
    spent.rates.push(gbps);
    cpuSpent.set(`${row} ${path}`, spent);
    const mean = spent.rates.reduce((a, b) => a + b, 0) / spent.rates.length;
    // ticks per second = % of one core; per Gbit/s of what the runs carried on average.
    const per = (i: number) => spent.ticks[i]! / spent.seconds / mean;
    results.cpuPerGbit[row]![path] = { host: per(0), guest: per(1) };
    log(`${row.padEnd(11)} ${path.padEnd(16)} CPU per Gbit/s: host agent ${per(0).toFixed(1)}%, guest agent ${per(1).toFixed(1)}% of a core`);
  };
  const lossOf = (row: string, path: Path, loss: number) => {
    results.udpLossByRow[row]![path] = add(`loss ${row} ${path}`, loss);
    log(`${row.padEnd(11)} ${path.padEnd(16)} loss ${loss.toFixed(1)}% (median so far ${results.udpLossByRow[row]![path]!.toFixed(1)}%)`);
  };
  const udpRow = async (row: string, path: Path, server: IperfServer, port: number, host: string, rate: string) => {
    const r = await iperf(server, port, host, [...UDP_ARGS, "-b", rate], DURATION);
    record(row, path, [r.gbps]);
    lossOf(row, path, r.loss ?? 0);
  };
  const measure = async (path: Path, server: IperfServer, port: number, host: string, udp: boolean, pids?: Mode["pids"]) => {
    await attempt(`TCP ${path}`, () => tcpRow("TCP", path, server, port, host, [], pids));
    await attempt(`TCP Reverse ${path}`, () => tcpRow("TCP Reverse", path, server, port, host, ["-R"], pids));
    if (!udp) return;
    await attempt(`UDP ${path}`, async () => {
      await udpRow("UDP", path, server, port, host, UDP_RATE);
      results.udpLoss[path] = results.udpLossByRow.UDP![path];
    });
    await attempt(`UDP flood ${path}`, () => udpRow("UDP flood", path, server, port, host, UDP_FLOOD_RATE));
  };
  /** A TCP transfer and a UDP flood at once, through the same forwarder; both must finish. */
  const besideRow = async (path: Path, servers: [IperfServer, IperfServer], tcpPort: number, udpPort: number, host: string) => {
    const [t, u] = await Promise.all([iperf(servers[0], tcpPort, host, [], DURATION), iperf(servers[1], udpPort, host, [...UDP_ARGS, "-b", UDP_FLOOD_RATE], DURATION)]);
    record("TCP beside UDP", path, [t.gbps]);
    record("UDP beside TCP", path, [u.gbps]);
    lossOf("UDP beside TCP", path, u.loss ?? 0);
  };
  const rounds = new Map<string, LatencyRounds>();
  const roundsOf = (path: string) => {
    if (!rounds.has(path)) rounds.set(path, { trips: [], conns: [], used: [0, 0], total: 0 });
    return rounds.get(path)!;
  };
  for (let pass = 1; pass <= RUNS; pass++) {
    log(`pass ${pass} of ${RUNS}`);
    const localPort = await freePort();
    const localServer = new Proc(spawn("iperf3", ["-s", "-p", String(localPort), "-B", "127.0.0.1"], { stdio: "ignore" }), "iperf3 loopback");
    // (No waitAccepting() probe: the server would take it for a client; the first run waits for its listener.)
    if (wanted("direct")) await measure("direct", new IperfServer(localPort), localPort, "127.0.0.1", true);
    await localServer.kill();
    if (wanted("byIP")) {
      await measure("byIP", guestServers[0], iperfPort, guestIP, true);
      await attempt("UDP beside TCP byIP", () => besideRow("byIP", guestServers, iperfPort, iperfPort2, guestIP));
    }

    for (const mode of modes.filter((m) => wanted(m.path))) {
      const hostPort = await freePort();
      const hostPort2 = mode.udp ? await freePort() : 0;
      const stop = await mode.start(iperfPort, hostPort, mode.udp ? [iperfPort2, hostPort2] : undefined);
      try {
        // --kernel-direct rewrites a forward's clients once the relay connected one: a short run first.
        if (mode.path === "porthole-kernel") {
          await iperf(guestServers[0], hostPort, "127.0.0.1", [], 1);
          await Bun.sleep(200);
        }
        await measure(mode.path, guestServers[0], hostPort, "127.0.0.1", mode.udp, mode.pids);
        if (mode.udp) await attempt(`UDP beside TCP ${mode.path}`, () => besideRow(mode.path, guestServers, hostPort, hostPort2, "127.0.0.1"));
      } finally {
        await stop();
      }
      const echoHost = await freePort();
      const echo = await nativeEcho(guest);
      const stopForward = await mode.start(echo.port, echoHost);
      const stopEcho = async () => (await stopForward(), await echo.stop());
      try {
        // --kernel-direct rewrites from the second client on: the first, relayed, goes before the rounds.
        if (mode.path === "porthole-kernel") {
          await rrClient("rr", "127.0.0.1", echoHost, 0.2);
          await Bun.sleep(200);
        }
        const l = (results.latency[mode.path] = await latency(roundsOf(mode.path), echoHost, "127.0.0.1", mode.pids));
        const cpu = l.cpuPerConnUs ? `; agent CPU per new connection host ${l.cpuPerConnUs.host.toFixed(0)} µs / guest ${l.cpuPerConnUs.guest.toFixed(0)} µs` : "";
        log(`latency ${mode.path} (medians so far): ${l.rrPerSec.toFixed(0)} round trips/s, ${l.connPerSec.toFixed(0)} connections/s${cpu}`);
      } finally {
        await stopEcho();
      }
    }
    const echo = await nativeEcho(guest);
    results.latency.byIP = await latency(roundsOf("byIP"), echo.port, guestIP); // an echo server by the guest's IP, no forwarder
    await echo.stop();
  }

  if (wanted("detection")) await measureDetection(guest, results);
  if (wanted("cost")) await measureCost(guest, guestAgent, echoPort, results);
  report(results);
  mkdirSync(dirname(JSON_OUT), { recursive: true });
  writeFileSync(JSON_OUT, `${JSON.stringify(results, null, 2)}\n`);
  log(`wrote ${JSON_OUT}`);
  if (results.failures.length) process.exitCode = 1;
}

/**
 * Whether the host agent still listens on 127.0.0.1:port (one sock_diag lookup in this
 * namespace). Asked instead of connecting: a connection to a forward whose guest port just
 * closed is forwarded, and the guest agent's work on each such try would slow the very close
 * it is timing. A port nobody listens on refuses connections.
 */
function hostListens(port: number): boolean {
  const n = nativeShim!.diagSocket(DIAG_BUF, DIAG_BUF.length, 1, 2, LOOPBACK_BYTES, port);
  if (n < 0) throw new Error(`sock_diag lookup of 127.0.0.1:${port}: ${nativeShim!.errnoName(n)}`);
  return n > 0;
}
const LOOPBACK_BYTES = new Uint8Array([127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
const DIAG_BUF = new Uint8Array(64 * 32); // sock_diag records of 32 bytes (core/diag-record.ts)
let nativeShim: NativeShim | undefined;

/** From listen() in the guest until the host port accepts, and from close() until it refuses. */
async function measureDetection(guest: Guest, results: Results): Promise<void> {
  const loaded = await loadNative();
  if (!loaded.shim) throw new Error(`detection needs the native shim for its sock_diag lookups: ${loaded.error}`);
  nativeShim = loaded.shim;
  const host = startHostAgent(guest);
  await host.waitForEvent((e) => e.type === "guest-connected", "connect");
  const controller = guest.spawn([process.execPath, `${import.meta.dir}/../test/fixtures/servers.ts`, "controller"], "controller", { stdin: true });
  const child = controller.child;
  const opens: number[] = [];
  const closes: number[] = [];
  for (let i = 0; i < DETECT_TRIES; i++) {
    const port = await freePort();
    child.stdin!.write(`open ${port}\n`);
    // Both processes read the same wall clock (sub-millisecond: timeOrigin + now()).
    const opened = Number((await controller.waitForLine(new RegExp(`^opened ${port} `))).split(" ")[2]);
    while ((await tryConnect(port)) !== "connected") await Bun.sleep(1);
    opens.push(now() - opened);
    child.stdin!.write(`close ${port}\n`);
    const closed = Number((await controller.waitForLine(new RegExp(`^closed ${port} `))).split(" ")[2]);
    while (hostListens(port)) await Bun.sleep(1);
    closes.push(now() - closed);
  }
  results.detection = { openP50: percentile(opens, 50), openP95: percentile(opens, 95), closeP50: percentile(closes, 50), closeP95: percentile(closes, 95), tries: DETECT_TRIES };
  log(`detection: open p50 ${results.detection.openP50.toFixed(1)} ms p95 ${results.detection.openP95.toFixed(1)} ms; close p50 ${results.detection.closeP50.toFixed(1)} ms p95 ${results.detection.closeP95.toFixed(1)} ms`);

  // UDP (ports below the ephemeral range count at once): bind() until the host's forwarding
  // event, close() until its stopping event.
  const eventAt = (type: string, port: number, count: number) =>
    host.waitForNthEvent(count, (e) => e.type === type && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, `${type} ${port}`).then((e) => Date.parse(String(e.time)));
  const udpOpens: number[] = [];
  const udpCloses: number[] = [];
  for (let i = 0; i < DETECT_TRIES; i++) {
    const port = await freePort();
    child.stdin!.write(`udp-open ${port}\n`);
    const opened = Number((await controller.waitForLine(new RegExp(`^opened ${port} `))).split(" ")[2]);
    udpOpens.push((await eventAt("forwarding", port, 1)) - opened);
    child.stdin!.write(`udp-close ${port}\n`);
    const closed = Number((await controller.waitForLine(new RegExp(`^closed ${port} `))).split(" ")[2]);
    udpCloses.push((await eventAt("stopping", port, 1)) - closed);
  }
  Object.assign(results.detection, { udpOpenP50: percentile(udpOpens, 50), udpOpenP95: percentile(udpOpens, 95), udpCloseP95: percentile(udpCloses, 95) });
  log(`detection (UDP): open p50 ${percentile(udpOpens, 50).toFixed(0)} ms p95 ${percentile(udpOpens, 95).toFixed(0)} ms; close p95 ${percentile(udpCloses, 95).toFixed(0)} ms`);

  // A burst: BURST listeners opened at once, until the host forwards every one.
  const base = await freePortBase(Array.from({ length: BURST }, (_, i) => i));
  child.stdin!.write(`burst ${base} ${BURST}\n`);
  const started = Number((await controller.waitForLine(new RegExp(`^burst ${base} `), "stdout", 60_000)).split(" ")[2]);
  const inBurst = (e: { type: string; hostAddr?: string }) => {
    const port = Number(e.hostAddr?.split(":")[1]);
    return e.type === "forwarding" && e.hostAddr?.startsWith("127.0.0.1:") === true && port >= base && port < base + BURST;
  };
  await host.waitForNthEvent(BURST, inBurst, `${BURST} forwards`, 120_000);
  const last = Math.max(...host.events.filter(inBurst).map((e) => Date.parse(String(e.time))));
  results.detection.burst = BURST;
  results.detection.burstMs = Math.round(last - started);
  log(`detection: ${BURST} listeners opened at once, all forwarded after ${results.detection.burstMs} ms`);
  await controller.kill();
  await host.proc.kill();
}

/**
 * Waits until the agent is idle: a 5 s window with at most one tick of CPU (up to 30 s). What
 * a load of listeners leaves behind (their owners looked up, the host's first event with all
 * of them, the collection after the memory they took) is not what idling costs.
 */
async function settled(pid: number, what: string): Promise<void> {
  const started = Date.now();
  for (let i = 0; i < 6; i++) {
    const before = cpuTicks(pid);
    await Bun.sleep(5000);
    const used = cpuTicks(pid) - before;
    if (used <= 1) {
      log(`cost: the guest agent settled beside ${what} after ${((Date.now() - started) / 1000).toFixed(0)} s`);
      return;
    }
  }
  log(`cost: the guest agent did not settle beside ${what} within 30 s: the idle figure that follows includes its work`);
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]); // utime + stime, in clock ticks (100 per second)
}

/** Guest agent CPU while idle beside many sockets; host agent memory with many open connections. */
async function measureCost(guest: Guest, agent: Proc, echoPort: number, results: Results): Promise<void> {
  const [listeners, pairs, connections] = SMOKE ? [100, 1000, 100] : [1000, 5000, 1000];
  const base = 2_100; // below the ephemeral range (clients bind there) and the test port range
  const load = guest.spawn(["sh", "-c", `ulimit -n "$(ulimit -Hn)" && exec ${process.execPath} ${import.meta.dir}/../test/fixtures/servers.ts load ${base} ${listeners} ${pairs}`], "load");
  await load.waitForLine(/^loaded /, "stdout", 120_000);
  // The host follows the guest but forwards none of the load's listeners (only the echo port).
  const moreBase = base + listeners + 100; // after the churn's ports
  const config = guest.writeFile("bench-cost.yaml", `portForwards:\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, guestPortRange: [${base}, ${moreBase + MORE_LISTENERS}], ignore: true}\n`);
  const host = startHostAgent(guest, ["--config", config, "--forwarder", "grpc"]);
  await host.waitForForwarding(echoPort, 30_000);
  const seconds = SMOKE ? 2 : 10;
  // Idle is counted over 30 s: the kernel counts CPU in ticks of 10 ms, so 10 s could only
  // tell 0.1% steps (the goal is 0.2%).
  const idleSeconds = SMOKE ? 2 : 30;
  if (!SMOKE) await settled(agent.child.pid!, "1,000 listeners");
  const before = cpuTicks(agent.child.pid!);
  await Bun.sleep(idleSeconds * 1000);
  results.cost.guestIdleCpuPercent = (cpuTicks(agent.child.pid!) - before) / idleSeconds; // ticks/s = % of a core
  // Churn beside the same load: CHURN_RATE binds a second (TCP listeners and UDP sockets
  // alternately, each closed 100 ms later) on ports the host ignores. Measured before the
  // host's connections below, whose teardown would count too.
  const churn = guest.spawn([process.execPath, `${import.meta.dir}/../test/fixtures/servers.ts`, "churn", String(base + listeners + 1), "50", String(CHURN_RATE)], "churn");
  await churn.waitForLine(/^listening/);
  await Bun.sleep(1000);
  const churnBefore = cpuTicks(agent.child.pid!);
  await Bun.sleep(seconds * 1000);
  results.cost.churnCpuPercent = (cpuTicks(agent.child.pid!) - churnBefore) / seconds;
  results.cost.churnRate = CHURN_RATE;
  log(`cost: guest agent ${results.cost.churnCpuPercent.toFixed(2)}% of a core under a churn of ${CHURN_RATE} binds/s`);
  await churn.kill();
  // Idle again with MORE_LISTENERS more listeners (issue 17: <= 0.5% beside 5,000).
  const more = guest.spawn(["sh", "-c", `ulimit -n "$(ulimit -Hn)" && exec ${process.execPath} ${import.meta.dir}/../test/fixtures/servers.ts load ${moreBase} ${MORE_LISTENERS} 0`], "more listeners");
  await more.waitForLine(/^loaded /, "stdout", 120_000);
  await Bun.sleep(2000); // their events told
  if (!SMOKE) await settled(agent.child.pid!, `${listeners + MORE_LISTENERS} listeners`);
  const manyBefore = cpuTicks(agent.child.pid!);
  await Bun.sleep(idleSeconds * 1000);
  results.cost.guestIdleManyCpuPercent = (cpuTicks(agent.child.pid!) - manyBefore) / idleSeconds;
  results.cost.manyListeners = listeners + MORE_LISTENERS;
  log(`cost: guest agent ${results.cost.guestIdleManyCpuPercent.toFixed(2)}% of a core idle beside ${listeners + MORE_LISTENERS} listeners`);
  await more.kill();
  const sockets: net.Socket[] = [];
  for (let i = 0; i < connections; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, connections - i) }, () => new Promise<void>((resolve, reject) => {
      const s = net.connect({ port: echoPort, host: "127.0.0.1" }, () => s.write("x"));
      s.once("data", () => resolve());
      s.once("error", reject);
      sockets.push(s);
    })));
  }
  const rss = rssMiB(host.proc.child.pid!);
  results.cost = { ...results.cost, hostRssMiB: rss, listeners, established: pairs * 2, connections };
  log(`cost: guest agent ${results.cost.guestIdleCpuPercent.toFixed(2)}% of a core idle beside ${listeners} listeners and ${pairs * 2} established sockets; host agent ${rss.toFixed(0)} MiB with ${connections} connections`);
  for (const s of sockets) s.destroy();
  await host.proc.kill();
  await load.kill();
}

function report(r: Results): void {
  const cols = COLUMNS.filter(([p]) => Object.values(r.throughput).some((row) => row[p] !== undefined));
  const cell = (v: number | undefined) => (v === undefined ? "n/a" : `${v.toFixed(2)} Gbit/s`);
  const lines: string[] = [];
  lines.push(`porthole benchmark (${r.machine}; iperf3 -t ${r.settings.duration}, median of ${r.settings.runs} passes, each measuring every column once)`);
  lines.push("");
  lines.push(`| | ${cols.map(([, name]) => name).join(" | ")} |`);
  lines.push(`|---|${cols.map(() => "---").join("|")}|`);
  for (const [row, values] of Object.entries(r.throughput)) {
    lines.push(`| ${row} | ${cols.map(([p]) => cell(values[p])).join(" | ")} |`);
    const ssh = values.sshL;
    const direct = values.direct;
    if (ssh) lines.push(`| ${row} ÷ ssh -L | ${cols.map(([p]) => (values[p] !== undefined ? `${(values[p]! / ssh).toFixed(2)}×` : "")).join(" | ")} |`);
    if (direct) lines.push(`| ${row} ÷ direct | ${cols.map(([p]) => (values[p] !== undefined ? `${(values[p]! / direct).toFixed(2)}×` : "")).join(" | ")} |`);
  }
  for (const [row, values] of Object.entries(r.cpuPerGbit)) {
    if (!cols.some(([p]) => values[p])) continue;
    lines.push(`| ${row}: agent CPU per Gbit/s (host / guest, % of a core) | ${cols.map(([p]) => (values[p] ? `${values[p]!.host.toFixed(1)} / ${values[p]!.guest.toFixed(1)}` : "")).join(" | ")} |`);
  }
  lines.push("");
  for (const [row, losses] of Object.entries(r.udpLossByRow)) {
    if (!Object.keys(losses).length) continue;
    const rate = row === "UDP" ? UDP_RATE : UDP_FLOOD_RATE;
    lines.push(`${row} loss at ${rate}bit/s offered: ${Object.entries(losses).map(([p, l]) => `${p} ${l!.toFixed(1)}%`).join(", ")}`);
  }
  lines.push(`Latency (1-byte round trips/s over one connection; new connections/s): ${Object.entries(r.latency).map(([p, l]) => `${p} ${l.rrPerSec.toFixed(0)} / ${l.connPerSec.toFixed(0)}`).join("; ")}`);
  const d = r.detection;
  lines.push(`Port detection over ${d.tries} tries: listen() -> host accepts p50 ${d.openP50.toFixed(1)} ms, p95 ${d.openP95.toFixed(1)} ms; close() -> host refuses p50 ${d.closeP50.toFixed(1)} ms, p95 ${d.closeP95.toFixed(1)} ms`);
  lines.push(`Port detector: ${r.detector}`);
  if (d.udpOpenP50 !== undefined) lines.push(`UDP detection over ${d.tries} tries: bind() -> host forwards p50 ${d.udpOpenP50.toFixed(0)} ms, p95 ${d.udpOpenP95!.toFixed(0)} ms; close() -> host stops p95 ${d.udpCloseP95!.toFixed(0)} ms`);
  if (d.burstMs !== undefined) lines.push(`Burst: ${d.burst} listeners opened at once, all forwarded after ${d.burstMs} ms`);
  if (r.cost.guestIdleManyCpuPercent !== undefined) lines.push(`Idle beside ${r.cost.manyListeners} listeners: guest agent ${r.cost.guestIdleManyCpuPercent.toFixed(2)}% of a core`);
  if (r.cost.churnCpuPercent !== undefined) lines.push(`Churn: guest agent ${r.cost.churnCpuPercent.toFixed(2)}% of a core under ${r.cost.churnRate} binds/s (beside the same load)`);
  lines.push(`Cost: guest agent ${r.cost.guestIdleCpuPercent.toFixed(2)}% of a core idle beside ${r.cost.listeners} listeners and ${r.cost.established} established sockets; host agent RSS ${r.cost.hostRssMiB.toFixed(0)} MiB with ${r.cost.connections} open connections`);
  const best = (row: string) => Math.max(...(["grpc", "fast", "porthole-direct"] as Path[]).map((p) => r.throughput[row]![p] ?? 0));
  const def = (row: string) => r.throughput[row]!["porthole-direct"] ?? 0;
  const t = r.throughput;
  for (const f of r.failures) lines.push(`FAILED: ${f}`);
  lines.push("");
  lines.push("Targets:");
  const target = (ok: boolean, text: string) => lines.push(`  [${ok ? "met" : "MISSED"}] ${text}`);
  if (t.TCP!.sshL) {
    target(def("TCP") >= 1.3 * t.TCP!.sshL && def("TCP Reverse") >= 1.3 * t["TCP Reverse"]!.sshL!, `default forwarder (auto) >= 1.3x ssh -L: ${(def("TCP") / t.TCP!.sshL).toFixed(2)}x / ${(def("TCP Reverse") / t["TCP Reverse"]!.sshL!).toFixed(2)}x`);
  }
  if (t.TCP!.direct) target(best("TCP") >= 0.6 * t.TCP!.direct, `a fast path >= 0.6x direct loopback: ${(best("TCP") / t.TCP!.direct).toFixed(2)}x`);
  // Issues 15 and 16: each goal both ways where it has two (forward / reverse).
  const both = (p: Path, over: Path, k: number, what: string) => {
    const f = [t.TCP![p], t.TCP![over]];
    const b = [t["TCP Reverse"]?.[p], t["TCP Reverse"]?.[over]];
    if (f.some((x) => !x) || b.some((x) => !x)) return;
    const [rf, rb] = [f[0]! / f[1]!, b[0]! / b[1]!];
    target(rf >= k && rb >= k, `${what} >= ${k}x: ${rf.toFixed(2)}x / ${rb.toFixed(2)}x`);
  };
  both("fast", "direct", 0.5, "data path ÷ direct loopback (issue 15)");
  both("porthole-direct", "byIP", 0.9, "porthole direct ÷ by IP (issue 15)");
  both("porthole-kernel", "byIP", 0.9, "porthole direct with --kernel-direct ÷ by IP (issue 15)");
  both("grpc", "sshL", 1.0, "gRPC ÷ ssh -L (issue 16)");
  both("ssh", "sshL", 0.9, "porthole SSH ÷ ssh -L, both ways (issue 16)");
  const lat = r.latency;
  const versus = (p: Path, key: "rrPerSec" | "connPerSec", k: number, what: string) => {
    if (lat[p] && lat.sshL) target(lat[p]![key] >= k * lat.sshL[key], `${what} >= ${k}x ssh -L: ${(lat[p]![key] / lat.sshL[key]).toFixed(2)}x`);
  };
  versus("fast", "rrPerSec", 1.0, "data path round trips (issue 15)");
  versus("porthole-direct", "rrPerSec", 1.0, "porthole direct round trips (issue 15)");
  versus("porthole-kernel", "rrPerSec", 1.0, "porthole direct with --kernel-direct round trips (issue 15)");
  versus("fast", "connPerSec", 1.5, "data path new connections (issue 15)");
  versus("porthole-direct", "connPerSec", 1.5, "porthole direct new connections (issue 15)");
  versus("porthole-kernel", "connPerSec", 1.5, "porthole direct with --kernel-direct new connections (issue 15)");
  versus("grpc", "connPerSec", 0.8, "gRPC new connections (issue 16)");
  const flood = r.udpLossByRow["UDP flood"] ?? {}; // the goal is at 1 Gbit/s: not the smoke run's rate
  for (const p of ["fast", "grpc"] as Path[]) {
    if (flood[p] !== undefined && !SMOKE) target(flood[p]! <= 1, `UDP at ${UDP_FLOOD_RATE}bit/s offered over ${p}: loss <= 1% (issue 16): ${flood[p]!.toFixed(1)}%`);
  }
  if (d.tries) target(d.openP50 <= 50 && d.openP95 <= 100 && d.closeP95 <= 20, "detection: open p50 <= 50 ms, p95 <= 100 ms; close p95 <= 20 ms");
  if (d.tries) target(d.openP95 <= 10 && d.closeP95 <= 10, `detection (issue 17): open p95 <= 10 ms (${d.openP95.toFixed(1)}), close p95 <= 10 ms (${d.closeP95.toFixed(1)})`);
  if (d.burstMs !== undefined) target(d.burstMs <= 1000, `burst: ${d.burst} listeners all forwarded within 1 s (${d.burstMs} ms)`);
  if (r.cost.guestIdleManyCpuPercent !== undefined) target(r.cost.guestIdleManyCpuPercent <= 0.5, `idle (issue 17): guest agent <= 0.5% of a core beside ${r.cost.manyListeners} listeners (${r.cost.guestIdleManyCpuPercent.toFixed(2)}%)`);
  if (r.cost.churnCpuPercent !== undefined) target(r.cost.churnCpuPercent <= 2, `churn: ${r.cost.churnRate} binds/s cost the guest agent <= 2% of a core (${r.cost.churnCpuPercent.toFixed(2)}%)`);
  if (r.cost.connections) target(r.cost.guestIdleCpuPercent <= 0.2, `idle (issue 17): guest agent <= 0.2% of a core beside ${r.cost.listeners} listeners (${r.cost.guestIdleCpuPercent.toFixed(2)}%)`);
  if (r.cost.connections) target(r.cost.guestIdleCpuPercent <= 1 && r.cost.hostRssMiB <= 150, `cost: guest idle CPU <= 1% of a core (${r.cost.guestIdleCpuPercent.toFixed(2)}%); host RSS <= 150 MB (${r.cost.hostRssMiB.toFixed(0)} MiB)`);
  console.log(lines.join("\n"));
}

const onSignal = () => void runCleanups().then(() => process.exit(130));
process.once("SIGINT", onSignal);
process.once("SIGTERM", onSignal);
main()
  .catch((err: Error) => {
    console.error(`bench: ${err.message}`);
    process.exitCode = 1;
  })
  .finally(() => runCleanups());
