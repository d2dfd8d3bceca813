// The SSH link's handshake against peers that fail it in ways ssh2 reports oddly: a server that
// sends sshd's banner and closes (sshd restarting while the guest boots), and one that answers
// with an SSH-1 banner (ssh2 reports two errors for it).
import { afterEach, expect, test } from "bun:test";
import * as net from "node:net";
import { utils } from "ssh2";
import type { AgentEvent } from "../../src/core/forward-event.ts";
import { SshLink } from "../../src/host/ssh-link.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A TCP server that greets each connection with `banner` and closes it 50 ms later. */
async function greetAndClose(banner: string): Promise<{ port: number; accepts: () => number }> {
  let accepts = 0;
  const server = net.createServer((s) => {
    accepts++;
    s.on("error", () => {});
    s.write(banner, () => setTimeout(() => s.destroy(), 50));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => server.close());
  return { port: (server.address() as net.AddressInfo).port, accepts: () => accepts };
}

function link(port: number): { events: AgentEvent[] } {
  const events: AgentEvent[] = [];
  const l = new SshLink({
    candidates: [{ address: { kind: "tcp", host: "127.0.0.1", port }, label: "tcp" }],
    user: "porthole",
    privateKey: Buffer.from(utils.generateKeyPairSync("ed25519").private),
    knownHostsFile: undefined,
    emit: (e) => void events.push(e),
  });
  l.start();
  cleanups.push(() => l.stop());
  return { events };
}

async function until(condition: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms`);
    await Bun.sleep(20);
  }
}

test("a server that sends sshd's banner and closes before the handshake ends the attempt, said, and the link tries again", async () => {
  const server = await greetAndClose("SSH-2.0-OpenSSH_9.6\r\n");
  const { events } = link(server.port);
  // ssh2 reports no error for this and stops its own handshake timer: the attempt must still end.
  await until(() => server.accepts() >= 3, 5000);
  expect(events.find((e) => e.type === "ssh-unreachable")?.error).toContain("sshd closed the connection during the SSH handshake");
});

test("an SSH-1 banner (ssh2 reports two errors for one attempt) is said and retried, and no error escapes the link", async () => {
  const server = await greetAndClose("SSH-1.5-old\r\n");
  const { events } = link(server.port);
  await until(() => server.accepts() >= 3, 5000);
  expect(events.find((e) => e.type === "ssh-unreachable")?.error).toContain("Invalid identification string");
});
