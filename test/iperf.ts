// iperf3 as the benchmarks and tests drive it: the client run without blocking the event loop (the lab
// drains its children's pipes on it: an sshd at LogLevel DEBUG1 whose stderr is not read stops
// serving), and the server's listener, which it closes and opens again after every test.
import { spawn, spawnSync } from "node:child_process";

export interface IperfResult {
  gbps: number;
  /** UDP runs: the share of datagrams lost (%). */
  loss?: number;
}

/**
 * An iperf3 server closes its listener after every test and opens a new one. A client that comes
 * before the new one is reset: a forwarder accepted it on the host, and the guest side landed in
 * the old listener's queue (dropped with it) or in the gap. Each run therefore waits for a listener
 * the last run did not use (told apart by socket inode, read with ss: a probe connection would be
 * taken for a client).
 */
export class IperfServer {
  private used: string | undefined;
  constructor(
    readonly port: number,
    /** The network namespace it runs in (unset: this one). */
    private readonly netns?: string,
  ) {}

  private inode(): string | undefined {
    const ss = ["ss", "-Hltne", `sport = :${this.port}`];
    const r = spawnSync(this.netns ? "ip" : ss[0]!, this.netns ? ["netns", "exec", this.netns, ...ss] : ss.slice(1), { encoding: "utf8" });
    return /\bino:(\d+)/.exec(r.stdout ?? "")?.[1];
  }

  /** Datagrams received in the server's network namespace so far (/proc/net/snmp's Udp InDatagrams). */
  private udpIn(): number {
    const r = spawnSync("ip", ["netns", "exec", this.netns!, "cat", "/proc/net/snmp"], { encoding: "utf8" });
    const [names, values] = (r.stdout ?? "").split("\n").filter((l) => l.startsWith("Udp:"));
    const at = names?.split(/\s+/).indexOf("InDatagrams") ?? -1;
    return at > 0 ? Number(values?.split(/\s+/)[at]) : NaN;
  }

  /**
   * Resolves once no datagram reached the server's namespace for 100 ms (at most 10 s; at once
   * for a server in this namespace, whose counters the machine's other work moves). iperf3's
   * server takes the first datagram its new listener gets for the next client's hello: the tail
   * of the last UDP run, still queued in a forwarder, would hang that client.
   */
  async udpQuiet(): Promise<void> {
    if (!this.netns) return;
    const deadline = Date.now() + 10_000;
    let last = this.udpIn();
    while (Date.now() < deadline) {
      await Bun.sleep(100);
      const now = this.udpIn();
      if (now === last) return;
      last = now;
    }
    // The run goes on: iperf3 may then take a late datagram for its next client's hello, and
    // that run's error says so; this line says why.
    console.error(`iperf3 server on port ${this.port}: UDP datagrams still arriving in the guest after 10 s; starting the next run anyway`);
  }

  /** Resolves once the server listens on a socket no earlier run used, and claims it. */
  async waitFresh(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const inode = this.inode();
      if (inode && inode !== this.used) {
        this.used = inode;
        return;
      }
      if (Date.now() > deadline) throw new Error(`the iperf3 server on port ${this.port} did not open a new listener within ${timeoutMs} ms`);
      await Bun.sleep(10);
    }
  }
}

/** One client run against `server` (reached at host:port, through whatever forwards it). */
export async function iperf(server: IperfServer, port: number, host: string, extra: string[], durationS: number): Promise<IperfResult> {
  let out: { error?: string; end?: any } = {};
  for (let attempt = 0; attempt < 10; attempt++) {
    if (extra.includes("-u")) await server.udpQuiet();
    await server.waitFresh();
    out = await runClient(["-c", host, "-p", String(port), "-t", String(durationS), "-J", ...extra], (durationS + 20) * 1000);
    // The server runs one test at a time (another client may still hold it).
    if (!out.error?.includes("busy")) break;
    await Bun.sleep(500);
  }
  if (out.error || !out.end) throw new Error(`iperf3 -c ${host} -p ${port} ${extra.join(" ")}: ${out.error}`);
  if (extra.includes("-u")) return { gbps: out.end.sum_received.bits_per_second / 1e9, loss: out.end.sum.lost_percent };
  // Lima's method: the average of what the sender sent and the receiver received.
  return { gbps: (out.end.sum_sent.bits_per_second + out.end.sum_received.bits_per_second) / 2 / 1e9 };
}

function runClient(argv: string[], timeoutMs: number): Promise<{ error?: string; end?: any }> {
  return new Promise((resolve) => {
    const child = spawn("iperf3", argv);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d));
    child.stderr.on("data", (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill(), timeoutMs);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(stdout));
      } catch {
        resolve({ error: stderr.trim() || (signal ? `killed (${signal}) after ${timeoutMs} ms` : `exit ${code} without a result`) });
      }
    });
  });
}
