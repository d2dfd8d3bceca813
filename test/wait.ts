// A bounded wait for unit tests: a condition that never comes true fails with its name, not a
// hung test that only the runner's timeout ends.
export async function waitUntil(what: string, done: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`not met within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
