// Changes gathered into one diff (one message to each host instead of one per change), as long
// as no port is named twice: a port opened and closed again, or closed and opened again, ends
// the batch, so the changes before go out first. Lima's host applies an Event's removals before
// its additions; a diff that named one port both ways would leave it forwarded (or not) by
// accident. No I/O: the watcher decides when a batch is sent.
import { portKey, type PortDiff } from "./ports.ts";

export class DiffBatch {
  private added: PortDiff["added"] = [];
  private removed: PortDiff["removed"] = [];
  private readonly keys = new Set<string>();

  get empty(): boolean {
    return this.keys.size === 0;
  }

  /** Whether this diff can join the batch (it names no port the batch names). */
  accepts(diff: PortDiff): boolean {
    if (this.empty) return true;
    for (const p of diff.added) if (this.keys.has(portKey(p))) return false;
    for (const p of diff.removed) if (this.keys.has(portKey(p))) return false;
    return true;
  }

  /** Adds a diff that `accepts` allowed. */
  add(diff: PortDiff): void {
    for (const p of diff.added) this.keys.add(portKey(p));
    for (const p of diff.removed) this.keys.add(portKey(p));
    this.added.push(...diff.added);
    this.removed.push(...diff.removed);
  }

  /** The batch as one diff, leaving it empty. */
  take(): PortDiff {
    const diff = { added: this.added, removed: this.removed };
    this.added = [];
    this.removed = [];
    this.keys.clear();
    return diff;
  }
}
