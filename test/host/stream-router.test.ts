// The stream router: the direct path is planned only for proved guest addresses of the
// bind's family; a path that fails to connect falls back with one event, is remembered (no
// second attempt until its backoff ends), and the counters say which path each connection took.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { HostEvent } from "../../src/core/forward-event.ts";
import type { PlannedForward } from "../../src/core/forward-plan.ts";
import type { InterfaceAddress } from "../../src/core/subnet.ts";
import { DirectPaths, proveAddress, type GuestOffer } from "../../src/host/direct-paths.ts";
import type { GrpcForwarder } from "../../src/host/grpc-forwarder.ts";
import { StreamRouter } from "../../src/host/stream-router.ts";
import type { HelloResponse } from "../../src/proto/guest-service.ts";
import { waitUntil } from "../wait.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

const plan = (guestAddr: string, port = 18080): PlannedForward =>
  ({ key: `tcp 127.0.0.1:${port}`, protocol: "tcp", host: { kind: "tcp", ip: "127.0.0.1", port }, guestAddr, origin: "built-in", static: false, companion: false, onConflict: "retry" }) as unknown as PlannedForward;

const hello = (extra: Partial<HelloResponse> = {}): HelloResponse => ({
  version: "test",
  features: ["data-path", "data-path-ends", "direct-proof"],
  ephemeral_port_low: 32768,
  ephemeral_port_high: 60999,
  data_endpoints: [],
  data_secret: "00112233445566778899aabbccddeeff",
  addresses: [],
  direct_proof_port: 0,
  ...extra,
});

/** A gRPC forwarder stand-in that counts and closes what it is handed. */
function fakeGrpc() {
  const handed: string[] = [];
  const grpc = { forwardStream: (socket: net.Socket, p: PlannedForward) => (handed.push(p.guestAddr), socket.end()) } as unknown as GrpcForwarder;
  return { grpc, handed };
}

/** Connects a client pair through the router (the accepted side goes to forwardStream). */
async function through(router: StreamRouter, p: PlannedForward): Promise<void> {
  const server = net.createServer((s) => router.forwardStream(s, p));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const c = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise<void>((r) => c.once("close", () => r()).once("error", () => {}).resume());
  server.close();
}

describe("the stream router", () => {
  test("a data path that cannot connect falls back to gRPC once, with an event, and is not tried again at once", async () => {
    const dir = mkdtempSync(join(tmpdir(), "porthole-router-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const agent = join(dir, "guest.sock");
    writeFileSync(`${agent}.data`, ""); // exists, but nothing listens: every dial fails
    const events: HostEvent[] = [];
    const { grpc, handed } = fakeGrpc();
    const router = new StreamRouter("fast", { kind: "unix", path: agent }, grpc, undefined, (e) => events.push(e));
    router.setGuest(hello({ data_endpoints: [`unix://${agent}.data`] }));
    const p = plan("127.0.0.1:80");
    expect(router.pathFor(p)).toBe("fast");
    for (let i = 0; i < 3; i++) await through(router, p);
    expect(handed).toHaveLength(3);
    const changes = events.filter((e) => e.type === "path-changed");
    expect(changes).toHaveLength(1);
    expect(changes[0]).toMatchObject({ path: "fast", state: "unusable" });
    expect(router.pathFor(p)).toBe("grpc");
    expect(router.traffic()).toMatchObject({ fast: { fallbacks: 1, connections: 0 }, grpc: { connections: 3 } });
    router.stop();
  });

  test("a path that fails after its client is gone (reset already) is still said once and backed off", async () => {
    const dir = mkdtempSync(join(tmpdir(), "porthole-router-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const agent = join(dir, "guest.sock");
    writeFileSync(`${agent}.data`, ""); // exists, but nothing listens: the dial fails
    const events: HostEvent[] = [];
    const { grpc, handed } = fakeGrpc();
    const router = new StreamRouter("fast", { kind: "unix", path: agent }, grpc, undefined, (e) => events.push(e));
    router.setGuest(hello({ data_endpoints: [`unix://${agent}.data`] }));
    const p = plan("127.0.0.1:80");
    const server = net.createServer((s) => {
      router.forwardStream(s, p);
      s.destroy(); // gone before the dial's answer
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    cleanups.push(() => server.close());
    net.connect((server.address() as net.AddressInfo).port, "127.0.0.1").on("error", () => {});
    await waitUntil("the failure to be said", () => events.some((e) => e.type === "path-changed"));
    expect(events.filter((e) => e.type === "path-changed")).toHaveLength(1);
    expect(router.pathFor(p)).toBe("grpc"); // backed off: the next connection does not try it blind
    expect(handed).toHaveLength(0); // nothing left to hand on
    router.stop();
  });

  test("a data endpoint is taken only where the agent keeps it (beside its socket): another socket in that directory is never dialled", () => {
    const dir = mkdtempSync(join(tmpdir(), "porthole-router-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const agent = join(dir, "guest.sock");
    writeFileSync(join(dir, "ssh.sock"), ""); // Lima's ssh.sock, say: exists, same directory
    const router = new StreamRouter("fast", { kind: "unix", path: agent }, fakeGrpc().grpc, undefined, () => {});
    router.setGuest(hello({ data_endpoints: [`unix://${join(dir, "ssh.sock")}`] }));
    expect(router.pathFor(plan("127.0.0.1:80"))).toBe("grpc");
    writeFileSync(`${agent}.data`, "");
    router.setGuest(hello({ data_endpoints: [`unix://${agent}.data`] }));
    expect(router.pathFor(plan("127.0.0.1:80"))).toBe("fast");
    router.stop();
  });

  test("a guest that accepts a data stream and never answers does not hold the client forever", async () => {
    const dir = mkdtempSync(join(tmpdir(), "porthole-router-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const agent = join(dir, "guest.sock");
    const silent: net.Socket[] = [];
    const endpoint = net.createServer((s) => silent.push(s)); // accepts, reads, says nothing
    await new Promise<void>((r) => endpoint.listen(`${agent}.data`, r));
    cleanups.push(() => (silent.forEach((s) => s.destroy()), endpoint.close()));
    const { grpc, handed } = fakeGrpc();
    const router = new StreamRouter("fast", { kind: "unix", path: agent }, grpc, undefined, () => {}, undefined, 300);
    router.setGuest(hello({ data_endpoints: [`unix://${agent}.data`] }));
    await through(router, plan("127.0.0.1:80"));
    expect(silent).toHaveLength(1);
    expect(handed).toHaveLength(1); // given up after the timeout: the client went on by gRPC
    await new Promise((r) => (silent[0]!.destroyed ? r(undefined) : silent[0]!.once("close", r).on("error", () => {}).resume())); // the stream was closed
    router.stop();
  });

  test("direct is planned only after the proof holds, only for the bind's family, and no longer once it fails", async () => {
    const ifs: InterfaceAddress[] = [{ address: "10.9.9.1", netmask: "255.255.255.0", family: "IPv4", internal: false }];
    let verdict: Error | undefined;
    const proofs: string[] = [];
    const reports: string[] = [];
    const direct = new DirectPaths(
      (ip, proved, reason) => reports.push(`${ip} ${proved} ${reason}`),
      () => ifs,
      async (ip: string, _o: GuestOffer) => {
        proofs.push(ip);
        if (verdict) throw verdict;
      },
    );
    const { grpc } = fakeGrpc();
    const router = new StreamRouter("auto", { kind: "unix", path: "/nonexistent/guest.sock" }, grpc, undefined, () => {}, direct);
    // Not on the host's network, loopback, link-local: never candidates, never probed.
    router.setGuest(hello({ addresses: ["10.9.9.7", "192.168.77.7", "127.0.0.1", "fe80::1"], direct_proof_port: 4000 }));
    expect(router.pathFor(plan("0.0.0.0:80"))).toBe("grpc"); // the proof has not answered yet
    await direct.reprove();
    expect(proofs.every((ip) => ip === "10.9.9.7")).toBe(true);
    expect(router.pathFor(plan("0.0.0.0:80"))).toBe("direct");
    expect(router.pathFor(plan("10.9.9.7:80"))).toBe("direct");
    expect(router.pathFor(plan("127.0.0.1:80"))).toBe("grpc");
    expect(router.pathFor(plan("[::1]:80"))).toBe("grpc");
    verdict = new Error("something other than the guest agent answers there (the proof failed)");
    await direct.reprove();
    expect(router.pathFor(plan("0.0.0.0:80"))).toBe("grpc");
    expect(reports).toEqual([
      "10.9.9.7 true the guest agent proved it answers there",
      "10.9.9.7 false something other than the guest agent answers there (the proof failed)",
    ]);
    router.stop();
  });

  test("a guest without a proof port (an older agent, or a hostile one) never gets the direct path", () => {
    const direct = new DirectPaths(() => {}, () => [{ address: "10.9.9.1", netmask: "255.255.255.0", family: "IPv4", internal: false }], async () => {});
    const router = new StreamRouter("auto", { kind: "unix", path: "/nonexistent/guest.sock" }, fakeGrpc().grpc, undefined, () => {}, direct);
    router.setGuest(hello({ addresses: ["10.9.9.7"], direct_proof_port: 0 }));
    expect(router.pathFor(plan("0.0.0.0:80"))).toBe("grpc");
    router.setGuest(hello({ addresses: ["10.9.9.7"], direct_proof_port: 70000 }));
    expect(router.pathFor(plan("0.0.0.0:80"))).toBe("grpc");
    router.stop();
  });

  test("an address that gives no answer for two proof rounds is reported silent once; a refusal (the agent restarting) is not silence", async () => {
    const silent: string[] = [];
    let failure: Error | undefined = Object.assign(new Error("no answer"), { code: "ETIMEDOUT" });
    const direct = new DirectPaths(
      () => {},
      () => [{ address: "10.9.9.1", netmask: "255.255.255.0", family: "IPv4", internal: false }],
      async () => {
        if (failure) throw failure;
      },
      (ip) => silent.push(ip),
    );
    direct.setGuest({ secret: "00112233445566778899aabbccddeeff", addresses: ["10.9.9.7"], proofPort: 4000 });
    await direct.reprove();
    await direct.reprove();
    await direct.reprove();
    expect(silent).toEqual(["10.9.9.7"]);
    failure = Object.assign(new Error("refused"), { code: undefined });
    await direct.reprove();
    failure = Object.assign(new Error("no answer"), { code: "ETIMEDOUT" });
    await direct.reprove();
    expect(silent).toEqual(["10.9.9.7"]); // one silent round after a refusal is not enough
    direct.stop();
  });

  test("a proof round is never started beside one still under way (a slow guest cannot pile up proof connections)", async () => {
    let calls = 0;
    const answers: (() => void)[] = [];
    const direct = new DirectPaths(
      () => {},
      () => [{ address: "10.9.9.1", netmask: "255.255.255.0", family: "IPv4", internal: false }],
      () => {
        calls++;
        return new Promise<void>((resolve) => answers.push(resolve));
      },
    );
    direct.setGuest({ secret: "00112233445566778899aabbccddeeff", addresses: ["10.9.9.7", "10.9.9.8"], proofPort: 4000 });
    const first = direct.reprove();
    void direct.reprove(); // as the 10 s interval and a change of this host's addresses would ask
    void direct.reprove();
    expect(calls).toBe(2); // one proof per address, from the first round only
    for (const answer of answers) answer();
    await first;
    void direct.reprove(); // that round over: the next one proves again
    expect(calls).toBe(4);
    direct.setGuest({ secret: "00112233445566778899aabbccddeeff", addresses: ["10.9.9.7"], proofPort: 4000 }); // a new guest: a round of its own at once
    expect(calls).toBe(5);
    direct.stop();
  });

  test("a proof answered a byte at a time is given up at its deadline, not held while bytes trickle in", async () => {
    const server = net.createServer((c) => {
      c.on("error", () => {});
      const drip = setInterval(() => c.write("P"), 300);
      c.once("close", () => clearInterval(drip));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const started = Date.now();
      const err = await proveAddress("127.0.0.1", { secret: "00112233445566778899aabbccddeeff", addresses: ["127.0.0.1"], proofPort: port }).then(
        () => undefined,
        (e: NodeJS.ErrnoException) => e,
      );
      expect(err?.code).toBe("ETIMEDOUT");
      expect(Date.now() - started).toBeLessThan(10_000); // its idle timer alone would have waited ~77 s (256 bytes, one per 300 ms)
    } finally {
      server.close();
    }
  }, 20_000);
});
