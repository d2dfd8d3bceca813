// Flag values shared by the subcommands: parsing with errors that say what is wrong.
import { homedir } from "node:os";
import { join } from "node:path";
import { parseDuration } from "../core/duration.ts";
import { parseTransportAddress, type TransportAddress } from "../core/transport-address.ts";

export class UsageError extends Error {}

export function asList(value: unknown): string[] {
  if (value === undefined) return [];
  return (Array.isArray(value) ? value : [value]).map(String);
}

export function parseAddressFlag(flag: string, value: unknown): TransportAddress {
  const values = asList(value);
  if (values.length !== 1) throw new UsageError(`--${flag} takes one address, got ${values.length}`);
  return parseAddressValue(flag, values[0]!);
}

export function parseAddressValue(flag: string, text: string): TransportAddress {
  try {
    return parseTransportAddress(text);
  } catch (err) {
    throw new UsageError(`--${flag}: ${(err as Error).message}`, { cause: err });
  }
}

export function parseIntFlag(flag: string, value: unknown, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${flag}: "${value}" is not a whole number from ${min} to ${max}`);
  return n;
}

export function parseChoiceFlag<T extends string>(flag: string, value: unknown, choices: readonly T[]): T {
  if (!choices.includes(value as T)) throw new UsageError(`--${flag}: "${value}" is not one of ${choices.join(", ")}`);
  return value as T;
}

/** Runs until SIGINT or SIGTERM, then calls stop (and waits for it) and exits cleanly. */
export function stopOnSignals(stop: () => void | Promise<void>): void {
  const handler = () => {
    void Promise.resolve()
      .then(stop)
      .catch(() => {})
      .finally(() => process.exit(0));
  };
  process.once("SIGINT", handler);
  process.once("SIGTERM", handler);
}

export function parseDurationFlag(flag: string, value: unknown): number | undefined {
  if (value === undefined) return undefined;
  const ms = parseDuration(typeof value === "number" ? value : String(value));
  if (Number.isNaN(ms)) throw new UsageError(`--${flag}: "${value}" is not a positive duration (e.g. 60s, 500ms, 2m)`);
  return ms;
}

/** Where the host agent keeps known_hosts, host sockets and its control socket. */
export function defaultStateDir(): string {
  return join(process.env.XDG_STATE_HOME || join(homedir(), ".local", "state"), "porthole");
}

/**
 * `--flag -5s` as `--flag=-5s`: the option parser takes any word that starts with a dash for
 * an option ("Unknown option `-5`"), so a negative value would never reach its check.
 */
export function joinNegativeValues(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const next = argv[i + 1];
    if (/^--[a-z][\w-]*$/.test(arg) && next !== undefined && /^-\.?\d/.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
    } else out.push(arg);
  }
  return out;
}
