// The bare ceiling of the single-stream case (issue 16, the QEMU case): how fast can a
// JavaScript loop carry forwarded bytes over ONE unix stream between two processes,
// grpc-js Tunnel streams (HTTP/2, porthole's tuned windows and codec) against a lean framing
// of our own ({stream id, kind, length} frames with per-stream credits). No sockets at the
// ends: the sender makes 64 KiB chunks, the receiver counts them; each side is its own Bun
// process (like the two agents). Prints Gbit/s and each process's CPU.
//   bun bench/single-stream-ceiling.ts [--seconds S] [--streams N] [--runs N]
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { createGuestServiceClient, guestServiceDefinition, type TunnelMessage } from "../src/proto/guest-service.ts";
import { CLIENT_OPTIONS, createTunedServer } from "../src/transport/grpc-tuning.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1]! : fallback);
const SECONDS = Number(flag("seconds", "4"));
const STREAMS = Number(flag("streams", "1"));
const RUNS = Number(flag("runs", "3"));
const CHUNK = 64 * 1024;
const WINDOW = 4 << 20; // per-stream credit of the lean framing

// ---- the lean framing, as small as it gets: 9-byte header {id u32, kind u8, length u32} ----
const DATA = 0;
const CREDIT = 4;
function header(id: number, kind: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(9);
  h.writeUInt32BE(id, 0);
  h[4] = kind;
  h.writeUInt32BE(length, 5);
  return h;
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

async function receiver(kind: string, path: string): Promise<void> {
  let bytes = 0;
  const report = () => process.stdout.write(`${bytes}\n`);
  process.stdin.on("data", report); // the parent asks for the count
  if (kind === "grpc") {
    const server = createTunedServer();
    server.addService(guestServiceDefinition, {
      Tunnel(call: grpc.ServerDuplexStream<TunnelMessage, TunnelMessage>) {
        call.on("data", (m: TunnelMessage) => (bytes += m.data?.length ?? 0));
        call.on("end", () => call.end());
      },
    } as grpc.UntypedServiceImplementation);
    await new Promise<void>((r, j) => server.bindAsync(`unix://${path}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? j(e) : r())));
  } else {
    const server = net.createServer((s) => {
      let pending: Buffer = Buffer.alloc(0);
      let remaining = 0;
      let id = 0;
      const owed = new Map<number, number>();
      s.on("data", (chunk: Buffer) => {
        let buf = pending.length ? Buffer.concat([pending, chunk]) : chunk;
        let at = 0;
        while (at < buf.length) {
          if (remaining > 0) {
            const n = Math.min(remaining, buf.length - at);
            bytes += n;
            remaining -= n;
            at += n;
            const o = (owed.get(id) ?? 0) + n;
            // Credit back once half a window was consumed (as the real mux would after a write drained).
            if (o >= WINDOW / 2) (owed.set(id, 0), s.write(header(id, CREDIT, o)));
            else owed.set(id, o);
            continue;
          }
          if (buf.length - at < 9) break;
          id = buf.readUInt32BE(at);
          remaining = buf.readUInt32BE(at + 5);
          at += 9;
        }
        pending = at < buf.length ? Buffer.from(buf.subarray(at)) : Buffer.alloc(0);
        buf = Buffer.alloc(0);
      });
    });
    await new Promise<void>((r) => server.listen(path, r));
  }
  process.stdout.write("ready\n");
}

async function sender(kind: string, path: string): Promise<void> {
  const payload = Buffer.alloc(CHUNK, 7);
  const until = Date.now() + SECONDS * 1000;
  if (kind === "grpc") {
    const client = createGuestServiceClient(`unix://${path}`, CLIENT_OPTIONS);
    await Promise.all(
      Array.from({ length: STREAMS }, () => new Promise<void>((resolve) => {
        const call = client.Tunnel();
        call.on("data", () => {});
        call.on("error", () => resolve());
        call.on("end", () => resolve());
        call.write({ id: "x", protocol: "tcp", guest_addr: "127.0.0.1:1" });
        const pump = () => {
          while (Date.now() < until) if (!call.write({ id: "x", data: payload })) return void call.once("drain", pump);
          call.end();
        };
        pump();
      })),
    );
    client.close();
  } else {
    const s = net.connect(path);
    await new Promise((r) => s.once("connect", r));
    const credit = new Map<number, number>();
    const waiting = new Map<number, () => void>();
    let parked: Buffer = Buffer.alloc(0);
    s.on("data", (chunk: Buffer) => {
      const buf = parked.length ? Buffer.concat([parked, chunk]) : chunk;
      let at = 0;
      for (; buf.length - at >= 9; at += 9) {
        const id = buf.readUInt32BE(at);
        credit.set(id, (credit.get(id) ?? 0) + buf.readUInt32BE(at + 5));
        const w = waiting.get(id);
        if (w) (waiting.delete(id), w());
      }
      parked = Buffer.from(buf.subarray(at));
    });
    let blocked: (() => void)[] = [];
    s.on("drain", () => {
      const b = blocked;
      blocked = [];
      for (const f of b) f();
    });
    await Promise.all(
      Array.from({ length: STREAMS }, (_, i) => new Promise<void>((resolve) => {
        const id = i + 1;
        credit.set(id, WINDOW);
        const pump = () => {
          while (Date.now() < until) {
            if (credit.get(id)! < CHUNK) return void waiting.set(id, pump);
            credit.set(id, credit.get(id)! - CHUNK);
            s.cork();
            s.write(header(id, DATA, CHUNK));
            const ok = s.write(payload);
            s.uncork();
            if (!ok) return void blocked.push(pump);
          }
          resolve();
        };
        pump();
      })),
    );
    await new Promise<void>((r) => s.write(Buffer.alloc(0), () => r()));
    s.end();
  }
  process.exit(0);
}

async function once(kind: string): Promise<{ gbps: number; sendCpu: number; recvCpu: number }> {
  const dir = mkdtempSync(join(tmpdir(), "ph-ceiling-"));
  const path = join(dir, "s.sock");
  try {
    const recv = spawn(process.execPath, [import.meta.path, "--role", "recv", "--kind", kind, "--path", path], { stdio: ["pipe", "pipe", "inherit"] });
    let out = "";
    recv.stdout!.on("data", (c) => (out += c));
    while (!out.includes("ready")) await Bun.sleep(20);
    const recvStart = cpuTicks(recv.pid!);
    const started = performance.now();
    const send = spawn(process.execPath, [import.meta.path, "--role", "send", "--kind", kind, "--path", path, "--seconds", String(SECONDS), "--streams", String(STREAMS)], { stdio: "inherit" });
    let sendCpu = 0;
    const sample = setInterval(() => {
      try {
        sendCpu = cpuTicks(send.pid!);
      } catch {}
    }, 100);
    await new Promise((r) => send.once("exit", r));
    clearInterval(sample);
    await Bun.sleep(200); // the last bytes in flight
    out = "";
    recv.stdin!.write("?\n");
    while (!out.includes("\n")) await Bun.sleep(10);
    const seconds = (performance.now() - started) / 1000;
    const bytes = Number(out.trim());
    const recvCpu = cpuTicks(recv.pid!) - recvStart;
    recv.kill();
    return { gbps: (bytes * 8) / seconds / 1e9, sendCpu: sendCpu / seconds, recvCpu: recvCpu / seconds };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const role = flag("role", "");
if (role === "recv") await receiver(flag("kind", ""), flag("path", ""));
else if (role === "send") await sender(flag("kind", ""), flag("path", ""));
else {
  for (const kind of ["grpc", "lean"]) {
    for (let i = 0; i < RUNS; i++) {
      const r = await once(kind);
      console.log(`${kind} streams=${STREAMS} ${r.gbps.toFixed(2)} Gbit/s; CPU sender ${r.sendCpu.toFixed(0)}%, receiver ${r.recvCpu.toFixed(0)}% of a core`);
    }
  }
}
