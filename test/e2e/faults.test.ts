// porthole under faults, load and bad input: nothing dies silently, nothing stays held,
// nothing hangs, nothing grows without bound.
import { describe, expect } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { limaGuestServiceDefinition, type TunnelMessage } from "../../src/proto/guest-service.ts";
import {
  closeWaitOf, defer, e2eTest, exchange, fdCount, freePort, Guest, rssMiB, startHostAgent, startPair, tcpListenersOf, tryConnect, useHarness,
} from "./harness.ts";

useHarness();

/** The backlog of the TCP listener on 127.0.0.1:port (ss shows it as Send-Q). */
function listenBacklog(port: number): number {
  const line = spawnSync("ss", ["-Hltn", `( sport = :${port} and src 127.0.0.1 )`]).stdout.toString().trim();
  return Number(line.split(/\s+/)[2]);
}

/** Resolves when the socket closes (or errors), with how it ended. */
function ended(socket: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? "error"));
    socket.once("close", () => resolve("closed"));
  });
}

describe("faults", () => {
  e2eTest("guest agent killed mid-transfer: the client's connection ends, and forwarding is back when the agent returns", async () => {
    const { guest, guestAgent, host } = await startPair();
    const port = await freePort();
    await guest.startServer("source", [["127.0.0.1", port]]);
    await host.waitForForwarding(port);
    const client = net.connect(port, "127.0.0.1");
    let received = 0;
    client.on("data", (c: Buffer) => (received += c.length));
    await host.proc.waitFor(() => received > 1 << 20 || undefined, "data flowing");
    const end = ended(client);
    await guestAgent.kill("SIGKILL");
    expect(await Promise.race([end, Bun.sleep(10_000).then(() => "still open")])).not.toBe("still open");

    await guest.startAgent();
    await host.waitForNthEvent(2, (e) => e.type === "guest-connected", "reconnect");
    const again = net.connect(port, "127.0.0.1");
    let more = 0;
    again.on("data", (c: Buffer) => (more += c.length));
    await host.proc.waitFor(() => more > 1 << 20 || undefined, "data flowing again");
    again.destroy();
  });

  e2eTest("host agent killed and restarted: nothing stays held, and it picks the guest's ports up again", async () => {
    const { guest, host } = await startPair();
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    await host.proc.kill("SIGKILL");
    expect(await tryConnect(port)).toBe("ECONNREFUSED");
    expect(await tryConnect(port, "::1")).toBe("ECONNREFUSED");
    expect(existsSync(join(guest.dir, "state", "control.sock"))).toBe(true); // left by the kill ...
    const again = startHostAgent(guest);
    await again.waitForForwarding(port); // ... and replaced, not refused, by the next agent
    expect(again.events.some((e) => e.type === "warning")).toBe(false);
    expect((await exchange(port, Buffer.from("back"))).toString()).toBe("back");
  });

  for (const forwarder of ["auto", "grpc"]) {
    e2eTest(`SIGTERM (${forwarder}): each agent closes its listeners and exits 0; a connection it cuts off is reset (not ended: no truncated transfer looks complete)`, async () => {
      const { guest, guestAgent, host } = await startPair(forwarder);
      const port = await freePort();
      await guest.startEcho("127.0.0.1", port);
      await host.waitForForwarding(port);
      const open = net.connect(port, "127.0.0.1");
      await new Promise((r) => open.once("connect", r));
      const end = ended(open);
      host.proc.child.kill("SIGTERM");
      expect(await host.proc.exited).toBe(0);
      expect(await Promise.race([end, Bun.sleep(10_000).then(() => "still open")])).toBe("ECONNRESET");
      expect(await tryConnect(port)).toBe("ECONNREFUSED");
      guestAgent.child.kill("SIGTERM");
      expect(await guestAgent.exited).toBe(0);
      expect(existsSync(guest.socket)).toBe(false);
    });
  }
});

describe("load", () => {
  e2eTest("10,000 short connections: fds back to baseline, no CLOSE_WAIT, memory back within 64 MiB", async () => {
    const { guest, guestAgent, host } = await startPair();
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    const pids = [host.proc.child.pid!, guestAgent.child.pid!] as const;
    for (let i = 0; i < 200; i++) await exchange(port, Buffer.from("warm")); // let the runtimes settle
    const baseFds = pids.map(fdCount);
    const baseRss = pids.map(rssMiB);
    for (let batch = 0; batch < 100; batch++) {
      await Promise.all(Array.from({ length: 100 }, () => exchange(port, Buffer.from("x"))));
    }
    await host.proc.waitFor(() => pids.every((p, i) => fdCount(p) <= baseFds[i]!) || undefined, `fds back to ${baseFds}`);
    expect(closeWaitOf(pids[0])).toBe(0);
    expect(closeWaitOf(pids[1], guest.ns)).toBe(0);
    // Memory comes back, not at once: with the native relay no byte passes through JavaScript,
    // so the runtimes' collectors run lazily (a guest agent measured +161 MiB right after
    // 30,000 connections and +6 MiB 12 s later). A leak never comes back and still fails here.
    await host.proc.waitFor(() => pids.every((p, i) => rssMiB(p) - baseRss[i]! < 64) || undefined, "both agents' memory back within 64 MiB of its baseline", 30_000);
  });

  e2eTest("a reader of 1 KiB/s against a fast writer: both agents' memory stays bounded", async () => {
    const { guest, guestAgent, host } = await startPair();
    const port = await freePort();
    await guest.startServer("source", [["127.0.0.1", port]]);
    await host.waitForForwarding(port);
    const pids = [host.proc.child.pid!, guestAgent.child.pid!];
    const base = pids.map(rssMiB);
    const client = net.connect(port, "127.0.0.1");
    client.pause();
    for (let second = 0; second < 5; second++) {
      await Bun.sleep(1000);
      client.read(1024);
    }
    pids.forEach((p, i) => expect(rssMiB(p) - base[i]!).toBeLessThan(64));
    client.destroy();
  });

  e2eTest("1,000 concurrent connections through one forward, and 200 forwarded ports, byte-identical", async () => {
    const { guest, host } = await startPair();
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    // The host listener queues 4096 connections, not the runtime's 512: a burst past 512 used
    // to overflow it, and the kernel reset some clients (SYN cookies that failed) unseen by the agent.
    expect(listenBacklog(port)).toBe(4096);
    const payloads = Array.from({ length: 1000 }, () => randomBytes(2048));
    const replies = await Promise.all(payloads.map((p) => exchange(port, p)));
    expect(replies.every((r, i) => r.equals(payloads[i]!))).toBe(true);

    const ports: number[] = [];
    while (ports.length < 200) ports.push(await freePort());
    await guest.startServer("echo", ports.map((p) => ["127.0.0.1", p] as [string, number]));
    for (const p of ports) await host.waitForForwarding(p, 30_000);
    const many = await Promise.all(ports.map((p) => exchange(p, Buffer.from(`port ${p}`))));
    expect(many.map((b) => b.toString())).toEqual(ports.map((p) => `port ${p}`));
  });

  e2eTest("a guest listener reopened 100 times in a row is usable on the host right after each reopening", async () => {
    const { guest } = await startPair();
    const port = await freePort();
    const controller = guest.spawn([process.execPath, join(import.meta.dir, "../fixtures/servers.ts"), "controller"], "controller", { stdin: true });
    for (let i = 0; i < 100; i++) {
      controller.child.stdin!.write(`open ${port}\n`);
      await controller.waitForLine(new RegExp(`^opened ${port} `));
      const deadline = Date.now() + 5000;
      while ((await tryConnect(port)) !== "connected") {
        if (Date.now() > deadline) throw new Error(`round ${i}: the host port did not accept`);
        await Bun.sleep(5);
      }
      controller.stdout.length = 0;
      controller.child.stdin!.write(`close ${port}\n`);
      await controller.waitForLine(new RegExp(`^closed ${port} `));
      while ((await tryConnect(port)) === "connected") {
        if (Date.now() > deadline + 5000) throw new Error(`round ${i}: the host port stayed held`);
        await Bun.sleep(5);
      }
      controller.stdout.length = 0;
    }
  });
});

describe("bad input", () => {
  e2eTest("garbage on the agent channel and a malformed Tunnel handshake are refused; the agent keeps serving", async () => {
    const { guest, guestAgent, host } = await startPair();
    // Garbage and an oversized burst are closed with a logged reason; a truncated frame after a
    // valid preface is left to HTTP/2. The agent must go on serving the real host agent.
    const hostile: net.Socket[] = [];
    for (const garbage of [randomBytes(4096), Buffer.alloc(1 << 20, 0xff), Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\xff\xff\xff\x00\x00")]) {
      const s = net.connect(guest.socket);
      s.on("error", () => {});
      s.write(garbage);
      hostile.push(s);
    }
    defer(() => hostile.forEach((s) => s.destroy()));
    const closed = await Promise.all(hostile.slice(0, 2).map((s) => Promise.race([ended(s), Bun.sleep(10_000).then(() => "still open")])));
    expect(closed).not.toContain("still open");
    await guestAgent.waitFor(() => guestAgent.stderr.filter((l) => l.includes("closed a connection that is not speaking gRPC")).length >= 2 || undefined, "the rejections in the log");
    // Checked in place (MSG_PEEK): the garbage never reached a relay, and porthole's host (marked in
    // its SETTINGS) is served by HTTP/2 with no relay in front.
    expect(guestAgent.stderr.filter((l) => l.includes("porthole's host agent is served by HTTP/2 directly"))).toHaveLength(1);
    const Lima = grpc.makeGenericClientConstructor(limaGuestServiceDefinition, "GuestService");
    const client = new Lima(`unix://${guest.socket}`, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
    defer(() => client.close());
    for (const guest_addr of ["not an address", "127.0.0.1:70000", "[zz]:1", ""]) {
      const call = client.Tunnel() as grpc.ClientDuplexStream<Partial<TunnelMessage>, TunnelMessage>;
      const status = new Promise<grpc.ServiceError>((resolve) => call.on("error", resolve));
      call.on("data", () => {});
      call.write({ id: "bad", protocol: "tcp", guest_addr });
      expect((await status).code).toBe(grpc.status.INVALID_ARGUMENT);
    }
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    expect((await exchange(port, Buffer.from("still serving"))).toString()).toBe("still serving");
  });

  e2eTest("a guest that reports nonsense (port 0, 70000, a non-IP, 100,000 ports, public addresses) gets nothing bound outside loopback and the rules", async () => {
    const guest = Guest.create();
    const flood = Array.from({ length: 100_000 }, (_, i) => ({ protocol: "tcp", ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, port: 1000 + (i % 50_000) }));
    const legit = await freePort();
    const reported = [
      { protocol: "tcp", ip: "127.0.0.1", port: 0 },
      { protocol: "tcp", ip: "127.0.0.1", port: 70000 },
      { protocol: "tcp", ip: "not-an-ip", port: 8080 },
      { protocol: "sctp", ip: "127.0.0.1", port: 8081 },
      { protocol: "tcp", ip: "8.8.8.8", port: 53 },
      { protocol: "tcp", ip: "0.0.0.0", port: legit },
      ...flood,
    ];
    // A hostile guest agent speaking Lima's protocol with those reports.
    const server = new grpc.Server();
    server.addService(limaGuestServiceDefinition, {
      GetInfo: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, { local_ports: reported }),
      GetEvents: () => {},
      Tunnel: (call: grpc.ServerDuplexStream<unknown, unknown>) => call.end(),
    });
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${guest.socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
    defer(() => void server.forceShutdown());
    const host = startHostAgent(guest, ["--no-ipv6-loopback"]);
    await host.waitForForwarding(legit, 30_000);
    const logs = host.events.filter((e) => e.type === "log").map((e) => String(e.message));
    expect(logs.some((l) => l.includes("0 is not a port"))).toBe(true);
    expect(logs.some((l) => l.includes("70000 is not a port"))).toBe(true);
    expect(logs.some((l) => l.includes('"not-an-ip" is not an IP address'))).toBe(true);
    expect(logs.some((l) => l.includes("more than 10000 ports"))).toBe(true);
    // Only the legitimate wildcard bind, on loopback: nothing for 8.8.8.8 or the 10.x flood.
    expect(tcpListenersOf(host.proc.child.pid!)).toEqual([`127.0.0.1:${legit}`]);
    expect(host.proc.running).toBe(true);
  });
});
