// SyncTime as Lima's guest agent answers it (drift = guest now - host time, the clock set only
// beyond +-100 ms), with the clock setter replaced: tests never touch this machine's clock.
import { describe, expect, test } from "bun:test";
import { EventState } from "../../src/guest/event-state.ts";
import { guestServiceHandlers } from "../../src/guest/guest-service.ts";
import type { PortWatcher } from "../../src/guest/watcher.ts";

function syncTime(hostMs: number | undefined, setClock: (ns: bigint) => void): Promise<{ adjusted: boolean; drift_ms: string; error: string }> {
  const handlers = guestServiceHandlers({ watcher: {} as PortWatcher, eventState: new EventState(undefined, () => {}), log: () => {}, setClock });
  const host_time = hostMs === undefined ? undefined : { seconds: String(Math.floor(hostMs / 1000)), nanos: (hostMs % 1000) * 1e6 };
  return new Promise((resolve, reject) =>
    (handlers.SyncTime as Function)({ request: { host_time } }, (err: unknown, res: { adjusted: boolean; drift_ms: string; error: string }) => (err ? reject(err) : resolve(res))),
  );
}

describe("SyncTime", () => {
  test("within 100 ms: the drift is reported and the clock is left alone", async () => {
    const set: bigint[] = [];
    const res = await syncTime(Date.now() - 40, (ns) => set.push(ns));
    expect(res.adjusted).toBe(false);
    expect(Number(res.drift_ms)).toBeGreaterThanOrEqual(40);
    expect(Number(res.drift_ms)).toBeLessThan(100);
    expect(set).toEqual([]);
  });

  test("the guest 30 s behind: the clock is set to the host's time, drift -30000 ms", async () => {
    const set: bigint[] = [];
    const host = Date.now() + 30_000;
    const res = await syncTime(host, (ns) => set.push(ns));
    expect(res).toMatchObject({ adjusted: true, error: "" });
    expect(Number(res.drift_ms)).toBeLessThanOrEqual(-29_900);
    expect(set).toEqual([BigInt(host) * 1_000_000n]);
  });

  test("a clock that cannot be set: not adjusted, the reason in error", async () => {
    const res = await syncTime(Date.now() - 5_000, () => {
      throw new Error("operation not permitted");
    });
    expect(res).toMatchObject({ adjusted: false, error: "operation not permitted" });
    expect(Number(res.drift_ms)).toBeGreaterThanOrEqual(5_000);
  });

  test("no host_time: nothing is set", async () => {
    const set: bigint[] = [];
    expect((await syncTime(undefined, (ns) => set.push(ns))).adjusted).toBe(false);
    expect(set).toEqual([]);
  });
});
