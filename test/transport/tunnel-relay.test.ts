// The relays: spliceSockets (socket to socket) and spliceFramed (a socket to a PHDATA2
// stream) end each side the way the other ended, after delivering what came before; the
// private unix relay of the agent channel survives failing dials and leaves nothing behind.
import { afterEach, describe, expect, test } from "bun:test";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { relayThroughUnix } from "../../src/transport/client-target.ts";
import { spliceFramed, spliceSockets } from "../../src/transport/tunnel-relay.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function listen(onConnection: (s: net.Socket) => void): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, onConnection);
  cleanups.push(() => server.close());
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port)));
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

/** Reads until the end: how it ended and the bytes. */
function readEnd(s: net.Socket): Promise<{ end: string; bytes: number }> {
  return new Promise((resolve) => {
    let bytes = 0;
    s.on("data", (c: Buffer) => (bytes += c.length));
    s.once("end", () => resolve({ end: "eof", bytes }));
    s.once("error", (e: NodeJS.ErrnoException) => resolve({ end: e.code ?? e.message, bytes }));
  });
}

/** CPython's reset server (test/fixtures/reset-server.py) on 127.0.0.1. */
/** `afterAByte`: each connection's reset waits for one byte from its client (see the fixture). */
async function pythonResetServer(bytes: number, afterAByte = false): Promise<number> {
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const child: ChildProcess = spawn("/usr/bin/python3", [join(import.meta.dir, "../fixtures/reset-server.py"), "127.0.0.1", String(port), String(bytes), ...(afterAByte ? ["after-a-byte"] : [])], { stdio: ["ignore", "pipe", "inherit"] });
  cleanups.push(() => child.kill("SIGKILL"));
  await new Promise<void>((resolve) => child.stdout!.once("data", () => resolve()));
  return port;
}

describe("spliceSockets", () => {
  test("a far end that sends 100 KB and resets: the client gets the 100 KB, then a reset (20 times)", async () => {
    // The server waits for a byte, so its reset cannot beat the runtime's connect event (Bun
    // then fails the connect itself with ECONNRESET, and there would be nothing to splice).
    const target = await pythonResetServer(100_000, true);
    const front = await listen(async (client) => {
      client.pause();
      const far = await connect(target);
      far.write("x");
      spliceSockets(client, far);
    });
    for (let i = 0; i < 20; i++) expect(await readEnd(await connect(front))).toEqual({ end: "ECONNRESET", bytes: 100_000 });
  });

  test("EOF is passed on as EOF, and the other direction goes on (half-close)", async () => {
    const target = await listen((s) => {
      let got = "";
      s.on("data", (c) => (got += c));
      s.on("end", () => s.end(`echo:${got}`));
    });
    const front = await listen(async (client) => spliceSockets(client, await connect(target)));
    const c = await connect(front);
    c.end("ping");
    const chunks: Buffer[] = [];
    c.on("data", (d: Buffer) => chunks.push(d));
    expect(await readEnd(c)).toMatchObject({ end: "eof" });
    expect(Buffer.concat(chunks).toString()).toBe("echo:ping");
  });
});

describe("spliceFramed", () => {
  /** client -> [front: plain|framed] -> [back: framed|plain] -> target. */
  async function chain(target: number, tamper?: (framed: net.Socket) => void): Promise<number> {
    const back = await listen(async (framed) => {
      if (tamper) return tamper(framed);
      spliceFramed(await connect(target), framed);
    });
    return listen(async (client) => {
      client.pause();
      spliceFramed(client, await connect(back));
    });
  }

  test("data then EOF arrives as data then EOF; data then reset as data then reset", async () => {
    const eofTarget = await listen((s) => s.end(Buffer.alloc(100_000, 1)));
    expect(await readEnd(await connect(await chain(eofTarget)))).toEqual({ end: "eof", bytes: 100_000 });
    const resetTarget = await pythonResetServer(100_000);
    const front = await chain(resetTarget);
    for (let i = 0; i < 10; i++) expect(await readEnd(await connect(front))).toEqual({ end: "ECONNRESET", bytes: 100_000 });
  });

  test("a far agent that dies (the stream closes without an end frame) is a reset, not EOF", async () => {
    const target = await listen(() => {});
    const front = await chain(target, (framed) => {
      // Stands in for a guest agent killed mid-stream: one data frame, then the stream closes.
      framed.end(Buffer.concat([Buffer.from([0, 0, 0, 5]), Buffer.from("hello")]));
    });
    expect(await readEnd(await connect(front))).toEqual({ end: "ECONNRESET", bytes: 5 });
  });

  test("garbage instead of frames resets the client and is reported", async () => {
    const reasons: string[] = [];
    const back = await listen((framed) => framed.end("HTTP/1.1 200 OK\r\n\r\n"));
    const front = await listen(async (client) => spliceFramed(client, await connect(back), undefined, (r) => reasons.push(r)));
    expect((await readEnd(await connect(front))).end).toBe("ECONNRESET");
    expect(reasons[0]).toContain("invalid frame header");
  });
});

describe("relayThroughUnix", () => {
  test("a dial that fails closes that connection and is reported; close() removes the private directory", async () => {
    const errors: string[] = [];
    const relay = relayThroughUnix(() => Promise.reject(new Error("no guest")), (m) => errors.push(m));
    const path = relay.target.slice("unix://".length);
    await new Promise((r) => setTimeout(r, 50)); // the listener binds on the next turn
    const s = net.connect(path);
    await new Promise<void>((resolve) => s.once("close", () => resolve()).once("error", () => {}));
    expect(errors).toEqual(["no guest"]);
    relay.close();
    expect(existsSync(join(path, ".."))).toBe(false);
  });
});
