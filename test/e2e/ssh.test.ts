// The SSH forwarder against a real OpenSSH sshd in the guest: data, concurrency, half-close,
// sshd restarts, choosing the forwarder, SSH over a non-TCP stream, UDP, and host keys.
import { describe, expect } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import {
  e2eTest, echoRoundTrip, exchange, freePort, Guest, rssMiB, socketOutcome, sshChannels, startHostAgent, useHarness, type HostAgentProc, type Sshd, answerAfterEOF } from "./harness.ts";

useHarness();

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

interface SshSetup {
  guest: Guest;
  sshd: Sshd;
  guestIP: string;
  stateDir: string;
}

async function sshGuest(options: { forwarding?: boolean } = {}): Promise<SshSetup> {
  const guest = Guest.create();
  const { guestIP } = guest.linkToHost();
  const sshd = await guest.startSshd(options);
  await guest.startAgent();
  return { guest, sshd, guestIP, stateDir: join(guest.dir, "state") };
}

function sshFlags(s: SshSetup, extra: string[] = []): string[] {
  return ["--ssh", `tcp://${s.guestIP}:22`, "--ssh-user", "root", "--ssh-identity", s.sshd.clientKey, "--state-dir", s.stateDir, ...extra];
}

async function sshHost(s: SshSetup, extra: string[] = [], env?: Record<string, string>): Promise<HostAgentProc> {
  const host = startHostAgent(s.guest, ["--forwarder", "ssh", ...sshFlags(s, extra)], { env });
  await host.waitForEvent((e) => e.type === "ssh-connected", "the SSH connection");
  return host;
}

describe("SSH forwarder", () => {
  e2eTest("64 MiB each way and 500 concurrent connections, all carried by sshd's direct-tcpip channels", async () => {
    const s = await sshGuest();
    const host = await sshHost(s);
    const port = await freePort();
    await s.guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);

    const { sent, received, receivedBytes } = await echoRoundTrip(port, 64 << 20);
    expect(receivedBytes).toBe(64 << 20);
    expect(received).toBe(sent);

    const payloads = Array.from({ length: 500 }, () => randomBytes(4096));
    const replies = await Promise.all(payloads.map((p) => exchange(port, p)));
    expect(replies.map(sha256)).toEqual(payloads.map(sha256));
    await s.sshd.proc.waitFor(() => sshChannels(s.sshd.proc) >= 501 || undefined, "sshd to log every channel");
    // No OpenSSH client on the host: the agent has no child processes at all.
    expect(childrenOf(host.proc.child.pid!)).toEqual([]);
  });

  e2eTest("an sshd that forbids forwarding (AllowTcpForwarding no): every connection is reset, and why is said once", async () => {
    const s = await sshGuest({ forwarding: false });
    const host = await sshHost(s);
    const port = await freePort();
    await s.guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    for (let i = 0; i < 3; i++) {
      const client = net.connect({ port, host: "127.0.0.1" }, () => client.write("hello"));
      expect((await socketOutcome(client)).how).toBe("ECONNRESET");
    }
    await host.waitForEvent((e) => e.type === "warning" && String(e.message).includes("administratively prohibited"), "the refusal said");
    const said = host.events.filter((e) => e.type === "warning" && String(e.message).includes("administratively prohibited"));
    expect(said).toHaveLength(1);
    expect(String(said[0]!.message)).toContain("AllowTcpForwarding");
  });

  e2eTest("sshd agrees on aes128-gcm@openssh.com both ways with the agent (sshd's kex log), the cipher this runtime does fastest", async () => {
    const s = await sshGuest();
    await sshHost(s);
    const kex = await s.sshd.proc.waitFor(() => {
      const lines = s.sshd.proc.stderr.filter((l) => /kex: (client->server|server->client) cipher:/.test(l));
      return lines.length >= 2 ? lines : undefined;
    }, "sshd to log the negotiated ciphers");
    for (const line of kex) expect(line).toMatch(/cipher: aes128-gcm@openssh\.com MAC: <implicit> compression: none/);
  });

  e2eTest("a host client that stops reading holds the guest back by the SSH window (the agent does not buffer the flood), and gets the rest once it reads again", async () => {
    const s = await sshGuest();
    const host = await sshHost(s);
    const port = await freePort();
    await s.guest.startServer("source", [["127.0.0.1", port]]); // writes as fast as it is read, forever
    await host.waitForForwarding(port);

    const socket = net.connect({ host: "127.0.0.1", port });
    socket.pause();
    await new Promise((r) => socket.once("connect", r));
    // Long enough for sshd to send far more than the 2 MiB window if nothing held it back.
    await Bun.sleep(3000);
    expect(rssMiB(host.proc.child.pid!)).toBeLessThan(200);
    // Reading again, the window opens again (ssh2's drain hook): 64 MiB more arrive.
    let received = 0;
    await new Promise<void>((resolve, reject) => {
      socket.on("data", (chunk: Buffer) => {
        received += chunk.length;
        if (received >= 64 << 20) resolve();
      });
      socket.once("error", reject);
      socket.once("end", () => reject(new Error(`EOF after ${received} bytes`)));
      socket.resume();
    });
    socket.destroy();
  });

  e2eTest("half-close both ways over SSH", async () => {
    const s = await sshGuest();
    const host = await sshHost(s);
    const [digestPort, sendPort] = [await freePort(), await freePort()];
    await s.guest.startServer("digest", [["127.0.0.1", digestPort]]);
    const sender = await s.guest.startFixture(["send-then-digest", "127.0.0.1", String(sendPort), String(100_000)]);
    await host.waitForForwarding(digestPort);
    await host.waitForForwarding(sendPort);

    const request = randomBytes(300_000);
    expect((await exchange(digestPort, request)).toString()).toBe(sha256(request));

    const reply = randomBytes(200_000);
    // The server's EOF first; only then does the client answer and close its side.
    const got = await answerAfterEOF(sendPort, reply);
    expect(got.length).toBe(100_000);
    expect(await sender.waitForLine(/^got /)).toBe(`got ${sha256(reply)}`);
  });

  e2eTest("sshd killed and restarted: a connection open across it is reset (a cut-off transfer never looks complete), the agent reconnects, and a connection made meanwhile waits for it", async () => {
    const s = await sshGuest();
    const host = await sshHost(s);
    const port = await freePort();
    await s.guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    expect((await exchange(port, Buffer.from("before"))).toString()).toBe("before");
    const open = net.connect(port, "127.0.0.1");
    const outcome = socketOutcome(open);
    open.write("open across");
    await new Promise((resolve) => open.once("data", resolve));

    // sshd and every session of it die, as when the guest's sshd is restarted hard or the VM slept.
    expect(s.guest.killAll("sshd")).toBeGreaterThanOrEqual(2);
    await s.sshd.proc.exited;
    const dropped = await host.waitForEvent((e) => e.type === "ssh-disconnected", "the SSH link to drop");
    expect(dropped.error).toBe("sshd closed the SSH connection (restarted, or the guest is shutting down); reconnecting");
    const { data, how } = await outcome;
    expect(data.toString()).toBe("open across");
    expect(how).toBe("ECONNRESET"); // the guest's server never sent EOF
    const during = exchange(port, Buffer.from("during"), "127.0.0.1", 20_000); // waits for the link
    const sshd = await s.guest.startSshd({ hostKey: s.sshd.hostKey });
    await host.waitForNthEvent(2, (e) => e.type === "ssh-connected", "the SSH link to come back");
    expect((await during).toString()).toBe("during");
    expect((await exchange(port, Buffer.from("after"))).toString()).toBe("after");
    expect(sshChannels(sshd.proc)).toBeGreaterThanOrEqual(2);
  });

  e2eTest("UDP in SSH mode goes over the agent channel", async () => {
    const s = await sshGuest();
    const host = await sshHost(s);
    const selected = host.events.find((e) => e.type === "forwarder-selected")!;
    expect(selected.message).toContain("UDP goes over the agent channel");
    const port = await freePort();
    await s.guest.startServer("udp-echo", [["127.0.0.1", port]]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "UDP forward");
    const dgram = await import("node:dgram");
    const client = dgram.createSocket("udp4");
    try {
      const reply = new Promise<string>((resolve) => client.once("message", (m) => resolve(m.toString())));
      client.send("over grpc", port, "127.0.0.1");
      expect(await reply).toBe("over grpc");
    } finally {
      client.close();
    }
  });
});

describe("choosing the forwarder", () => {
  const cases: [string, string[], Record<string, string>, string, "ssh" | "grpc" | "auto", string][] = [
    ["--forwarder ssh", ["--forwarder", "ssh"], {}, "", "ssh", "--forwarder ssh"],
    ["--forwarder grpc beats the environment", ["--forwarder", "grpc"], { LIMA_SSH_PORT_FORWARDER: "true" }, "", "grpc", "--forwarder grpc"],
    ["LIMA_SSH_PORT_FORWARDER=true", [], { LIMA_SSH_PORT_FORWARDER: "true" }, "", "ssh", "LIMA_SSH_PORT_FORWARDER=true"],
    ["LIMA_SSH_PORT_FORWARDER=false beats the config", [], { LIMA_SSH_PORT_FORWARDER: "false" }, "forwarder: ssh\n", "grpc", "LIMA_SSH_PORT_FORWARDER=false"],
    ["LIMA_SSH_PORT_FORWARDER=garbage warns and uses gRPC", [], { LIMA_SSH_PORT_FORWARDER: "garbage" }, "", "grpc", "the default"],
    ["the config", [], {}, "forwarder: ssh\n", "ssh", "forwarder: ssh in the config"],
    ["the default (auto: porthole's data path here)", [], {}, "", "auto", "the default"],
  ];
  e2eTest.each(cases)("%s", async (_name, flags, env, configText, expected, reason) => {
    const s = await sshGuest();
    const config = s.guest.writeFile("c.yaml", configText);
    const host = startHostAgent(s.guest, [...flags, ...sshFlags(s, ["--config", config])], { env });
    const selected = await host.waitForEvent((e) => e.type === "forwarder-selected", "the choice");
    expect([selected.forwarder, selected.reason]).toEqual([expected, reason]);
    if (env.LIMA_SSH_PORT_FORWARDER === "garbage") {
      expect(host.events.some((e) => e.type === "warning" && /LIMA_SSH_PORT_FORWARDER="garbage"/.test(String(e.message)))).toBe(true);
    }
    const port = await freePort();
    await s.guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    const before = sshChannels(s.sshd.proc);
    expect((await exchange(port, Buffer.from("which way?"))).toString()).toBe("which way?");
    if (expected === "ssh") await s.sshd.proc.waitFor(() => sshChannels(s.sshd.proc) > before || undefined, "an SSH channel");
    else expect(sshChannels(s.sshd.proc)).toBe(before);
  });
});

describe("SSH over a non-TCP stream (standing in for vsock)", () => {
  e2eTest("tries the vsock path first, falls back to TCP without it, and LIMA_SSH_OVER_VSOCK=false skips it", async () => {
    const s = await sshGuest();
    const socket = join(s.guest.dir, "sshd-vsock.sock");
    const vsock = ["--ssh-vsock", `unix://${socket}`];

    // Not offered (no socket yet): the network path.
    let host = await sshHost(s, vsock);
    expect(host.events.find((e) => e.type === "ssh-connected")!.via).toBe(`tcp tcp://${s.guestIP}:22`);
    await host.proc.kill();

    // Offered: sshd -i behind a unix socket, as systemd socket-activates sshd on vsock port 22.
    const inetd = await s.guest.startInetdUnix(socket, ["/usr/sbin/sshd", "-i", "-e", "-f", s.sshd.config]);
    host = await sshHost(s, vsock);
    expect(host.events.find((e) => e.type === "ssh-connected")!.via).toBe(`vsock unix://${socket}`);
    const port = await freePort();
    await s.guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    expect((await exchange(port, Buffer.from("via the socket"))).toString()).toBe("via the socket");
    expect(inetd.stderr.some((l) => /server_request_direct_tcpip: originator/.test(l))).toBe(true);
    await host.proc.kill();

    // Turned off by Lima's variable: the network path again.
    host = await sshHost(s, vsock, { LIMA_SSH_OVER_VSOCK: "false" });
    expect(host.events.find((e) => e.type === "ssh-connected")!.via).toBe(`tcp tcp://${s.guestIP}:22`);
  });
});

describe("host keys", () => {
  e2eTest("trusted on first use, a changed key is refused with a clear error, and the skip flag allows it", async () => {
    const s = await sshGuest();
    let host = await sshHost(s);
    const knownHosts = readFileSync(join(s.stateDir, "known_hosts"), "utf8");
    expect(knownHosts).toStartWith(`[${s.guestIP}]:22 ssh-ed25519 `);
    await host.proc.kill();

    // The VM was "recreated": same address, new host key.
    await s.sshd.proc.kill();
    await s.guest.startSshd({ hostKey: join(s.guest.dir, "ssh", "new_host_key") });
    host = startHostAgent(s.guest, ["--forwarder", "ssh", ...sshFlags(s)]);
    const refused = await host.waitForEvent((e) => e.type === "ssh-unreachable", "the refusal");
    expect(refused.error).toContain(`the SSH host key of [${s.guestIP}]:22 changed`);
    expect(refused.error).toContain(`${join(s.stateDir, "known_hosts")}:1`);
    await host.proc.kill();

    host = await sshHost(s, ["--ssh-skip-host-key-check"]);
    expect(host.events.some((e) => e.type === "ssh-connected")).toBe(true);
  });
});

function childrenOf(pid: number): string[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .flatMap((d) => {
      try {
        const stat = readFileSync(`/proc/${d}/stat`, "utf8");
        const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
        return ppid === pid ? [stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"))] : [];
      } catch {
        return [];
      }
    });
}
