// The agents run with mimalloc's purge delay raised (runtime/allocator.ts): without it, every
// freed relay buffer went back to the kernel and was faulted in again on the next chunk. On
// x86-64 they also raise glibc's rep-movsb threshold (slow copies on AMD at some alignments).
import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { arch } from "node:process";
import { e2eTest, Guest, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const environ = (pid: number) => readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");

describe("allocator", () => {
  e2eTest("both agents restart themselves in place (same pid) with MIMALLOC_PURGE_DELAY=2000 and BUN_GC_TIMER_DISABLE=1 and still serve", async () => {
    const guest = Guest.create();
    const guestAgent = await guest.startAgent(); // waits for "serving on" from that pid
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    expect(environ(guestAgent.child.pid!)).toContain("MIMALLOC_PURGE_DELAY=2000");
    expect(environ(host.proc.child.pid!)).toContain("MIMALLOC_PURGE_DELAY=2000");
    // Bun's idle GC timer off (runtime/idle-gc.ts collects after growth instead).
    expect(environ(guestAgent.child.pid!)).toContain("BUN_GC_TIMER_DISABLE=1");
    expect(environ(host.proc.child.pid!)).toContain("BUN_GC_TIMER_DISABLE=1");
  });

  // The tunable is x86's (aarch64 agents are checked to run without it in test/runtime): elsewhere
  // this test is skipped by name, not passed.
  const onX64 = arch === "x64" ? e2eTest : test.skip;
  onX64("on x86-64 both agents run with a GLIBC_TUNABLES that the system's glibc takes (ld.so --list-tunables shows the threshold)", async () => {
    const guest = Guest.create();
    const guestAgent = await guest.startAgent();
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    for (const pid of [guestAgent.child.pid!, host.proc.child.pid!]) {
      const tunables = environ(pid).find((v) => v.startsWith("GLIBC_TUNABLES="));
      expect(tunables).toContain("glibc.cpu.x86_rep_movsb_threshold=");
      // glibc ignores a misspelt tunable silently: ask its loader what it makes of ours.
      const listed = spawnSync("/lib64/ld-linux-x86-64.so.2", ["--list-tunables"], { encoding: "utf8", env: { GLIBC_TUNABLES: tunables!.slice("GLIBC_TUNABLES=".length) } });
      expect(listed.stdout).toContain("glibc.cpu.x86_rep_movsb_threshold: 0x400000 ");
    }
  });

  e2eTest("a purge delay the user set is kept as it is", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest, [], { env: { MIMALLOC_PURGE_DELAY: "50" } });
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    expect(environ(host.proc.child.pid!)).toContain("MIMALLOC_PURGE_DELAY=50");
  });
});
