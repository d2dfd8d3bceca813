// How to start this program again as a child (the demo starts its own guest agent).
// In a `bun build --compile` binary the script lives inside the executable.
export function selfCommand(): string[] {
  const script = process.argv[1];
  const compiled = !script || script.startsWith("/$bunfs/") || script === process.execPath;
  return compiled ? [process.execPath] : [process.execPath, script];
}

/**
 * The name this program was started under (a symlink or copy named `lima-guestagent` makes
 * porthole stand in for Lima's guest agent). A Bun binary has it in argv0 (its execPath is the
 * resolved file); a script run by Node or Deno has it in argv[1].
 */
export function invokedName(): string {
  const script = process.argv[1];
  const compiled = !script || script.startsWith("/$bunfs/") || script === process.execPath;
  const name = compiled ? process.argv0 : script;
  return name.slice(name.lastIndexOf("/") + 1).replace(/\.m?js$/, "");
}

export function runtimeName(): string {
  if (typeof (globalThis as { Bun?: unknown }).Bun !== "undefined") return "bun";
  if (typeof (globalThis as { Deno?: unknown }).Deno !== "undefined") return "deno";
  return "node";
}

/** Why the guest role cannot run on this runtime, if it cannot. */
export function guestRoleUnsupported(): string | undefined {
  if (runtimeName() !== "deno") return undefined;
  return (
    "the guest role does not run on Deno: its node:http2 server aborts the whole process when a " +
    "gRPC client closes its connection after real traffic (denoland/deno#36788). Run the guest agent " +
    "with the porthole binary or with Node (node porthole.mjs guest); the host role works on Deno."
  );
}
