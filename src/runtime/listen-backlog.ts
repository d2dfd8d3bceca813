// How many connections the kernel queues on a listener before the program accepts them. A
// burst beyond the queue overflows it: the kernel then answers with SYN cookies, and a client
// whose first data segments cross a cookie check that fails gets a reset (ECONNRESET) before
// the agent ever sees it. Node takes `backlog` from listen()'s options; Bun ignores it and
// listens with 512. listen() called again on a listening socket changes only its backlog, so
// the shim does that wherever the runtime exposes the listener's fd.
import type * as net from "node:net";
import { loadNative } from "./native.ts";

/** The backlog asked for (the kernel caps it at net.core.somaxconn, 4096 by default). */
export const LISTEN_BACKLOG = 4096;

let said = false;

/**
 * Makes sure a listening server queues LISTEN_BACKLOG connections; where it cannot, `say`
 * hears why, once per process.
 */
export async function widenBacklog(server: net.Server, say: (message: string) => void): Promise<void> {
  const why = await backlogProblem(server);
  if (!why || said) return;
  said = true;
  say(`listeners keep the runtime's own queue of waiting connections (Bun's is 512) because ${why}: a burst of more connections at once may be reset by the kernel`);
}

async function backlogProblem(server: net.Server): Promise<string | undefined> {
  // Bun and Node both keep the listener's fd as `_handle.fd` (not public API: kept here, tested).
  const fd = (server as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) return "the runtime does not expose the listener's fd";
  const { shim, error } = await loadNative();
  if (!shim) return error ?? "no native shim";
  const r = shim.listenBacklog(fd, LISTEN_BACKLOG);
  return r < 0 ? `listen(): ${shim.errnoName(-r)}` : undefined;
}
