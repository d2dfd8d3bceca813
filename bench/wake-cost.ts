// What one wake-up of the event loop costs the agent, by how it reads a connected fd: a
// net.Socket (node:net) against Bun's own socket API (runtime/fd-socket.ts readFd). A python3
// writer holds one end of a socketpair and sends 64 bytes every 4 ms; this process, as a
// child of it, reads the other end and prints its CPU per read (utime + stime). Then a timer
// that fires every 4 ms, for the cost of a wake-up with no I/O at all.
//   bun bench/wake-cost.ts [--reads N]
import * as net from "node:net";
import { spawnSync } from "node:child_process";

const args = process.argv.slice(2);
const READS = Number(args.includes("--reads") ? args[args.indexOf("--reads") + 1] : "2000");

if (args[0] === "--timer") {
  const wakes = Number(args[1]);
  let n = 0;
  const start = process.cpuUsage();
  const timer = setInterval(() => {
    if (++n < wakes) return;
    clearInterval(timer);
    const used = process.cpuUsage(start);
    console.log(`timer: ${n} wake-ups, ${((used.user + used.system) / n).toFixed(1)} µs CPU per wake-up`);
  }, 4);
} else if (args[0] === "--read") {
  const [, mode, fdText] = args;
  const fd = Number(fdText);
  let reads = 0;
  const start = process.cpuUsage();
  const done = () => {
    const used = process.cpuUsage(start);
    console.log(`${mode}: ${reads} reads, ${((used.user + used.system) / reads).toFixed(1)} µs CPU per read`);
    process.exit(0);
  };
  if (mode === "net.Socket") {
    const s = net.connect({ fd } as unknown as net.NetConnectOpts);
    s.on("data", () => reads++);
    s.on("close", done);
  } else {
    const connect = (globalThis as unknown as { Bun: { connect(o: object): Promise<unknown> } }).Bun.connect;
    await connect({ fd, socket: { data: () => reads++, close: done, end: done } });
  }
} else {
  const writer = `
import os, socket, subprocess, sys, time
a, b = socket.socketpair()
p = subprocess.Popen([sys.argv[1], sys.argv[2], "--read", sys.argv[3], str(b.fileno())], pass_fds=[b.fileno()])
b.close()
time.sleep(1)
for _ in range(int(sys.argv[4])):
    a.send(b"x" * 64)
    time.sleep(0.004)
a.close()
p.wait()
`;
  for (const mode of ["net.Socket", "Bun.connect", "net.Socket", "Bun.connect"]) {
    spawnSync("/usr/bin/python3", ["-c", writer, process.execPath, import.meta.path, mode, String(READS)], { stdio: "inherit", env: { ...process.env, BUN_GC_TIMER_DISABLE: "1" } });
  }
  spawnSync(process.execPath, [import.meta.path, "--timer", String(READS)], { stdio: "inherit", env: { ...process.env, BUN_GC_TIMER_DISABLE: "1" } });
}
