// A reverse forward's host side: the cap on connections at once, and a dial failure said once
// (naming the host socket) however many connections the guest announces. The host
// socket is a real unix server; the guest agent is faked (a unit test: the e2e tests in
// test/e2e/unix-sockets.test.ts run the real one).
import { afterEach, expect, test } from "bun:test";
import { EventEmitter } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import type { PortholeClient } from "../../src/proto/guest-service.ts";
import { ReverseForward } from "../../src/host/reverse-forward.ts";
import { waitUntil } from "../wait.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

/** A guest agent that announces connections on demand and counts the tunnels the host opens. */
function fakeGuest() {
  const events = new EventEmitter() as EventEmitter & { cancel(): void };
  events.cancel = () => {};
  const tunnels: Duplex[] = [];
  const client = {
    Reverse: () => events,
    ReverseTunnel: () => {
      const call = new Duplex({ objectMode: true, read() {}, write(_m, _e, done) { done(); } }) as Duplex & { cancel(): void };
      call.cancel = () => {};
      tunnels.push(call);
      return call;
    },
  } as unknown as PortholeClient;
  return { client, tunnels, announce: (id: string) => events.emit("data", { connection_id: id }) };
}

function hostServer(onConnection: (s: net.Socket) => void): Promise<{ path: string; accepted: net.Socket[] }> {
  const dir = mkdtempSync(join(tmpdir(), "porthole-reverse-"));
  const path = join(dir, "host.sock");
  const accepted: net.Socket[] = [];
  const server = net.createServer((s) => {
    accepted.push(s);
    s.on("error", () => {});
    onConnection(s);
  });
  cleanups.push(() => {
    for (const s of accepted) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return new Promise((resolve) => server.listen(path, () => resolve({ path, accepted })));
}

function reverseTo(hostSocket: string, client: PortholeClient, warnings: string[], max?: number): ReverseForward {
  const forward = new ReverseForward({ key: "r", guestSocket: "/run/g.sock", hostSocket, origin: 0 }, client, () => {}, (m) => warnings.push(m), max);
  cleanups.push(() => forward.destroy());
  return forward;
}

test("at most maxConnections host sockets at once: the next is not claimed and the limit is said once; a close makes room", async () => {
  const { path, accepted } = await hostServer(() => {});
  const guest = fakeGuest();
  const warnings: string[] = [];
  const forward = reverseTo(path, guest.client, warnings, 2);
  for (const id of ["a", "b", "c", "d"]) guest.announce(id);
  await waitUntil("two host connections", () => accepted.length === 2);
  expect(guest.tunnels).toHaveLength(2);
  expect(forward.status().connections).toBe(2);
  expect(warnings).toEqual(["reverse /run/g.sock: 2 connections are open, the limit; further ones are refused until some close"]);

  accepted[0]!.end(); // both ends finish: the host socket closes
  guest.tunnels[0]!.push(null);
  await waitUntil("the closed one to leave", () => forward.status().connections === 1);
  guest.announce("e");
  await waitUntil("a third host connection", () => accepted.length === 3);
  expect(guest.tunnels).toHaveLength(3);
  expect(warnings).toHaveLength(1);
});

test("a host socket nobody listens on: said once for many connections, naming the socket and the error", async () => {
  const dir = mkdtempSync(join(tmpdir(), "porthole-reverse-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const guest = fakeGuest();
  const warnings: string[] = [];
  const forward = reverseTo(join(dir, "nobody.sock"), guest.client, warnings);
  for (const id of ["a", "b", "c"]) guest.announce(id);
  await waitUntil("the dials to fail", () => guest.tunnels.length === 3 && forward.status().connections === 0);
  expect(warnings).toHaveLength(1);
  expect(warnings[0]).toContain(join(dir, "nobody.sock"));
  expect(warnings[0]).toContain("ENOENT");
});

test("a guest that says its socket is listening again and again gets one forwarding event for the stream", () => {
  const events = new EventEmitter() as EventEmitter & { cancel(): void };
  events.cancel = () => {};
  const client = { Reverse: () => events } as unknown as PortholeClient;
  const reported: string[] = [];
  const forward = new ReverseForward({ key: "r", guestSocket: "/run/g.sock", hostSocket: "/tmp/none.sock", origin: 0 }, client, (e) => void reported.push(e.type));
  cleanups.push(() => forward.destroy());
  for (let i = 0; i < 10_000; i++) events.emit("data", { listening: true });
  expect(reported).toEqual(["forwarding"]);
});
