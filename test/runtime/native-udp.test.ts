// The shim's batched UDP sockets (native/udp.c through runtime/native-udp.ts) against the
// runtime's own node:dgram sockets as the far end: datagram bounds, senders, IPv6-only binds,
// the errno of a taken port, many datagrams handed over at once.
import { afterEach, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as dgram from "node:dgram";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { NativeError, type NativeShim } from "../../src/runtime/native-api.ts";
import { loadNative } from "../../src/runtime/native.ts";
import { sharedRelayLoop, type NativeRelayLoop } from "../../src/runtime/native-relay.ts";
import { NativeUdpSocket, type UdpPeer } from "../../src/runtime/native-udp.ts";
import { waitUntil } from "../wait.ts";

let shim: NativeShim;
let loop: NativeRelayLoop;
beforeAll(async () => {
  const loaded = await loadNative();
  if (!loaded.shim) throw new Error(`the native shim did not load: ${loaded.error} (run make shim)`);
  shim = loaded.shim;
  loop = sharedRelayLoop(shim);
});

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

function open(options: Parameters<typeof NativeUdpSocket.open>[2]): NativeUdpSocket {
  const socket = NativeUdpSocket.open(shim, loop, options);
  cleanups.push(() => socket.close());
  return socket;
}

async function peer(type: "udp4" | "udp6", host: string): Promise<dgram.Socket> {
  const s = dgram.createSocket({ type, ipv6Only: type === "udp6" });
  await new Promise<void>((resolve) => s.bind(0, host, resolve));
  cleanups.push(() => s.close());
  return s;
}

describe("native UDP sockets", () => {
  test("a bound socket reads a burst in whole datagrams (0 to 60,000 bytes), each with its sender; replies go back to each", async () => {
    const socket = open({ local: { host: "127.0.0.1", port: 0 }, bufferBytes: 1 << 20 });
    const port = socket.localPort();
    const [a, b] = [await peer("udp4", "127.0.0.1"), await peer("udp4", "127.0.0.1")];
    const got: { data: Buffer; from: UdpPeer }[] = [];
    socket.receive((datagrams, from) => datagrams.forEach((data, i) => got.push({ data, from: from[i]! })));
    const sizes = [0, 1, 1400, 60_000, 3, 9000];
    for (const [i, n] of sizes.entries()) (i % 2 ? b : a).send(Buffer.alloc(n, i + 1), port, "127.0.0.1");
    await waitUntil("every datagram", () => got.length === sizes.length);
    expect(got.map((g) => g.data.length)).toEqual(sizes);
    got.forEach((g, i) => expect(g.data.equals(Buffer.alloc(sizes[i]!, i + 1))).toBe(true));
    expect(got.map((g) => g.from.port)).toEqual(sizes.map((_, i) => (i % 2 ? b : a).address().port));
    expect(got[0]!.from.address).toBe("127.0.0.1");

    const replies: Buffer[] = [];
    b.on("message", (m) => replies.push(m));
    socket.send([Buffer.from("one"), Buffer.alloc(0), Buffer.from("three")], got[1]!.from);
    await waitUntil("the replies", () => replies.length === 3);
    expect(replies.map((r) => r.toString())).toEqual(["one", "", "three"]);
  });

  test("a connected socket sends to its peer and hears only it; an IPv6 bind takes IPv6 only", async () => {
    const server = await peer("udp6", "::1");
    const socket = open({ peer: { host: "::1", port: server.address().port }, bufferBytes: 1 << 20 });
    const echoed: Buffer[] = [];
    socket.receive((datagrams) => echoed.push(...datagrams));
    server.on("message", (m, info) => server.send(m, info.port, info.address));
    socket.send([Buffer.from("a"), Buffer.from("bb")]);
    await waitUntil("the echoes", () => echoed.length === 2);
    expect(echoed.map(String)).toEqual(["a", "bb"]);

    const v6 = open({ local: { host: "::1", port: 0 }, v6only: true, bufferBytes: 0 });
    expect(v6.localPort()).toBeGreaterThan(0);
  });

  test("a taken port fails with EADDRINUSE as the error's code (what the host forward reports), a name is refused", async () => {
    const taken = await peer("udp4", "127.0.0.1");
    let err: unknown;
    try {
      open({ local: { host: "127.0.0.1", port: taken.address().port }, bufferBytes: 0 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeError);
    expect((err as NativeError).code).toBe("EADDRINUSE");
    expect(() => open({ local: { host: "localhost", port: 0 }, bufferBytes: 0 })).toThrow(/EINVAL/);
  });

  test("2,000 datagrams handed over at once all arrive whole, in order, each with its own length: runs of one size ended by shorter and empty ones, sent as far fewer messages (UDP_SEGMENT)", async () => {
    const receiver = open({ local: { host: "127.0.0.1", port: 0 }, bufferBytes: 8 << 20 });
    // Runs of 1,400 bytes, each ended by a shorter datagram (which ends a message), an empty one now and then.
    const length = (i: number) => (i % 100 === 99 ? 700 : i % 250 === 0 ? 0 : 1400);
    let count = 0;
    let whole = true;
    receiver.receive((datagrams) => {
      for (const d of datagrams) {
        whole &&= d.length === length(count) && (d.length < 4 || d.readUInt32BE(0) === count);
        count++;
      }
    });
    const sender = open({ peer: { host: "127.0.0.1", port: receiver.localPort() }, bufferBytes: 64 * 1024 });
    const datagrams = Array.from({ length: 2000 }, (_, i) => {
      const d = Buffer.alloc(length(i));
      if (d.length) d.writeUInt32BE(i, 0);
      return d;
    });
    const messagesBefore = shim.udpSendMessages();
    sender.send(datagrams);
    await waitUntil("all of them", () => count === datagrams.length, 10_000);
    expect(whole).toBe(true);
    expect(sender.dropped).toBe(0);
    // Each run of 1,400-byte datagrams goes as messages of up to 46 (65,000 bytes), one by one
    // only the empty ones: about 100 messages, where one per datagram would be 2,000.
    const messages = (shim.udpSendMessages() - messagesBefore) & 0x7fffffff;
    expect(messages).toBeGreaterThan(40);
    expect(messages).toBeLessThan(200);
  });

  test("the buffers reported are the kernel's (as ss shows them); without CAP_NET_ADMIN a socket gets no more than rmem_max", async () => {
    const asked = 300_000;
    const socket = open({ local: { host: "127.0.0.1", port: 0 }, bufferBytes: asked });
    expect(socket.buffers()).toEqual({ receive: asked, send: asked });
    // ss prints the kernel's own figures (twice what it granted): rb and tb in skmem.
    const ss = spawnSync("ss", ["-Huam", `sport = :${socket.localPort()}`], { encoding: "utf8" }).stdout;
    expect(ss).toContain(`rb${2 * asked},`);
    expect(ss).toContain(`tb${2 * asked},`);
    // A child without CAP_NET_ADMIN (SO_RCVBUFFORCE refused) asking twice the system's maximum.
    const max = Number(readFileSync("/proc/sys/net/core/rmem_max", "utf8"));
    const script = `
      const { loadNative } = await import(${JSON.stringify(join(import.meta.dir, "../../src/runtime/native.ts"))});
      const { sharedRelayLoop } = await import(${JSON.stringify(join(import.meta.dir, "../../src/runtime/native-relay.ts"))});
      const { NativeUdpSocket } = await import(${JSON.stringify(join(import.meta.dir, "../../src/runtime/native-udp.ts"))});
      const { shim } = await loadNative();
      const s = NativeUdpSocket.open(shim, sharedRelayLoop(shim), { local: { host: "127.0.0.1", port: 0 }, bufferBytes: ${2 * max} });
      console.log(JSON.stringify(s.buffers()));
      process.exit(0);`;
    const child = spawnSync("setpriv", ["--inh-caps", "-net_admin", "--bounding-set", "-net_admin", process.execPath, "-e", script], { encoding: "utf8" });
    expect(child.stderr).toBe("");
    expect(JSON.parse(child.stdout).receive).toBe(max);
  });
});
