// The host agent that cannot reach a guest agent says what it tried and what to check, in
// its own words (not grpc-js's "No connection established ... Resolution note:").
import { describe, expect } from "bun:test";
import { join } from "node:path";
import { e2eTest, Guest, startHostAgent, useHarness } from "./harness.ts";

useHarness();

describe("guest agent unreachable", () => {
  e2eTest("a missing agent socket: the event names the errno, the path and the agent to check, once", async () => {
    const guest = Guest.create();
    const missing = join(guest.dir, "no-agent-here.sock");
    const host = startHostAgent(guest, ["--guest", `unix://${missing}`]);
    const event = await host.waitForEvent((e) => e.type === "guest-unreachable", "the unreachable event");
    expect(event.error).toContain("connecting to the unix socket failed: no socket exists at that path (ENOENT)");
    expect(event.error).toContain(`is ${missing} the agent's socket`);
    expect(event.error).toContain("is the guest agent running");
    expect(event.error).toContain("the binary for the guest's architecture");
    expect(event.error).not.toMatch(/No connection established|Resolution note/);
    await Bun.sleep(1500); // retries go on meanwhile (backoff from 100 ms)
    expect(host.events.filter((e) => e.type === "guest-unreachable").length).toBe(1);
  });
});
