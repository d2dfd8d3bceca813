// The end-to-end tests' harness: the lab (test/lab.ts) plus bun:test's hooks and the rule
// that a skipped end-to-end test fails under CI.
import { afterAll, afterEach, setDefaultTimeout, test } from "bun:test";
import { e2eBlocker, runCleanups } from "../lab.ts";

export * from "../lab.ts";

const blocker = e2eBlocker();
export const e2eTest: typeof test = (blocker && !process.env.CI ? test.skip : test) as typeof test;
if (blocker && process.env.CI) throw new Error(`${blocker}, and CI=true forbids skipping them`);

/**
 * Every end-to-end test file calls this once at its top: bun:test binds hooks and the
 * default timeout to the file that sets them, and this module is loaded once for all files.
 */
export function useHarness(): void {
  // Agents and servers start in real namespaces; every wait has its own shorter deadline.
  setDefaultTimeout(60_000);
  afterEach(runCleanups);
  afterAll(runCleanups);
}
