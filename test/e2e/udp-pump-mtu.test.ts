// The UDP pump sends datagrams of one size in a row as one message the kernel cuts up
// (UDP_SEGMENT), which the kernel refuses (EMSGSIZE) for a size over the route's MTU: those go
// one by one, as a plain send would (the kernel fragments them), and nothing is lost. Proven
// in a namespace whose loopback has a 1,500-byte MTU, the pump driven by test/fixtures/pump-frames.ts.
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { e2eTest, Guest, useHarness } from "./harness.ts";

useHarness();

describe("UDP pump on a route with a small MTU", () => {
  e2eTest("datagrams over the MTU arrive whole, sent one by one; those under it still go as one message", async () => {
    const guest = Guest.create();
    expect(spawnSync("ip", ["-n", guest.ns, "link", "set", "lo", "mtu", "1500"]).status).toBe(0);
    const sizes = [...Array(10).fill(2000), ...Array(10).fill(1000), ...Array(5).fill(3000)];
    const run = guest.spawn([process.execPath, join(import.meta.dir, "../fixtures/pump-frames.ts"), ...sizes.map(String)], "pump-frames");
    const { got, stats } = JSON.parse(await run.waitForLine(/^\{/, "stdout", 20_000));
    expect(got).toEqual(sizes);
    expect(stats).toMatchObject({ toUdp: sizes.length, unsent: 0 });
    // 15 datagrams over the MTU alone; the ten of 1,000 bytes in one message (or a few).
    expect(stats.udpSends).toBeGreaterThanOrEqual(15);
    expect(stats.udpSends).toBeLessThan(sizes.length);
  });
});
