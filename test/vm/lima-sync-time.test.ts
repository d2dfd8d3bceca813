// Lima's SyncTime setting a real clock: only inside the QEMU VM, whose clock is its own (this
// machine's clock is never touched). A C-core client behaving as Lima's host agent
// (test/fixtures/lima_grpc_peer.py) talks to the guest agent over the VM's virtio-serial port
// and sends a host time 30 s ahead; the VM's `date` moves.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { join, resolve } from "node:path";
import { Guest, runCleanups, startHostAgent, type Proc } from "../lab.ts";
import { prepareImage, vmBlocker } from "./image.ts";
import { Vm } from "./vm.ts";

setDefaultTimeout(120_000);
const blocker = vmBlocker();
if (blocker && process.env.CI) throw new Error(`${blocker}; CI=true forbids skipping the VM tests`);
const vmTest = (blocker ? test.skip : test) as typeof test;

const REPO = resolve(import.meta.dir, "../..");
let vm: Vm | undefined;
let lima: Proc | undefined;
let scratch: Guest;

beforeAll(async () => {
  if (blocker) return;
  vm = await Vm.boot(prepareImage());
  // Only for spawning: the client runs on this machine and reaches the VM's chardev socket.
  scratch = Guest.create();
  lima = scratch.spawn(["/usr/bin/python3", join(REPO, "test/fixtures/lima_grpc_peer.py"), "host", join(REPO, "proto/guestservice.proto"), `unix://${vm.chardev}`], "C-core Lima host", { stdin: true });
});

afterAll(async () => {
  vm?.kill();
  await runCleanups();
});

async function ask(cmd: Record<string, unknown>): Promise<Record<string, unknown>> {
  const answers = () => lima!.stdout.filter((l) => l.includes(`"op": "${cmd.op}"`));
  const before = answers().length;
  lima!.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
  return JSON.parse(await lima!.waitFor(() => answers()[before], `the ${cmd.op} answer`, 60_000));
}

async function syncTime(offsetMs: number): Promise<{ adjusted: boolean; driftMs: string; error: string }> {
  return (await ask({ op: "synctime", offsetMs })) as { adjusted: boolean; driftMs: string; error: string };
}

/**
 * Checks that the guest's clock is `seconds` ahead of this machine's (± `tolerance`). The VM's
 * console can take seconds to answer on a loaded machine (TCG): the guest's reading was taken
 * somewhere between the question and the answer, so the offset is known to lie in that range,
 * and the expected one must fall in it (widened by the tolerance).
 */
async function expectGuestAhead(seconds: number, tolerance = 5): Promise<void> {
  const asked = Date.now() / 1000;
  // The console echoes the command too: the answer is the line that is only digits.
  const out = await vm!.sh("date +%s");
  const answered = Date.now() / 1000;
  const guestNow = Number(/^(\d{9,})$/m.exec(out)?.[1] ?? NaN);
  if (Number.isNaN(guestNow)) throw new Error(`no time in the VM's answer: ${JSON.stringify(out)}`);
  // `date +%s` rounds down: the guest's clock read guestNow..guestNow+1.
  const range = { low: guestNow - answered, high: guestNow + 1 - asked };
  expect(range.low).toBeLessThanOrEqual(seconds + tolerance);
  expect(range.high).toBeGreaterThanOrEqual(seconds - tolerance);
}

describe("SyncTime in a real VM", () => {
  vmTest("a host time 30 s ahead sets the guest clock (adjusted, drift reported); back in step it is left alone", async () => {
    // The guest agent may still be starting: GetInfo until it answers (TCG is slow, and slower
    // on a loaded machine: a bounded wait in time, not in tries).
    const deadline = Date.now() + 90_000;
    while ((await ask({ op: "info" })).code !== undefined) {
      if (Date.now() > deadline) throw new Error(`the VM's guest agent does not answer within 90 s:\n${await vm!.sh("cat /tmp/agent.log")}`);
      await Bun.sleep(1000);
    }
    const asked = Date.now();
    const ahead = await syncTime(30_000);
    const tookMs = Date.now() - asked;
    if (!ahead.adjusted) console.error(await vm!.sh("cat /tmp/agent.log"));
    expect(ahead).toMatchObject({ adjusted: true, error: "" });
    // The drift is the guest's clock against the host time in the request, read when the
    // request arrived: later by up to the call's own round trip (seconds, on a loaded TCG VM).
    expect(Number(ahead.driftMs)).toBeLessThan(-29_000);
    expect(Number(ahead.driftMs)).toBeGreaterThan(-31_000 - tookMs);
    await expectGuestAhead(30);

    const back = await syncTime(0);
    expect(back).toMatchObject({ adjusted: true, error: "" });
    await expectGuestAhead(0);

    const inStep = await syncTime(0);
    expect(inStep).toMatchObject({ adjusted: false, error: "" });
    expect(Math.abs(Number(inStep.driftMs))).toBeLessThan(100);
  });

  vmTest("porthole host --sync-time brings a guest clock 30 s ahead back to the host's", async () => {
    const ahead = await syncTime(30_000);
    expect(ahead.adjusted).toBe(true);
    await expectGuestAhead(30);
    // The virtio-serial port carries one agent connection: the C-core client makes room.
    await lima!.kill();
    const host = startHostAgent(scratch, ["--guest", `unix://${vm!.chardev}`, "--sync-time"]);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to reach the VM's agent", 60_000);
    await host.proc.waitFor(() => host.proc.stderr.find((l) => l.includes("Guest clock was")), "the host agent to set the guest clock", 30_000);
    await expectGuestAhead(0);
    expect(host.events.filter((e) => e.type === "warning")).toEqual([]);
  });
});
