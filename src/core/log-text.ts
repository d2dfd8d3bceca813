// Strings from outside (the guest, a config file, the network) in text log lines: a string
// with a control character (a newline, an ANSI escape) could forge a line or repaint the
// terminal, so such a string is printed quoted, with every such character escaped. Plain
// strings stay as they are, so ordinary lines read like Lima's.

/** C0 and C1 controls, DEL, and the Unicode line and paragraph separators. */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
const UNSAFE_ALL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029"\\]/g;

/** `s` as is when it is safe in a text line, else double-quoted with escapes. */
export function logText(s: string | number | undefined): string {
  const text = String(s);
  if (!UNSAFE.test(text)) return text;
  return `"${text.replace(UNSAFE_ALL, escapeChar)}"`;
}

function escapeChar(c: string): string {
  switch (c) {
    case "\n":
      return "\\n";
    case "\r":
      return "\\r";
    case "\t":
      return "\\t";
    case '"':
      return '\\"';
    case "\\":
      return "\\\\";
    default:
      return `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
  }
}

/** Refusals of what anyone may send or connect: a line per 10 s at most, the next saying how many went unsaid. */
export function rateLimitedRefusals(log: (line: string) => void, intervalMs = 10_000): (line: string) => void {
  return rateLimitedLog(log, intervalMs, (n) => `and ${n} more refused since the last such line`);
}

/**
 * A log that says at most `burst` lines per interval, the next one after saying how many were
 * left unsaid (`more(n)`): for lines that something outside may cause at any rate (a hostile
 * peer must not fill the disk through them). `now`: the clock (tests).
 */
export function rateLimitedLog(log: (line: string) => void, intervalMs: number, more: (n: number) => string, burst = 1, now: () => number = Date.now): (line: string) => void {
  let windowStart = -Infinity;
  let said = 0;
  let skipped = 0;
  return (line) => {
    const t = now();
    if (t - windowStart >= intervalMs) {
      windowStart = t;
      said = 0;
    }
    if (said >= burst) return void skipped++;
    said++;
    log(skipped ? `${line} (${more(skipped)})` : line);
    skipped = 0;
  };
}
