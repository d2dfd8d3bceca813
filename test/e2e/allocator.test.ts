// The agents run with mimalloc's purge delay raised (runtime/allocator.ts): without it, every
// freed relay buffer went back to the kernel and was faulted in again on the next chunk.
import { describe, expect } from "bun:test";
import { readFileSync } from "node:fs";
import { e2eTest, Guest, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const environ = (pid: number) => readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");

describe("allocator", () => {
  e2eTest("both agents restart themselves in place (same pid) with MIMALLOC_PURGE_DELAY=2000 and still serve", async () => {
    const guest = Guest.create();
    const guestAgent = await guest.startAgent(); // waits for "serving on" from that pid
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    expect(environ(guestAgent.child.pid!)).toContain("MIMALLOC_PURGE_DELAY=2000");
    expect(environ(host.proc.child.pid!)).toContain("MIMALLOC_PURGE_DELAY=2000");
  });

  e2eTest("a purge delay the user set is kept as it is", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest, [], { env: { MIMALLOC_PURGE_DELAY: "50" } });
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    expect(environ(host.proc.child.pid!)).toContain("MIMALLOC_PURGE_DELAY=50");
  });
});
