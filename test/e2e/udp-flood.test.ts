// A UDP flood must not starve the rest of the agent channel: iperf3 offering 1 Gbit/s of UDP
// through the gRPC forwarder (and, by default, over data streams of their own), run after run,
// while a TCP transfer goes through the same forwarder and the guest opens a new port
// (reported over the agent's control stream).
// Not timed: every part must finish, the bytes must arrive intact. Before UDP's credits a
// flood's tail of stale datagrams (megabytes queued in HTTP/2's windows) reached iperf3's next
// test, whose server took one for its client's hello and never answered the real one: the
// client hung (bench: "UDP flood" failed in 3 of 4 runs).
import { describe, expect } from "bun:test";
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { IperfServer } from "../iperf.ts";
import { waitUntil } from "../wait.ts";
import { join } from "node:path";
import { useHarness, e2eTest, exchange, freePort, Guest, startHostAgent, statusJSON } from "./harness.ts";

useHarness();

/** One iperf3 UDP client run against the forward; its JSON result, or why there is none. */
function iperfUdp(port: number, seconds: number): Promise<{ lost?: number; error?: string }> {
  return new Promise((resolve) => {
    const child = spawn("iperf3", ["-c", "127.0.0.1", "-p", String(port), "-u", "-b", "1G", "-l", "1400", "-t", String(seconds), "-J"]);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d));
    // A run takes `seconds` and the end-of-test exchange; one that hangs is stopped and fails.
    const timer = setTimeout(() => child.kill(), (seconds + 15) * 1000);
    child.on("close", () => {
      clearTimeout(timer);
      try {
        const r = JSON.parse(out);
        resolve(r.error ? { error: r.error } : { lost: r.end.sum.lost_percent });
      } catch {
        resolve({ error: "no result: the client hung and was stopped" });
      }
    });
  });
}

describe("UDP flood beside TCP", () => {
  // grpc: the flows are Tunnel streams on the agent's HTTP/2 session; auto: data streams of their own.
  for (const forwarder of ["grpc", "auto"] as const) e2eTest(`${forwarder}: four back-to-back iperf3 -u runs at 1 Gbit/s all finish while a 32 MiB TCP transfer arrives intact and a new guest port is forwarded`, async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [iperfPort, digestPort, latePort] = [await freePort(), await freePort(), await freePort()];
    guest.spawn(["iperf3", "-s", "-p", String(iperfPort)], "iperf3 server");
    const server = new IperfServer(iperfPort, guest.ns);
    await guest.startServer("digest", [["127.0.0.1", digestPort]]);
    // Static: iperf3 opens its UDP socket only when a UDP test starts. The late port is
    // forwarded only once the guest agent reports it, over the control stream.
    const config = guest.writeFile("flood.yaml", [
      "portForwards:",
      `- {guestPort: ${iperfPort}, hostPort: ${iperfPort}, static: true}`,
      `- {guestPort: ${digestPort}, hostPort: ${digestPort}, static: true}`,
      `- {guestPort: ${latePort}, hostPort: ${latePort}}`,
      "- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}",
      "",
    ].join("\n"));
    const host = startHostAgent(guest, ["--config", config, "--forwarder", forwarder]);
    for (const port of [iperfPort, digestPort]) await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "tcp" && e.hostAddr === `127.0.0.1:${port}`, `the forward of ${port}`, 20_000);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${iperfPort}`, "the UDP forward", 20_000);

    // The flood: each run starts once the last ended and its datagrams stopped arriving in the
    // guest. iperf3's server takes the first datagram its new listener gets for the next
    // client's hello; on a starved machine (CI) the last run's tail, held back by a pump thread
    // waiting for a CPU, could still come then and hang that client. What this test checks is
    // that the flood starves nothing else; the tail's bound is the flow's budget
    // (native-udp-pump.test.ts, datagram-budget tests).
    const flood = (async () => {
      const runs: { lost?: number; error?: string }[] = [];
      for (let i = 0; i < 4; i++) {
        await server.udpQuiet();
        await server.waitFresh(); // iperf3 opens a new listener after each test: not before it
        runs.push(await iperfUdp(iperfPort, 2));
      }
      return runs;
    })();
    // The TCP transfer starts once the flood runs: iperf3's server connects its UDP socket to
    // the client when the first test's datagrams arrive (ss in the guest's namespace).
    const flooding = () => /\bESTAB\b/.test(spawnSync("ip", ["netns", "exec", guest.ns, "ss", "-Huan", `sport = :${iperfPort}`], { encoding: "utf8" }).stdout ?? "");
    await waitUntil("iperf3's UDP test to run in the guest", flooding, 15_000);
    const data = randomBytes(32 << 20);
    const transfer = exchange(digestPort, data, "127.0.0.1", 60_000);
    await guest.startServer("echo", [["127.0.0.1", latePort]]);
    const forwarded = host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${latePort}`, "the late port's forward", 30_000);

    expect((await transfer).toString()).toBe(createHash("sha256").update(data).digest("hex"));
    await forwarded;
    expect((await exchange(latePort, Buffer.from("ping"))).toString()).toBe("ping");
    const runs = await flood;
    expect(runs.filter((r) => r.error)).toEqual([]);
    for (const r of runs) expect(r.lost).toBeLessThan(100); // each run carried datagrams
    // The flood took the path this forwarder gives UDP (the host agent's counters).
    const udp = statusJSON(join(guest.dir, "state", "control.sock")).forwards.find((f) => f.protocol === "udp" && f.hostAddr === `127.0.0.1:${iperfPort}`);
    if (forwarder === "auto") {
      expect(udp?.paths?.fast?.connections).toBeGreaterThanOrEqual(4); // a flow per run (each client has its own port)
      expect(udp!.paths!.fast!.bytesIn).toBeGreaterThan(0);
    } else {
      expect(udp?.paths?.fast).toBeUndefined();
    }
  }, 120_000);
});
