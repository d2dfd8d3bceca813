// The lab: a guest network namespace, real porthole agents and real servers in it, and
// cleanup that runs even when something fails. Shared by the end-to-end tests
// (test/e2e/harness.ts adds bun:test's hooks) and the benchmarks (bench/).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as dgram from "node:dgram";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dir, "..");
/** The binary under test (`make test` sets PORTHOLE_BIN), else the sources. */
export const PORTHOLE: string[] = process.env.PORTHOLE_BIN ? [process.env.PORTHOLE_BIN] : [process.execPath, join(REPO, "src/cli/main.ts")];
const SERVERS = [process.execPath, join(REPO, "test/fixtures/servers.ts")];
const NS_PREFIX = "phtest-";


/** Why end-to-end work cannot run here (it needs root for `ip netns`), if it cannot. */
export function e2eBlocker(): string | undefined {
  if (process.getuid?.() !== 0) return "end-to-end tests need root (ip netns)";
  if (spawnSync("ip", ["-V"]).status !== 0) return "end-to-end tests need iproute2 (ip)";
  return undefined;
}
const blocker = e2eBlocker();

// ---- processes ---------------------------------------------------------------------------

export class Proc {
  readonly stdout: string[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<number | null>;
  private waiters: (() => void)[] = [];

  constructor(readonly child: ChildProcess, readonly label: string) {
    this.collect(child.stdout, this.stdout);
    this.collect(child.stderr, this.stderr);
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => {
      this.notify();
      resolve(code ?? (signal ? -1 : null));
    }));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  private collect(stream: NodeJS.ReadableStream | null, into: string[]): void {
    if (!stream) return;
    let rest = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk: string) => {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop()!;
      into.push(...lines);
      this.notify();
    });
  }

  private notify(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves when `check` returns a value; fails with the process's output after the timeout. */
  async waitFor<T>(check: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = check();
      if (value !== undefined && value !== false) return value;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.label}: timed out waiting for ${what}\n${describeProcesses()}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 100));
        this.waiters.push(() => { clearTimeout(t); r(); });
      });
    }
  }

  waitForLine(pattern: RegExp, stream: "stdout" | "stderr" = "stdout", timeoutMs?: number): Promise<string> {
    return this.waitFor(() => this[stream].find((l) => pattern.test(l)), `a line matching ${pattern}`, timeoutMs);
  }

  async kill(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    if (this.running) this.child.kill(signal);
    await this.exited;
  }
}

// ---- cleanup -----------------------------------------------------------------------------

const cleanups: (() => Promise<void> | void)[] = [];

/** Registers cleanup that runs after the current test, pass or fail (last registered first). */
export function defer(fn: () => Promise<void> | void): void {
  cleanups.push(fn);
}

/** Runs (and forgets) every deferred cleanup, last registered first. */
export async function runCleanups(): Promise<void> {
  for (const fn of cleanups.splice(0).reverse()) {
    try {
      await fn();
    } catch (err) {
      console.error("cleanup failed:", err);
    }
  }
}

// Last line of defence if the runner exits before the hooks ran (e.g. a crash or Ctrl-C):
// nothing this harness started may outlive it.
const liveChildren = new Set<ChildProcess>();
const liveNamespaces = new Set<string>();
process.on("exit", () => {
  for (const child of liveChildren) child.kill("SIGKILL");
  for (const ns of liveNamespaces) spawnSync("ip", ["netns", "del", ns]);
});

const testProcs = new Set<Proc>();

/** The last lines of every process of the current test: what a failure message needs. */
function describeProcesses(): string {
  const tail = (lines: string[]) => lines.slice(-30).join("\n");
  return [...testProcs]
    .map((p) => `--- ${p.label} (pid ${p.child.pid}${p.running ? "" : `, exited ${p.child.exitCode ?? p.child.signalCode}`})\n${tail(p.stdout)}\n${tail(p.stderr)}`)
    .join("\n");
}

function track(child: ChildProcess, label: string): Proc {
  const proc = new Proc(child, label);
  testProcs.add(proc);
  defer(() => void testProcs.delete(proc));
  liveChildren.add(child);
  child.once("exit", () => liveChildren.delete(child));
  defer(() => proc.kill("SIGKILL"));
  return proc;
}

/** Namespaces left by a harness process that died without cleaning up. */
function removeOrphanNamespaces(): void {
  const list = spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout ?? "";
  for (const name of list.split("\n").map((l) => l.split(" ")[0]!)) {
    const pid = Number(name.startsWith(NS_PREFIX) ? name.slice(NS_PREFIX.length).split("-")[0] : NaN);
    if (!pid || pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch {
      spawnSync("ip", ["netns", "del", name]);
    }
  }
}

// ---- the guest ---------------------------------------------------------------------------

let nsCounter = 0;

export class Guest {
  readonly dir: string;
  readonly socket: string;

  private constructor(readonly ns: string) {
    this.dir = mkdtempSync(join(tmpdir(), "porthole-e2e-"));
    this.socket = join(this.dir, "guest.sock");
  }

  /** A new network namespace with loopback up, removed after the test. */
  static create(): Guest {
    if (nsCounter === 0 && !blocker) removeOrphanNamespaces();
    const ns = `${NS_PREFIX}${process.pid}-${++nsCounter}`;
    const run = (...argv: string[]) => {
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr}`);
    };
    run("ip", "netns", "add", ns);
    liveNamespaces.add(ns);
    const guest = new Guest(ns);
    defer(() => {
      spawnSync("ip", ["netns", "del", ns]);
      liveNamespaces.delete(ns);
      rmSync(guest.dir, { recursive: true, force: true });
    });
    run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up");
    return guest;
  }

  /** A process inside the guest; `stdin: true` gives it a pipe to write commands to. */
  spawn(argv: string[], label: string, options: { stdin?: boolean } = {}): Proc {
    const stdio = [options.stdin ? "pipe" : "ignore", "pipe", "pipe"] as const;
    return track(spawn("ip", ["netns", "exec", this.ns, ...argv], { stdio: [...stdio] }), label);
  }

  /** `porthole guest` serving on this guest's unix socket (`command` instead of PORTHOLE). */
  async startAgent(extra: string[] = [], command: string[] = PORTHOLE): Promise<Proc> {
    const agent = this.spawn([...command, "guest", "--listen", `unix://${this.socket}`, ...extra], "guest agent");
    await agent.waitForLine(/serving on/, "stderr");
    return agent;
  }

  /** A TCP echo server inside the guest. */
  startEcho(host: string, port: number): Promise<Proc> {
    return this.startServer("echo", [[host, port]]);
  }

  /** A fixture server (test/fixtures/servers.ts) inside the guest, on one or more addresses. */
  startServer(mode: "echo" | "stall" | "source" | "digest" | "udp-echo" | "udp-bind", binds: [string, number][]): Promise<Proc> {
    return this.startFixture([mode, ...binds.flatMap(([h, p]) => [h, String(p)])]);
  }

  /** test/fixtures/servers.ts inside the guest with these arguments; waits for "listening". */
  async startFixture(args: string[]): Promise<Proc> {
    const server = this.spawn([...SERVERS, ...args], args.join(" "));
    await server.waitForLine(/^listening/);
    return server;
  }

  /**
   * CPython's reset server (test/fixtures/reset-server.py) inside the guest: every
   * connection gets `bytes` bytes, then a TCP reset. `gated`: its listener starts full (new
   * connects wait for a SYN sent again) until a line is written to its stdin.
   */
  async startResetServer(host: string, port: number, bytes: number, mode?: "gated"): Promise<Proc> {
    const argv = ["/usr/bin/python3", join(REPO, "test/fixtures/reset-server.py"), host, String(port), String(bytes), ...(mode ? [mode] : [])];
    const server = this.spawn(argv, `reset-server ${bytes}`, { stdin: mode === "gated" });
    await server.waitForLine(/^listening/);
    return server;
  }

  /** Runs test/fixtures/servers.ts to completion inside the guest (a client mode). */
  runFixture(args: string[]): Proc {
    return this.spawn([...SERVERS, ...args], args.join(" "));
  }

  /** An address on a veth interface inside the guest (both ends stay in the namespace). */
  addVethAddress(cidr: string): void {
    const exec = (...argv: string[]) => {
      const r = spawnSync("ip", ["netns", "exec", this.ns, ...argv], { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr}`);
    };
    exec("ip", "link", "add", "ph-v0", "type", "veth", "peer", "name", "ph-v1");
    exec("ip", "addr", "add", cidr, "dev", "ph-v0");
    exec("ip", "link", "set", "ph-v0", "up");
    exec("ip", "link", "set", "ph-v1", "up");
  }

  private links = 0;

  /**
   * A veth pair from the host's namespace into this namespace with the given addresses
   * (CIDR), for tests that need particular subnets. Removed with the namespace.
   */
  linkToHostAs(hostCidr: string, guestCidr: string): void {
    const n = ++this.links;
    const hostDev = `ph${process.pid % 100000}m${nsCounter}x${n}`.slice(0, 15);
    const run = (...argv: string[]) => {
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr}`);
    };
    run("ip", "link", "add", hostDev, "type", "veth", "peer", "name", "eth-host", "netns", this.ns);
    defer(() => void spawnSync("ip", ["link", "del", hostDev]));
    run("ip", "addr", "add", hostCidr, "dev", hostDev);
    run("ip", "link", "set", hostDev, "up");
    run("ip", "netns", "exec", this.ns, "ip", "addr", "add", guestCidr, "dev", "eth-host");
    run("ip", "netns", "exec", this.ns, "ip", "link", "set", "eth-host", "up");
  }

  /**
   * A veth pair from the host's namespace into this guest (a /30 of 10.251.0.0/16 picked
   * per process and link), so host programs can reach guest servers by IP. Removed with
   * the namespace.
   */
  linkToHost(): { hostIP: string; guestIP: string } {
    const n = ++this.links;
    const index = ((process.pid % 256) * 64 + nsCounter * 4 + n) % 16384;
    const [a, b] = [Math.floor((index * 4) / 256), (index * 4) % 256];
    const hostIP = `10.251.${a}.${b + 1}`;
    const guestIP = `10.251.${a}.${b + 2}`;
    const hostDev = `ph${process.pid % 100000}l${nsCounter}x${n}`.slice(0, 15);
    const run = (...argv: string[]) => {
      const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr}`);
    };
    run("ip", "link", "add", hostDev, "type", "veth", "peer", "name", "eth-host", "netns", this.ns);
    defer(() => void spawnSync("ip", ["link", "del", hostDev]));
    run("ip", "addr", "add", `${hostIP}/30`, "dev", hostDev);
    run("ip", "link", "set", hostDev, "up");
    run("ip", "netns", "exec", this.ns, "ip", "addr", "add", `${guestIP}/30`, "dev", "eth-host");
    run("ip", "netns", "exec", this.ns, "ip", "link", "set", "eth-host", "up");
    return { hostIP, guestIP };
  }

  /**
   * OpenSSH's sshd inside the guest, with its own throwaway host key, config and authorized
   * key (never the system's). Listens on port 22 of the guest's addresses; `unixSocket`
   * also serves it on a unix socket through `sshd -i` (a stand-in for vsock).
   */
  async startSshd(options: { hostKey?: string; forwarding?: boolean } = {}): Promise<Sshd> {
    const dir = join(this.dir, "ssh");
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    mkdirSync("/run/sshd", { recursive: true, mode: 0o755 }); // sshd's privilege separation directory
    const keygen = (file: string) => {
      if (existsSync(file)) return;
      const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "porthole-test", "-f", file], { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`ssh-keygen: ${r.stderr}`);
    };
    const hostKey = options.hostKey ?? join(dir, "host_key");
    const clientKey = join(dir, "client_key");
    keygen(hostKey);
    keygen(clientKey);
    writeFileSync(join(dir, "authorized_keys"), readFileSync(`${clientKey}.pub`));
    const config = join(dir, "sshd_config");
    writeFileSync(config, [
      "Port 22",
      `HostKey ${hostKey}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`,
      `PidFile ${join(dir, "sshd.pid")}`,
      "StrictModes no",
      "UsePAM no",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PermitRootLogin prohibit-password",
      `AllowTcpForwarding ${options.forwarding === false ? "no" : "yes"}`,
      `AllowStreamLocalForwarding ${options.forwarding === false ? "no" : "yes"}`,
      "LogLevel DEBUG1",
      "",
    ].join("\n"));
    const proc = this.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", config], "sshd");
    await proc.waitForLine(/Server listening on/, "stderr");
    return { proc, config, clientKey, hostKey };
  }

  /** SIGKILLs every process named `comm` inside this guest (e.g. sshd with all its sessions). */
  killAll(comm: string): number {
    const pids = (spawnSync("ip", ["netns", "pids", this.ns], { encoding: "utf8" }).stdout ?? "").split("\n").filter(Boolean);
    let killed = 0;
    for (const pid of pids) {
      try {
        if (readFileSync(`/proc/${pid}/comm`, "utf8").trim() !== comm) continue;
        process.kill(Number(pid), "SIGKILL");
        killed++;
      } catch {
        // already gone
      }
    }
    return killed;
  }

  /** Serves `argv` on a unix socket in the guest, one process per connection (like inetd). */
  startInetdUnix(path: string, argv: string[]): Promise<Proc> {
    return this.startFixture(["inetd-unix", path, "--", ...argv]);
  }

  /** Writes a file into this guest's scratch directory (configs, state) and returns its path. */
  writeFile(name: string, text: string): string {
    const file = join(this.dir, name);
    writeFileSync(file, text);
    return file;
  }
}

export interface Sshd {
  proc: Proc;
  config: string;
  clientKey: string;
  hostKey: string;
}

/** How many direct-tcpip channels sshd opened (its DEBUG1 log): proof that SSH carried them. */
export function sshChannels(sshd: Proc): number {
  return sshd.stderr.filter((l) => /server_request_direct_tcpip: originator/.test(l)).length;
}

/** QEMU's side of a virtio-serial port: a pty (the guest's device) joined to a unix socket server. */
export async function fakeVirtioPort(guest: Guest): Promise<{ device: string; chardev: string; proc: Proc }> {
  const device = join(guest.dir, "vport");
  const chardev = join(guest.dir, "chardev.sock");
  const child = spawn("socat", [`PTY,link=${device},raw,echo=0,wait-slave`, `UNIX-LISTEN:${chardev},unlink-early`], { stdio: ["ignore", "pipe", "pipe"] });
  const proc = new Proc(child, "socat");
  defer(() => proc.kill("SIGKILL"));
  await proc.waitFor(() => existsSync(device) || undefined, "the pty");
  return { device, chardev, proc };
}

/**
 * A stand-in virtio-serial port that takes one host connection after another while the guest's
 * device stays open, so the guest never sees a hang-up between two hosts (test/fixtures/sticky-chardev.py).
 */
export async function stickyVirtioPort(guest: Guest): Promise<{ device: string; chardev: string; proc: Proc }> {
  const device = join(guest.dir, "vport");
  const chardev = join(guest.dir, "chardev.sock");
  const child = spawn("/usr/bin/python3", [join(REPO, "test/fixtures/sticky-chardev.py"), device, chardev], { stdio: ["ignore", "pipe", "pipe"] });
  const proc = new Proc(child, "sticky chardev");
  defer(() => proc.kill("SIGKILL"));
  await proc.waitForLine(/^ready/);
  return { device, chardev, proc };
}

// ---- Lima's side on grpc-go (test/fixtures/lima-go-peer) ----------------------------------

/** The grpc-go peer's binary (`make dist/lima-go-peer`; PORTHOLE_LIMA_GO_PEER overrides); a clear error where it is missing. */
export function limaGoPeer(): string {
  const bin = process.env.PORTHOLE_LIMA_GO_PEER ?? join(REPO, "dist/lima-go-peer");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: \`make dist/lima-go-peer\` builds it (Go and golang-google-grpc-dev from Debian)`);
  return bin;
}

/** One step a `lima-go-peer host` run printed (a JSON line on its stdout). */
export interface LimaGoStep {
  step?: string;
  error?: string;
  ports?: { protocol: string; ip: string; port: number; unknown: number }[];
  added?: { protocol: string; ip: string; port: number; unknown: number }[];
  echo?: string;
}

/** The steps a `lima-go-peer host` run has printed so far. */
function limaGoSteps(peer: Proc): LimaGoStep[] {
  return peer.stdout.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as LimaGoStep);
}

/** Waits for a `lima-go-peer host` run's last step (or its first error); its steps. */
export async function limaGoHostRun(peer: Proc, timeoutMs: number): Promise<LimaGoStep[]> {
  await peer.waitFor(() => limaGoSteps(peer).find((s) => s.error || s.step === "Tunnel udp"), `${peer.label}'s last step`, timeoutMs);
  return limaGoSteps(peer);
}

// ---- the host agent ----------------------------------------------------------------------

export interface Event {
  type: string;
  protocol?: string;
  guestAddr?: string;
  hostAddr?: string;
  error?: string;
  [key: string]: unknown;
}

export class HostAgentProc {
  constructor(readonly proc: Proc) {}

  get events(): Event[] {
    return this.proc.stderr.flatMap((line) => {
      try {
        return [JSON.parse(line) as Event];
      } catch {
        return [];
      }
    });
  }

  waitForEvent(match: (e: Event) => boolean, what: string, timeoutMs = 10_000): Promise<Event> {
    return this.proc.waitFor(() => this.events.find(match), what, timeoutMs);
  }

  /** Waits for the count-th event that matches (1-based). */
  waitForNthEvent(count: number, match: (e: Event) => boolean, what: string, timeoutMs = 10_000): Promise<Event> {
    return this.proc.waitFor(() => this.events.filter(match)[count - 1], what, timeoutMs);
  }

  waitForForwarding(hostPort: number, timeoutMs?: number): Promise<Event> {
    return this.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, `forwarding of ${hostPort}`, timeoutMs);
  }
}

export interface HostAgentOptions {
  /** Runs the agent under another command (e.g. setpriv). */
  wrapper?: string[];
  /** Variables such as LIMA_SSH_PORT_FORWARDER (the test's environment never leaks LIMA_*). */
  env?: Record<string, string>;
  /** The porthole command (default PORTHOLE), e.g. `node dist/porthole.mjs`. */
  command?: string[];
}

/**
 * `porthole host --log-format json` for this guest (its unix socket, unless `extra` names
 * another --guest), with the guest's scratch directory as its state directory.
 */
export function startHostAgent(guest: Guest, extra: string[] = [], options: HostAgentOptions = {}): HostAgentProc {
  const guestFlag = extra.includes("--guest") ? [] : ["--guest", `unix://${guest.socket}`];
  // Each agent its own state directory (known_hosts, control socket): agents never collide.
  const stateFlag = extra.includes("--state-dir") ? [] : ["--state-dir", join(guest.dir, "state")];
  const argv = [...(options.wrapper ?? []), ...(options.command ?? PORTHOLE), "host", ...guestFlag, ...stateFlag, "--log-format", "json", ...extra];
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("LIMA_")));
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], env: { ...base, ...options.env } });
  return new HostAgentProc(track(child, "host agent"));
}

/** A guest, its agent and a host agent connected to it (with `--forwarder` when given). */
export async function startPair(forwarder?: string): Promise<{ guest: Guest; guestAgent: Proc; host: HostAgentProc }> {
  const guest = Guest.create();
  const guestAgent = await guest.startAgent();
  const host = startHostAgent(guest, forwarder ? ["--forwarder", forwarder] : []);
  await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
  return { guest, guestAgent, host };
}

// ---- sockets -----------------------------------------------------------------------------

const usedPorts = new Set<number>();

/**
 * A port that is free on the host's 127.0.0.1 and ::1, for TCP and UDP, right now. It lies
 * below the kernel's ephemeral range (32768+), where the kernel hands out ports for outgoing
 * connections.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * 22_000);
    if (usedPorts.has(port)) continue;
    const free = await Promise.all([isFree(port, "127.0.0.1"), isFree(port, "::1"), isUdpFree(port)]);
    if (free.every(Boolean)) {
      usedPorts.add(port);
      return port;
    }
  }
  throw new Error("no free port found");
}

function isUdpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket("udp4");
    s.once("error", () => resolve(false));
    s.bind(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/**
 * Connects, sends `data`, half-closes, and returns everything read until the peer closes.
 * `host` may be a unix socket path (then `port` is ignored).
 */
export function exchange(port: number, data: Buffer, host = "127.0.0.1", timeoutMs = 30_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = host.startsWith("/") ? net.connect(host) : net.connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`exchange with ${host}:${port} timed out`));
    }, timeoutMs);
    socket.on("connect", () => socket.end(data));
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
  });
}

/**
 * Streams `size` random bytes to an echo server in 1 MiB pieces while reading the echo, so
 * both directions are in flight at once (and backpressure works); returns both hashes.
 */
export function echoRoundTrip(port: number, size: number, host = "127.0.0.1"): Promise<{ sent: string; received: string; receivedBytes: number }> {
  const sent = createHash("sha256");
  const received = createHash("sha256");
  let receivedBytes = 0;
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    socket.on("error", reject);
    socket.on("data", (c: Buffer) => {
      received.update(c);
      receivedBytes += c.length;
    });
    socket.on("close", () => resolve({ sent: sent.digest("hex"), received: received.digest("hex"), receivedBytes }));
    socket.on("connect", async () => {
      for (let left = size; left > 0; ) {
        const piece = randomBytes(Math.min(left, 1 << 20));
        left -= piece.length;
        sent.update(piece);
        if (!socket.write(piece)) await new Promise((r) => socket.once("drain", r));
      }
      socket.end();
    });
  });
}

/**
 * Connects, sends `data` (if any, without half-closing), and reads until the stream ends:
 * how it ended ("eof", or the error code such as ECONNRESET) and how many bytes came.
 * `stopAfter`: called once that many bytes arrived (e.g. to kill an agent mid-download).
 */
/**
 * A client that lets the server speak first: connects (half-open), reads until the server's
 * EOF, then sends `reply` and ends its side; resolves with what the server sent, once closed.
 */
export function answerAfterEOF(port: number, reply: Buffer, host = "127.0.0.1"): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect({ host, port, allowHalfOpen: true });
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("error", reject);
    socket.on("end", () => socket.end(reply));
    socket.on("close", () => resolve(Buffer.concat(chunks)));
  });
}

export function readToEnd(port: number, options: { host?: string; data?: Buffer; stopAfter?: [number, () => void]; timeoutMs?: number } = {}): Promise<{ end: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: options.host ?? "127.0.0.1", port, allowHalfOpen: true });
    let bytes = 0;
    let fired = false;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`reading from ${port} timed out after ${bytes} bytes`));
    }, options.timeoutMs ?? 30_000);
    const done = (end: string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ end, bytes });
    };
    socket.once("connect", () => options.data && socket.write(options.data));
    socket.on("data", (c: Buffer) => {
      bytes += c.length;
      if (options.stopAfter && !fired && bytes >= options.stopAfter[0]) {
        fired = true;
        options.stopAfter[1]();
      }
    });
    socket.once("end", () => done("eof"));
    socket.once("error", (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
  });
}

/** `porthole status --json` of a host agent's control socket. */
export function statusJSON(control: string): {
  paths?: Record<string, PathCount>;
  forwards: { hostAddr: string; protocol: string; path: string; paths?: Record<string, PathCount>; bytesIn?: number; datagramsDropped?: number; datagramsPumped?: number }[];
} {
  const r = runPorthole(["status", "--control", control, "--json"]);
  if (r.code !== 0) throw new Error(`porthole status: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

export interface PathCount {
  connections: number;
  open: number;
  bytesIn: number;
  bytesOut: number;
  fallbacks: number;
}

/** The connections each data path carried for the forward on host 127.0.0.1:port (zeros left out). */
export function pathsOf(control: string, port: number): Record<string, number> {
  const fwd = statusJSON(control).forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`);
  if (!fwd) throw new Error(`no forward on 127.0.0.1:${port}`);
  return Object.fromEntries(Object.entries(fwd.paths ?? {}).filter(([, t]) => t.connections).map(([p, t]) => [p, t.connections]));
}

/** Resolves with the error code when a connection to the port fails, or "connected". */
export function tryConnect(port: number, host = "127.0.0.1"): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** The TCP addresses a process listens on in the host's network namespace (from `ss`). */
export function tcpListenersOf(pid: number): string[] {
  const out = spawnSync("ss", ["-Hltnp"], { encoding: "utf8" }).stdout ?? "";
  return out
    .split("\n")
    .filter((line) => line.includes(`pid=${pid},`))
    .map((line) => line.trim().split(/\s+/)[3]!)
    .sort();
}

/** A base offset B such that every `port + B` is free on the host's 127.0.0.1 and ::1. */
export async function freePortBase(ports: number[], min = 5_000, max = 26_000): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = min + Math.floor(Math.random() * (max - min));
    const checks = await Promise.all(ports.flatMap((p) => ["127.0.0.1", "::1"].map((h) => isFree(p + base, h))));
    if (checks.every(Boolean)) return base;
  }
  throw new Error("no free port base found");
}

function isFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen({ port, host, ipv6Only: host.includes(":") }, () => s.close(() => resolve(true)));
  });
}

/** Resident memory of a process, in MiB. */
export function rssMiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
}

/** Open file descriptors of a process. */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** TCP sockets of a process's namespace stuck in CLOSE-WAIT (from `ss`), for one pid. */
export function closeWaitOf(pid: number, netns?: string): number {
  const argv = [...(netns ? ["ip", "netns", "exec", netns] : []), "ss", "-Htanp", "state", "close-wait"];
  const out = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" }).stdout ?? "";
  return out.split("\n").filter((l) => l.includes(`pid=${pid},`)).length;
}

/**
 * The port refuses connections within `timeoutMs` (the runtime closes a listening socket on
 * its next turn, so "stopped" and "refusing" are a moment apart).
 */
export async function refusedSoon(port: number, host = "127.0.0.1", timeoutMs = 1000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let result = await tryConnect(port, host);
  while (result !== "ECONNREFUSED" && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
    result = await tryConnect(port, host);
  }
  return result;
}

/** Runs a porthole command to completion (inside `netns` when given). */
export function runPorthole(args: string[], options: { netns?: string; timeoutMs?: number } = {}): { code: number | null; stdout: string; stderr: string } {
  const argv = [...(options.netns ? ["ip", "netns", "exec", options.netns] : []), ...PORTHOLE, ...args];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8", timeout: options.timeoutMs ?? 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** How a client socket ended (EOF, or the error's code once it failed) and what it received. */
export function socketOutcome(socket: net.Socket): Promise<{ data: Buffer; how: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let how = "";
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.once("end", () => (how ||= "EOF"));
    socket.once("error", (err: NodeJS.ErrnoException) => (how = err.code ?? "error"));
    socket.once("close", () => resolve({ data: Buffer.concat(chunks), how }));
  });
}

type RelayCounts = { bytesSpliced: number; bytesCopied: number };
/**
 * The bytes the native relay moved between two readings of its counters, checked against the
 * mode: read/send moves none by splice; splice mode copies only until a read fills a
 * direction's 16 KiB buffer, so a bulk transfer (`bulk`) goes mostly by splice.
 */
export function nativeMoved(before: RelayCounts, after: RelayCounts, counter: "bytesSpliced" | "bytesCopied", bulk = false): number {
  const spliced = after.bytesSpliced - before.bytesSpliced;
  const copied = after.bytesCopied - before.bytesCopied;
  if (counter === "bytesCopied" && spliced !== 0) throw new Error(`read/send mode spliced ${spliced} bytes`);
  if (counter === "bytesSpliced" && bulk && spliced <= (spliced + copied) / 2) throw new Error(`a bulk transfer went mostly by copy (spliced ${spliced}, copied ${copied})`);
  return spliced + copied;
}

// ---- system calls --------------------------------------------------------------------------

/** The thread ids of a process's relay thread (named by the shim). */
export function relayThreads(pid: number): string[] {
  return readdirSync(`/proc/${pid}/task`).filter((tid) => readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").trim() === "porthole-relay");
}

/**
 * strace -f (not our code) on a running process (or one thread, threads false): its connect,
 * send, read and write calls (or `calls`), each line led by its thread id, until the returned
 * function stops it.
 */
export async function traceCalls(pid: number, log: string, calls = ["connect", "sendto", "write", "read"], threads = true): Promise<() => Promise<string[]>> {
  const strace = new Proc(spawn("strace", [...(threads ? ["-f"] : []), "-s", "16", "-e", `trace=${calls.join(",")}`, "-o", log, "-p", String(pid)], { stdio: ["ignore", "pipe", "pipe"] }), "strace");
  defer(() => strace.kill("SIGKILL"));
  await strace.waitForLine(/attached/, "stderr").catch(() => {});
  await Bun.sleep(300);
  return async () => {
    strace.child.kill("SIGINT");
    await strace.exited;
    return readFileSync(log, "utf8").split("\n");
  };
}
