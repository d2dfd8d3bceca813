// The last resort: an exception that escaped every handler is logged and the agent keeps
// running (its forwards and the guest's connections matter more than one failed callback).
// Each place that can fail catches its own errors; this only keeps a missed one from ending
// the process, and says so once per distinct message per minute.
const REPEAT_MS = 60_000;

export function keepRunningOnUncaught(log: (line: string) => void): void {
  const lastSaid = new Map<string, number>();
  const report = (kind: string, err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    const now = Date.now();
    if ((lastSaid.get(message) ?? -Infinity) > now - REPEAT_MS) return;
    if (lastSaid.size > 1000) lastSaid.clear();
    lastSaid.set(message, now);
    const where = err instanceof Error && err.stack ? ` (${err.stack.split("\n").slice(1, 3).map((l) => l.trim()).join("; ")})` : "";
    log(`internal error (${kind}), carrying on: ${JSON.stringify(message)}${where}; please report it`);
  };
  process.on("uncaughtException", (err) => report("uncaught exception", err));
  process.on("unhandledRejection", (err) => report("unhandled rejection", err));
}
