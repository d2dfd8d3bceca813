// The control socket answers every request, bad ones with 400, and drops an /events watcher
// that stops reading instead of buffering for it without bound. Raw sockets, no HTTP client.
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlServer, requestPath, WATCHER_BACKLOG_BYTES } from "../../src/host/control-server.ts";
import type { AgentStatus } from "../../src/core/status.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).reverse().forEach((f) => f()));

const STATUS = { agent: { version: "t" }, guest: { addresses: [] }, forwards: [], notForwarded: [], events: {} } as unknown as AgentStatus;

async function startServer(): Promise<{ server: ControlServer; path: string; logs: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), "porthole-control-"));
  const path = join(dir, "control.sock");
  const logs: string[] = [];
  const server = new ControlServer(path, () => STATUS, (m) => logs.push(m));
  await server.start();
  cleanups.push(() => {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { server, path, logs };
}

/** Sends raw bytes, reads until the server closes (or 2 s pass), returns what came back. */
function raw(path: string, request: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(path);
    let got = "";
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(got);
    };
    const timer = setTimeout(done, 2000);
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => {
      got += d;
      if (/\r\n\r\n/.test(got) && /^HTTP\/1\.1 [45]\d\d/.test(got)) done();
    });
    socket.on("end", done);
    socket.on("error", done);
    socket.write(request);
  });
}

test("request targets that are not URLs are bad requests, not exceptions", () => {
  expect(requestPath("//a:b/")).toBeUndefined();
  expect(requestPath("http://[::1")).toBeUndefined();
  expect(requestPath("/status?x=1")).toBe("/status");
  expect(requestPath("http://porthole/events")).toBe("/events");
});

test("malformed requests on the control socket get a 400 and the server keeps serving", async () => {
  const { path } = await startServer();
  for (const target of ["//a:b/", "http://[::1", "http://[::1]:99999/status"]) {
    const reply = await raw(path, `GET ${target} HTTP/1.1\r\nhost: x\r\n\r\n`);
    expect(reply).toStartWith("HTTP/1.1 400");
  }
  expect(await raw(path, "GARBAGE\r\n\r\n")).toStartWith("HTTP/1.1 400");
  const ok = await raw(path, "GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
  expect(ok).toStartWith("HTTP/1.1 200");
  expect(ok).toContain('"forwards":[]');
});

test("an /events watcher that does not read is dropped once its backlog passes the bound, with a log line", async () => {
  const { server, path, logs } = await startServer();
  const slow = net.connect(path);
  cleanups.push(() => slow.destroy());
  const reader = net.connect(path);
  cleanups.push(() => reader.destroy());
  let readerBytes = 0;
  const subscribed = (s: net.Socket) => new Promise<void>((resolve) => {
    s.once("data", () => resolve());
    s.write("GET /events HTTP/1.1\r\nhost: x\r\n\r\n");
  });
  await subscribed(slow);
  slow.pause(); // never reads again: the kernel's buffers fill, then the agent's
  await subscribed(reader);
  reader.on("data", (d: Buffer) => (readerBytes += d.length));
  expect(server.watcherCount).toBe(2);

  const event = { type: "warning", message: "x".repeat(8 * 1024) };
  const total = WATCHER_BACKLOG_BYTES * 4; // well past the kernel's socket buffers plus the bound
  for (let sent = 0; sent < total && server.watcherCount === 2; sent += event.message.length) {
    server.broadcast(event);
    await new Promise((r) => setImmediate(r)); // let the reader read
  }
  expect(server.watcherCount).toBe(1);
  expect(logs.filter((l) => l.includes("dropped an /events watcher"))).toHaveLength(1);
  // The reading watcher still gets events.
  const before = readerBytes;
  server.broadcast({ type: "warning", message: "still here" });
  for (let i = 0; i < 100 && readerBytes === before; i++) await new Promise((r) => setTimeout(r, 10));
  expect(readerBytes).toBeGreaterThan(before);
});
