// Repeats iperf3 (3 forward runs, 3 with -R, …) through the SSH forwarder and prints what the host agent said when a run
// failed. (Issue 16's "reset under load" was the harness: iperf3 run with spawnSync blocked the
// event loop that drains sshd's DEBUG1 stderr, so sshd stopped; and a client that came before
// iperf3's server opened its new listener was reset. test/iperf.ts avoids both.)
//   bun bench/ssh-resets.ts [--runs N] [--duration S]
import { iperf, IperfServer } from "../test/iperf.ts";
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
  const server = new IperfServer(iperfPort, guest.ns);
  const hostPort = await freePort();
  const config = guest.writeFile("resets.yaml", `portForwards:\n- {guestPort: ${iperfPort}, hostPort: ${hostPort}, static: true}\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n`);
  const host = startHostAgent(guest, ["--config", config, "--forwarder", "ssh", "--ssh", `tcp://${guestIP}:22`, "--ssh-user", "root", "--ssh-identity", sshd.clientKey, "--ssh-skip-host-key-check"]);
  await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, "the forward", 30_000);
  let failed = 0;
  const runs = Number(flag("runs", "10"));
  for (let i = 0; i < runs; i++) {
    const started = new Date().toISOString();
    // As make bench runs them: three forward runs, then three reverse ones.
    const reverse = Math.floor(i / 3) % 2 === 1 ? ["-R"] : [];
    try {
      const { gbps } = await iperf(server, hostPort, "127.0.0.1", reverse, Number(flag("duration", "5")));
      console.log(`run ${i}: ${gbps.toFixed(2)} Gbit/s`);
    } catch (err) {
      failed++;
      console.log(`run ${i} (from ${started}): ${(err as Error).message}`);
      console.log(host.proc.stdout.filter((l) => l > `{"time":"${started}`).slice(-10).join("\n"));
    }
  }
  console.log(`${failed} of ${runs} runs failed`);
}

main().catch((err: Error) => { console.error(err.message); process.exitCode = 1; }).finally(() => runCleanups());
