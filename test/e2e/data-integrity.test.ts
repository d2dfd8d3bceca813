// Bytes through a forward arrive intact, in bulk and across many connections at once.
import { describe, expect } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import * as net from "node:net";
import { join } from "node:path";
import { echoRoundTrip, e2eTest, exchange, freePort, pathsOf, rssMiB, startPair, useHarness } from "./harness.ts";

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

useHarness();

// Each data path: Lima's gRPC Tunnel, and porthole's raw data path ("fast").
describe.each(["grpc", "fast"])("data integrity over %s", (forwarder) => {
  e2eTest("64 MiB of random data each way through one connection arrives byte-identical", async () => {
    const { guest, host } = await startPair(forwarder);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    expect((await host.waitForForwarding(port)).path).toBe(forwarder);

    const size = 64 << 20;
    const { sent, received, receivedBytes } = await echoRoundTrip(port, size);
    expect(receivedBytes).toBe(size);
    expect(received).toBe(sent);
    // The bytes really took that path (no silent fallback).
    expect(pathsOf(join(guest.dir, "state", "control.sock"), port)).toEqual({ [forwarder]: 1 });
  });

  e2eTest("200 concurrent connections all get their own data back", async () => {
    const { guest, host } = await startPair(forwarder);
    const port = await freePort();
    await guest.startEcho("0.0.0.0", port);
    expect((await host.waitForForwarding(port)).path).toBe(forwarder);

    const payloads = Array.from({ length: 200 }, () => randomBytes(16 << 10));
    const replies = await Promise.all(payloads.map((p) => exchange(port, p)));
    expect(replies.map(sha256)).toEqual(payloads.map(sha256));
    expect(pathsOf(join(guest.dir, "state", "control.sock"), port)).toEqual({ [forwarder]: 200 });
  });
});

describe.each(["grpc", "fast"])("backpressure over %s", (forwarder) => {
  e2eTest("a guest server that never reads stops the host client's writes instead of filling memory", async () => {
    const { guest, host } = await startPair(forwarder);
    const port = await freePort();
    await guest.startServer("stall", [["127.0.0.1", port]]);
    expect((await host.waitForForwarding(port)).path).toBe(forwarder);

    // Push up to 1 GiB; without backpressure all of it would be buffered by the agents.
    const offered = 1024 << 20;
    const chunk = Buffer.alloc(1 << 20, 0x5a);
    const socket = net.connect({ host: "127.0.0.1", port });
    await new Promise((r) => socket.once("connect", r));
    let accepted = 0;
    while (accepted < offered) {
      accepted += chunk.length;
      if (socket.write(chunk)) continue;
      const drained = await Promise.race([
        new Promise<boolean>((r) => socket.once("drain", () => r(true))),
        new Promise<boolean>((r) => setTimeout(() => r(false), 1500)),
      ]);
      if (!drained) break;
    }
    socket.destroy();
    // Kernel socket buffers plus one HTTP/2 stream window (16 MiB) and relay buffers.
    expect(accepted).toBeLessThan(128 << 20);
    expect(rssMiB(host.proc.child.pid!)).toBeLessThan(256);
  });
});

// The direct path's own tests (with the path its bytes took) are in direct-path.test.ts.
