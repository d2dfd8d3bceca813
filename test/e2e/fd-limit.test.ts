// The host agent under a file-descriptor limit (`ulimit -n 1024`), with more guest ports than
// the limit allows: it lives, caps its forwards by the limit and says so, reports what fails
// for lack of fds, and forwards again when fds are free.
import { describe, expect } from "bun:test";
import * as net from "node:net";
import { e2eTest, exchange, fdCount, freePort, freePortBase, Guest, PORTHOLE, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const LIMIT = 1024;
const LISTENERS = 600;

describe("file descriptor limits", () => {
  e2eTest("ulimit -n 1024 and 600 guest listeners: the agent lives, caps forwards by the limit and says so, and recovers", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest, [], { wrapper: ["prlimit", `--nofile=${LIMIT}:${LIMIT}`, "--"] });
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    const base = await freePortBase(Array.from({ length: LISTENERS }, (_, i) => i), 5_000, 26_000);
    const load = await guest.startFixture(["load", String(base), String(LISTENERS), "0"]);

    const isCap = (e: { type: string; message?: unknown }) => e.type === "warning" && String(e.message).includes("guest port(s) not forwarded");
    const cap = await host.waitForEvent(isCap, "the cap warning", 30_000);
    expect(cap.message).toContain(`limit of ${LIMIT} open files`);
    expect(cap.message).toContain("ulimit -n");
    const capped = Number(/over the (\d+) forwards/.exec(String(cap.message))![1]);
    expect(capped).toBeLessThan(LISTENERS);
    await host.proc.waitFor(() => host.events.filter((e) => e.type === "forwarding").length >= capped * 2 || undefined, "the capped forwards", 30_000);
    await host.proc.waitFor(() => host.events.filter((e) => e.type === "not-forwarding").length >= LISTENERS - capped || undefined, "the ports over the cap", 30_000);
    const over = host.events.find((e) => e.type === "not-forwarding")!;
    expect(over.error).toContain("ulimit -n");
    expect(host.events.filter(isCap)).toHaveLength(1);
    expect(fdCount(host.proc.child.pid!)).toBeLessThan(LIMIT);

    await load.kill("SIGKILL");
    await host.proc.waitFor(() => host.events.filter((e) => e.type === "stopping").length >= capped * 2 || undefined, "the forwards to close", 30_000);
    expect(host.proc.running).toBe(true);
  });

  e2eTest("out of fds under ulimit -n 1024: said once with the limit and a hint, a new port fails and is retried, all recovers when clients leave", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    // gRPC: no path choice per connection that could notice the fds running out by itself.
    const host = startHostAgent(guest, ["--forwarder", "grpc"], { wrapper: ["prlimit", `--nofile=${LIMIT}:${LIMIT}`, "--"] });
    const [first, second] = [await freePort(), await freePort()];
    await guest.startEcho("127.0.0.1", first);
    await host.waitForForwarding(first);
    const pid = host.proc.child.pid!;

    // More clients than the agent has fds: each accepted one holds at least one.
    const clients: net.Socket[] = [];
    for (let i = 0; i < LIMIT + 100; i++) {
      const c = net.connect({ port: first, host: "127.0.0.1" });
      c.on("error", () => {});
      clients.push(c);
    }
    await host.proc.waitFor(() => fdCount(pid) >= LIMIT - 1 || undefined, "the agent to run out of fds", 30_000);
    const isOut = (e: { type: string; message?: unknown }) => e.type === "warning" && String(e.message).startsWith("out of file descriptors");
    const out = await host.waitForEvent(isOut, "the out-of-fds warning");
    expect(out.message).toContain("new connections wait in the backlog or are refused");
    expect(out.message).toContain(`limit of ${LIMIT} open files`);

    // A new guest port now cannot be bound: reported with the limit and a hint, and retried.
    await guest.startEcho("127.0.0.1", second);
    const failed = await host.waitForEvent((e) => e.type === "failed" && e.hostAddr === `127.0.0.1:${second}`, "the failed bind", 30_000);
    expect(failed.error).toContain(`limit of ${LIMIT} open files`);
    expect(failed.error).toContain("ulimit -n");
    expect(failed.retryInMs).toBeGreaterThan(0);
    expect(host.proc.running).toBe(true);

    clients.forEach((c) => c.destroy());
    await host.waitForEvent((e) => e.type === "warning" && String(e.message).startsWith("file descriptors available again"), "fds free again", 30_000);
    await host.waitForForwarding(second, 30_000);
    expect((await exchange(second, Buffer.from("after"))).toString()).toBe("after");
    expect((await exchange(first, Buffer.from("first"))).toString()).toBe("first");
    expect(host.events.filter(isOut)).toHaveLength(1); // once per episode, not per connection
    expect(host.proc.running).toBe(true);
  });

  e2eTest("a guest agent out of fds (ulimit -n 1024) says so once, refuses the host's connections, and serves again when they leave", async () => {
    const guest = Guest.create();
    const agent = await guest.startAgent([], ["prlimit", `--nofile=${LIMIT}:${LIMIT}`, "--", ...PORTHOLE]);
    const host = startHostAgent(guest, ["--forwarder", "grpc"]);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);

    // Each tunnel holds one guest fd for its dial: more tunnels than the guest agent has fds.
    const clients: net.Socket[] = [];
    for (let i = 0; i < LIMIT + 200; i++) {
      const c = net.connect({ port, host: "127.0.0.1" });
      c.on("error", () => {});
      clients.push(c);
    }
    const isOut = (l: string) => l.startsWith("out of file descriptors: refusing the host's connections");
    const line = await agent.waitFor(() => agent.stderr.find(isOut), "the guest's out-of-fds line", 30_000);
    expect(line).toContain(`limit of ${LIMIT} open files`);
    expect(line).toContain("ulimit -n");
    expect(agent.running).toBe(true);

    clients.forEach((c) => c.destroy());
    await agent.waitFor(() => agent.stderr.find((l) => l.startsWith("file descriptors available again")), "fds free again", 30_000);
    expect((await exchange(port, Buffer.from("again"))).toString()).toBe("again");
    expect(agent.stderr.filter(isOut)).toHaveLength(1);
    expect(agent.running).toBe(true);
  });
});
