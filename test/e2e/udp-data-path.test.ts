// Between porthole agents a UDP flow takes a data stream of its own (the guest's Hello lists
// "udp-data-path"), not the agent's HTTP/2 session: proven by the host agent's counters (the
// flow and its bytes on the path "fast", none on "grpc"), with socat as the guest's UDP server
// (not our code) echoing datagrams of 1 to 60,000 bytes byte for byte.
import { describe, expect } from "bun:test";
import * as dgram from "node:dgram";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { e2eTest, freePort, Guest, PORTHOLE, startHostAgent, statusJSON, useHarness } from "./harness.ts";
import { defer } from "../lab.ts";
import { waitUntil } from "../wait.ts";

useHarness();

/** Sends each datagram and waits for its echo before the next; returns the echoes. */
async function echoEach(port: number, sent: Buffer[]): Promise<Buffer[]> {
  const client = dgram.createSocket("udp4");
  defer(() => void client.close());
  const received: Buffer[] = [];
  client.on("message", (m) => received.push(m));
  await new Promise<void>((resolve) => client.bind(0, "127.0.0.1", resolve));
  for (let i = 0; i < sent.length; i++) {
    client.send(sent[i]!, port, "127.0.0.1");
    await waitUntil(`the echo of datagram ${i + 1} (${sent[i]!.length} bytes)`, () => received.length > i, 10_000);
  }
  return received;
}

/** A guest agent, a host agent connected to it, and a UDP echo server in the guest that the host forwards. */
async function forwardedUdpEcho() {
  const guest = Guest.create();
  await guest.startAgent();
  const host = startHostAgent(guest, []);
  await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
  const port = await freePort();
  await guest.startServer("udp-echo", [["127.0.0.1", port]]);
  await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
  return { guest, host, port };
}

describe("UDP over the data path", () => {
  e2eTest("datagrams of 1 to 60,000 bytes come back byte for byte from socat, over a data stream of the flow's own (status: path fast, no gRPC)", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest, []);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    const port = await freePort();
    // One child per datagram echoes it through a pipe of its own; -b lets a 60,000-byte datagram through whole.
    // (Not EXEC:cat: cat may read a large datagram from its pipe in two parts and socat then sends two datagrams.)
    guest.spawn(["socat", "-b", "65536", `UDP4-RECVFROM:${port},bind=127.0.0.1,fork`, "PIPE"], "socat");
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
    const sent = [1, 2, 3, 100, 1399, 1400, 1401, 8192, 9000, 16_384, 30_000, 60_000].map((n, i) => {
      const d = Buffer.alloc(n, i + 65);
      d[n - 1] = 10; // each its own last byte too: a datagram cut or joined would not match
      return d;
    });
    const received = await echoEach(port, sent);
    expect(received.map((d) => d.length)).toEqual(sent.map((d) => d.length));
    expect(received).toEqual(sent);

    const row = statusJSON(join(guest.dir, "state", "control.sock")).forwards.find((f) => f.protocol === "udp" && f.hostAddr === `127.0.0.1:${port}`);
    const bytes = sent.reduce((n, d) => n + d.length, 0);
    expect(row?.paths?.fast?.connections).toBe(1); // one client, one flow, one stream
    // The stream carried every datagram each way (each with a 4-byte frame head, plus credits).
    expect(row!.paths!.fast!.bytesIn).toBeGreaterThanOrEqual(bytes + 4 * sent.length);
    expect(row!.paths!.fast!.bytesOut).toBeGreaterThanOrEqual(bytes + 4 * sent.length);
    expect(row?.paths?.grpc).toBeUndefined();
    expect(row?.datagramsDropped).toBe(0);
    // The shim's pump carried them (native/udp_pump.c): every datagram each way but the first,
    // which waited in JavaScript for the stream and went ahead of the pump's own.
    expect(row?.datagramsPumped).toBeGreaterThanOrEqual(2 * sent.length - 1);
  });

  e2eTest("PORTHOLE_NATIVE_UDP_PUMP=0 on both agents: their event loops carry the flow (nothing pumped), every datagram comes back whole, and a warning says why, once", async () => {
    const guest = Guest.create();
    await guest.startAgent([], ["env", "PORTHOLE_NATIVE_UDP_PUMP=0", ...PORTHOLE]);
    const host = startHostAgent(guest, [], { env: { PORTHOLE_NATIVE_UDP_PUMP: "0" } });
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    const port = await freePort();
    guest.spawn(["socat", "-b", "65536", `UDP4-RECVFROM:${port},bind=127.0.0.1,fork`, "PIPE"], "socat");
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
    const sent = [1, 1400, 9000, 60_000].map((n, i) => Buffer.alloc(n, i + 97));
    expect(await echoEach(port, sent)).toEqual(sent);
    const row = statusJSON(join(guest.dir, "state", "control.sock")).forwards.find((f) => f.protocol === "udp" && f.hostAddr === `127.0.0.1:${port}`);
    expect(row?.paths?.fast?.connections).toBe(1);
    expect(row?.datagramsPumped ?? 0).toBe(0);
    const said = host.events.filter((e) => e.type === "warning" && String(e.message).includes("PORTHOLE_NATIVE_UDP_PUMP=0"));
    expect(said.length).toBe(1);
    expect(String(said[0]!.message)).toContain("event loops");
  });

  e2eTest("a data stream that cannot be had: said as a path-changed event, and the next flow goes by gRPC and is answered", async () => {
    const { guest, host, port } = await forwardedUdpEcho();
    rmSync(`${guest.socket}.data`); // the guest's data endpoint is gone: its streams cannot be dialed

    const client = dgram.createSocket("udp4");
    defer(() => void client.close());
    const received: Buffer[] = [];
    client.on("message", (m) => received.push(m));
    await new Promise<void>((resolve) => client.bind(0, "127.0.0.1", resolve));
    client.send(Buffer.from("first"), port, "127.0.0.1"); // its flow's stream fails (the datagram is lost, as UDP may)
    const event = await host.waitForEvent((e) => e.type === "path-changed" && e.path === "fast" && e.state === "unusable", "the data path's failure");
    expect(String(event.reason)).toContain("using grpc meanwhile");
    // The failed flow is gone; the next datagram opens a flow by gRPC.
    await waitUntil("an echo by gRPC", () => {
      if (received.length) return true;
      client.send(Buffer.from("again"), port, "127.0.0.1");
      return false;
    }, 10_000);
    expect(received[0]!.toString()).toBe("again");
    const row = statusJSON(join(guest.dir, "state", "control.sock")).forwards.find((f) => f.protocol === "udp" && f.hostAddr === `127.0.0.1:${port}`);
    expect(row?.paths?.fast?.fallbacks).toBeGreaterThanOrEqual(1);
    expect(row?.paths?.fast?.connections ?? 0).toBe(0);
  });

  e2eTest("datagrams the kernel drops at the host socket before the agent reads them count in datagramsDropped (as /proc/net/udp counts them) and are said once", async () => {
    const { guest, host, port } = await forwardedUdpEcho();
    const control = join(guest.dir, "state", "control.sock");
    const dropped = () => statusJSON(control).forwards.find((f) => f.protocol === "udp" && f.hostAddr === `127.0.0.1:${port}`)?.datagramsDropped ?? -1;
    const pid = host.proc.child.pid!;
    const client = dgram.createSocket("udp4");
    defer(() => void client.close());
    await new Promise<void>((resolve) => client.bind(0, "127.0.0.1", resolve));
    const told = () => host.events.filter((e) => e.type === "warning" && String(e.message).includes("the kernel dropped")).length;

    // The host agent stopped (not scheduled, as on a starved machine): what does not fit in its
    // socket's buffer is dropped by the kernel, before any porthole code sees it.
    for (let round = 1; round <= 2; round++) {
      process.kill(pid, "SIGSTOP");
      defer(() => void process.kill(pid, "SIGCONT"));
      let sent = 0;
      for (let i = 0; i < 8000; i++) client.send(Buffer.alloc(100, round), port, "127.0.0.1", () => sent++);
      await waitUntil("the client to send them all", () => sent === 8000, 20_000);
      const kernel = procNetUdpDrops(port);
      process.kill(pid, "SIGCONT");
      expect(kernel).toBeGreaterThan(0); // the set-up works: the buffer overflowed
      // The ~1,000 that fit (100 KiB-odd) stay far under the flow's budget: every drop is the kernel's.
      await waitUntil(`datagramsDropped to reach the kernel's ${kernel}`, () => dropped() >= kernel, 10_000);
      expect(dropped()).toBe(kernel);
      await waitUntil("the warning", () => told() >= 1, 10_000);
    }
    expect(told()).toBe(1); // said once per forward, however often it happens
  });
});

/** The kernel's drop count of the IPv4 UDP sockets bound to `port` (/proc/net/udp's last column). */
function procNetUdpDrops(port: number): number {
  let drops = 0;
  for (const line of readFileSync("/proc/net/udp", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length > 12 && parseInt(f[1]!.split(":")[1]!, 16) === port) drops += Number(f[f.length - 1]);
  }
  return drops;
}
