// When a listener's connections are rewritten in the kernel (--kernel-direct), decided by
// ListenerRewrite against a stand-in for the kernel's maps (the real programs are loaded and
// used in test/e2e/kernel-direct.test.ts).
import { describe, expect, test } from "bun:test";
import { KernelDirect, ListenerRewrite, type KernelRouting, type RewriteCounts } from "../../src/host/kernel-direct.ts";

/** The kernel's maps, as far as ListenerRewrite sees them. */
class FakeKernel {
  rewrite: { host: string; port: number } | undefined;
  c: RewriteCounts = { connections: 0, closed: 0, failed: 0, bytesIn: 0, bytesOut: 0 };
  sets = 0;
  forgotten = false;
  /** What taking a rewrite away returns (-1: the kernel refused, EPERM). */
  clearResult = 0;
  route(_ip: string, _port: number, target: { host: string; port: number } | undefined): number {
    if (!target && this.clearResult < 0) return this.clearResult;
    this.rewrite = target;
    if (target) this.sets++;
    return 0;
  }
  active(): boolean {
    return this.rewrite !== undefined;
  }
  /** A rewritten connection that never connected: the program takes the rewrite away. */
  failOne(): void {
    this.c = { ...this.c, connections: this.c.connections + 1, failed: this.c.failed + 1 };
    this.rewrite = undefined;
  }
  counts(): RewriteCounts {
    return this.c;
  }
  forget(): number {
    if (this.clearResult < 0) return this.clearResult;
    this.forgotten = true;
    this.rewrite = undefined;
    return 0;
  }
  errnoName(): string {
    return "EPERM";
  }
}

function setup() {
  const kernel = new FakeKernel();
  const said: [boolean, string][] = [];
  let stopped = 0;
  const routing: KernelRouting = {
    direct: kernel as unknown as KernelDirect,
    count: () => () => void stopped++,
    say: (_address, usable, reason) => void said.push([usable, reason]),
  };
  const rewrite = new ListenerRewrite(routing, "127.0.0.1", 8080, "tcp 127.0.0.1:8080", () => "0.0.0.0:80");
  return { kernel, said, rewrite, stopped: () => stopped };
}

const direct = { host: "10.0.0.2", port: 80 };

describe("ListenerRewrite", () => {
  test("rewrites only after the relay connected a client to that very address and port, and stops when the path changes", () => {
    const { kernel, said, rewrite } = setup();
    rewrite.update(direct);
    expect(kernel.rewrite).toBeUndefined(); // not proven yet
    rewrite.connected({ host: "10.0.0.2", port: 81 }); // another address proves nothing for this one
    rewrite.update(direct);
    expect(kernel.rewrite).toBeUndefined();
    rewrite.connected(direct);
    expect(kernel.rewrite).toEqual(direct);
    expect(said).toEqual([[true, expect.stringContaining("connect to 10.0.0.2:80 themselves")]]);
    rewrite.update(direct); // no change, no second set
    expect(kernel.sets).toBe(1);
    rewrite.update({ path: "/run/data.sock" }); // the data path now: no rewrite
    expect(kernel.rewrite).toBeUndefined();
    rewrite.update(direct); // direct again: the proof must be made again
    expect(kernel.rewrite).toBeUndefined();
  });

  test("an IPv6 guest address is never rewritten to", () => {
    const { kernel, rewrite } = setup();
    rewrite.connected({ host: "fd00::2", port: 80 });
    expect(kernel.rewrite).toBeUndefined();
    expect(KernelDirect.fits("127.0.0.1", "fd00::2")).toBe(false);
    expect(KernelDirect.fits("::1", "10.0.0.2")).toBe(false);
    expect(KernelDirect.fits("0.0.0.0", "10.0.0.2")).toBe(false);
    expect(KernelDirect.fits("127.0.0.2", "10.0.0.2")).toBe(true);
  });

  test("a failed rewritten connection is said once, and the rewrite waits for the relay's next connection", () => {
    const { kernel, said, rewrite } = setup();
    rewrite.update(direct);
    rewrite.connected(direct);
    expect(kernel.rewrite).toEqual(direct);
    kernel.failOne();
    rewrite.update(direct); // a client came to the listener: the router asks again
    expect(kernel.rewrite).toBeUndefined(); // not set again blind
    rewrite.update(direct);
    expect(said.filter(([usable]) => !usable)).toEqual([[false, expect.stringContaining("did not connect")]]);
    rewrite.connected(direct);
    expect(kernel.rewrite).toEqual(direct);
    expect(said.filter(([usable]) => usable)).toHaveLength(2);
  });

  test("closing stops the counting and forgets the kernel's entries, and a late record of the relay's cannot set them again", () => {
    const { kernel, rewrite, stopped } = setup();
    rewrite.update(direct);
    rewrite.connected(direct);
    rewrite.close();
    expect(stopped()).toBe(1);
    expect(kernel.forgotten).toBe(true);
    // The relay thread's records posted before the listener closed still arrive: the port is
    // free now, and another program's clients there must never be sent to the guest.
    rewrite.connected(direct);
    rewrite.update(direct);
    expect(kernel.rewrite).toBeUndefined();
    expect(kernel.sets).toBe(1);
  });

  test("a rewrite the kernel refuses to take away is said, naming where the clients still go, on a path change and on close", () => {
    const { kernel, said, rewrite } = setup();
    rewrite.update(direct);
    rewrite.connected(direct);
    expect(kernel.rewrite).toEqual(direct);
    kernel.clearResult = -1;
    said.length = 0;
    rewrite.update(undefined); // the router chose another path
    expect(said).toEqual([[false, "could not stop rewriting connections to 127.0.0.1:8080 in the kernel (EPERM); they may still connect to 10.0.0.2:80 until the host agent stops"]]);
    // Set again, then closed with the kernel still refusing: said again, once.
    kernel.clearResult = 0;
    rewrite.update(direct);
    rewrite.connected(direct);
    kernel.clearResult = -1;
    said.length = 0;
    rewrite.close();
    expect(said).toHaveLength(1);
    expect(said[0]![1]).toStartWith("could not stop rewriting connections to 127.0.0.1:8080");
  });
});
