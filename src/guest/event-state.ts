// The port state last sent on any GetEvents stream, kept across streams (and, with a runtime
// directory, across agent restarts, in Lima's event-state.json) as Lima's guest agent keeps it:
// a port that closed while no stream was open is reported removed on the next stream.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { diffPorts, toPortSet, type PortSet } from "../core/ports.ts";
import type { IPPort } from "../proto/guest-service.ts";

const FILE_NAME = "event-state.json";

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

  /** Records what the hosts now know. */
  sent(now: IPPort[]): void {
    this.lastSent = toPortSet(now);
    if (!this.runtimeDir) return;
    try {
      mkdirSync(this.runtimeDir, { recursive: true });
      writeFileSync(join(this.runtimeDir, FILE_NAME), JSON.stringify({ ports: now }));
    } catch (err) {
      this.log(`could not save ${join(this.runtimeDir, FILE_NAME)}: ${(err as Error).message}`);
    }
  }
}
