// GetEvents' first event against changes still on their way, and SyncTime as Lima's guest agent answers it (drift = guest now - host time, the clock set only
// beyond +-100 ms), with the clock setter replaced: tests never touch this machine's clock.
import { describe, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { portKey } from "../../src/core/ports.ts";
import { UdpSettler } from "../../src/core/udp-settle.ts";
import { EventState } from "../../src/guest/event-state.ts";
import { guestServiceHandlers } from "../../src/guest/guest-service.ts";
import type { OwnerResolver } from "../../src/guest/port-owners.ts";
import type { Scanner } from "../../src/guest/scanners.ts";
import { PortWatcher } from "../../src/guest/watcher.ts";
import { waitUntil } from "../wait.ts";
import type { GuestEvent, IPPort } from "../../src/proto/guest-service.ts";

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

describe("GetEvents", () => {
  test("a stream opened while a change waits for its owner gets that change once (not in its first event and again when told)", async () => {
    const a = { protocol: "tcp", ip: "127.0.0.1", port: 8080 };
    const b = { protocol: "tcp", ip: "0.0.0.0", port: 3000 };
    let kernel: IPPort[] = [a];
    const sockets = (ports: IPPort[]) => new Map(ports.map((p, i) => [portKey(p), { inode: 100 + i, uid: 0 }]));
    const scanner: Scanner = { name: "fake", scan: async () => ({ ports: [...kernel], sockets: sockets(kernel), errors: [] }) };
    let gate: Promise<void> = Promise.resolve();
    let waiting = false;
    const resolver = {
      resolve: async () => {
        waiting = true;
        await gate;
        return new Map();
      },
      keepOnly: () => {},
      forget: () => {},
      size: 0,
    } as unknown as OwnerResolver;
    const watcher = new PortWatcher(60_000, scanner, new UdpSettler(), resolver);
    await watcher.start();
    let release!: () => void;
    gate = new Promise<void>((r) => (release = r));
    kernel = [a, b];
    waiting = false;
    const told = watcher.refresh(); // b is in the scan now; its owner lookup waits at the gate
    await waitUntil("b's batch waiting for its owner", () => waiting && watcher.ports.some((p) => p.port === b.port));
    const writes: GuestEvent[] = [];
    const call = { metadata: new grpc.Metadata(), write: (e: GuestEvent) => writes.push(e), once: () => {} };
    const handlers = guestServiceHandlers({ watcher, eventState: new EventState(undefined, () => {}), log: () => {} });
    (handlers.GetEvents as Function)(call);
    release();
    await told;
    watcher.stop();
    const added = writes.flatMap((e) => e.added_local_ports ?? []).map((p) => `${p.ip}:${p.port}`);
    expect(added.sort()).toEqual(["0.0.0.0:3000", "127.0.0.1:8080"]);
  });
});
