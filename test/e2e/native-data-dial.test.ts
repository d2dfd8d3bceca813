// The data path with no JavaScript per connection: the shim's dial (native/relay.c) connects
// to the guest's data endpoint and sends the header, and the host agent's relay thread reads the
// status byte; on the guest, the shim connects to the target and sends the status byte. strace
// (not our code) records the system calls of each agent: the status byte is read one byte
// alone by the relay thread (JavaScript would read a whole buffer), and each dial, header and
// status byte happens once per connection. The relay's own counters (`porthole status --json`)
// show that the bytes went through it.
import { describe, expect } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { defer, e2eTest, exchange, fdCount, freePort, Guest, relayThreads, runPorthole, startHostAgent, traceCalls, useHarness } from "./harness.ts";
import { waitUntil } from "../wait.ts";

useHarness();

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

function status(guest: Guest): { relay: { nativeRelays: number; javascriptRelays: number; bytesSpliced: number; open: number }; forwards: { hostAddr: string; path: string; bytesIn: number; bytesOut: number }[] } {
  const r = runPorthole(["status", "--json", "--control", join(guest.dir, "state", "control.sock")]);
  if (r.code !== 0) throw new Error(`porthole status: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe("the data path dialled by the relay threads", () => {
  e2eTest("header, status byte and both dials are made by the shim of each agent (strace), and the relay counts every byte", async () => {
    const guest = Guest.create();
    const guestAgent = await guest.startAgent();
    const host = startHostAgent(guest, ["--forwarder", "fast"]);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    const [hostPid, guestPid] = [host.proc.child.pid!, guestAgent.child.pid!];
    await exchange(port, Buffer.from("warm up")); // starts both relay threads
    const stopHost = await traceCalls(hostPid, join(guest.dir, "host.strace"));
    const stopGuest = await traceCalls(guestPid, join(guest.dir, "guest.strace"));

    const payload = randomBytes(1 << 20);
    expect(sha256(await exchange(port, payload))).toBe(sha256(payload));
    const [hostCalls, guestCalls] = [await stopHost(), await stopGuest()];
    const [hostRelay, guestRelay] = [relayThreads(hostPid), relayThreads(guestPid)];
    expect(hostRelay.length).toBe(1);
    expect(guestRelay.length).toBe(1);
    const by = (calls: string[], pattern: RegExp) => calls.filter((l) => pattern.test(l)).map((l) => l.split(" ")[0]);
    // Host: one connect to the guest's data endpoint, one header, and its status byte read
    // alone by the relay thread.
    expect(by(hostCalls, /connect\(\d+, \{sa_family=AF_UNIX, sun_path="[^"]*\.data"/).length).toBe(1);
    expect(by(hostCalls, /(sendto|write)\(\d+, "PHDATA2 /).length).toBe(1);
    expect(by(hostCalls, /read\(\d+, "\\0", 1\)\s+= 1/)).toEqual(hostRelay);
    // Guest: one connect to the target, one status byte sent alone.
    expect(by(guestCalls, new RegExp(`connect\\(\\d+, \\{sa_family=AF_INET, sin_port=htons\\(${port}\\)`)).length).toBe(1);
    expect(by(guestCalls, /(sendto|write)\(\d+, "\\0", 1,/).length).toBe(1);

    await host.proc.waitFor(() => status(guest).relay.open === 0 || undefined, "the relays to finish");
    const s = status(guest);
    expect(s.relay.nativeRelays).toBe(2);
    expect(s.relay.javascriptRelays).toBe(0);
    const fwd = s.forwards.find((f) => f.hostAddr === `127.0.0.1:${port}`)!;
    expect(fwd).toMatchObject({ path: "fast", bytesIn: payload.length + 7, bytesOut: payload.length + 7 });
  });

  e2eTest("a guest unix socket target (socat): dialled by the shim, bytes both ways, and no fd left after 200 connections", async () => {
    const guest = Guest.create();
    const guestAgent = await guest.startAgent();
    const sock = join(guest.dir, "echo.sock");
    const hostSock = join(guest.dir, "host-echo.sock");
    const echo = guest.spawn(["socat", `UNIX-LISTEN:${sock},fork,backlog=128`, "EXEC:cat"], "socat unix echo");
    defer(() => echo.kill("SIGKILL"));
    await waitUntil("socat to listen", () => existsSync(sock));
    const config = guest.writeFile("u.yaml", `portForwards:\n- {guestSocket: ${sock}, hostSocket: ${hostSock}}\n`);
    const host = startHostAgent(guest, ["--config", config, "--forwarder", "fast"]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === hostSock, "the socket forward");
    const exchangeUnix = (payload: Buffer) =>
      new Promise<Buffer>((resolve, reject) => {
        const chunks: Buffer[] = [];
        const c = net.connect({ path: hostSock, allowHalfOpen: true }, () => c.end(payload));
        c.on("data", (d: Buffer) => chunks.push(d));
        c.on("end", () => resolve(Buffer.concat(chunks)));
        c.on("error", reject);
      });
    await exchangeUnix(Buffer.from("warm up"));
    const [hostPid, guestPid] = [host.proc.child.pid!, guestAgent.child.pid!];
    await host.proc.waitFor(() => status(guest).relay.open === 0 || undefined, "the warm-up to finish");
    const baseline = [fdCount(hostPid), fdCount(guestPid)];
    const stopGuest = await traceCalls(guestPid, join(guest.dir, "guest.strace"));
    const payload = randomBytes(256 << 10);
    expect(sha256(await exchangeUnix(payload))).toBe(sha256(payload));
    const calls = await stopGuest();
    expect(calls.filter((l) => l.includes(`sun_path="${sock}"`)).length).toBe(1); // one dial, by the shim (no JavaScript relay below)
    for (let batch = 0; batch < 4; batch++) await Promise.all(Array.from({ length: 50 }, (_, i) => exchangeUnix(Buffer.from(`c${batch}-${i}`))));
    await host.proc.waitFor(
      () => (fdCount(hostPid) <= baseline[0]! && fdCount(guestPid) <= baseline[1]!) || undefined,
      `fd counts back to ${baseline} (now ${fdCount(hostPid)}, ${fdCount(guestPid)})`,
    );
    expect(status(guest).relay.javascriptRelays).toBe(0);
  });
});
