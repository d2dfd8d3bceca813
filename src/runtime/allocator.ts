// Bun allocates buffers with mimalloc, which by default gives freed memory back to the kernel
// 10 ms after it is freed. A relay that allocates a fresh buffer per chunk (grpc-js frames
// every message into a new one, the HTTP/2 layer and the sockets make theirs) then touches
// pages the kernel must fault in again: profiled here, about one page fault per 4 KiB
// carried on each agent, a third of their CPU on the gRPC forwarder. With a 2 s delay the
// memory is reused while bytes flow and still returned once they stop (the load tests hold
// agents to their baseline memory). mimalloc reads the option from the environment at start,
// so an agent that does not have it starts itself again (same process, execve) with it set.
import { runtimeName } from "./self.ts";

export const PURGE_DELAY_VARIABLE = "MIMALLOC_PURGE_DELAY";
const PURGE_DELAY_MS = "2000";

/** Returns only if the process runs on as it is (not Bun, option already set, no execve). */
export function tuneAllocator(): void {
  if (runtimeName() !== "bun" || process.env[PURGE_DELAY_VARIABLE] !== undefined) return;
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
    execve.call(process, process.execPath, args, { ...process.env, [PURGE_DELAY_VARIABLE]: PURGE_DELAY_MS });
  } catch (err) {
    // Runs on with the default: slower, not wrong.
    process.stderr.write(
      `porthole: could not restart itself with ${PURGE_DELAY_VARIABLE}=${PURGE_DELAY_MS} (${(err as Error).message}); ` +
        `the gRPC and SSH forwarders use more CPU per byte. Set ${PURGE_DELAY_VARIABLE}=${PURGE_DELAY_MS} in the agent's environment.\n`,
    );
  } finally {
    process.emitWarning = emitWarning;
  }
}
