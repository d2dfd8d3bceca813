// Many guests on one host: `--host-ip 127.0.0.N` gives each guest's forwards its own loopback
// address, so two guests (two namespaces, two host agents) serve the same port side by side
// (checked with curl against CPython's http.server in each guest); and when two programs
// want one host port, the `failed` event names the other owner: another porthole agent
// (pid, guest, control socket) or the program (pid and command line).
import { describe, expect } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defer, e2eTest, freePort, Guest, Proc, runPorthole, startHostAgent, tcpListenersOf, tryConnect, useHarness } from "./harness.ts";

useHarness();

/** CPython's http.server in the guest, serving a directory whose index.html is `body`. */
function startWebServer(guest: Guest, port: number, body: string): Proc {
  const dir = join(guest.dir, "www");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "index.html"), body);
  return guest.spawn(["/usr/bin/python3", "-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", dir], `http.server ${body}`);
}

function curl(url: string): string {
  const r = spawnSync("curl", ["-sS", "--max-time", "10", url], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`curl ${url}: ${r.stderr}`);
  return r.stdout;
}

/** Two distinct addresses in 127.0.0.0/8 other than 127.0.0.1 (Linux routes all of it to lo). */
function twoLoopbacks(): [string, string] {
  const a = 2 + Math.floor(Math.random() * 250);
  return [`127.0.0.${a}`, `127.0.0.${a === 252 ? 2 : a + 1}`];
}

describe("many guests on one host", () => {
  e2eTest("two guests with the same port both work, each on its own --host-ip 127.0.0.N", async () => {
    const port = await freePort();
    const [ipA, ipB] = twoLoopbacks();
    const guests = await Promise.all([ipA, ipB].map(async (ip, i) => {
      const guest = Guest.create();
      await guest.startAgent();
      const host = startHostAgent(guest, ["--host-ip", ip]);
      startWebServer(guest, port, `guest ${i === 0 ? "A" : "B"}\n`);
      await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `${ip}:${port}`, `forwarding on ${ip}`);
      return { guest, host };
    }));
    expect(curl(`http://${ipA}:${port}/`)).toBe("guest A\n");
    expect(curl(`http://${ipB}:${port}/`)).toBe("guest B\n");
    // No ::1 companion for 127.0.0.N (two guests cannot share [::1]:P), and no failure anywhere.
    for (const { host } of guests) {
      expect(host.events.filter((e) => e.type === "failed")).toEqual([]);
      expect(host.events.some((e) => e.type === "forwarding" && e.hostAddr === `[::1]:${port}`)).toBe(false);
    }
    const status = JSON.parse(runPorthole(["status", "--control", join(guests[0]!.guest.dir, "state", "control.sock"), "--json"]).stdout);
    expect(status.agent.hostIP).toBe(ipA);
    expect(status.forwards).toContainEqual(expect.objectContaining({ hostAddr: `${ipA}:${port}`, state: "forwarding" }));
  });

  e2eTest("a config rule without hostIP listens on --host-ip too; one with hostIP keeps its own", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [a, b, hostA] = [await freePort(), await freePort(), await freePort()];
    const [ip] = twoLoopbacks();
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestPort: ${a}, hostPort: ${hostA}}\n- {guestPort: ${b}, hostIP: 127.0.0.1}\n`);
    const host = startHostAgent(guest, ["--host-ip", ip, "--config", config]);
    await guest.startEcho("127.0.0.1", a);
    await guest.startEcho("127.0.0.1", b);
    await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `${ip}:${hostA}`, "rule 0 on --host-ip");
    await host.waitForForwarding(b);
  });

  e2eTest("two agents wanting one host port: the failed event names the other porthole agent, and the port is taken over when it stops", async () => {
    const port = await freePort();
    const first = Guest.create();
    await first.startAgent();
    const firstHost = startHostAgent(first);
    await first.startEcho("127.0.0.1", port);
    await firstHost.waitForForwarding(port);

    const second = Guest.create();
    await second.startAgent();
    const secondHost = startHostAgent(second);
    await second.startEcho("127.0.0.1", port);
    const failed = await secondHost.waitForEvent((e) => e.type === "failed" && e.hostAddr === `127.0.0.1:${port}`, "the conflict");
    const control = join(first.dir, "state", "control.sock");
    expect(failed.error).toContain(`address already in use, held by another porthole host agent (pid ${firstHost.proc.child.pid}, guest unix://${first.socket}, control socket ${control}); give each guest its own address with porthole host --host-ip 127.0.0.N`);

    await firstHost.proc.kill("SIGTERM");
    await secondHost.waitForForwarding(port, 20_000);
    expect(await tryConnect(port)).toBe("connected");
  });

  e2eTest("a host port held by another program: the failed event names its pid and command line", async () => {
    const port = await freePort();
    const holder = new Proc(spawn("socat", [`TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`, "SYSTEM:echo held"], { stdio: ["ignore", "pipe", "pipe"] }), "socat holder");
    defer(() => holder.kill("SIGKILL"));
    await holder.waitFor(() => tcpListenersOf(holder.child.pid!).includes(`127.0.0.1:${port}`) || undefined, "socat listening");
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest);
    await guest.startEcho("127.0.0.1", port);
    const failed = await host.waitForEvent((e) => e.type === "failed" && e.hostAddr === `127.0.0.1:${port}`, "the conflict");
    expect(failed.error).toContain(`address already in use, held by pid ${holder.child.pid} (socat TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork SYSTEM:echo held)`);

    // porthole forward add onto a port socat holds says so too, at once.
    const busy = await freePort();
    const holder2 = new Proc(spawn("socat", [`TCP-LISTEN:${busy},bind=127.0.0.1,reuseaddr,fork`, "SYSTEM:echo held"], { stdio: ["ignore", "pipe", "pipe"] }), "socat holder 2");
    defer(() => holder2.kill("SIGKILL"));
    await holder2.waitFor(() => tcpListenersOf(holder2.child.pid!).includes(`127.0.0.1:${busy}`) || undefined, "socat listening");
    const added = runPorthole(["forward", "add", String(port), String(busy), "--control", join(guest.dir, "state", "control.sock")]);
    expect(added.code).toBe(0);
    expect(added.stdout).toContain(`; not listening yet: address already in use, held by pid ${holder2.child.pid} (socat`);
  });
});
