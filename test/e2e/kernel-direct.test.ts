// --kernel-direct: once the relay has connected a client of a direct forward to the guest, this
// host's next clients of that forward connect to the guest's address themselves (connect()
// rewritten by a cgroup BPF program). What proves it is the kernel's own view, not ours: the
// client socket's peer (getpeername) is the guest's address, and the host agent holds no socket
// of the connection; `porthole status` counts it and its bytes on the path "direct-kernel".
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as net from "node:net";
import { join } from "node:path";
import { e2eTest, exchange, freePort, Guest, pathsOf, runPorthole, startHostAgent, statusJSON, tryConnect, useHarness, type HostAgentProc, type PathCount } from "./harness.ts";

useHarness();

/** A static forward of 127.0.0.1:hostPort to the guest's IP:guestPort, a host agent with --kernel-direct, the proof done. */
async function kernelDirectGuest() {
  const guest = Guest.create();
  const { guestIP, hostIP } = guest.linkToHost();
  await guest.startAgent();
  const [guestPort, hostPort] = [await freePort(), await freePort()];
  const config = guest.writeFile("kd.yaml", `portForwards:\n- {guestIP: ${guestIP}, guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n`);
  const host = startHostAgent(guest, ["--config", config, "--kernel-direct"]);
  await host.waitForEvent((e) => e.type === "relay-selected" && String(e.message).startsWith("--kernel-direct"), "the programs loaded");
  await host.waitForEvent((e) => e.type === "path-changed" && e.path === "direct" && e.state === "usable", "the direct path proved");
  await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, "the forward");
  const control = join(guest.dir, "state", "control.sock");
  // A static forward listens before its path is chosen: the first client must find it direct (it is the relay's proof).
  await onDirectPath(host, control, hostPort);
  return { guest, guestIP, hostIP, guestPort, hostPort, host, control };
}

/** Until the forward of 127.0.0.1:port has chosen the direct path. */
function onDirectPath(host: HostAgentProc, control: string, port: number): Promise<unknown> {
  return host.proc.waitFor(() => statusJSON(control).forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`)?.path === "direct" || undefined, `127.0.0.1:${port} on the direct path`);
}

/** Connects to 127.0.0.1:port; resolves with the socket once connected (its remoteAddress is what the kernel says). */
function connected(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

/** Polls an asynchronous check every 100 ms until it holds. */
async function eventually(check: () => Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(100);
  }
}

function kernelPath(control: string, port: number): PathCount | undefined {
  return statusJSON(control).forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`)?.paths?.["direct-kernel"];
}

describe("--kernel-direct", () => {
  e2eTest("after one relayed connection, the host's clients are the guest's peers themselves: keepalive on, half-close, bytes counted each way at close", async () => {
    const k = await kernelDirectGuest();
    await k.guest.startServer("digest", [["0.0.0.0", k.guestPort]]);
    const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    // The first client goes through the relay (it proves the guest takes connections on that port by IP).
    expect((await exchange(k.hostPort, Buffer.from("first"))).toString()).toBe(sha(Buffer.from("first")));
    expect(pathsOf(k.control, k.hostPort)).toEqual({ direct: 1 });
    await k.host.waitForEvent((e) => e.type === "path-changed" && e.path === "direct-kernel" && e.state === "usable", "the rewrite");
    const client = await connected(k.hostPort);
    // The kernel's own answer: this socket's peer is the guest, not a listener of the agent's.
    expect(client.remoteAddress).toBe(k.guestIP);
    expect(client.remotePort).toBe(k.guestPort);
    const listed = spawnSync("ss", ["-Htnpo", "state", "established", `( sport = :${k.hostPort} or dport = :${k.guestPort} )`], { encoding: "utf8" });
    expect(listed.status).toBe(0);
    const lines = listed.stdout.trim().split("\n");
    expect(lines.filter((l) => l.includes(`127.0.0.1:${k.hostPort}`))).toEqual([]); // no socket of the agent's listener
    const mine = lines.filter((l) => l.includes(`:${client.localPort} `) && l.includes(`${k.guestIP}:${k.guestPort}`));
    expect(mine).toHaveLength(1);
    expect(mine[0]).toContain("timer:(keepalive"); // set by the sock_ops program, as the relay sets it
    // Half-close: the client ends its side after 200,000 bytes; the guest answers their digest, then ends.
    const payload = randomBytes(200_000);
    const got: Buffer[] = [];
    client.on("data", (d: Buffer) => got.push(d));
    const ended = new Promise<void>((r) => client.once("end", () => r()));
    client.end(payload);
    await ended;
    expect(Buffer.concat(got).toString()).toBe(sha(payload));
    client.destroy();
    await k.host.proc.waitFor(() => (kernelPath(k.control, k.hostPort)?.open === 0 && kernelPath(k.control, k.hostPort)?.connections === 1) || undefined, "the connection counted closed");
    expect(kernelPath(k.control, k.hostPort)).toMatchObject({ connections: 1, open: 0, bytesIn: 200_000, bytesOut: 64, failed: 0 });
    // The relay carried only the first client.
    expect(pathsOf(k.control, k.hostPort)).toEqual({ direct: 1, "direct-kernel": 1 });
    // Another network namespace's 127.0.0.1 is its own: nothing there is rewritten.
    const fromGuest = spawnSync("ip", ["netns", "exec", k.guest.ns, "socat", "-u", "OPEN:/dev/null", `TCP:127.0.0.1:${k.hostPort}`], { encoding: "utf8" });
    expect(fromGuest.status).not.toBe(0);
    expect(fromGuest.stderr).toContain("Connection refused");
    // A client bound to a loopback source could not reach the guest: it is left to the listener (the relay).
    const bound = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: "127.0.0.1", port: k.hostPort, localAddress: "127.0.0.1" });
      s.once("connect", () => resolve(s));
      s.once("error", reject);
    });
    expect(bound.remoteAddress).toBe("127.0.0.1");
    bound.destroy();
  });

  e2eTest("a rewritten connection that cannot connect takes the rewrite away, is said, and the relay carries the next clients until one connects again", async () => {
    const k = await kernelDirectGuest();
    const echo = await k.guest.startEcho("0.0.0.0", k.guestPort);
    expect((await exchange(k.hostPort, Buffer.from("first"))).toString()).toBe("first");
    await k.host.waitForEvent((e) => e.type === "path-changed" && e.path === "direct-kernel" && e.state === "usable", "the rewrite");
    await echo.kill(); // the static forward stays; the guest port now refuses
    expect(await tryConnect(k.hostPort)).toBe("ECONNREFUSED"); // that client saw the guest's answer itself
    expect(kernelPath(k.control, k.hostPort)).toMatchObject({ connections: 1, failed: 1, open: 0 });
    // The next client reaches the agent's listener; the relay's dial is refused too, which resets it.
    expect(await tryConnect(k.hostPort)).toBe("connected");
    const said = await k.host.waitForEvent((e) => e.type === "path-changed" && e.path === "direct-kernel" && e.state === "unusable", "the lost rewrite said");
    expect(String(said.reason)).toContain("did not connect");
    // Back: the relay connects a client again, and the one after is rewritten again.
    await k.guest.startEcho("0.0.0.0", k.guestPort);
    await eventually(async () => (await exchange(k.hostPort, Buffer.from("again")).catch(() => Buffer.alloc(0))).toString() === "again" && (pathsOf(k.control, k.hostPort).direct ?? 0) >= 2, "a relayed connection again", 30_000);
    await k.host.waitForNthEvent(2, (e) => e.type === "path-changed" && e.path === "direct-kernel" && e.state === "usable", "rewritten again");
    const client = await connected(k.hostPort);
    expect(client.remoteAddress).toBe(k.guestIP);
    client.destroy();
  });

  e2eTest("a forward removed and added again on its port: a connection of the old rewrite, still open, is not counted in the new rewrite's counters when it closes", async () => {
    const k = await kernelDirectGuest();
    await k.guest.startEcho("0.0.0.0", k.guestPort);
    const port = await freePort();
    const forward = (verb: string) => {
      const r = runPorthole(["forward", verb, `${k.guestIP}:${k.guestPort}`, `127.0.0.1:${port}`, "--control", k.control]);
      expect(r.code).toBe(0);
    };
    const rewritten = (n: number) =>
      k.host.waitForNthEvent(n, (e) => e.type === "path-changed" && e.path === "direct-kernel" && e.state === "usable" && String(e.reason).includes(`127.0.0.1:${port} `), `rewrite ${n} of 127.0.0.1:${port}`);
    forward("add");
    await onDirectPath(k.host, k.control, port);
    expect((await exchange(port, Buffer.from("first"))).toString()).toBe("first"); // the relay's proof
    await rewritten(1);
    const old = await connected(port);
    expect(old.remoteAddress).toBe(k.guestIP);
    forward("remove"); // the old forward's counters are forgotten; its rewritten connection lives on
    forward("add");
    await onDirectPath(k.host, k.control, port);
    expect((await exchange(port, Buffer.from("second"))).toString()).toBe("second");
    await rewritten(2);
    // The old connection moves 1,000 bytes each way and closes first, then one of the new forward's 10 bytes.
    const oldDone = new Promise<void>((r) => old.once("close", () => r()));
    old.resume();
    old.end(Buffer.alloc(1000, 7));
    await oldDone;
    expect((await exchange(port, Buffer.alloc(10, 1))).length).toBe(10);
    // The forward's history keeps the old listener's one connection (counted when it connected,
    // as a relay's is); its bytes went with the forgotten counters. The new counters have only
    // the new connection: the old one's close found another generation there and left it alone
    // (before, it was counted closed there with its 1,000 bytes).
    await k.host.proc.waitFor(() => (kernelPath(k.control, port)?.connections === 2 && kernelPath(k.control, port)?.bytesIn === 10) || undefined, "the new connection counted closed").catch((e) => {
      throw new Error(`${e}: ${JSON.stringify(kernelPath(k.control, port))}`);
    });
    expect(kernelPath(k.control, port)).toMatchObject({ connections: 2, open: 0, failed: 0, bytesIn: 10, bytesOut: 10 });
    // And its rewrite is still there: the next client is rewritten too.
    const next = await connected(port);
    expect(next.remoteAddress).toBe(k.guestIP);
    next.destroy();
  });

  e2eTest("a guest gone silent: a rewritten client gives up after its two SYN retries (seconds, not minutes), and the rewrite is taken away", async () => {
    const k = await kernelDirectGuest();
    await k.guest.startEcho("0.0.0.0", k.guestPort);
    expect((await exchange(k.hostPort, Buffer.from("first"))).toString()).toBe("first");
    await k.host.waitForEvent((e) => e.type === "path-changed" && e.path === "direct-kernel" && e.state === "usable", "the rewrite");
    // From now on the guest's answers to the host vanish, as behind a dead link.
    expect(spawnSync("ip", ["netns", "exec", k.guest.ns, "ip", "route", "add", "blackhole", `${k.hostIP}/32`]).status).toBe(0);
    const started = Date.now();
    // (Which code the runtime gives a timed-out connect varies; that it failed, and when, is what counts.)
    expect(await tryConnect(k.hostPort)).not.toBe("connected");
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThan(5_000); // SYN, then retries after 1 s and 3 s, then 4 s more
    expect(waited).toBeLessThan(15_000); // the system's default (6 retries) waits about 127 s
    expect(kernelPath(k.control, k.hostPort)).toMatchObject({ failed: 1, open: 0 });
  }, 60_000);

  e2eTest("the rewrite goes with the agent: killed, its programs are detached and a client is refused, never sent to the guest", async () => {
    const k = await kernelDirectGuest();
    await k.guest.startEcho("0.0.0.0", k.guestPort);
    expect((await exchange(k.hostPort, Buffer.from("first"))).toString()).toBe("first");
    await k.host.waitForEvent((e) => e.type === "path-changed" && e.path === "direct-kernel" && e.state === "usable", "the rewrite");
    const before = await connected(k.hostPort);
    expect(before.remoteAddress).toBe(k.guestIP);
    before.destroy();
    k.host.proc.child.kill("SIGKILL");
    await k.host.proc.waitFor(() => (k.host.proc.child.exitCode !== null || k.host.proc.child.signalCode !== null) || undefined, "the agent gone");
    // The kernel closed its fds as it reaped it: the links, and with them the programs, are gone.
    expect(await tryConnect(k.hostPort)).toBe("ECONNREFUSED");
  });
});
