// Durations as users write them: seconds as a number, or a number with a unit.
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `60s`, `500ms`, `2m`, `1.5h`, or a plain number of seconds; NaN for anything else. */
export function parseDuration(value: number | string): number {
  const m = typeof value === "number" ? [String(value), String(value), "s"] : /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$/.exec(value);
  const ms = m ? Number(m[1]) * UNIT_MS[m[2]!]! : NaN;
  return ms > 0 ? ms : NaN;
}
