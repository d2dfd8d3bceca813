// The owner lookup on a /proc laid out by the test: the process the kernel saw bind a port is
// looked at first (and checked: it must hold the socket), the pass over every process is the
// fallback, and a process's description is kept only while its start time is the same.
import { afterAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { spyOn } from "bun:test";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OwnerResolver } from "../../src/guest/port-owners.ts";

const root = mkdtempSync(join(tmpdir(), "porthole-owners-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const proc = join(root, "proc");

/** A process in the fake /proc: its name, start time, and sockets (fd number -> inode). */
function processAt(pid: number, comm: string, started: number, sockets: Record<number, number>): void {
  const dir = join(proc, String(pid));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(join(dir, "fd"), { recursive: true });
  writeFileSync(join(dir, "comm"), `${comm}\n`);
  writeFileSync(join(dir, "cmdline"), `${comm}\0--serve\0`);
  writeFileSync(join(dir, "status"), "Name:\tx\nUid:\t0\t0\t0\t0\n");
  writeFileSync(join(dir, "cgroup"), "0::/\n");
  // Field 22 is the start time; the command in parentheses may hold spaces.
  writeFileSync(join(dir, "stat"), `${pid} (${comm} x) S ${Array.from({ length: 18 }, () => "1").join(" ")} ${started} 0 0\n`);
  for (const [fd, inode] of Object.entries(sockets)) symlinkSync(`socket:[${inode}]`, join(dir, "fd", fd));
}

const resolver = (recheckMs?: number) => new OwnerResolver({ proc, passwd: join(root, "passwd"), docker: root, podman: root, pods: root, nerdctl: root }, recheckMs);

describe("owner lookup", () => {
  // Two processes claim inode 99 (fd passing makes that real): which one is reported shows
  // which was looked at first.
  processAt(100, "early", 5, { 3: 99 });
  processAt(4242, "binder", 7, { 3: 50, 9: 99 });
  processAt(555, "bystander", 9, { 4: 77 });

  test("the process the kernel named is looked at first", async () => {
    expect((await resolver().resolve([{ inode: 99, uid: 0 }], [4242])).get(99)?.pid).toBe(4242);
  });

  test("without a name, or named wrongly, the pass over every process finds the socket", async () => {
    expect((await resolver().resolve([{ inode: 99, uid: 0 }])).get(99)?.pid).toBe(100);
    expect((await resolver().resolve([{ inode: 99, uid: 0 }], [555, 999999])).get(99)?.pid).toBe(100);
  });

  test("a process's description is kept while its start time is the same, read again once a pid is reused", async () => {
    const r = resolver(0); // the start time looked at every time
    expect((await r.resolve([{ inode: 77, uid: 0 }], [555])).get(77)?.command).toBe("bystander");
    processAt(555, "renamed", 9, { 4: 78 });
    expect((await r.resolve([{ inode: 78, uid: 0 }], [555])).get(78)?.command).toBe("bystander");
    processAt(555, "newcomer", 11, { 4: 79 });
    expect((await r.resolve([{ inode: 79, uid: 0 }], [555])).get(79)?.command).toBe("newcomer");
  });

  test("a process binding port after port is described once: its stat file is read at most once a second", async () => {
    processAt(650, "binder", 5, { 4: 601 });
    const r = resolver();
    const read = spyOn(fs, "readFileSync");
    try {
      for (const inode of [601, 602, 603]) {
        rmSync(join(proc, "650", "fd", "4"));
        symlinkSync(`socket:[${inode}]`, join(proc, "650", "fd", "4"));
        expect((await r.resolve([{ inode, uid: 0 }], [650])).get(inode)?.command).toBe("binder");
        r.forget([inode]);
      }
      expect(read.mock.calls.filter(([file]) => String(file) === join(proc, "650", "stat"))).toHaveLength(1);
    } finally {
      read.mockRestore();
    }
  });

  test("a process that binds again in the fd a gone socket freed is found by a readlink of that fd, without listing its fds", async () => {
    processAt(600, "churner", 3, { 5: 500, 6: 501, 8: 502 });
    const r = resolver();
    expect((await r.resolve([{ inode: 501, uid: 0 }], [600])).get(501)?.pid).toBe(600);
    r.forget([501]);
    rmSync(join(proc, "600", "fd", "6"));
    symlinkSync("socket:[503]", join(proc, "600", "fd", "6")); // the lowest free fd, reused
    const listed = spyOn(fs, "readdirSync");
    try {
      expect((await r.resolve([{ inode: 503, uid: 0 }], [600])).get(503)?.pid).toBe(600);
      expect(listed.mock.calls.filter(([dir]) => String(dir).startsWith(join(proc, "600")))).toEqual([]);
      // A socket elsewhere (no freed fd holds it): the fds are listed, as before.
      symlinkSync("socket:[504]", join(proc, "600", "fd", "9"));
      expect((await r.resolve([{ inode: 504, uid: 0 }], [600])).get(504)?.pid).toBe(600);
      expect(listed.mock.calls.filter(([dir]) => String(dir).startsWith(join(proc, "600")))).not.toEqual([]);
    } finally {
      listed.mockRestore();
    }
  });

  test("a socket not where the kernel said and gone since gets no owner and costs no pass over every process; one still open is looked for in the recent binders, then everywhere", async () => {
    const r = resolver();
    const listed = spyOn(fs, "readdirSync");
    try {
      const gone = await r.resolve([{ inode: 99, uid: 0 }], [555], { recent: [4242], alive: () => false });
      expect(gone.get(99)).toBeNull();
      expect(listed.mock.calls.map(([dir]) => String(dir))).toEqual([join(proc, "555", "fd")]); // the named binder's fds only
      listed.mockClear();
      expect((await r.resolve([{ inode: 50, uid: 0 }], [555], { recent: [4242], alive: () => true })).get(50)?.pid).toBe(4242);
      expect(listed.mock.calls.map(([dir]) => String(dir))).toEqual([join(proc, "555", "fd"), join(proc, "4242", "fd")]);
      expect((await r.resolve([{ inode: 502, uid: 0 }], [555], { recent: [4242], alive: () => true })).get(502)?.pid).toBe(600);
    } finally {
      listed.mockRestore();
    }
  });
});
