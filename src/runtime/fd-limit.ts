// This process's file-descriptor limit (RLIMIT_NOFILE) and use, read from /proc (no runtime
// has getrlimit), and the "out of file descriptors" episodes: said once when one starts and
// once when fds are free again, never once per refused connection.
import { readdirSync, readFileSync } from "node:fs";

let cachedLimit: number | undefined | null = null;

/** The soft RLIMIT_NOFILE (`ulimit -n`), or undefined where /proc does not say (read once). */
export function fdLimit(): number | undefined {
  if (cachedLimit !== null) return cachedLimit;
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    cachedLimit = m && m[1] !== "unlimited" ? Number(m[1]) : undefined;
  } catch {
    cachedLimit = undefined;
  }
  return cachedLimit;
}

/** Open fds now, or undefined if they cannot be counted (listing /proc/self/fd needs one). */
export function openFds(): number | undefined {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return undefined;
  }
}

/** Whether an error means this process (EMFILE) or the system (ENFILE) is out of fds. */
export function isFdExhaustion(err: unknown): boolean {
  const e = err as { code?: string; errno?: number; message?: string } | undefined;
  if (!e) return false;
  if (e.code === "EMFILE" || e.code === "ENFILE") return true;
  // Bun's os.networkInterfaces() says ERR_SYSTEM_ERROR with the errno only.
  if (e.errno === 24 || e.errno === -24 || e.errno === 23 || e.errno === -23) return true;
  return /\bE[MN]FILE\b|too many open files/i.test(e.message ?? "");
}

/**
 * Whether this process is at its fd limit right now: for errors that do not say why (Bun's
 * "Failed to listen at 127.0.0.1" carries no code when socket() fails with EMFILE).
 */
export function atFdLimit(): boolean {
  const open = openFds();
  const limit = fdLimit();
  return open === undefined || (limit !== undefined && open >= limit - 2);
}

/** Open fds are within `margin` of the limit (undefined counts as at it: /proc/self/fd needs an fd). */
export function nearFdLimit(margin = 16): boolean {
  const limit = fdLimit();
  if (limit === undefined) return false;
  const open = openFds();
  return open === undefined || open >= limit - margin;
}

/** What to tell the user about the limit: the number and how to raise it. */
export function fdLimitHint(limit = fdLimit()): string {
  const which = limit === undefined ? "the open-files limit" : `the limit of ${limit} open files`;
  return `${which} is reached; raise it with \`ulimit -n\` (e.g. \`ulimit -n 65536\`) before starting porthole`;
}

/**
 * Tracks one "out of fds" episode at a time: `exhausted()` says so once, then a probe every
 * second ends the episode (and says so) once fds are below 90% of the limit again.
 */
export class FdPressure {
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly say: (message: string) => void,
    private readonly probeMs = 1000,
  ) {
    fdLimit(); // read now: once fds run out, /proc/self/limits cannot be opened
  }

  get inEpisode(): boolean {
    return this.timer !== undefined;
  }

  /** Something failed for lack of fds (`what`: e.g. "refusing new connections on 127.0.0.1:8080"). */
  exhausted(what: string): void {
    if (this.timer) return;
    this.say(`out of file descriptors: ${what}; ${fdLimitHint()}`);
    const limit = fdLimit();
    this.timer = setInterval(() => {
      const open = openFds();
      if (open === undefined || (limit !== undefined && open >= limit * 0.9)) return;
      this.stop();
      this.say(`file descriptors available again (${open}${limit ? ` of ${limit}` : ""} in use)`);
    }, this.probeMs);
    this.timer.unref?.();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
