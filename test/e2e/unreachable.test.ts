// The host agent that cannot reach a guest agent says what it tried and what to check, in
// its own words (not grpc-js's "No connection established ... Resolution note:").
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { e2eTest, Guest, startHostAgent, useHarness } from "./harness.ts";

useHarness();

describe("guest agent unreachable", () => {
  e2eTest("a missing agent socket: the event names the errno, the path and the agent to check, once across the retries", async () => {
    const guest = Guest.create();
    const missing = guest.socket; // no agent listens there yet
    const host = startHostAgent(guest);
    const event = await host.waitForEvent((e) => e.type === "guest-unreachable", "the unreachable event");
    expect(event.error).toContain("connecting to the unix socket failed: no socket exists at that path (ENOENT)");
    expect(event.error).toContain(`is ${missing} the agent's socket`);
    expect(event.error).toContain("is the guest agent running");
    expect(event.error).toContain("the binary for the guest's architecture");
    expect(event.error).not.toMatch(/No connection established|Resolution note/);
    await Bun.sleep(1500); // several retries fail meanwhile (backoff from 100 ms)
    await guest.startAgent();
    // The retries went on (the host finds the agent without a restart), and none repeated the event.
    await host.waitForEvent((e) => e.type === "guest-connected", "the host connecting once the agent listens");
    expect(host.events.filter((e) => e.type === "guest-unreachable").length).toBe(1);
  });

  e2eTest("a chardev-like socket nobody serves (reached through the multiplexer's relay): the event still names ECONNREFUSED", async () => {
    const guest = Guest.create();
    // A unix socket file with no listener and no porthole data endpoint beside it: the host
    // takes it for a one-stream channel (a QEMU chardev) and dials it through its private relay.
    const stale = join(guest.dir, "chardev.sock");
    const made = spawnSync("/usr/bin/python3", ["-c", `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(stale)})`]);
    expect(made.status).toBe(0);
    const host = startHostAgent(guest, ["--guest", `unix://${stale}`]);
    const event = await host.waitForEvent((e) => e.type === "guest-unreachable", "the unreachable event");
    expect(event.error).toContain("connecting to the unix socket failed");
    expect(event.error).toContain("(ECONNREFUSED)");
    expect(event.error).toContain(`is ${stale} the agent's socket`);
  });
});
