// The lean multiplexer over a one-stream agent channel: a virtio-serial port (a pty standing
// in for the guest's device, socat for QEMU's chardev socket), between two porthole agents.
// Every test checks from `porthole status --json` that its connections took the "mux" path
// (counted by the host agent), and the far ends are real programs (the fixture servers, and
// CPython for how a stream ended).
import { describe, expect } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import * as dgram from "node:dgram";
import { existsSync, mkdirSync } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import { join } from "node:path";
import { e2eTest, exchange, fakeVirtioPort, freePort, Guest, pathsOf, PORTHOLE, readToEnd, startHostAgent, statusJSON, useHarness, answerAfterEOF } from "./harness.ts";

useHarness();

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** A guest agent on a fake virtio-serial port and a host agent on its chardev socket, the mux in use. */
async function serialPair(hostFlags: (guest: Guest) => string[] = () => []) {
  const guest = Guest.create();
  const port = await fakeVirtioPort(guest);
  const agent = guest.spawn([...PORTHOLE, "guest", "--listen", `serial://${port.device}`], "guest agent");
  await agent.waitForLine(/serving on serial:/, "stderr");
  await port.proc.waitFor(() => existsSync(port.chardev) || undefined, "the chardev socket");
  const host = startHostAgent(guest, ["--guest", `unix://${port.chardev}`, ...hostFlags(guest)]);
  await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect over the port");
  return { guest, agent, host, control: join(guest.dir, "state", "control.sock") };
}

/** CPython in the guest: accepts one connection at a time, prints how each ended ("eof N" or "reset N"). */
async function endReporter(guest: Guest, port: number) {
  const script = [
    "import socket, sys",
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
    `s.bind(("127.0.0.1", ${port})); s.listen(16); print("listening", flush=True)`,
    "while True:",
    "  c, _ = s.accept(); n = 0",
    "  try:",
    "    while True:",
    "      b = c.recv(65536)",
    "      if not b: print('eof', n, flush=True); break",
    "      n += len(b)",
    "  except ConnectionResetError: print('reset', n, flush=True)",
    "  c.close()",
  ].join("\n");
  const proc = guest.spawn(["/usr/bin/python3", "-c", script], "end reporter");
  await proc.waitForLine(/^listening/);
  return proc;
}

describe("the lean multiplexer over a virtio-serial stand-in", () => {
  e2eTest("the host takes it (an event says so) and 1 MiB each way goes over it, counted on the mux path", async () => {
    const { guest, host, control } = await serialPair();
    const usable = await host.waitForEvent((e) => e.type === "path-changed" && e.path === "mux", "the mux event");
    expect(usable.state).toBe("usable");
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    expect((await host.waitForForwarding(port)).path).toBe("mux");
    const data = randomBytes(1 << 20);
    expect(sha256(await exchange(port, data))).toBe(sha256(data));
    expect(pathsOf(control, port)).toEqual({ mux: 1 });
    const mux = statusJSON(control).paths!.mux!;
    expect(mux.bytesIn).toBe(1 << 20);
    expect(mux.bytesOut).toBe(1 << 20);
  });

  e2eTest("half-close from the host: the guest server reads EOF and its answer still arrives", async () => {
    const { guest, host, control } = await serialPair();
    const port = await freePort();
    await guest.startServer("digest", [["127.0.0.1", port]]);
    await host.waitForForwarding(port);
    const request = randomBytes(2 << 20);
    expect((await exchange(port, request)).toString()).toBe(sha256(request));
    expect(pathsOf(control, port)).toEqual({ mux: 1 });
  });

  e2eTest("half-close from the guest: the host client reads EOF and can still send", async () => {
    const { guest, host, control } = await serialPair();
    const port = await freePort();
    const server = await guest.startFixture(["send-then-digest", "127.0.0.1", String(port), String(256 << 10)]);
    await host.waitForForwarding(port);
    const reply = randomBytes(512 << 10);
    // The server's EOF first; only then does the client answer and close its side.
    const fromServer = await answerAfterEOF(port, reply);
    expect(fromServer.length).toBe(256 << 10);
    expect(await server.waitForLine(/^got /)).toBe(`got ${sha256(reply)}`);
    expect(pathsOf(control, port)).toEqual({ mux: 1 });
  });

  e2eTest("a guest server's reset after 100 KB reaches the host client as the data then a reset, 10 times in 10", async () => {
    const { guest, host, control } = await serialPair();
    const port = await freePort();
    await guest.startResetServer("127.0.0.1", port, 100_000);
    await host.waitForForwarding(port);
    const results = [];
    for (let i = 0; i < 10; i++) results.push(await readToEnd(port));
    expect(results).toEqual(Array.from({ length: 10 }, () => ({ end: "ECONNRESET", bytes: 100_000 })));
    expect(pathsOf(control, port)).toEqual({ mux: 10 });
  });

  e2eTest("a host client's reset reaches the guest server as a reset, its EOF as an EOF", async () => {
    const { guest, host, control } = await serialPair();
    const port = await freePort();
    const reporter = await endReporter(guest, port);
    await host.waitForForwarding(port);
    const send = (how: "reset" | "eof") =>
      new Promise<void>((resolve) => {
        const s = net.connect({ host: "127.0.0.1", port }, () => {
          s.write(Buffer.alloc(50_000, 1), () => {
            // Let the bytes cross first: a reset may overtake what is still in flight.
            setTimeout(() => (how === "reset" ? s.resetAndDestroy() : s.end()), 300);
          });
        });
        s.on("error", () => {});
        s.on("close", () => resolve());
        s.resume();
      });
    await send("reset");
    expect(await reporter.waitForLine(/^(eof|reset) /)).toBe("reset 50000");
    await send("eof");
    await reporter.waitFor(() => reporter.stdout.find((l) => l.startsWith("eof ")), "the EOF");
    expect(reporter.stdout.filter((l) => /^(eof|reset) /.test(l))).toEqual(["reset 50000", "eof 50000"]);
    expect(pathsOf(control, port)).toEqual({ mux: 2 });
  });

  e2eTest("a target nothing listens on resets the host client, and the mux goes on", async () => {
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    const { guest, host, control } = await serialPair((g) => ["--config", g.writeFile("c.yaml", `portForwards:\n- {guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n`)]);
    await host.waitForEvent((e) => e.type === "path-changed" && e.path === "mux" && e.state === "usable", "the mux");
    await expect(exchange(hostPort, Buffer.from("x"), "127.0.0.1", 5000)).rejects.toThrow("ECONNRESET");
    const echoPort = await freePort();
    await guest.startEcho("127.0.0.1", echoPort);
    await host.waitForForwarding(echoPort);
    expect((await exchange(echoPort, Buffer.from("still here"))).toString()).toBe("still here");
    expect(pathsOf(control, echoPort)).toEqual({ mux: 1 });
  });

  e2eTest("200 concurrent connections each get their own bytes back", async () => {
    const { guest, host, control } = await serialPair();
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    const inputs = Array.from({ length: 200 }, (_, i) => randomBytes(16_384 + i * 97));
    const outputs = await Promise.all(inputs.map((b) => exchange(port, b)));
    expect(outputs.map(sha256)).toEqual(inputs.map(sha256));
    expect(pathsOf(control, port)).toEqual({ mux: 200 });
  });

  e2eTest("a reader that never reads holds back only its own connection, either way", async () => {
    const { guest, host, control } = await serialPair();
    const [stallPort, sourcePort, echoPort] = [await freePort(), await freePort(), await freePort()];
    await guest.startServer("stall", [["127.0.0.1", stallPort]]);
    await guest.startServer("source", [["127.0.0.1", sourcePort]]);
    await guest.startEcho("127.0.0.1", echoPort);
    for (const p of [stallPort, sourcePort, echoPort]) await host.waitForForwarding(p);
    // Host -> guest: a guest server that never reads, and a client writing 64 MiB into it.
    const writer = net.connect({ host: "127.0.0.1", port: stallPort });
    writer.on("error", () => {});
    const big = Buffer.alloc(64 << 20, 2);
    writer.write(big);
    // Guest -> host: an endless source, and a host client that never reads.
    const idle = net.connect({ host: "127.0.0.1", port: sourcePort });
    idle.on("error", () => {});
    idle.pause();
    await Bun.sleep(1500); // both stuck connections fill every buffer they can
    const data = randomBytes(8 << 20);
    expect(sha256(await exchange(echoPort, data, "127.0.0.1", 20_000))).toBe(sha256(data));
    expect(writer.writableLength).toBeGreaterThan(0); // still stuck: the stall server read nothing
    const paths = statusJSON(control).paths!.mux!;
    expect(paths.open).toBe(2);
    writer.destroy();
    idle.destroy();
    expect(pathsOf(control, echoPort)).toEqual({ mux: 1 });
  });

  e2eTest("a guest unix socket forwarded to a host socket goes over the mux too (an HTTP request)", async () => {
    let guestSocket = "";
    const { guest, host, control } = await serialPair((g) => {
      mkdirSync(join(g.dir, "in-guest"));
      guestSocket = join(g.dir, "in-guest", "http.sock");
      return ["--config", g.writeFile("c.yaml", `portForwards:\n- guestSocket: ${guestSocket}\n  hostSocket: http.sock\n`)];
    });
    await guest.startFixture(["http-unix", guestSocket]);
    const hostSocket = join(guest.dir, "state", "http.sock");
    await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === hostSocket, "the socket forward");
    const body = await new Promise<string>((resolve, reject) => {
      http.get({ socketPath: hostSocket, path: "/ping" }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (text += c));
        res.on("end", () => resolve(text));
      }).on("error", reject);
    });
    expect(body).toBe("hello from the guest's unix socket, you asked for /ping");
    expect(statusJSON(control).paths!.mux!.connections).toBe(1);
  });

  e2eTest("UDP keeps its gRPC flows, inside the same stream", async () => {
    const { guest, host, control } = await serialPair();
    const port = await freePort();
    await guest.startServer("udp-echo", [["127.0.0.1", port]]);
    const forwarded = await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward");
    expect(forwarded.path).toBe("grpc");
    const client = dgram.createSocket("udp4");
    try {
      const reply = new Promise<string>((resolve) => client.on("message", (m) => resolve(m.toString())));
      const timer = setInterval(() => client.send("over the mux's gRPC stream", port, "127.0.0.1"), 300);
      expect(await reply).toBe("over the mux's gRPC stream");
      clearInterval(timer);
    } finally {
      client.close();
    }
    expect(statusJSON(control).paths?.mux).toBeUndefined(); // no mux stream of its own: a gRPC flow
  });

  e2eTest("over a tcp:// channel with its token too: 1 MiB each way on the mux path", async () => {
    const guest = Guest.create();
    const { guestIP } = guest.linkToHost();
    const token = guest.writeFile("token", "mux-token-0123456789abcdef\n");
    const address = `tcp://${guestIP}:${await freePort()}`;
    const agent = guest.spawn([...PORTHOLE, "guest", "--listen", address, "--token-file", token], "guest agent");
    await agent.waitForLine(/serving on tcp:/, "stderr");
    const host = startHostAgent(guest, ["--guest", address, "--token-file", token]);
    expect((await host.waitForEvent((e) => e.type === "path-changed" && e.path === "mux", "the mux event")).state).toBe("usable");
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    const data = randomBytes(1 << 20);
    expect(sha256(await exchange(port, data))).toBe(sha256(data));
    expect(pathsOf(join(guest.dir, "state", "control.sock"), port)).toEqual({ mux: 1 });
  });

  e2eTest("--forwarder grpc keeps gRPC tunnels on the same channel", async () => {
    const { guest, host, control } = await serialPair(() => ["--forwarder", "grpc"]);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    expect((await host.waitForForwarding(port)).path).toBe("grpc");
    expect((await exchange(port, Buffer.from("over grpc"))).toString()).toBe("over grpc");
    expect(pathsOf(control, port)).toEqual({ grpc: 1 });
    expect(host.events.some((e) => e.path === "mux")).toBe(false);
  });
});
