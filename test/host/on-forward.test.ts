// The --on-forward runner: a cap on runs at once, a bounded queue, the rest dropped with a
// message; companions and reverse sockets never run it. Real /bin/sh processes.
import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OnForward } from "../../src/host/on-forward.ts";

test("at most maxRunning at once, maxQueued waiting, the rest dropped and said; every queued run happens", async () => {
  const dir = mkdtempSync(join(tmpdir(), "porthole-onfwd-"));
  try {
    const gate = join(dir, "gate");
    const log = join(dir, "runs");
    writeFileSync(log, "");
    // Each run records its port, then waits for the gate file (so runs pile up), then exits.
    const failed: string[] = [];
    const runner = new OnForward({
      command: `echo "$PORTHOLE_HOST_PORT" >> '${log}'; while [ ! -e '${gate}' ]; do sleep 0.05; done`,
      timeoutMs: 20_000,
      maxRunning: 2,
      maxQueued: 2,
      guest: "unix:///g.sock",
      log: () => {},
      failed: (m) => failed.push(m),
    });
    const fwd = (port: number, extra: object = {}) => runner.onEvent({ type: "forwarding", protocol: "tcp", guestAddr: `127.0.0.1:${port}`, hostAddr: `127.0.0.1:${port}`, ...extra });
    fwd(1, { companion: true, hostAddr: "[::1]:1" });
    fwd(2, { reverse: true });
    runner.onEvent({ type: "stopping", protocol: "tcp", guestAddr: "127.0.0.1:3", hostAddr: "127.0.0.1:3" });
    for (const port of [10, 11, 12, 13, 14, 15]) fwd(port);
    expect(failed).toEqual([
      "not run for tcp 127.0.0.1:14: 2 runs are going and 2 wait already (does the command finish?)",
      "not run for tcp 127.0.0.1:15: 2 runs are going and 2 wait already (does the command finish?)",
    ]);
    const lines = () => readFileSync(log, "utf8").split("\n").filter(Boolean).sort();
    for (let i = 0; i < 200 && lines().length < 2; i++) await Bun.sleep(20);
    await Bun.sleep(200); // would a third run start early? it must not
    expect(lines()).toEqual(["10", "11"]);
    writeFileSync(gate, "");
    for (let i = 0; i < 200 && lines().length < 4; i++) await Bun.sleep(20);
    expect(lines()).toEqual(["10", "11", "12", "13"]);
    runner.stop();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
