// The guest agent running out of file descriptors: a dial for the host that fails for lack of
// fds is said once per episode (with the limit and a hint), not once per connection.
import { atFdLimit, FdPressure, isFdExhaustion } from "../runtime/fd-limit.ts";

let pressure: FdPressure | undefined;

/** Starts reporting through `log`; returns the stop. */
export function watchFdPressure(log: (line: string) => void): () => void {
  pressure?.stop();
  const mine = new FdPressure(log);
  pressure = mine;
  return () => mine.stop();
}

/**
 * A dial inside the guest failed: if for lack of fds (Bun reports EMFILE on connect as
 * ECONNREFUSED, so the fd count decides), say so.
 */
export function noteDialError(err: unknown, target: string): void {
  if (pressure && (isFdExhaustion(err) || atFdLimit())) pressure.exhausted(`refusing the host's connections (dialing ${target} failed)`);
}
