// Between porthole agents a UDP flow takes a data stream of its own (the guest's Hello lists
// "udp-data-path"), not the agent's HTTP/2 session: proven by the host agent's counters (the
// flow and its bytes on the path "fast", none on "grpc"), with socat as the guest's UDP server
// (not our code) echoing datagrams of 1 to 60,000 bytes byte for byte.
import { describe, expect } from "bun:test";
import * as dgram from "node:dgram";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { e2eTest, freePort, Guest, startHostAgent, statusJSON, useHarness } from "./harness.ts";
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
  });

  e2eTest("a data stream that cannot be had: said as a path-changed event, and the next flow goes by gRPC and is answered", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest, []);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to connect");
    const port = await freePort();
    await guest.startServer("udp-echo", [["127.0.0.1", port]]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
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
});
