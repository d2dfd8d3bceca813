// The agent channel over each transport: a virtio-serial port (a pty standing in for the
// device, socat standing in for QEMU's chardev socket), TCP with its token, and vsock as far
// as this machine allows (listening; no vsock connect can complete here).
import { spawnSync } from "node:child_process";
import { describe, expect } from "bun:test";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readlinkSync, realpathSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { e2eTest, exchange, fakeVirtioPort, freePort, Guest, limaGoHostRun, limaGoPeer, PORTHOLE, relayThreads, runPorthole, startHostAgent, stickyVirtioPort, traceCalls, useHarness } from "./harness.ts";

useHarness();

/** A guest agent serving on a stand-in virtio-serial port (with `env`), a host agent through it, and an echo port forwarded. */
async function forwardOverSerial(env: string[] = []) {
  const guest = Guest.create();
  const port = await fakeVirtioPort(guest);
  const agent = guest.spawn(["env", ...env, ...PORTHOLE, "guest", "--listen", `serial://${port.device}`], "guest agent");
  await agent.waitForLine(/serving on serial:/, "stderr");
  await port.proc.waitFor(() => existsSync(port.chardev) || undefined, "the chardev socket");
  const host = startHostAgent(guest, ["--guest", `unix://${port.chardev}`]);
  await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect over the port");
  const echoPort = await freePort();
  await guest.startEcho("127.0.0.1", echoPort);
  await host.waitForForwarding(echoPort);
  return { guest, port, agent, echoPort };
}

describe("virtio-serial (guest side)", () => {
  e2eTest("the whole agent connection runs over the port; the guest keeps serving when the host goes and comes back", async () => {
    const guest = Guest.create();
    let port = await fakeVirtioPort(guest);
    const agent = guest.spawn([...PORTHOLE, "guest", "--listen", `serial://${port.device}`], "guest agent");
    await agent.waitForLine(/serving on serial:/, "stderr");
    await port.proc.waitFor(() => existsSync(port.chardev) || undefined, "the chardev socket");

    const hostArgs = (chardev: string) => ["--guest", `unix://${chardev}`];
    let host = startHostAgent(guest, hostArgs(port.chardev));
    await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect over the port");
    const echoPort = await freePort();
    await guest.startEcho("127.0.0.1", echoPort);
    await host.waitForForwarding(echoPort);
    expect((await exchange(echoPort, Buffer.from("over serial"))).toString()).toBe("over serial");

    // The host side goes away (QEMU's socket closes): the guest reads EOF and waits for the next.
    await host.proc.kill();
    await port.proc.kill();
    port = await fakeVirtioPort(guest);
    await port.proc.waitFor(() => existsSync(port.chardev) || undefined, "the new chardev socket");
    host = startHostAgent(guest, hostArgs(port.chardev));
    await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect again", 15_000);
    await host.waitForForwarding(echoPort);
    expect((await exchange(echoPort, Buffer.from("again"))).toString()).toBe("again");
    expect(agent.running).toBe(true);
    // The old pty died with its far end: the device is opened again by path, and said once.
    expect(agent.stderr.filter((l) => l.includes("opening it again"))).toEqual([expect.stringContaining("the device went away")]);
  });

  e2eTest("a device that reads EOF at once without a hang-up (a plain file) is tried again every 200 ms, not in a tight loop", async () => {
    const guest = Guest.create();
    const file = join(guest.dir, "not-a-port");
    writeFileSync(file, "");
    const agent = guest.spawn([...PORTHOLE, "guest", "--listen", `serial://${file}`], "guest agent");
    await agent.waitForLine(/serving on serial:/, "stderr");
    // Each try of a host session makes one socketpair: count them over two seconds.
    const stop = await traceCalls(agent.child.pid!, join(guest.dir, "tries.strace"), ["socketpair"]);
    await Bun.sleep(2000);
    const tries = (await stop()).filter((l) => /socketpair\(/.test(l)).length;
    expect(tries).toBeGreaterThan(0);
    expect(tries).toBeLessThanOrEqual(15); // 10 at 200 ms; a tight loop makes thousands
    expect(agent.running).toBe(true);
  });

  e2eTest("the port's bytes are read and written by the shim's relay thread (strace), never through the runtime's thread pool", async () => {
    const { guest, port, agent, echoPort } = await forwardOverSerial();
    const pid = agent.child.pid!;
    // The device's fds in the agent: the pty behind the port's link.
    const pty = realpathSync(port.device);
    const deviceFds = readdirSync(`/proc/${pid}/fd`).filter((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`) === pty;
      } catch {
        return false;
      }
    });
    expect(deviceFds.length).toBe(2); // the agent's, kept open for the next host, and the relay's copy
    const stop = await traceCalls(pid, join(guest.dir, "serial.strace"));
    const payload = randomBytes(256 << 10);
    expect((await exchange(echoPort, payload)).equals(payload)).toBe(true);
    const calls = await stop();
    const onDevice = calls.filter((l) => new RegExp(`^\\d+ +(read|write)\\((${deviceFds.join("|")}),`).test(l));
    const threads = new Set(onDevice.map((l) => l.split(" ")[0]));
    expect(onDevice.some((l) => /^\d+ +read\(/.test(l))).toBe(true);
    expect(onDevice.some((l) => /^\d+ +write\(/.test(l))).toBe(true);
    expect([...threads]).toEqual(relayThreads(pid));
  });
  e2eTest("without the relay thread (PORTHOLE_NATIVE_RELAY=0) file streams carry the port, and the agent says so once", async () => {
    const { agent, echoPort } = await forwardOverSerial(["PORTHOLE_NATIVE_RELAY=0"]);
    const payload = randomBytes(64 << 10);
    expect((await exchange(echoPort, payload)).equals(payload)).toBe(true);
    const said = agent.stderr.filter((l) => l.includes("relayed through file streams"));
    expect(said).toEqual([expect.stringContaining("PORTHOLE_NATIVE_RELAY=0")]);
  });
});

describe("virtio-serial: a new host on a port whose guest saw no hang-up", () => {
  // QEMU's port flag for "a host is connected" can drop and rise again before the guest reads,
  // so the next host's first bytes may follow the last host's on the same open device.
  for (const forwarder of ["auto", "grpc"]) {
    e2eTest(`--forwarder ${forwarder}: three host agents in a row, each killed and the next started at once, each answered`, async () => {
      const guest = Guest.create();
      const port = await stickyVirtioPort(guest);
      const agent = guest.spawn([...PORTHOLE, "guest", "--listen", `serial://${port.device}`], "guest agent");
      await agent.waitForLine(/serving on serial:/, "stderr");
      const echoPort = await freePort();
      await guest.startEcho("127.0.0.1", echoPort);
      for (let round = 1; round <= 3; round++) {
        const host = startHostAgent(guest, ["--guest", `unix://${port.chardev}`, "--forwarder", forwarder]);
        await port.proc.waitForLine(new RegExp(`^host ${round}$`));
        await host.waitForEvent((e) => e.type === "guest-connected", `host ${round} to connect`, 20_000);
        await host.waitForForwarding(echoPort);
        expect((await exchange(echoPort, Buffer.from(`round ${round}`))).toString()).toBe(`round ${round}`);
        // Answered at its first try: no probe or handshake ran out of time first.
        expect(host.events.filter((e) => e.type === "guest-unreachable")).toEqual([]);
        await host.proc.kill("SIGKILL");
      }
      expect(agent.running).toBe(true);
      expect(agent.stderr.filter((l) => l.includes("a new host connection began on the port"))).toHaveLength(1);
    });
  }
});

describe("virtio-serial: Lima's own host stack (grpc-go) after another host, on a port whose guest saw no hang-up", () => {
  e2eTest("a porthole host killed, then two grpc-go hosts one after the other: each runs GetInfo, GetEvents and both Tunnels to the end", async () => {
    const peerBin = limaGoPeer();
    const guest = Guest.create();
    const port = await stickyVirtioPort(guest);
    const agent = guest.spawn([...PORTHOLE, "guest", "--listen", `serial://${port.device}`], "guest agent");
    await agent.waitForLine(/serving on serial:/, "stderr");
    const [tcp, udp] = [await freePort(), await freePort()];
    await guest.startEcho("127.0.0.1", tcp);
    await guest.startServer("udp-echo", [["127.0.0.1", udp]]);
    const first = startHostAgent(guest, ["--guest", `unix://${port.chardev}`, "--forwarder", "grpc"]);
    await first.waitForForwarding(tcp);
    await first.proc.kill("SIGKILL");
    for (const round of [2, 3]) {
      const peer = guest.spawn([peerBin, "host", port.chardev, `127.0.0.1:${tcp}`, `127.0.0.1:${udp}`], `grpc-go host ${round}`);
      const steps = await limaGoHostRun(peer, 30_000);
      expect(steps.find((s) => s.error)).toBeUndefined();
      expect(steps.find((s) => s.step === "Tunnel tcp")?.echo).toBe("hello from grpc-go");
      expect(steps.find((s) => s.step === "Tunnel udp")?.echo).toBe("one datagram");
      expect(await peer.exited).toBe(0);
    }
    // Each host was answered on its first connection: the stand-in took exactly three.
    expect(port.proc.stdout.filter((l) => l.startsWith("host "))).toEqual(["host 1", "host 2", "host 3"]);
    expect(agent.stderr.filter((l) => l.includes("a new host connection began on the port"))).toHaveLength(1); // said once
    expect(agent.running).toBe(true);
  });
});

describe("virtio-serial: a host killed in the middle of a transfer", () => {
  // The killed host may leave half a frame on the port; the next host's first bytes then
  // read as the rest of it, and the guest cannot tell until the framing breaks.
  for (const forwarder of ["auto", "grpc"]) {
    e2eTest(`--forwarder ${forwarder}: the next host agent is answered on its first connection`, async () => {
      const guest = Guest.create();
      const port = await stickyVirtioPort(guest);
      const agent = guest.spawn([...PORTHOLE, "guest", "--listen", `serial://${port.device}`], "guest agent");
      await agent.waitForLine(/serving on serial:/, "stderr");
      const sinkPort = await freePort();
      await guest.startServer("stall", [["127.0.0.1", sinkPort]]);
      const first = startHostAgent(guest, ["--guest", `unix://${port.chardev}`, "--forwarder", forwarder]);
      await first.waitForForwarding(sinkPort);
      // A client that writes as fast as the port takes it: frames are in flight when the host dies.
      const client = net.connect(sinkPort, "127.0.0.1");
      client.on("error", () => {});
      const chunk = randomBytes(256 << 10);
      let sent = 0;
      const pump = () => {
        while (!client.destroyed && client.write(chunk)) sent += chunk.length;
      };
      client.on("connect", pump);
      client.on("drain", pump);
      await first.proc.waitFor(() => sent >= 1 << 20 || undefined, "1 MiB on its way");
      await first.proc.kill("SIGKILL");
      client.destroy();
      const echoPort = await freePort();
      await guest.startEcho("127.0.0.1", echoPort);
      const next = startHostAgent(guest, ["--guest", `unix://${port.chardev}`, "--forwarder", forwarder]);
      await next.waitForEvent((e) => e.type === "guest-connected", "the next host to connect", 20_000);
      await next.waitForForwarding(echoPort);
      expect((await exchange(echoPort, Buffer.from("after"))).toString()).toBe("after");
      // Answered on its first connection (the port stand-in counts them: host 2 is the next host's first).
      expect(port.proc.stdout.filter((l) => l.startsWith("host "))).toEqual(["host 1", "host 2"]);
      expect(agent.running).toBe(true);
    });
  }
});

describe("TCP agent channel", () => {
  e2eTest("needs the shared token: the right one connects, a wrong one is rejected before any RPC", async () => {
    const guest = Guest.create();
    const { guestIP } = guest.linkToHost();
    const tokenFile = join(guest.dir, "token");
    writeFileSync(tokenFile, "s3cret-token-0123456789abcdef\n", { mode: 0o600 });
    const agentPort = await freePort();
    const addr = `tcp://${guestIP}:${agentPort}`;

    const noToken = runPorthole(["guest", "--listen", addr], { netns: guest.ns });
    expect(noToken.code).toBe(1);
    expect(noToken.stderr).toContain("a TCP agent channel needs --token-file");

    const agent = guest.spawn([...PORTHOLE, "guest", "--listen", addr, "--token-file", tokenFile], "guest agent");
    await agent.waitForLine(/serving on tcp:/, "stderr");

    const wrongFile = join(guest.dir, "wrong");
    writeFileSync(wrongFile, "not-the-token-0123456789abcdef\n");
    const wrong = startHostAgent(guest, ["--guest", addr, "--token-file", wrongFile]);
    await agent.waitForLine(/rejected a connection .* without the right token/, "stderr");
    expect(wrong.events.some((e) => e.type === "guest-connected")).toBe(false);
    await wrong.proc.kill();
    // Anyone who reaches the port can be refused: 200 more wrong tokens make at most one more line (a line per 10 s).
    const before = agent.stderr.filter((l) => l.includes("without the right token")).length;
    for (let i = 0; i < 200; i++) {
      const c = spawnSync("ip", ["netns", "exec", guest.ns, "sh", "-c", `printf 'wrong-token-%d\\n' ${i} | socat -t 0.2 - TCP:${guestIP}:${agentPort}`]);
      expect(c.status === 0 || c.status === 1).toBe(true);
    }

    const host = startHostAgent(guest, ["--guest", addr, "--token-file", tokenFile]);
    await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect");
    const echoPort = await freePort();
    await guest.startEcho("127.0.0.1", echoPort);
    await host.waitForForwarding(echoPort);
    expect((await exchange(echoPort, Buffer.from("over tcp"))).toString()).toBe("over tcp");
    // Counted once the agent has served a host after them: every wrong token's refusal was handled by then.
    expect(agent.stderr.filter((l) => l.includes("without the right token")).length - before).toBeLessThanOrEqual(1);
  });
});

describe("vsock (listen only: no vsock connect can complete on these machines)", () => {
  e2eTest("the guest agent listens on vsock beside a unix socket, and serves through the unix one", async () => {
    const guest = Guest.create();
    const vsockPort = 20_000 + Math.floor(Math.random() * 40_000);
    const agent = guest.spawn([...PORTHOLE, "guest", "--listen", `vsock://:${vsockPort}`, "--listen", `unix://${guest.socket}`], "guest agent");
    await agent.waitForLine(new RegExp(`serving on vsock://:${vsockPort}`), "stderr");
    await agent.waitForLine(/serving on unix:/, "stderr");
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    const echoPort = await freePort();
    await guest.startEcho("127.0.0.1", echoPort);
    await host.waitForForwarding(echoPort);
    expect((await exchange(echoPort, Buffer.from("x"))).toString()).toBe("x");
  });

  e2eTest("a listen address with a CID, and a port already taken, are clear errors", async () => {
    const guest = Guest.create();
    const withCid = runPorthole(["guest", "--listen", "vsock://42:2222"], { netns: guest.ns });
    expect(withCid.code).toBe(1);
    expect(withCid.stderr).toContain("to listen, leave the CID out (vsock://:2222)");

    const vsockPort = 20_000 + Math.floor(Math.random() * 40_000);
    const first = guest.spawn([...PORTHOLE, "guest", "--listen", `vsock://:${vsockPort}`], "first agent");
    await first.waitForLine(/serving on vsock:/, "stderr");
    const second = runPorthole(["guest", "--listen", `vsock://:${vsockPort}`], { netns: guest.ns });
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`vsock listen on port ${vsockPort}: EADDRINUSE`);
  });
});
