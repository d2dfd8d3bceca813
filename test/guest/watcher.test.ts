// The watcher over a directory of /proc/net-shaped files that the test rewrites.
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { PortDiff } from "../../src/core/ports.ts";
import { procNetScanner, type Scanner } from "../../src/guest/scanners.ts";
import { ipBytes, PortWatcher, scanProcNet } from "../../src/guest/watcher.ts";
import type { EventBatch } from "../../src/guest/kernel-events.ts";
import type { IPPort } from "../../src/proto/guest-service.ts";
import { formatIPv4Bytes, formatIPv6Bytes } from "../../src/core/address.ts";
import { UdpSettler } from "../../src/core/udp-settle.ts";
import { waitUntil } from "../wait.ts";
import type { OwnerResolver } from "../../src/guest/port-owners.ts";

const HEADER = "  sl  local_address rem_address   st\n";
const row = (addr: string, state: string) => `   0: ${addr} 00000000:0000 ${state} 00000000:00000000\n`;
const dirs: string[] = [];
const watchers: PortWatcher[] = [];

function procDir(tcp: string): string {
  const dir = mkdtempSync(join(tmpdir(), "porthole-watch-"));
  dirs.push(dir);
  writeFileSync(join(dir, "tcp"), HEADER + tcp);
  writeFileSync(join(dir, "udp"), HEADER);
  return dir;
}

afterEach(() => {
  for (const w of watchers.splice(0)) w.stop();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

test("missing IPv6 tables are not errors; a missing IPv4 table is", async () => {
  const dir = procDir(row("0100007F:1F90", "0A"));
  expect(await scanProcNet(dir)).toMatchObject({ ports: [{ protocol: "tcp", ip: "127.0.0.1", port: 8080 }], errors: [] });
  rmSync(join(dir, "udp"));
  const { errors } = await scanProcNet(dir);
  expect(errors).toHaveLength(1);
  expect(errors[0]).toContain(`${dir}/udp`);
});

test("subscribers get each change once, and a failed scan reports errors without dropping ports", async () => {
  const dir = procDir(row("0100007F:1F90", "0A"));
  const watcher = new PortWatcher(10, procNetScanner(dir));
  watchers.push(watcher);
  await watcher.start();
  expect(watcher.ports).toEqual([{ protocol: "tcp", ip: "127.0.0.1", port: 8080 }]);

  const seen: { diff: PortDiff; errors: string[] }[] = [];
  watcher.subscribe((diff, errors) => seen.push({ diff, errors }));
  writeFileSync(join(dir, "tcp"), HEADER + row("00000000:0BB8", "0A"));
  await waitUntil("a first scan reported", () => seen.length >= 1);
  expect(seen[0]).toEqual({
    diff: { added: [{ protocol: "tcp", ip: "0.0.0.0", port: 3000 }], removed: [{ protocol: "tcp", ip: "127.0.0.1", port: 8080 }] },
    errors: [],
  });

  rmSync(join(dir, "tcp"));
  await waitUntil("a second scan reported", () => seen.length >= 2);
  expect(seen[1]!.errors[0]).toContain("tcp");
  expect(seen[1]!.diff).toEqual({ added: [], removed: [] });
  expect(watcher.ports).toEqual([{ protocol: "tcp", ip: "0.0.0.0", port: 3000 }]);
});

test("an unconnected UDP socket is reported once it has stayed bound long enough; a connected one never", async () => {
  const dir = procDir("");
  // 0.0.0.0:40011 unconnected (07), and 127.0.0.1:5353 connected to 127.0.0.1:53 (01).
  writeFileSync(join(dir, "udp"), HEADER + row("00000000:9C4B", "07") + "   1: 0100007F:14E9 0100007F:0035 01 00000000:00000000\n");
  const watcher = new PortWatcher(10, procNetScanner(dir), new UdpSettler(100));
  watchers.push(watcher);
  const diffs: PortDiff[] = [];
  watcher.subscribe((d) => diffs.push(d));
  await watcher.start();
  expect(watcher.ports).toEqual([]); // too young yet
  await waitUntil("the settled UDP socket reported", () => diffs.length > 0);
  expect(diffs).toEqual([{ added: [{ protocol: "udp", ip: "0.0.0.0", port: 40011 }], removed: [] }]);
});

test("a new port's owner is looked up (by its socket inode) before subscribers hear of it, once, and forgotten with the port", async () => {
  // "... tx:rx tr:when retrnsmt uid timeout inode" as the kernel prints them.
  const full = (addr: string, inode: number) => `   0: ${addr} 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 ${inode} 1\n`;
  const dir = procDir(full("0100007F:1F90", 4242));
  const lookups: number[][] = [];
  const resolver = {
    resolve: async (sockets: { inode: number }[]) => {
      lookups.push(sockets.map((s) => s.inode));
      return new Map(sockets.map((s) => [s.inode, { pid: 7, command: "node", commandLine: "node s.js", user: "app", uid: 1000 }]));
    },
    keepOnly: () => {},
    forget: (inodes: number[]) => forgotten.push(...inodes),
    size: 0,
  } as unknown as OwnerResolver;
  const forgotten: number[] = [];
  const watcher = new PortWatcher(10, procNetScanner(dir), new UdpSettler(), resolver);
  watchers.push(watcher);
  const heard: (string | undefined)[] = [];
  watcher.subscribe((diff) => heard.push(...diff.added.map((p) => watcher.ownerOf(p)?.command)));
  await watcher.start();
  expect(watcher.ownerOf({ protocol: "tcp", ip: "127.0.0.1", port: 8080 })).toMatchObject({ pid: 7, command: "node" });
  writeFileSync(join(dir, "tcp"), HEADER + full("0100007F:1F90", 4242) + full("00000000:0BB8", 777));
  await waitUntil("both new ports heard of", () => heard.length >= 2);
  await Bun.sleep(50); // more scans: nothing new, nothing looked up again
  expect(heard).toEqual(["node", "node"]); // each subscriber heard of each port with its owner known
  expect(lookups).toEqual([[4242], [777]]);
  writeFileSync(join(dir, "tcp"), HEADER);
  await waitUntil("the ports gone", () => watcher.ports.length === 0);
  expect(watcher.ownerOf({ protocol: "tcp", ip: "127.0.0.1", port: 8080 })).toBeUndefined();
  await waitUntil("the gone sockets forgotten by the resolver", () => forgotten.length >= 2);
  expect(forgotten.sort()).toEqual([4242, 777].sort());
});

test("an event that names a socket's address is one lookup of that socket (no port dump); a close named by port alone looks up the state's sockets there", async () => {
  // A scanner standing in for the kernel: its sockets, and what the watcher asked of it.
  let kernel: IPPort[] = [];
  const asked: string[] = [];
  let emit: (batch: EventBatch) => void = () => {};
  const wildcard = (ip: string) => ip === "0.0.0.0" || ip === "::";
  const scanner: Scanner = {
    name: "fake",
    scan: async () => ({ ports: [...kernel], errors: [] }),
    scanPort(protocol, port) {
      asked.push(`dump ${protocol} ${port}`);
      return { ports: kernel.filter((p) => p.protocol === protocol && p.port === port), errors: [] };
    },
    scanSocket(protocol, family, addr, port) {
      const ip = family === 4 ? formatIPv4Bytes(addr) : formatIPv6Bytes(addr);
      asked.push(`lookup ${protocol} ${ip} ${port}`);
      const on = kernel.filter((p) => p.protocol === protocol && p.port === port);
      const hit = on.find((p) => p.ip === ip) ?? on.find((p) => wildcard(p.ip) && p.ip.includes(":") === (family === 6));
      return { ports: hit ? [hit] : [], errors: [] };
    },
    watchChanges(onChange) {
      emit = onChange;
      return () => {};
    },
  };
  const watcher = new PortWatcher(60_000, scanner);
  watchers.push(watcher);
  await watcher.start();
  const keys = () => watcher.ports.map((p) => `${p.ip}:${p.port}`).sort();
  const addr = (ip: string) => ipBytes(ip)!;

  kernel = [{ protocol: "tcp", ip: "127.0.0.1", port: 8080 }];
  emit({ ports: [{ protocol: "tcp", port: 8080, families: 1, ip: "127.0.0.1", addr: addr("127.0.0.1") }], whole: 0 });
  expect(keys()).toEqual(["127.0.0.1:8080"]);
  expect(asked.splice(0)).toEqual(["lookup tcp 127.0.0.1 8080"]);

  // Closed, and a wildcard listener on the port: the lookup finds that one instead.
  kernel = [{ protocol: "tcp", ip: "0.0.0.0", port: 8080 }];
  emit({ ports: [{ protocol: "tcp", port: 8080, families: 1, closeOnly: true }], whole: 0 });
  expect(keys()).toEqual(["0.0.0.0:8080"]);
  expect(asked.splice(0)).toEqual(["lookup tcp 127.0.0.1 8080"]);

  kernel = [];
  emit({ ports: [{ protocol: "tcp", port: 8080, families: 1, closeOnly: true, closing: true, ip: "0.0.0.0", addr: addr("0.0.0.0") }], whole: 0 });
  expect(keys()).toEqual([]);
  expect(asked.splice(0)).toEqual(["lookup tcp 0.0.0.0 8080"]);

  // An open whose lookup finds nothing (a socket bound to a device, say): its port's dump tells.
  kernel = [{ protocol: "tcp", ip: "::1", port: 9090 }];
  emit({ ports: [{ protocol: "tcp", port: 9090, families: 2, ip: "fe80::1", addr: addr("fe80::1") }], whole: 0 });
  expect(keys()).toEqual(["::1:9090"]);
  expect(asked.splice(0)).toEqual(["lookup tcp fe80::1 9090", "dump tcp 9090"]);
});

test("ipBytes reads back what the port records print", () => {
  for (const ip of ["127.0.0.1", "0.0.0.0", "::", "::1", "fe80::1:2", "2001:db8::", "1:2:3:4:5:6:7:8"]) {
    const bytes = ipBytes(ip)!;
    expect(ip.includes(":") ? formatIPv6Bytes(bytes) : formatIPv4Bytes(bytes)).toBe(ip);
  }
  for (const bad of ["1.2.3", "1.2.3.256", "1::2::3", "fe80::1%eth0", "::ffff:1.2.3.4", "12345::"]) expect(ipBytes(bad)).toBeUndefined();
});

test("changes found in one turn of the event loop are told as one; a port opened and closed within it is told added, then removed, never both in one diff", async () => {
  let kernel: IPPort[] = [];
  let emit: (batch: EventBatch) => void = () => {};
  const scanner: Scanner = {
    name: "fake",
    scan: async () => ({ ports: [...kernel], errors: [] }),
    scanPort: (protocol, port) => ({ ports: kernel.filter((p) => p.protocol === protocol && p.port === port), errors: [] }),
    scanSocket(protocol, family, addr, port) {
      const ip = family === 4 ? formatIPv4Bytes(addr) : formatIPv6Bytes(addr);
      return { ports: kernel.filter((p) => p.protocol === protocol && p.port === port && p.ip === ip), errors: [] };
    },
    watchChanges(onChange) {
      emit = onChange;
      return () => {};
    },
  };
  const watcher = new PortWatcher(60_000, scanner);
  watchers.push(watcher);
  await watcher.start();
  const seen: PortDiff[] = [];
  watcher.subscribe((diff) => seen.push(diff));
  const open = (port: number) => {
    kernel = [...kernel, { protocol: "tcp", ip: "127.0.0.1", port }];
    emit({ ports: [{ protocol: "tcp", port, families: 1, ip: "127.0.0.1", addr: ipBytes("127.0.0.1")! }], whole: 0 });
  };
  const close = (port: number) => {
    kernel = kernel.filter((p) => p.port !== port);
    emit({ ports: [{ protocol: "tcp", port, families: 1, closeOnly: true }], whole: 0 });
  };
  const tcp = (port: number) => ({ protocol: "tcp", ip: "127.0.0.1", port });

  open(8080);
  open(9090);
  expect(seen).toEqual([]); // not yet: the batch waits for the rest of this turn
  await waitUntil("the batch told", () => seen.length >= 1);
  expect(seen).toEqual([{ added: [tcp(8080), tcp(9090)], removed: [] }]);

  // One port closes as another opens: one diff. Then a port opened and closed at once: its
  // opening goes out first, on its own, and the closing after it.
  seen.length = 0;
  close(8080);
  open(7070);
  open(6060);
  close(6060);
  await waitUntil("both told", () => seen.length >= 2);
  await Bun.sleep(20);
  expect(seen).toEqual([
    { added: [tcp(7070), tcp(6060)], removed: [tcp(8080)] },
    { added: [], removed: [tcp(6060)] },
  ]);
  expect(watcher.ports.map((p) => p.port).sort()).toEqual([7070, 9090]);
});
