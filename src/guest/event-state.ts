// The port state last sent on any GetEvents stream, kept across streams (and, with a runtime
// directory, across agent restarts, in Lima's event-state.json) as Lima's guest agent keeps it:
// a port that closed while no stream was open is reported removed on the next stream.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { diffPorts, portKey, toPortSet, type PortSet } from "../core/ports.ts";
import type { IPPort } from "../proto/guest-service.ts";

const FILE_NAME = "event-state.json";
/** Under churn, the file is written at most this often (the last change always gets written). */
const SAVE_EVERY_MS = 1000;

export class EventState {
  private lastSent: PortSet = new Map();

  constructor(
    private readonly runtimeDir: string | undefined,
    private readonly log: (line: string) => void,
  ) {
    if (!runtimeDir) return;
    try {
      const saved = JSON.parse(readFileSync(join(runtimeDir, FILE_NAME), "utf8")) as { ports?: IPPort[] };
      this.lastSent = toPortSet((saved.ports ?? []).filter((p) => p && typeof p.ip === "string" && typeof p.protocol === "string"));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") log(`ignored ${join(runtimeDir, FILE_NAME)}: ${(err as Error).message}`);
    }
  }

  /** The first event of a stream: every port now as added, the ports sent before and gone now as removed. */
  firstEvent(now: IPPort[]): { added: IPPort[]; removed: IPPort[] } {
    return { added: now, removed: diffPorts(this.lastSent, toPortSet(now)).removed };
  }

  /** Records what the hosts now know: every port. */
  sent(now: IPPort[]): void {
    this.lastSent = toPortSet(now);
    this.save();
  }

  /** Records a change sent: costs the change, not every port (a guest with thousands of listeners and a busy one). */
  sentChange(added: IPPort[], removed: IPPort[]): void {
    for (const p of removed) this.lastSent.delete(portKey(p));
    for (const p of added) this.lastSent.set(portKey(p), p);
    this.save();
  }

  private saveTimer: ReturnType<typeof setTimeout> | undefined;
  private savedAt = 0;

  /** Writes the file at once, or (within SAVE_EVERY_MS of the last write) once that has passed. */
  private save(): void {
    if (!this.runtimeDir || this.saveTimer) return;
    const wait = this.savedAt + SAVE_EVERY_MS - Date.now();
    if (wait <= 0) return this.write();
    this.saveTimer = setTimeout(() => {
      this.saveTimer = undefined;
      this.write();
    }, wait);
    this.saveTimer.unref?.();
  }

  private write(): void {
    this.savedAt = Date.now();
    try {
      mkdirSync(this.runtimeDir!, { recursive: true });
      writeFileSync(join(this.runtimeDir!, FILE_NAME), JSON.stringify({ ports: [...this.lastSent.values()] }));
    } catch (err) {
      this.log(`could not save ${join(this.runtimeDir!, FILE_NAME)}: ${(err as Error).message}`);
    }
  }
}
