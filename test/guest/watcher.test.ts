// The watcher over a directory of /proc/net-shaped files that the test rewrites.
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { PortDiff } from "../../src/core/ports.ts";
import { procNetScanner } from "../../src/guest/scanners.ts";
import { PortWatcher, scanProcNet } from "../../src/guest/watcher.ts";
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
