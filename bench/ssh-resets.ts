// Repeats iperf3 (3 forward runs, 3 with -R, …) through the SSH forwarder and prints what the host agent said when a run
// failed (issue 16: "porthole SSH, TCP Reverse" lost its control connection once under load).
//   bun bench/ssh-resets.ts [--runs N] [--duration S]
import { spawnSync } from "node:child_process";
import { freePort, Guest, runCleanups, startHostAgent } from "../test/lab.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1]! : fallback);

async function main(): Promise<void> {
  const guest = Guest.create();
  const { guestIP } = guest.linkToHost();
  const sshd = await guest.startSshd();
  await guest.startAgent();
  const iperfPort = await freePort();
  guest.spawn(["iperf3", "-s", "-p", String(iperfPort)], "iperf3 server");
  const hostPort = await freePort();
  const config = guest.writeFile("resets.yaml", `portForwards:\n- {guestPort: ${iperfPort}, hostPort: ${hostPort}, static: true}\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n`);
  const host = startHostAgent(guest, ["--config", config, "--forwarder", "ssh", "--ssh", `tcp://${guestIP}:22`, "--ssh-user", "root", "--ssh-identity", sshd.clientKey, "--ssh-skip-host-key-check"]);
  await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, "the forward", 30_000);
  let failed = 0;
  const runs = Number(flag("runs", "10"));
  for (let i = 0; i < runs; i++) {
    const started = new Date().toISOString();
    let out: { error?: string; end?: { sum_received: { bits_per_second: number } } } = {};
    for (let attempt = 0; attempt < 20; attempt++) {
      // As make bench runs them: three forward runs, then three reverse ones.
      const reverse = Math.floor(i / 3) % 2 === 1 ? ["-R"] : [];
      const r = spawnSync("iperf3", ["-c", "127.0.0.1", "-p", String(hostPort), "-t", flag("duration", "5"), ...reverse, "-J"], { encoding: "utf8" });
      out = JSON.parse(r.stdout || "{}");
      if (!out.error?.includes("busy")) break; // the server still closing the last test
      await Bun.sleep(500);
    }
    if (out.error) {
      failed++;
      console.log(`run ${i} (from ${started}): ${out.error}`);
      console.log(host.proc.stdout.filter((l) => l > `{"time":"${started}`).slice(-10).join("\n"));
    } else console.log(`run ${i}: ${((out.end!.sum_received.bits_per_second) / 1e9).toFixed(2)} Gbit/s`);
  }
  console.log(`${failed} of ${runs} runs failed`);
}

main().catch((err: Error) => { console.error(err.message); process.exitCode = 1; }).finally(() => runCleanups());
