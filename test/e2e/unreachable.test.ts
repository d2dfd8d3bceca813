// The host agent that cannot reach a guest agent says what it tried and what to check, in
// its own words (not grpc-js's "No connection established ... Resolution note:").
import { describe, expect } from "bun:test";
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
});
