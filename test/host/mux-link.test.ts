// The host's end of a one-stream agent channel (host/mux-link.ts) against a stand-in for a stock
// HTTP/2 agent (it answers the mux probe as a gRPC server would: SETTINGS, then the ACK).
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { h2Frame } from "../../src/core/mux-frames.ts";
import { MuxLink } from "../../src/host/mux-link.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

test("grpc-js's connection closed before its preface: the agent connection is closed too, never left holding a one-client channel", async () => {
  const dir = mkdtempSync(join(tmpdir(), "porthole-mux-link-"));
  const agentPath = join(dir, "agent.sock");
  const agentClosed = new Promise<void>((resolve) => {
    const agent = net.createServer((c) => {
      c.on("error", () => {});
      c.once("data", () => c.write(Buffer.concat([h2Frame(4, 0, Buffer.alloc(0)), h2Frame(4, 1, Buffer.alloc(0))]))); // SETTINGS, ACK
      c.once("close", () => resolve());
    });
    agent.listen(agentPath);
    cleanups.push(() => agent.close());
  });
  const failures: string[] = [];
  // Said right before the link waits for grpc-js's preface: the probe was answered "no multiplexer".
  let waitsForPreface = () => {};
  const prefaceAwaited = new Promise<void>((resolve) => (waitsForPreface = resolve));
  const link = new MuxLink({ kind: "unix", path: agentPath }, { changed: (usable) => usable || waitsForPreface(), failed: (m) => void failures.push(m) });
  cleanups.push(() => link.close(), () => rmSync(dir, { recursive: true, force: true }));
  // grpc-js's side: connects to the private socket, then goes away before sending its preface.
  const grpcJs = net.connect(link.target.replace(/^unix:\/\//, ""));
  grpcJs.on("error", () => {});
  await new Promise<void>((resolve) => grpcJs.once("connect", () => resolve()));
  await prefaceAwaited;
  grpcJs.destroy();
  const closed = await Promise.race([agentClosed.then(() => true), Bun.sleep(3000).then(() => false)]);
  expect(closed).toBe(true);
  expect(failures).toEqual(["grpc-js closed its connection"]);
});
