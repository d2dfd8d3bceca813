// The direct path (host to guest by IP) carries a client's bytes only to the guest: an
// address is used after the guest agent proved, with the session secret, that it answers
// there; where it does not (another machine with the guest's address, a socket that does
// not accept on that address family, a blackholed route), the tunnels carry the bytes and
// an event says why. Which path the bytes took is read from `porthole status --json`.
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import * as net from "node:net";
import { closeWaitOf, e2eTest, exchange, freePort, Guest, pathsOf, startHostAgent, useHarness } from "./harness.ts";

useHarness();

/** A guest linked to the host (IPv4) whose agent the host proved reachable by IP. */
async function provedGuest() {
  const guest = Guest.create();
  const { hostIP } = guest.linkToHost();
  await guest.startAgent();
  const host = startHostAgent(guest);
  await host.waitForEvent((e) => e.type === "path-changed" && e.state === "usable", "the direct path proved");
  return { guest, hostIP, host };
}

/** provedGuest with an echo server on 0.0.0.0, forwarded by the direct path. */
async function directEcho() {
  const proved = await provedGuest();
  const port = await freePort();
  await proved.guest.startEcho("0.0.0.0", port);
  expect((await proved.host.waitForForwarding(port)).path).toBe("direct");
  return { ...proved, port };
}

describe("the direct path", () => {
  e2eTest("an impostor with the guest's address on a host network never gets the client's bytes; the guest does, through the data path", async () => {
    // The case: the guest's only address is 10.215.N.7/24 (on a link of its own);
    // the host has 10.215.N.1/24 on a veth to ANOTHER namespace that also has 10.215.N.7
    // and a server on the same port.
    const net = `10.215.${process.pid % 250}`;
    const guest = Guest.create();
    guest.addVethAddress(`${net}.7/24`);
    const impostor = Guest.create();
    impostor.linkToHostAs(`${net}.1/24`, `${net}.7/24`);
    const port = await freePort();
    const real = await guest.startFixture(["tell", "guest", "0.0.0.0", String(port)]);
    const fake = await impostor.startFixture(["tell", "impostor", "0.0.0.0", String(port)]);
    // The impostor even answers on every port the guest agent might use for its proof.
    await guest.startAgent();
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    await host.waitForForwarding(port);
    // Before, during and after the proof: the bytes reach the guest, never the impostor.
    expect((await exchange(port, Buffer.from("my password"))).toString()).toBe("guest");
    const refused = await host.waitForEvent((e) => e.type === "path-changed" && e.address === `${net}.7`, "the proof's verdict");
    expect(refused).toMatchObject({ path: "direct", state: "unusable" });
    expect((await exchange(port, Buffer.from("my password"))).toString()).toBe("guest");
    expect(await real.waitFor(() => real.stdout.filter((l) => l.startsWith("got 11 ")).length === 2 || undefined, "both connections at the guest")).toBe(true);
    expect(fake.stdout.filter((l) => l.startsWith("got"))).toEqual([]);
    expect(pathsOf(join(guest.dir, "state", "control.sock"), port)).toEqual({ fast: 2 });
  });

  e2eTest("a guest reachable by IP: a wildcard listener's bytes go direct (counted), a loopback-only one's through the data path", async () => {
    const { guest, host } = await provedGuest();
    const [wild, local] = [await freePort(), await freePort()];
    await guest.startServer("echo", [["0.0.0.0", wild], ["127.0.0.1", local]]);
    expect((await host.waitForForwarding(wild)).path).toBe("direct");
    expect((await host.waitForForwarding(local)).path).toBe("fast");
    for (let i = 0; i < 3; i++) expect((await exchange(wild, Buffer.from("by IP"))).toString()).toBe("by IP");
    expect((await exchange(local, Buffer.from("tunnelled"))).toString()).toBe("tunnelled");
    const control = join(guest.dir, "state", "control.sock");
    expect(pathsOf(control, wild)).toEqual({ direct: 3 });
    expect(pathsOf(control, local)).toEqual({ fast: 1 });
  });

  e2eTest("a guest socket on [::] that is IPv6-only: the connection is carried by the data path, and the forward stops showing direct", async () => {
    const { guest, host } = await provedGuest(); // IPv4 only: the direct path would dial the guest's IPv4 address
    const port = await freePort();
    await guest.startEcho("::", port); // the fixture binds "::" with IPV6_V6ONLY
    await host.waitForForwarding(port);
    for (let i = 0; i < 3; i++) expect((await exchange(port, Buffer.from("v6 only"))).toString()).toBe("v6 only");
    const control = join(guest.dir, "state", "control.sock");
    expect(pathsOf(control, port)).toEqual({ fast: 3 });
    const event = await host.waitForEvent((e) => e.type === "path-changed" && e.address === `[::]:${port}`, "the fallback event");
    expect(event).toMatchObject({ path: "direct", state: "unusable" });
    expect(String(event.reason)).toContain("ECONNREFUSED");
    const status = JSON.parse(spawnSync(process.env.PORTHOLE_BIN ?? "", ["status", "--control", control, "--json"], { encoding: "utf8" }).stdout || "{}");
    expect(status.forwards?.find((f: { hostAddr: string }) => f.hostAddr === `127.0.0.1:${port}`)?.path).toBe("fast");
  });

  e2eTest("a blackholed direct path falls back once, is remembered, and later connections go straight to the data path", async () => {
    const { guest, hostIP, host, port } = await directEcho();
    // From now on the guest's answers to the host vanish without a word (the proof's too):
    // a connection attempt hears nothing and times out, as behind a dead link or firewall.
    expect(spawnSync("ip", ["netns", "exec", guest.ns, "ip", "route", "add", "blackhole", `${hostIP}/32`]).status).toBe(0);
    for (let i = 0; i < 5; i++) expect((await exchange(port, Buffer.from(`try ${i}`))).toString()).toBe(`try ${i}`);
    const control = join(guest.dir, "state", "control.sock");
    expect(pathsOf(control, port)).toEqual({ fast: 5 });
    const event = await host.waitForEvent((e) => e.type === "path-changed" && e.state === "unusable", "the fallback event");
    expect(event.path).toBe("direct");
    // One failed attempt, not one per connection.
    const fwd = JSON.parse(spawnSync(process.env.PORTHOLE_BIN ?? "", ["status", "--control", control, "--json"], { encoding: "utf8" }).stdout);
    expect(fwd.paths.direct.fallbacks).toBe(1);
  });

  e2eTest("a direct connection whose guest network goes silent is reset within two proof rounds, leaving nothing in CLOSE-WAIT", async () => {
    const { guest, hostIP, host, port } = await directEcho();
    const client = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    const ended = new Promise<string>((resolve) => {
      client.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      client.once("end", () => resolve("eof"));
    });
    client.write("before");
    await new Promise<void>((r) => client.once("data", () => r()));
    expect(pathsOf(join(guest.dir, "state", "control.sock"), port)).toEqual({ direct: 1 });
    // The guest's network goes silent; the client gives up (its FIN never reaches the guest).
    expect(spawnSync("ip", ["netns", "exec", guest.ns, "ip", "route", "add", "blackhole", `${hostIP}/32`]).status).toBe(0);
    client.end();
    // Without the proof rounds' verdict TCP would retransmit for ~15 minutes meanwhile.
    expect(await ended).toBe("ECONNRESET");
    await host.waitForEvent((e) => e.type === "path-changed" && String(e.reason).includes("stopped answering"), "the reset's event");
    await host.proc.waitFor(() => closeWaitOf(host.proc.child.pid!) === 0 || undefined, "no CLOSE-WAIT left in the host agent");
  }, 90_000);
});
