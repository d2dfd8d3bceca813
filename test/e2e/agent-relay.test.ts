// The host agent's private unix relay (grpc-js cannot dial a TCP agent channel with a token,
// or vsock, itself): a guest agent that is not there yet is reported and waited for, never
// fatal, and the relay's /tmp/porthole-relay-* directory goes away with the agent.
import { expect } from "bun:test";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defer, e2eTest, exchange, freePort, Guest, PORTHOLE, startHostAgent, useHarness } from "./harness.ts";

useHarness();

e2eTest("a TCP agent channel: the host agent waits for a missing guest agent, connects, and leaves no relay directory behind on SIGTERM", async () => {
  const guest = Guest.create();
  const { guestIP } = guest.linkToHost();
  const tokenFile = join(guest.dir, "token");
  writeFileSync(tokenFile, "s3cret-token-0123456789abcdef\n", { mode: 0o600 });
  const addr = `tcp://${guestIP}:${await freePort()}`;
  // The host agent's own temporary directory, so its relay directory can be watched alone.
  const tmp = mkdtempSync(join(tmpdir(), "porthole-relay-test-"));
  defer(() => rmSync(tmp, { recursive: true, force: true }));
  const host = startHostAgent(guest, ["--guest", addr, "--token-file", tokenFile], { env: { TMPDIR: tmp } });
  await host.waitForEvent((e) => e.type === "guest-unreachable", "the missing guest agent reported");
  expect(host.proc.running).toBe(true);
  expect(readdirSync(tmp).filter((n) => n.startsWith("porthole-relay-"))).toHaveLength(1);

  const agent = guest.spawn([...PORTHOLE, "guest", "--listen", addr, "--token-file", tokenFile], "guest agent");
  await agent.waitForLine(/serving on tcp:/, "stderr");
  await host.waitForEvent((e) => e.type === "guest-connected", "the host to connect", 20_000);
  const port = await freePort();
  await guest.startEcho("127.0.0.1", port);
  await host.waitForForwarding(port);
  expect((await exchange(port, Buffer.from("relayed"))).toString()).toBe("relayed");

  await host.proc.kill("SIGTERM");
  expect(readdirSync(tmp).filter((n) => n.startsWith("porthole-relay-"))).toEqual([]);
});
