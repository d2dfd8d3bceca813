// Rule keys that match a port's owner (core/port-owner.ts): `guestProcess`, a shell-style glob
// on the command (`node*`, `python3.1?`, `[jn]ava`), and `guestContainer`, a container's name
// or id. No I/O.
//
// Hand-written rather than a glob library: path globbing (picomatch, minimatch) gives `*` and
// `/` meanings a command name has no use for; this is fnmatch(3) without FNM_PATHNAME.
import type { PortOwner } from "./port-owner.ts";

/** A container id given as its first 12 or more hex digits (as `docker ps` shows it). */
const MIN_ID_PREFIX = 12;

/** The glob as a regular expression, or an error saying what is wrong with it. */
export function globToRegExp(glob: string): RegExp | string {
  let out = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c === "\\" && i + 1 < glob.length) out += escape(glob[++i]!);
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) return `"[" at position ${i + 1} has no closing "]"`;
      let set = glob.slice(i + 1, end);
      const negate = set.startsWith("!") || set.startsWith("^");
      if (negate) set = set.slice(1);
      out += `[${negate ? "^" : ""}${set.replace(/[\\\]^]/g, (m) => `\\${m}`)}]`;
      i = end;
    } else out += escape(c);
  }
  return new RegExp(`^${out}$`, "s");
}

function escape(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/]/g, (m) => `\\${m}`);
}

/** Whether a process glob matches the owner's command. */
export function processMatches(glob: string, owner: PortOwner): boolean {
  const re = globToRegExp(glob);
  return typeof re !== "string" && re.test(owner.command);
}

/** Whether `want` names the owner's container: its name, its id, or an id prefix of 12+ digits. */
export function containerMatches(want: string, owner: PortOwner): boolean {
  const c = owner.container;
  if (!c) return false;
  if (c.name !== undefined && c.name === want) return true;
  return want.length >= MIN_ID_PREFIX && c.id.startsWith(want.toLowerCase());
}
