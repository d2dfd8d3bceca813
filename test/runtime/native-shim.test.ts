// The native shim's real syscalls, as far as this kernel allows: netlink fully (dumps and
// destroy events against real sockets); vsock create, bind, listen, getsockname, the local
// CID and the error paths. Never a vsock connect: these machines have no vsock loopback.
import { afterEach, beforeAll, describe, expect, test } from "bun:test";
import * as dgram from "node:dgram";
import * as net from "node:net";
import { closedListeners, DIAG_RECORD_BYTES, diagRecordsToPorts, parseDiagRecords } from "../../src/core/diag-record.ts";
import { socketFromFd } from "../../src/runtime/fd-socket.ts";
import { netlinkScanner } from "../../src/guest/scanners.ts";
import { PortWatcher } from "../../src/guest/watcher.ts";
import { check, NativeError, type NativeShim } from "../../src/runtime/native-api.ts";
import { loadNative } from "../../src/runtime/native.ts";

let shim: NativeShim;
beforeAll(async () => {
  const loaded = await loadNative();
  if (!loaded.shim) throw new Error(`the native shim did not load: ${loaded.error} (run make shim)`);
  shim = loaded.shim;
});

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

function listen(host: string): Promise<net.Server> {
  return new Promise((resolve) => {
    const s = net.createServer().listen({ host, port: 0, ipv6Only: host.includes(":") }, () => resolve(s));
    cleanups.push(() => s.close());
  });
}
const portOf = (s: net.Server) => (s.address() as net.AddressInfo).port;

/** A listener on 127.0.0.1, and one connection to it that its server closed (the listener stays). */
async function closedConnection(): Promise<{ server: net.Server; port: number; clientPort: number }> {
  const server = await listen("127.0.0.1");
  const port = portOf(server);
  server.on("connection", (s) => s.destroy());
  const client = net.connect(port, "127.0.0.1");
  await new Promise((r) => client.once("connect", r));
  const clientPort = client.localPort!;
  await new Promise((r) => client.once("close", r));
  return { server, port, clientPort };
}

function dump(): string[] {
  const buf = new Uint8Array(65536 * DIAG_RECORD_BYTES);
  const n = check(shim, shim.diagListeners(buf, buf.length, 3), "sock_diag dump");
  return diagRecordsToPorts(parseDiagRecords(buf, n)).map((p) => `${p.protocol} ${p.ip} ${p.port}`);
}

describe("netlink sock_diag", () => {
  test("the dump lists TCP listeners and unconnected UDP sockets, IPv4 and IPv6, and nothing established", async () => {
    const v4 = await listen("127.0.0.1");
    const v6 = await listen("::1");
    const udp = dgram.createSocket("udp6");
    await new Promise<void>((r) => udp.bind(0, "::", r));
    cleanups.push(() => udp.close());
    const client = net.connect(portOf(v4), "127.0.0.1");
    await new Promise((r) => client.once("connect", r));
    cleanups.push(() => client.destroy());

    const ports = dump();
    expect(ports).toContain(`tcp 127.0.0.1 ${portOf(v4)}`);
    expect(ports).toContain(`tcp ::1 ${portOf(v6)}`);
    expect(ports).toContain(`udp :: ${udp.address().port}`);
    expect(ports).not.toContain(`tcp 127.0.0.1 ${client.localPort}`);
  });

  test("a dump of one port has that port's sockets of that family only (the kernel filters)", async () => {
    const [a, b] = [await listen("127.0.0.1"), await listen("127.0.0.1")];
    const v6 = await listen("::1");
    const buf = new Uint8Array(64 * DIAG_RECORD_BYTES);
    const of = (protocols: number, port: number, families: number) => {
      const n = check(shim, shim.diagPort(buf, buf.length, protocols, port, families), "port dump");
      return diagRecordsToPorts(parseDiagRecords(buf, n)).map((p) => `${p.protocol} ${p.ip} ${p.port}`);
    };
    expect(of(1, portOf(a), 1)).toEqual([`tcp 127.0.0.1 ${portOf(a)}`]);
    expect(of(1, portOf(b), 3)).toEqual([`tcp 127.0.0.1 ${portOf(b)}`]);
    expect(of(1, portOf(a), 2)).toEqual([]); // IPv6 only
    expect(of(1, portOf(v6), 2)).toEqual([`tcp ::1 ${portOf(v6)}`]);
    expect(of(2, portOf(a), 3)).toEqual([]); // UDP only
  });

  test("a lookup by address finds the one listener or unconnected UDP socket there (a wildcard one answers for any address), and nothing connected or gone", async () => {
    const buf = new Uint8Array(4 * DIAG_RECORD_BYTES);
    const addr = (ip: string) => {
      const a = new Uint8Array(16);
      if (ip.includes(":")) a.set(ip === "::1" ? [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] : [], 0);
      else a.set(ip.split(".").map(Number), 0);
      return a;
    };
    const at = (protocols: number, ip: string, port: number) => {
      const n = check(shim, shim.diagSocket(buf, buf.length, protocols, ip.includes(":") ? 10 : 2, addr(ip), port), "lookup");
      return diagRecordsToPorts(parseDiagRecords(buf, n)).map((p) => `${p.protocol} ${p.ip} ${p.port}`);
    };
    const v4 = await listen("127.0.0.1");
    const any = await listen("0.0.0.0");
    const v6 = await listen("::1");
    expect(at(1, "127.0.0.1", portOf(v4))).toEqual([`tcp 127.0.0.1 ${portOf(v4)}`]);
    expect(at(1, "0.0.0.0", portOf(v4))).toEqual([]);
    expect(at(1, "0.0.0.0", portOf(any))).toEqual([`tcp 0.0.0.0 ${portOf(any)}`]);
    expect(at(1, "127.0.0.1", portOf(any))).toEqual([`tcp 0.0.0.0 ${portOf(any)}`]);
    expect(at(1, "::1", portOf(v6))).toEqual([`tcp ::1 ${portOf(v6)}`]);
    expect(at(1, "127.0.0.1", portOf(v6))).toEqual([]);
    expect(at(2, "127.0.0.1", portOf(v4))).toEqual([]);
    // An established connection on a listener's port is not what a lookup finds.
    const client = net.connect(portOf(v4), "127.0.0.1");
    await new Promise((r) => client.once("connect", r));
    cleanups.push(() => client.destroy());
    expect(at(1, "127.0.0.1", client.localPort!)).toEqual([]);
    expect(at(1, "127.0.0.1", portOf(v4))).toEqual([`tcp 127.0.0.1 ${portOf(v4)}`]);

    const udp = dgram.createSocket("udp4");
    await new Promise<void>((r) => udp.bind(0, "127.0.0.1", r));
    const udpPort = udp.address().port;
    expect(at(2, "127.0.0.1", udpPort)).toEqual([`udp 127.0.0.1 ${udpPort}`]);
    expect(at(1, "127.0.0.1", udpPort)).toEqual([]);
    const connected = dgram.createSocket("udp4");
    await new Promise<void>((r) => connected.bind(0, "127.0.0.1", r));
    await new Promise<void>((r) => connected.connect(udpPort, "127.0.0.1", r));
    expect(at(2, "127.0.0.1", connected.address().port)).toEqual([]);
    connected.close();
    await new Promise<void>((r) => udp.close(r));
    expect(at(2, "127.0.0.1", udpPort)).toEqual([]);
    const port = portOf(v4);
    client.destroy();
    await new Promise((r) => v4.close(r));
    expect(at(1, "127.0.0.1", port)).toEqual([]);
  });

  test("closing a listener sends a destroy event, and the next dump no longer has it", async () => {
    const sub = check(shim, shim.diagSubscribe(), "subscribe");
    cleanups.push(() => shim.close(sub));
    const server = await listen("127.0.0.1");
    const port = portOf(server);
    await new Promise((r) => server.close(r));
    const buf = new Uint8Array(256 * DIAG_RECORD_BYTES);
    const deadline = Date.now() + 2000;
    let records: ReturnType<typeof parseDiagRecords> = [];
    while (!records.some((r) => r.port === port) && Date.now() < deadline) {
      records = records.concat(parseDiagRecords(buf, shim.diagReadEvents(sub, buf, buf.length)));
      await Bun.sleep(5);
    }
    expect(records.find((r) => r.port === port)).toMatchObject({ family: 2, ip: "127.0.0.1", port });
    expect(dump()).not.toContain(`tcp 127.0.0.1 ${port}`);
  });

  test("a closed connection's destroy events need no re-scan, a closed listener's does (the kernel's own messages)", async () => {
    const events = socketFromFd(check(shim, shim.diagSubscribe(), "subscribe"));
    cleanups.push(() => events.destroy());
    // Each netlink message on its own, with its local port (other sockets on the machine may close too).
    const messages: { port: number; bytes: Buffer }[] = [];
    events.on("data", (chunk: Buffer) => {
      for (let at = 0; at + 24 <= chunk.length; at += (chunk.readUInt32LE(at) + 3) & ~3) {
        messages.push({ port: chunk.readUInt16BE(at + 20), bytes: chunk.subarray(at, at + chunk.readUInt32LE(at)) });
      }
    });
    const waitFor = async (port: number, listener = false) => {
      const ours = (m: (typeof messages)[number]) => m.port === port && (!listener || m.bytes.readUInt16BE(22) === 0);
      const deadline = Date.now() + 2000;
      while (!messages.some(ours) && Date.now() < deadline) await Bun.sleep(5);
      return messages.filter(ours);
    };
    const { server, port, clientPort } = await closedConnection();
    const clientCloses = await waitFor(clientPort);
    expect(clientCloses.length).toBeGreaterThan(0);
    for (const m of clientCloses) expect(closedListeners(m.bytes)).toEqual([]); // connected: no look needed
    await new Promise((r) => server.close(r));
    const listenerCloses = await waitFor(port, true); // its remote port is 0
    expect(listenerCloses.length).toBeGreaterThan(0);
    for (const m of listenerCloses) expect(closedListeners(m.bytes)).toEqual([{ family: 4, port }]);
    expect(closedListeners(Buffer.concat([clientCloses[0]!.bytes, listenerCloses[0]!.bytes]))).toEqual([{ family: 4, port }]);
    expect(closedListeners(clientCloses[0]!.bytes.subarray(0, 20))).toBeUndefined(); // cut short: scan everything
  });

  test("with the listeners-only filter, a closed connection sends no destroy event at all, a closed listener still does", async () => {
    const sub = check(shim, shim.diagSubscribeTo(1 | 4), "subscribe");
    cleanups.push(() => shim.close(sub));
    const { server, port, clientPort } = await closedConnection();
    await new Promise((r) => server.close(r));
    const buf = new Uint8Array(256 * DIAG_RECORD_BYTES);
    const read = async (fd: number, until: (r: ReturnType<typeof parseDiagRecords>) => boolean) => {
      let records: ReturnType<typeof parseDiagRecords> = [];
      const deadline = Date.now() + 2000;
      while (!until(records) && Date.now() < deadline) {
        records = records.concat(parseDiagRecords(buf, shim.diagReadEvents(fd, buf, buf.length)));
        await Bun.sleep(5);
      }
      return records;
    };
    // The connection closed first (unfiltered, its close comes first: the test above), so by
    // the listener's close the kernel has sent it too; only the listener's came through. (An
    // unfiltered socket here overruns: it gets every close on this busy machine.)
    const kept = await read(sub, (rs) => rs.some((r) => r.port === port));
    await Bun.sleep(50);
    kept.push(...parseDiagRecords(buf, Math.max(0, shim.diagReadEvents(sub, buf, buf.length))));
    expect(kept.find((r) => r.port === port)).toMatchObject({ family: 2, ip: "127.0.0.1", port });
    expect(kept.filter((r) => r.port === clientPort)).toEqual([]);
  });

  test("the watcher learns of a close from the event, long before its next interval", async () => {
    const server = await listen("127.0.0.1");
    const port = portOf(server);
    const watcher = new PortWatcher(60_000, netlinkScanner(shim));
    await watcher.start();
    cleanups.push(() => watcher.stop());
    expect(watcher.ports).toContainEqual({ protocol: "tcp", ip: "127.0.0.1", port });
    const removed = new Promise((resolve) => watcher.subscribe((d) => d.removed.some((p) => p.port === port) && resolve(true)));
    server.close();
    expect(await Promise.race([removed, Bun.sleep(5000).then(() => false)])).toBe(true);
  });
});

describe("AF_VSOCK (no connect: these machines have no vsock loopback)", () => {
  const VMADDR_CID_ANY = 0xffffffff;

  test("the local CID", () => {
    expect(check(shim, shim.vsockLocalCid(), "local CID")).toBeGreaterThan(2);
  });

  test("create, bind, listen, getsockname; accept with nothing pending is EAGAIN", () => {
    const fd = check(shim, shim.vsockSocket(), "socket");
    cleanups.push(() => shim.close(fd));
    const port = 40_000 + Math.floor(Math.random() * 20_000);
    check(shim, shim.vsockBindListen(fd, VMADDR_CID_ANY, port, 16), "bind");
    const name = new Uint32Array(2);
    check(shim, shim.vsockGetsockname(fd, name), "getsockname");
    expect([...name]).toEqual([VMADDR_CID_ANY, port]);
    expect(shim.errnoName(shim.vsockAccept(fd, new Uint32Array(2)))).toBe("EAGAIN");
  });

  test("errors come back as errno names, never a crash", () => {
    const a = check(shim, shim.vsockSocket(), "socket");
    const b = check(shim, shim.vsockSocket(), "socket");
    cleanups.push(() => (shim.close(a), shim.close(b)));
    const port = 40_000 + Math.floor(Math.random() * 20_000);
    check(shim, shim.vsockBindListen(a, VMADDR_CID_ANY, port, 16), "bind");
    expect(shim.errnoName(shim.vsockBindListen(b, VMADDR_CID_ANY, port, 16))).toBe("EADDRINUSE");
    expect(shim.errnoName(shim.vsockBindListen(b, 987_654, port + 1, 16))).toBe("EADDRNOTAVAIL"); // not our CID
    expect(shim.errnoName(shim.vsockGetsockname(-1, new Uint32Array(2)))).toBe("EBADF");
    expect(() => check(shim, shim.vsockAccept(-1, new Uint32Array(2)), "accept")).toThrow(new NativeError("EBADF", "accept: EBADF (Bad file descriptor)"));
  });
});
