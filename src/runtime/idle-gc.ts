// Bun's own idle collector, a timer that wakes every second and asks for a collection
// whenever the heap grew since its last look, cost an otherwise idle guest agent about half
// of its idle CPU: 0.30-0.33% of a core against 0.10-0.17% without it, beside 1,000 listeners
// (3 runs each, /tmp/idle probe of bench/churn-profile.ts, 2026-11-29). The agents start with
// it off (BUN_GC_TIMER_DISABLE, runtime/allocator.ts) and ask for a collection themselves,
// once their resident memory grew by GROWTH_BYTES since the last one, looking every CHECK_EVERY_MS: memory
// that a burst of connections used still comes back (the load tests hold both agents to it),
// and an idle agent wakes for this once in CHECK_EVERY_MS. JavaScriptCore's own collections,
// paced by allocation, are not touched.
import { runtimeName } from "./self.ts";

export const GC_TIMER_VARIABLE = "BUN_GC_TIMER_DISABLE";
const CHECK_EVERY_MS = 10_000;
const GROWTH_BYTES = 16 << 20;

/** Starts the agent's own idle collector where Bun's is off; returns its stop. */
export function collectAfterGrowth(): () => void {
  if (runtimeName() !== "bun" || !process.env[GC_TIMER_VARIABLE]) return () => {};
  const gc = (globalThis as unknown as { Bun: { gc(force: boolean): void } }).Bun.gc;
  // The resident size, as Bun's own timer looks at it: a burst's memory is mostly buffers and
  // sockets outside the JavaScript heap, which only a collection of their owners frees.
  const rss = () => process.memoryUsage.rss();
  let floor = rss();
  const timer = setInterval(() => {
    const size = rss();
    if (size < floor) floor = size;
    if (size - floor < GROWTH_BYTES) return;
    gc(true); // a full collection, once after the growth: what the burst left goes
    floor = rss();
  }, CHECK_EVERY_MS);
  timer.unref();
  return () => clearInterval(timer);
}
