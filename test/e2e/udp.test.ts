// UDP over gRPC: one flow per client, datagram boundaries kept, idle flows expire, and
// nothing a client sends can end the forward.
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import * as dgram from "node:dgram";
import { useHarness, e2eTest, freePort, Guest, startHostAgent, type HostAgentProc } from "./harness.ts";

useHarness();

/** A host-side UDP client that collects what comes back. */
class Client {
  readonly socket = dgram.createSocket("udp4");
  readonly received: Buffer[] = [];
  constructor(readonly port: number, readonly host = "127.0.0.1") {
    this.socket.on("message", (m) => this.received.push(m));
  }
  send(data: Buffer | string): void {
    this.socket.send(typeof data === "string" ? Buffer.from(data) : data, this.port, this.host);
  }
  async waitFor(count: number, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length < count) {
      if (Date.now() > deadline) throw new Error(`got ${this.received.length} of ${count} datagrams`);
      await Bun.sleep(10);
    }
  }
  close(): void {
    this.socket.close();
  }
}

async function udpPair(extra: string[] = []): Promise<{ guest: Guest; host: HostAgentProc; port: number }> {
  const guest = Guest.create();
  await guest.startAgent();
  const host = startHostAgent(guest, extra);
  const port = await freePort();
  await guest.startServer("udp-echo", [["127.0.0.1", port]]);
  await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
  return { guest, host, port };
}

/** Connected UDP sockets in the guest: one per open flow. */
function guestFlowSockets(guest: Guest): number {
  const out = spawnSync("ip", ["netns", "exec", guest.ns, "cat", "/proc/net/udp", "/proc/net/udp6"], { encoding: "utf8" }).stdout;
  return out.split("\n").filter((l) => l.trim().split(/\s+/)[3] === "01").length;
}

describe("UDP", () => {
  e2eTest("three clients at once each get only their own replies, in whole datagrams", async () => {
    const { port } = await udpPair();
    const clients = [new Client(port), new Client(port), new Client(port)];
    try {
      for (let round = 0; round < 20; round++) clients.forEach((c, i) => c.send(`client ${i} round ${round}`));
      await Promise.all(clients.map((c) => c.waitFor(15)));
      clients.forEach((c, i) => {
        for (const m of c.received) expect(m.toString()).toStartWith(`client ${i} round `);
      });
    } finally {
      clients.forEach((c) => c.close());
    }
  });

  e2eTest("a 60,000-byte datagram arrives whole, and an empty one does not end the forward", async () => {
    const { port } = await udpPair();
    const client = new Client(port);
    try {
      const big = Buffer.alloc(60_000, 7);
      big.write("start");
      client.send(Buffer.alloc(0));
      client.send(big);
      await client.waitFor(2);
      expect(client.received.map((m) => m.length).sort()).toEqual([0, 60_000]);
      expect(client.received.find((m) => m.length > 0)!.equals(big)).toBe(true);
      client.send("after");
      await client.waitFor(3);
      expect(client.received.some((m) => m.toString() === "after")).toBe(true);
    } finally {
      client.close();
    }
  });

  e2eTest("idle flows expire: the guest's flow socket is closed after the idle timeout", async () => {
    const { guest, host, port } = await udpPair(["--udp-idle-timeout", "300ms"]);
    const client = new Client(port);
    try {
      client.send("hello");
      await client.waitFor(1);
      expect(guestFlowSockets(guest)).toBe(1);
      await host.proc.waitFor(() => guestFlowSockets(guest) === 0 || undefined, "the flow to expire", 5000);
      client.send("again"); // a new flow opens for the same client
      await client.waitFor(2);
    } finally {
      client.close();
    }
  });

  e2eTest("the number of flows is bounded: the least recently used one makes room, with a warning", async () => {
    const { guest, host, port } = await udpPair(["--udp-max-flows", "2"]);
    const clients = [new Client(port), new Client(port), new Client(port)];
    try {
      for (const [i, c] of clients.entries()) {
        c.send(`c${i}`);
        await c.waitFor(1);
      }
      await host.waitForEvent((e) => e.type === "warning" && /flows \(the limit\)/.test(String(e.message)), "the eviction warning");
      await host.proc.waitFor(() => guestFlowSockets(guest) === 2 || undefined, "two flows in the guest");
    } finally {
      clients.forEach((c) => c.close());
    }
  });

  e2eTest("a burst of 10,000 datagrams may lose some but does not break the forward", async () => {
    const { port } = await udpPair();
    const client = new Client(port);
    try {
      const payload = Buffer.alloc(512, 1);
      for (let i = 0; i < 10_000; i++) client.send(payload);
      const deadline = Date.now() + 10_000;
      while (!client.received.some((m) => m.toString() === "still alive?")) {
        if (Date.now() > deadline) throw new Error("the forward stopped answering after the burst");
        client.send("still alive?");
        await Bun.sleep(100);
      }
      expect(client.received.length).toBeGreaterThan(1);
    } finally {
      client.close();
    }
  });

  e2eTest("a UDP server in the guest's ephemeral range is forwarded; a connected UDP socket and DHCP's 68 are not", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    const [lo, hi] = spawnSync("ip", ["netns", "exec", guest.ns, "cat", "/proc/sys/net/ipv4/ip_local_port_range"], { encoding: "utf8" })
      .stdout.trim().split(/\s+/).map(Number) as [number, number];
    const server = await freeUdpPortIn(lo, hi); // like a DNS server on 40011 or WireGuard's 51820
    const connected = await freePort();
    // A client's socket: bound, then connected (the kernel says ESTABLISHED), started first.
    await guest.startFixture(["udp-connected", "127.0.0.1", String(connected), "127.0.0.1", "53"]);
    await guest.startServer("udp-bind", [["0.0.0.0", 68]]);
    await guest.startServer("udp-echo", [["127.0.0.1", server]]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${server}`, "the ephemeral-range UDP server", 20_000);
    const client = new Client(server);
    try {
      client.send("dns?");
      await client.waitFor(1);
      expect(client.received[0]!.toString()).toBe("dns?");
    } finally {
      client.close();
    }
    const dhcp = await host.waitForEvent((e) => e.type === "not-forwarding" && e.guestAddr === "0.0.0.0:68", "not-forwarding 68");
    expect(dhcp.error).toBe("the DHCP client's port");
    // The connected socket was bound before the server: had it been reported, it would be by now.
    expect(host.events.filter((e) => String(e.guestAddr).endsWith(`:${connected}`))).toEqual([]);
  });
});

/** A UDP port within [lo, hi] free on the host's 127.0.0.1 and ::1. */
async function freeUdpPortIn(lo: number, hi: number): Promise<number> {
  const free = (port: number, type: "udp4" | "udp6", host: string) =>
    new Promise<boolean>((resolve) => {
      const s = dgram.createSocket({ type, ipv6Only: type === "udp6" });
      s.once("error", () => resolve(false));
      s.bind(port, host, () => s.close(() => resolve(true)));
    });
  for (let i = 0; i < 100; i++) {
    const port = lo + 1000 + Math.floor(Math.random() * (hi - lo - 2000));
    if ((await free(port, "udp4", "127.0.0.1")) && (await free(port, "udp6", "::1"))) return port;
  }
  throw new Error("no free UDP port in the ephemeral range");
}
