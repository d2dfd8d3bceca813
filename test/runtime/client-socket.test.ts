// runtime/client-socket.ts against the kernel's TCP (a node:net server on loopback): each
// direction ends on its own, a reset is a reset both ways, a refused dial is an error with its
// code, and a peer that reads slowly gets every byte in order after "drain".
import { afterEach, describe, expect, test } from "bun:test";
import * as net from "node:net";
import { connectClient, type ClientSocket } from "../../src/runtime/client-socket.ts";

const servers: net.Server[] = [];
afterEach(() => servers.splice(0).forEach((s) => s.close()));

/** A loopback server; `onClient` gets each accepted socket (half-close allowed). */
async function serve(onClient: (c: net.Socket) => void): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, onClient);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return (server.address() as net.AddressInfo).port;
}

/** The events a client socket emits, in order, until "close". */
function record(s: ClientSocket): { events: string[]; data: Buffer[]; closed: Promise<void> } {
  const events: string[] = [];
  const data: Buffer[] = [];
  const closed = new Promise<void>((resolve) => {
    s.on("connect", () => events.push("connect"));
    s.on("data", (d: Buffer) => data.push(d));
    s.on("end", () => events.push("end"));
    s.on("error", (e: NodeJS.ErrnoException) => events.push(`error ${e.code}`));
    s.on("close", () => (events.push("close"), resolve()));
  });
  return { events, data, closed };
}

const serverEnd = (c: net.Socket) => new Promise<string>((r) => (c.once("end", () => r("eof")), c.once("error", (e: NodeJS.ErrnoException) => r(e.code ?? "error"))));

describe("client socket (Bun's socket API on Bun)", () => {
  test("the server's EOF comes as end while this side still writes; its own EOF follows, then close", async () => {
    let server!: net.Socket;
    const port = await serve((c) => ((server = c), c.end("bye")));
    const s = connectClient({ host: "127.0.0.1", port });
    const r = record(s);
    await new Promise<void>((resolve) => s.once("end", () => resolve()));
    const got: Buffer[] = [];
    server.on("data", (d: Buffer) => got.push(d));
    const ended = serverEnd(server);
    expect(s.write(Buffer.from("after"))).toBe(true);
    s.end();
    expect(await ended).toBe("eof");
    await r.closed;
    expect(Buffer.concat(got).toString()).toBe("after");
    expect(Buffer.concat(r.data).toString()).toBe("bye");
    expect(r.events).toEqual(["connect", "end", "close"]);
  });

  test("this side's EOF first, the server's after it: still told as end, then close", async () => {
    const port = await serve((c) => c.once("end", () => setTimeout(() => c.end("late"), 20)));
    const s = connectClient({ host: "127.0.0.1", port });
    const r = record(s);
    s.once("connect", () => s.end());
    await r.closed;
    expect(Buffer.concat(r.data).toString()).toBe("late");
    expect(r.events).toEqual(["connect", "end", "close"]);
  });

  test("a reset from the server is an error (ECONNRESET), not an end", async () => {
    const port = await serve((c) => c.write("x", () => setTimeout(() => c.resetAndDestroy(), 20)));
    const r = record(connectClient({ host: "127.0.0.1", port }));
    await r.closed;
    expect(r.events).toEqual(["connect", "error ECONNRESET", "close"]);
  });

  test("a write that meets the server's reset is told as a reset (ECONNRESET), not as the end Bun reports", async () => {
    let gone!: Promise<void>;
    const port = await serve((c) => {
      gone = new Promise((r) => c.once("close", () => r()));
      c.resetAndDestroy();
    });
    const s = connectClient({ host: "127.0.0.1", port });
    const r = record(s);
    await new Promise<void>((resolve) => s.once("connect", () => resolve()));
    await gone;
    while (!s.destroyed && s.write(Buffer.from("hello"))) await Bun.sleep(5); // until a write meets the reset
    await r.closed;
    expect(r.events).toEqual(["connect", "error ECONNRESET", "close"]);
  });

  test("resetAndDestroy resets the server's side", async () => {
    let accepted!: (server: { ended: Promise<string> }) => void;
    const serverSide = new Promise<{ ended: Promise<string> }>((resolve) => (accepted = resolve));
    const port = await serve((c) => accepted({ ended: serverEnd(c) }));
    const s = connectClient({ host: "127.0.0.1", port });
    const r = record(s);
    await new Promise<void>((resolve) => s.once("connect", () => resolve()));
    const { ended } = await serverSide; // the server accepted
    s.resetAndDestroy();
    await r.closed;
    expect(await ended).toBe("ECONNRESET");
    expect(r.events).toEqual(["connect", "close"]);
  });

  test("a refused dial is an error with its code, then close", async () => {
    const port = await serve(() => {});
    await Promise.all(servers.splice(0).map((s) => new Promise((closed) => s.close(closed))));
    const r = record(connectClient({ host: "127.0.0.1", port }));
    await r.closed;
    expect(r.events).toEqual(["error ECONNREFUSED", "close"]);
  });

  test("a server that reads late: write says wait, drain comes, every byte arrives in order", async () => {
    let server!: net.Socket;
    const port = await serve((c) => ((server = c), c.pause()));
    const s = connectClient({ host: "127.0.0.1", port });
    await new Promise<void>((resolve) => s.once("connect", () => resolve()));
    const chunks = Array.from({ length: 64 }, (_, i) => Buffer.alloc(256 << 10, i));
    let refused = 0;
    for (const chunk of chunks) if (!s.write(chunk)) refused++;
    expect(refused).toBeGreaterThan(0); // 16 MiB cannot all go into the kernel's buffers at once
    const drained = new Promise<void>((resolve) => s.once("drain", () => resolve()));
    s.end();
    const got: Buffer[] = [];
    server.on("data", (d: Buffer) => got.push(d));
    const ended = serverEnd(server);
    server.resume();
    await drained;
    expect(await ended).toBe("eof");
    expect(Buffer.concat(got).equals(Buffer.concat(chunks))).toBe(true);
    server.end();
  });
});
