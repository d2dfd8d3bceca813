// A listening net.Server's socket as the relay thread needs it: its fd, and a way to make the
// runtime stop accepting on it while the socket stays open (the relay thread's dup keeps it
// listening). Neither is public API in any runtime: kept to this one file.
import type * as net from "node:net";

type Handle = { fd?: unknown; stop?: unknown };

const handleOf = (server: net.Server) => (server as unknown as { _handle?: Handle })._handle;

/** The listening socket's fd, where the runtime shows it (Bun and Node: `_handle.fd`). */
export function listenerFd(server: net.Server): number | undefined {
  const fd = handleOf(server)?.fd;
  return typeof fd === "number" && fd >= 0 ? fd : undefined;
}

/** Whether stopAccepting can work here (Bun's listener has stop(); Node's handle does not). */
export function canStopAccepting(server: net.Server): boolean {
  return typeof handleOf(server)?.stop === "function";
}

/**
 * The runtime stops watching and accepting on the server's socket and closes its own fd
 * (Bun: the listener's stop()); the server object stays as it was (close() still ends it).
 * Call only once another fd keeps the socket open, or the port closes.
 */
export function stopAccepting(server: net.Server): void {
  (handleOf(server)!.stop as () => void).call(handleOf(server));
}
