// Guest listeners appear on the host's 127.0.0.1 and go away with them.
import { describe, expect } from "bun:test";
import { join } from "node:path";
import { e2eTest, exchange, freePort, pathsOf, refusedSoon, startPair, tryConnect, useHarness } from "./harness.ts";

useHarness();

describe("auto-forwarding", () => {
  // The default forwarder (auto: porthole's data path here, the guest has no IP link to the
  // host) and Lima's gRPC Tunnel; each checks the path the bytes really took.
  e2eTest.each([
    ["127.0.0.1", "auto", "fast"],
    ["0.0.0.0", "auto", "fast"],
    ["::1", "auto", "fast"],
    ["::", "auto", "fast"],
    ["127.0.0.1", "grpc", "grpc"],
    ["::", "grpc", "grpc"],
  ])("a guest server on %s is reachable on host 127.0.0.1 (--forwarder %s: over %s)", async (bind, forwarder, path) => {
    const { guest, host } = await startPair(forwarder === "auto" ? undefined : forwarder);
    const port = await freePort();
    await guest.startEcho(bind, port);
    const event = await host.waitForForwarding(port);
    expect(event.guestAddr).toBe(bind.includes(":") ? `[${bind}]:${port}` : `${bind}:${port}`);
    expect((await exchange(port, Buffer.from("hello"))).toString()).toBe("hello");
    expect(pathsOf(join(guest.dir, "state", "control.sock"), port)).toEqual({ [path]: 1 });
  });

  e2eTest("the host listener closes as soon as the guest server stops", async () => {
    const { guest, host } = await startPair();
    const port = await freePort();
    const server = await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    expect(await tryConnect(port)).toBe("connected");

    await server.kill();
    await host.waitForEvent((e) => e.type === "stopping" && e.hostAddr === `127.0.0.1:${port}`, "stopping", 2000);
    expect(await refusedSoon(port)).toBe("ECONNREFUSED");
  });

  e2eTest("guest port 22 is never forwarded, and an unmatched address is reported", async () => {
    const { guest, host } = await startPair();
    await guest.startEcho("0.0.0.0", 22);
    const other = await freePort();
    await guest.startEcho("127.0.0.2", other);
    await host.waitForEvent((e) => e.type === "not-forwarding" && e.guestAddr === "0.0.0.0:22", "port 22 ignored");
    await host.waitForEvent((e) => e.type === "not-forwarding" && e.guestAddr === `127.0.0.2:${other}`, "127.0.0.2 not matched");
    expect(host.events.filter((e) => e.type === "forwarding")).toEqual([]);
  });
});
