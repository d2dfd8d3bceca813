// The runtime's listeners queue LISTEN_BACKLOG connections (Bun ignores listen()'s backlog and
// uses 512; the shim sets it again). Real sockets, read back from the kernel with ss.
import { afterEach, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LISTEN_BACKLOG, widenBacklog } from "../../src/runtime/listen-backlog.ts";
import { listenTransport } from "../../src/transport/listen.ts";

const cleanup: (() => void)[] = [];
afterEach(() => cleanup.splice(0).reverse().forEach((f) => f()));

/** Send-Q of ss's line for a listener: its backlog. */
function backlogOf(args: string[]): number {
  const line = spawnSync("ss", ["-Hl", ...args]).stdout.toString().trim();
  if (!line) throw new Error(`ss ${args.join(" ")}: no listener`);
  return Number(line.split(/\s+/)[args[0] === "-x" ? 3 : 2]);
}

test("a TCP server listened with the runtime's defaults queues LISTEN_BACKLOG connections once widened", async () => {
  const server = net.createServer();
  cleanup.push(() => server.close());
  await new Promise<void>((r) => server.listen({ host: "127.0.0.1", port: 0 }, r));
  const port = (server.address() as net.AddressInfo).port;
  const said: string[] = [];
  await widenBacklog(server, (m) => said.push(m));
  expect(said).toEqual([]);
  expect(backlogOf(["-tn", `( sport = :${port} )`])).toBe(LISTEN_BACKLOG);
});

test("listenTransport's unix and TCP listeners queue LISTEN_BACKLOG connections", async () => {
  const dir = mkdtempSync(join(tmpdir(), "porthole-backlog-"));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "agent.sock");
  const unix = await listenTransport({ kind: "unix", path });
  cleanup.push(() => unix.close());
  expect(backlogOf(["-x", "src", path])).toBe(LISTEN_BACKLOG);
  const tcp = await listenTransport({ kind: "tcp", host: "127.0.0.1", port: 0 });
  cleanup.push(() => tcp.close());
  expect(backlogOf(["-tn", `( sport = :${(tcp.address() as net.AddressInfo).port} )`])).toBe(LISTEN_BACKLOG);
});
