// Config files end to end: start-up errors, reload (SIGHUP and --watch-config), static
// forwards, IPv6 localhost, and privileged host ports.
import { describe, expect } from "bun:test";
import { chownSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  e2eTest, exchange, freePort, Guest, refusedSoon, runPorthole, startHostAgent, startPair, useHarness,
} from "./harness.ts";

useHarness();

const rule = (guestPort: number, hostPort: number) => `- {guestPort: ${guestPort}, hostPort: ${hostPort}}\n`;

describe("config file", () => {
  e2eTest("a bad config stops the agent at start-up with file:line:col and the field", async () => {
    const guest = Guest.create();
    const file = guest.writeFile("bad.yaml", "portForwards:\n- guestPort: 8080\n  hostPortt: 80\n");
    const r = runPorthole(["host", "--guest", `unix://${guest.socket}`, "--config", file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`porthole: invalid config:\n  ${file}:3:3: portForwards[0].hostPortt: unknown field\n`);
  });

  e2eTest("a Lima instance file works unmodified", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    const lima = readFileSync(join(import.meta.dir, "../fixtures/config/lima.yaml"), "utf8")
      .replaceAll("GUEST_PORT", String(guestPort))
      .replaceAll("HOST_PORT", String(hostPort));
    const host = startHostAgent(guest, ["--config", guest.writeFile("lima.yaml", lima)]);
    await guest.startEcho("127.0.0.1", guestPort);
    await host.waitForForwarding(hostPort);
    expect(host.events.find((e) => e.type === "forwarding")?.rule).toBe(0);
    expect((await exchange(hostPort, Buffer.from("lima"))).toString()).toBe("lima");
  });

  e2eTest("SIGHUP re-applies a changed config; a changed ssh section is said to need a restart; a bad one is rejected and the old rules stay", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [kept, moved, oldHost, newHost, keptHost] = await Promise.all([1, 2, 3, 4, 5].map(() => freePort()));
    const file = guest.writeFile("porthole.yaml", `portForwards:\n${rule(kept, keptHost)}${rule(moved, oldHost)}`);
    const host = startHostAgent(guest, ["--config", file]);
    await guest.startServer("echo", [["127.0.0.1", kept], ["127.0.0.1", moved]]);
    await host.waitForForwarding(keptHost);
    await host.waitForForwarding(oldHost);

    guest.writeFile("porthole.yaml", `portForwards:\n${rule(kept, keptHost)}${rule(moved, newHost)}`);
    host.proc.child.kill("SIGHUP");
    await host.waitForForwarding(newHost);
    await host.waitForEvent((e) => e.type === "stopping" && e.hostAddr === `127.0.0.1:${oldHost}`, "old forward stops");
    expect(await refusedSoon(oldHost)).toBe("ECONNREFUSED");
    // The unchanged forward was left alone: still one "forwarding" and no "stopping".
    expect(host.events.filter((e) => e.hostAddr === `127.0.0.1:${keptHost}`).map((e) => e.type)).toEqual(["forwarding"]);

    // A changed ssh section cannot change the connection in use: said, not silently ignored.
    guest.writeFile("porthole.yaml", `ssh: {user: someone}\nportForwards:\n${rule(kept, keptHost)}${rule(moved, newHost)}`);
    host.proc.child.kill("SIGHUP");
    const said = await host.waitForEvent((e) => e.type === "warning" && String(e.message).includes("changed ssh settings"), "the ssh change to be said");
    expect(said.message).toContain("take effect when the host agent restarts");

    const badLine = `- {guestPort: ${moved}, hostPort: 99999}`;
    guest.writeFile("porthole.yaml", `portForwards:\n${badLine}\n`);
    host.proc.child.kill("SIGHUP");
    const rejected = await host.waitForEvent((e) => e.type === "config-rejected", "the bad config to be rejected");
    const column = badLine.indexOf("99999") + 1;
    expect(rejected.error).toBe(`${file}:2:${column}: portForwards[0].hostPort: 99999 is not a port (1-65535)`);
    expect((await exchange(newHost, Buffer.from("still"))).toString()).toBe("still");
    expect((await exchange(keptHost, Buffer.from("kept"))).toString()).toBe("kept");
  });

  e2eTest("--watch-config applies a saved file without a signal", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [guestPort, first, second] = [await freePort(), await freePort(), await freePort()];
    const file = guest.writeFile("watched.yaml", `portForwards:\n${rule(guestPort, first)}`);
    const host = startHostAgent(guest, ["--config", file, "--watch-config"]);
    await guest.startEcho("127.0.0.1", guestPort);
    await host.waitForForwarding(first);
    guest.writeFile("watched.yaml", `portForwards:\n${rule(guestPort, second)}`);
    await host.waitForForwarding(second);
    expect((await exchange(second, Buffer.from("watched"))).toString()).toBe("watched");
  });
});

describe("static forwards", () => {
  e2eTest("listen from start-up, before the guest does; connect once the guest server is up", async () => {
    const guest = Guest.create();
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    const file = guest.writeFile("static.yaml", `portForwards:\n- {guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n`);
    // No guest agent yet: the static forward must not wait for one.
    const host = startHostAgent(guest, ["--config", file]);
    const event = await host.waitForForwarding(hostPort);
    expect(event.guestAddr).toBe(`127.0.0.1:${guestPort}`);

    await guest.startAgent();
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    // Nothing listens in the guest: the client's connection is reset at once, not left hanging.
    await expect(exchange(hostPort, Buffer.from("anyone?"), "127.0.0.1", 5000)).rejects.toThrow("ECONNRESET");

    await guest.startEcho("127.0.0.1", guestPort);
    expect((await exchange(hostPort, Buffer.from("static"))).toString()).toBe("static");
    // The guest's own listener was covered by the static rule, not forwarded a second time.
    expect(host.events.filter((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${guestPort}`)).toEqual([]);
  });
});

describe("IPv6 on the host", () => {
  e2eTest("localhost reaches a guest server over both IPv4 and IPv6", async () => {
    const { guest, host } = await startPair();
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `[::1]:${port}`, "the ::1 listener");
    expect((await exchange(port, Buffer.from("v4"), "127.0.0.1")).toString()).toBe("v4");
    expect((await exchange(port, Buffer.from("v6"), "::1")).toString()).toBe("v6");
    expect((await exchange(port, Buffer.from("name"), "localhost")).toString()).toBe("name");
  });

  e2eTest("--no-ipv6-loopback listens on 127.0.0.1 only", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest, ["--no-ipv6-loopback"]);
    const port = await freePort();
    await guest.startEcho("::1", port);
    await host.waitForForwarding(port);
    expect(await refusedSoon(port, "::1")).toBe("ECONNREFUSED");
  });
});

describe("privileged host ports", () => {
  e2eTest("an unprivileged host agent reports permission denied with a hint", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    chownSync(guest.socket, 65534, 65534); // let "nobody" reach the guest agent
    chownSync(guest.dir, 65534, 65534);
    const host = startHostAgent(guest, ["--state-dir", join(guest.dir, "state")], {
      wrapper: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    });
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    await guest.startEcho("127.0.0.1", 80);
    const failed = await host.waitForEvent((e) => e.type === "failed" && e.hostAddr === "127.0.0.1:80", "failed");
    expect(failed.error).toStartWith("permission denied (host ports below 1024 need root or CAP_NET_BIND_SERVICE");
    expect(failed.retryInMs).toBeGreaterThan(0);
  });
});
