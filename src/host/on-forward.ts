// `--on-forward CMD`: runs a command of the user's (through /bin/sh -c) for each new forward,
// with the forward in environment variables. It never holds the agent up: each run is a
// detached process group, its output goes to the agent's log line by line, it is killed
// after a timeout, at most a few run at once (others wait in a bounded queue, the rest are
// dropped), and every failure (cannot start, non-zero exit, killed, timed out, dropped) is
// an event. The values come from the forward: addresses the guest reported were checked
// (IP literals, ports) before any forward was made; commands must still quote them.
import { spawn } from "node:child_process";
import type { ForwardEvent } from "../core/forward-event.ts";
import { parseHostPort } from "../core/address.ts";

export interface OnForwardOptions {
  command: string;
  timeoutMs: number;
  /** Runs at once; further ones wait. */
  maxRunning: number;
  /** Runs that may wait; further ones are dropped (said each time). */
  maxQueued: number;
  /** The guest agent's address, for PORTHOLE_GUEST. */
  guest: string;
  log: (line: string) => void;
  failed: (message: string) => void;
}

/** Lines of output kept per run in the log; the rest is counted. */
const MAX_LOG_LINES = 50;

/** The environment a run gets: what `--on-forward` documents. */
export function forwardEnv(e: ForwardEvent, guest: string): Record<string, string> {
  const split = (addr: string | undefined) => {
    try {
      const { host, port } = parseHostPort(addr ?? "");
      return { ip: host, port: String(port) };
    } catch {
      return { ip: "", port: "" }; // a unix socket path
    }
  };
  const g = split(e.guestAddr);
  const h = split(e.hostAddr);
  return {
    PORTHOLE_EVENT: e.type,
    PORTHOLE_PROTO: e.protocol,
    PORTHOLE_GUEST_ADDR: e.guestAddr,
    PORTHOLE_GUEST_IP: g.ip,
    PORTHOLE_GUEST_PORT: g.port,
    PORTHOLE_HOST_ADDR: e.hostAddr ?? "",
    PORTHOLE_HOST_IP: h.ip,
    PORTHOLE_HOST_PORT: h.port,
    PORTHOLE_HOST_SOCKET: h.port ? "" : (e.hostAddr ?? ""),
    PORTHOLE_RULE: String(e.rule ?? ""),
    PORTHOLE_LABEL: e.label ?? "",
    PORTHOLE_PATH: e.path ?? "",
    PORTHOLE_GUEST: guest,
    PORTHOLE_AGENT_PID: String(process.pid),
  };
}

export class OnForward {
  private running = 0;
  private readonly queue: Record<string, string>[] = [];
  private stopped = false;
  private readonly children = new Set<number>();

  constructor(private readonly options: OnForwardOptions) {}

  /** Called with every event: runs for a new forward (not for its [::1] companion or a reverse socket). */
  onEvent(e: ForwardEvent): void {
    if (this.stopped || e.type !== "forwarding" || e.companion || e.reverse) return;
    const env = forwardEnv(e, this.options.guest);
    if (this.running < this.options.maxRunning) return this.run(env);
    if (this.queue.length >= this.options.maxQueued) {
      this.options.failed(`not run for ${e.protocol} ${e.hostAddr}: ${this.options.maxRunning} runs are going and ${this.options.maxQueued} wait already (does the command finish?)`);
      return;
    }
    this.queue.push(env);
  }

  /** Kills what still runs (agent shutdown). */
  stop(): void {
    this.stopped = true;
    this.queue.length = 0;
    for (const pid of this.children) killGroup(pid);
  }

  private run(env: Record<string, string>): void {
    this.running++;
    const what = `${env.PORTHOLE_PROTO} ${env.PORTHOLE_HOST_ADDR}`;
    const say = (line: string) => this.options.log(`on-forward (${what}): ${line}`);
    let done = false;
    const finish = (failure?: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (child.pid) this.children.delete(child.pid);
      if (failure) this.options.failed(`for ${what}: ${failure}`);
      this.running--;
      const next = this.queue.shift();
      if (next && !this.stopped) this.run(next);
    };
    // Detached: its own process group, so a timeout kills what it started too.
    const child = spawn("/bin/sh", ["-c", this.options.command], {
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    if (child.pid) this.children.add(child.pid);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid) killGroup(child.pid);
    }, this.options.timeoutMs);
    let lines = 0;
    for (const stream of [child.stdout, child.stderr]) {
      let rest = "";
      stream?.setEncoding("utf8");
      stream?.on("data", (chunk: string) => {
        const parts = (rest + chunk).split("\n");
        rest = parts.pop()!.slice(0, 4096);
        for (const line of parts) if (++lines <= MAX_LOG_LINES) say(line);
      });
      stream?.on("end", () => {
        if (rest && ++lines <= MAX_LOG_LINES) say(rest);
        if (lines > MAX_LOG_LINES && stream === child.stderr) say(`(${lines - MAX_LOG_LINES} more lines not shown)`);
      });
      stream?.on("error", () => {});
    }
    child.once("error", (err) => finish(`cannot run /bin/sh -c: ${err.message}`));
    // Its exit, not the end of its output: what it started in the background may keep the pipes.
    child.once("exit", (code, signal) => {
      if (timedOut) finish(`timed out after ${this.options.timeoutMs / 1000}s and was killed (a command that keeps running, such as a browser, should be started in the background: CMD &)`);
      else if (signal) finish(`killed by ${signal}`);
      else if (code !== 0) finish(`exited with status ${code}`);
      else finish();
    });
  }
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // already gone
  }
}
