// The runtime's start-up settings (its memory libraries', its JIT's), which are read from the
// environment only when the process starts; an agent that lacks one starts itself again
// (same process, execve) with it set.
// - Bun allocates buffers with mimalloc, which by default gives freed memory back to the
//   kernel 10 ms after it is freed. A relay that allocates a fresh buffer per chunk (grpc-js
//   frames every message into a new one, the HTTP/2 layer and the sockets make theirs) then
//   touches pages the kernel must fault in again: profiled here, about one page fault per
//   4 KiB carried on each agent, a third of their CPU on the gRPC forwarder. With a 2 s delay
//   the memory is reused while bytes flow and still returned once they stop (the load tests
//   hold agents to their baseline memory).
// - glibc's x86-64 memcpy/memmove copies blocks of 2 KiB and more with `rep movsb`, which on
//   this machine's AMD EPYC runs at ~2 GB/s instead of ~35 GB/s when the destination lies
//   1-63 bytes after the source modulo 4 KiB. ssh2 copies each channel chunk (read into a
//   page-aligned buffer) to offset 14 of a fresh packet: exactly that case, and the top entry
//   of the SSH forwarder's profile (29% of its CPU in perf). A threshold above the sizes we
//   copy keeps glibc on its vector loop, as fast in every alignment (bench/memcpy.ts).
// - Bun's idle garbage-collection timer (a look every second) is off: it cost an idle agent
//   half of its idle CPU; runtime/idle-gc.ts collects after growth instead.
// - JavaScriptCore compiles a function with its baseline JIT after ~500 runs and optimizes it
//   after ~1,000 (its "after warm-up" thresholds), so a fresh agent serves its first thousands
//   of connections largely interpreted: with --forwarder grpc its first second of back-to-back
//   connections cost 1.1-1.5 ms of CPU per connection against 0.4-0.5 ms once warm. Tiering
//   up after 50 and 200 runs brought the first second to 0.87-1.03 ms per connection (three
//   cold starts each, 2026-11-30), and a guest agent's CPU under a churn of 100 binds/s fell
//   from 0.93-1.14 to 0.79-0.92 CPU s per 1,000 binds (three alternating pairs, same day);
//   code that runs less often stays interpreted as before.
import { arch } from "node:process";
import { GC_TIMER_VARIABLE } from "./idle-gc.ts";
import { runtimeName } from "./self.ts";

export const PURGE_DELAY_VARIABLE = "MIMALLOC_PURGE_DELAY";
const PURGE_DELAY_MS = "2000";
export const MOVSB_TUNABLE = "glibc.cpu.x86_rep_movsb_threshold";
const MOVSB_THRESHOLD = String(4 << 20);
/** JavaScriptCore's options, as Bun reads them from the environment (BUN_JSC_<option>). */
export const JIT_SETTINGS: Record<string, string> = {
  BUN_JSC_thresholdForJITAfterWarmUp: "50",
  BUN_JSC_thresholdForOptimizeAfterWarmUp: "200",
};

/** The variables to add to `env` (none when all are there or set by the user). */
export function missingSettings(env: Record<string, string | undefined>, cpu: string = arch): Record<string, string> {
  const add: Record<string, string> = {};
  if (env[PURGE_DELAY_VARIABLE] === undefined) add[PURGE_DELAY_VARIABLE] = PURGE_DELAY_MS;
  if (env[GC_TIMER_VARIABLE] === undefined) add[GC_TIMER_VARIABLE] = "1"; // runtime/idle-gc.ts collects instead
  for (const [name, value] of Object.entries(JIT_SETTINGS)) if (env[name] === undefined) add[name] = value;
  const tunables = env.GLIBC_TUNABLES;
  if (cpu === "x64" && !tunables?.includes(MOVSB_TUNABLE)) {
    const ours = `${MOVSB_TUNABLE}=${MOVSB_THRESHOLD}`;
    add.GLIBC_TUNABLES = tunables ? `${tunables}:${ours}` : ours;
  }
  return add;
}

/** Returns only if the process runs on as it is (not Bun, settings already there, no execve). */
export function tuneAllocator(): void {
  if (runtimeName() !== "bun") return;
  const add = missingSettings(process.env);
  if (Object.keys(add).length === 0) return;
  const execve = (process as { execve?: (file: string, args: string[], env: Record<string, string | undefined>) => never }).execve;
  if (typeof execve !== "function") return;
  // A compiled binary has its script inside the executable (argv[1] is /$bunfs/…); a script
  // run by bun keeps its runtime flags (execArgv) and its path. argv0 keeps the invoked name
  // (lima-guestagent).
  const script = process.argv[1];
  const compiled = !script || script.startsWith("/$bunfs/") || script === process.execPath;
  const args = compiled ? [process.argv0, ...process.argv.slice(2)] : [process.argv0, ...process.execArgv, ...process.argv.slice(1)];
  // Bun warns that execve is experimental; on success the process is replaced before the
  // warning prints, and a failure is told in plain words below.
  const emitWarning = process.emitWarning;
  process.emitWarning = () => {};
  try {
    execve.call(process, process.execPath, args, { ...process.env, ...add });
  } catch (err) {
    // Runs on with the defaults: slower, not wrong.
    const settings = Object.entries(add).map(([k, v]) => `${k}=${v}`).join(" ");
    process.stderr.write(
      `porthole: could not restart itself with ${settings} (${(err as Error).message}); ` +
        `the gRPC and SSH forwarders use more CPU per byte. Set ${settings} in the agent's environment.\n`,
    );
  } finally {
    process.emitWarning = emitWarning;
  }
}
