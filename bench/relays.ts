// One relay hop on loopback, three ways, to choose how porthole moves a forwarded
// connection's bytes: the shim's native relay (splice), a relay on Bun's own socket API
// (Bun.listen/Bun.connect, with backpressure), and the node:net pipe() relay (the fallback).
// iperf3 through each, both directions, with this process's CPU (every thread) per Gbit/s.
//   bun bench/relays.ts [--duration S] [--runs N]
import { spawn, spawnSync } from "node:child_process";
import * as net from "node:net";
import type { Socket } from "bun";
import { joinSockets, prepareRelay } from "../src/transport/fast-relay.ts";
import { freePort } from "../test/lab.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1]! : fallback);
const DURATION = Number(flag("duration", "5"));
const RUNS = Number(flag("runs", "3"));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function iperfOnce(port: number, reverse: boolean): Promise<number> {
  // Asynchronous: the relays run on this process's event loop.
  return new Promise((resolve, reject) => {
    const child = spawn("iperf3", ["-c", "127.0.0.1", "-p", String(port), "-t", String(DURATION), "-J", ...(reverse ? ["-R"] : [])]);
    let out = "";
    child.stdout.on("data", (c) => (out += c));
    child.on("close", () => {
      const r = JSON.parse(out || "{}");
      if (r.error || !r.end) return reject(new Error(r.error ?? "no output"));
      resolve((r.end.sum_sent.bits_per_second + r.end.sum_received.bits_per_second) / 2 / 1e9);
    });
  });
}

/** The server runs one test at a time and may still be closing the last one: try again. */
async function iperf(port: number, reverse: boolean): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await iperfOnce(port, reverse);
    } catch (err) {
      if (attempt >= 5 || !/busy|control socket/.test((err as Error).message)) throw err;
      await Bun.sleep(500);
    }
  }
}

type Relay = { name: string; start(listenPort: number, target: number): Promise<() => void> };

const nodeNet = (name: string): Relay => ({
  name,
  async start(listenPort, target) {
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
      client.pause();
      const up = net.connect({ port: target, host: "127.0.0.1", allowHalfOpen: true, noDelay: true }, () => joinSockets(client, up));
      up.once("error", () => client.destroy());
    });
    await new Promise<void>((r) => server.listen(listenPort, "127.0.0.1", r));
    return () => server.close();
  },
});

type Side = { peer?: Socket<Side>; pending: Uint8Array[]; ended: boolean };

/** Bun's socket API: write what fits, keep the rest, pause the reader until the writer drains. */
const bunSockets: Relay = {
  name: "Bun.listen/Bun.connect relay",
  async start(listenPort, target) {
    const send = (from: Socket<Side>, to: Socket<Side> | undefined, chunk: Uint8Array) => {
      if (!to) return void from.data.pending.push(chunk);
      if (to.data.pending.length) return void to.data.pending.push(chunk);
      const n = to.write(chunk);
      if (n < chunk.length) {
        to.data.pending.push(chunk.subarray(Math.max(0, n)));
        from.pause();
      }
    };
    const drain = (s: Socket<Side>) => {
      while (s.data.pending.length) {
        const chunk = s.data.pending[0]!;
        const n = s.write(chunk);
        if (n < chunk.length) return void (s.data.pending[0] = chunk.subarray(Math.max(0, n)));
        s.data.pending.shift();
      }
      s.data.peer?.resume();
      if (s.data.ended) s.shutdown();
    };
    const half = (s: Socket<Side>) => {
      const to = s.data.peer;
      if (!to) return;
      to.data.ended = true;
      if (!to.data.pending.length) to.shutdown();
    };
    const handlers = {
      data: (s: Socket<Side>, chunk: Uint8Array) => send(s, s.data.peer, new Uint8Array(chunk)),
      drain,
      end: half,
      close: (s: Socket<Side>) => void s.data.peer?.end(),
      error: (s: Socket<Side>) => void s.data.peer?.terminate(),
    };
    const listener = Bun.listen<Side>({
      hostname: "127.0.0.1",
      port: listenPort,
      allowHalfOpen: true,
      socket: {
        ...handlers,
        open(client: Socket<Side>) {
          client.data = { pending: [], ended: false };
          client.setNoDelay(true);
          void Bun.connect<Side>({
            hostname: "127.0.0.1",
            port: target,
            allowHalfOpen: true,
            socket: {
              ...handlers,
              open(up: Socket<Side>) {
                up.data = { peer: client, pending: client.data.pending.splice(0), ended: false };
                up.setNoDelay(true);
                client.data.peer = up;
                drain(up);
              },
            },
          }).catch(() => client.terminate());
        },
      },
    } as unknown as Parameters<typeof Bun.listen<Side>>[0]);
    return () => listener.stop(true);
  },
};

async function main(): Promise<void> {
  const target = await freePort();
  const server = spawn("iperf3", ["-s", "-p", String(target), "-B", "127.0.0.1"], { stdio: "ignore" });
  try {
    await Bun.sleep(300);
    console.log(`one relay hop on loopback, iperf3 -t ${DURATION}, median of ${RUNS}; CPU = this process, every thread, % of a core per Gbit/s`);
    console.log("| relay | forward Gbit/s | reverse Gbit/s | CPU per Gbit/s |\n|---|---|---|---|");
    const direct: number[] = [];
    for (let i = 0; i < RUNS; i++) direct.push(await iperf(target, false));
    console.log(`| none (direct loopback) | ${median(direct).toFixed(2)} | | |`);
    for (const [relay, env] of [[nodeNet("native relay (splice)"), ""], [nodeNet("native relay (read/send)"), "copy"], [nodeNet("node:net pipe() relay (the fallback)"), "0"], [bunSockets, "0"]] as const) {
      await prepareRelay(() => {}, { PORTHOLE_NATIVE_RELAY: env });
      const port = await freePort();
      const stop = await relay.start(port, target);
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      const fwd: number[] = [];
      const rev: number[] = [];
      for (let i = 0; i < RUNS; i++) fwd.push(await iperf(port, false));
      for (let i = 0; i < RUNS; i++) rev.push(await iperf(port, true));
      const cpu = process.cpuUsage(cpu0);
      const seconds = (performance.now() - t0) / 1000;
      const mean = [...fwd, ...rev].reduce((a, b) => a + b, 0) / (2 * RUNS);
      const perGbit = ((cpu.user + cpu.system) / 1e6 / seconds) * 100 / mean;
      console.log(`| ${relay.name} | ${median(fwd).toFixed(2)} | ${median(rev).toFixed(2)} | ${perGbit.toFixed(1)}% |`);
      stop();
    }
  } finally {
    server.kill();
    spawnSync("true");
  }
}

await main();
process.exit(0);
