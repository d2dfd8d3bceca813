// The guest agent's CPU under a churn of binds, as `make bench --only cost` measures it (1,000
// listeners and 5,000 connection pairs beside it, a host agent that ignores the churn's ports),
// optionally under Bun's sampling profiler (the agent from source, `--cpu-prof-md`).
//   bun bench/churn-profile.ts [--prof] [--seconds S] [--settle S] [--rate N] [--out DIR] [--runs N] [--no-host] [--exec CMD] [--agent "ARGS"]
// Prints CPU seconds per 1,000 binds (from utime + stime), which a shared machine disturbs less
// than a percentage of a core.
import { mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { e2eBlocker, Guest, PORTHOLE, runCleanups, startHostAgent } from "../test/lab.ts";
import { missingSettings } from "../src/runtime/allocator.ts";

const args = process.argv.slice(2);
const flag = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : fallback;
};
const SECONDS = Number(flag("seconds", "10"));
const RATE = Number(flag("rate", "100"));
const RUNS = Number(flag("runs", "1"));
const OUT = flag("out", "/tmp/porthole-churn-profile");
const PROF = args.includes("--prof");
/** Seconds between the host's connection and the idle window (the load's aftermath settles). */
const SETTLE = Number(flag("settle", "2"));
/** More arguments for the guest agent (e.g. "--scan-interval 10000"). */
const AGENT_ARGS = flag("agent", "").split(" ").filter(Boolean);
/** A command run on the agent during each churn window ({pid} replaced), stopped with SIGINT: `strace -c -f -p {pid}`, `perf record -g -p {pid}`. */
const EXEC = flag("exec", "");
const FIXTURES = join(import.meta.dir, "../test/fixtures/servers.ts");
// The agents' start-up settings, set here so that they need not restart themselves for them
// (runtime/allocator.ts), which the profiler does not survive.
Object.assign(process.env, missingSettings(process.env));

/** Each thread's ticks, by "tid name". */
function threadTicks(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const text = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
      out.set(`${tid} ${text.slice(text.indexOf("(") + 1, text.lastIndexOf(")"))}`, Number(f[11]) + Number(f[12]));
    } catch {
      // exited
    }
  }
  return out;
}

function ticks(pid: number): number {
  const text = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]); // clock ticks, 100 a second
}

async function main(): Promise<void> {
  const blocker = e2eBlocker();
  if (blocker) throw new Error(blocker);
  mkdirSync(OUT, { recursive: true });
  const command = PROF ? [process.execPath, "--cpu-prof-md", `--cpu-prof-dir=${OUT}`, "--cpu-prof-name=guest-churn.md", join(import.meta.dir, "../src/cli/main.ts")] : PORTHOLE;
  const guest = Guest.create();
  const [base, listeners, pairs] = [2_100, 1000, 5000];
  const startLoad = async () => {
    const load = guest.spawn(["sh", "-c", `ulimit -n "$(ulimit -Hn)" && exec ${process.execPath} ${FIXTURES} load ${base} ${listeners} ${pairs}`], "load");
    await load.waitForLine(/^loaded /, "stdout", 120_000);
  };
  // Under the profiler, the load comes first: its thousand listen() events are not the churn's.
  if (PROF) await startLoad();
  const agent = await guest.startAgent(AGENT_ARGS, command);
  const pid = agent.child.pid!;
  if (!PROF) await startLoad();
  const config = guest.writeFile("churn.yaml", `portForwards:\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n`);
  // --no-host: no GetEvents stream (what the watcher costs alone).
  const host = args.includes("--no-host") ? undefined : startHostAgent(guest, ["--config", config, "--forwarder", "grpc"]);
  await host?.waitForEvent((e) => e.type === "guest-connected", "connect", 30_000);
  await Bun.sleep(SETTLE * 1000);
  let t = ticks(pid);
  await Bun.sleep(SECONDS * 1000);
  console.log(`idle: ${(ticks(pid) - t) / SECONDS}% of a core`);
  for (let run = 0; run < RUNS; run++) {
    const churn = guest.spawn([process.execPath, FIXTURES, "churn", String(base + listeners + 1), "50", String(RATE)], "churn");
    await Bun.sleep(1000);
    const tool = EXEC ? Bun.spawn(["sh", "-c", `exec ${EXEC.replaceAll("{pid}", String(pid))}`], { stdout: "inherit", stderr: "inherit" }) : undefined;
    t = ticks(pid);
    const threads = threadTicks(pid);
    await Bun.sleep(SECONDS * 1000);
    const used = ticks(pid) - t;
    const perThread = [...threadTicks(pid)].map(([name, n]) => [name, n - (threads.get(name) ?? 0)] as const).filter(([, n]) => n > 0);
    console.log(`  by thread (ticks): ${perThread.map(([name, n]) => `${name} ${n}`).join(", ")}`);
    tool?.kill("SIGINT");
    await tool?.exited;
    console.log(`churn ${RATE}/s: ${used / SECONDS}% of a core; ${((used / 100) * 1000 / (RATE * SECONDS)).toFixed(3)} CPU s per 1,000 binds`);
    await churn.kill();
    await Bun.sleep(1000);
  }
  host?.proc.child.kill("SIGINT");
  agent.child.kill("SIGINT");
  await Bun.sleep(2000);
  if (PROF) console.log(`profile in ${OUT}`);
}

main()
  .catch((err: Error) => {
    console.error(`churn-profile: ${err.message}`);
    process.exitCode = 1;
  })
  .finally(() => runCleanups());
