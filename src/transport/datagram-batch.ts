// Several UDP datagrams per Tunnel message between porthole agents: one message per datagram
// cost grpc-js and HTTP/2 their whole per-message work for 1,400 bytes, which held UDP far
// below a gigabit. Datagrams that arrive in one turn of the event loop (one poll of the
// socket) leave together at its end, each with its own bounds (`datagrams`, field 102).
import type { TunnelMessage } from "../proto/guest-service.ts";
import { oncePerTurn } from "./once-per-turn.ts";

/** A batch is sent once it holds this much, without waiting for the turn to end. */
const BATCH_BYTES = 64 * 1024;

/**
 * The datagrams a message carries: a batch, or Lima's one per message in `data`; none in a
 * porthole peer's report of what it delivered (`udp_delivered` alone).
 */
export function datagramsOf(message: TunnelMessage): Buffer[] {
  if (message.datagrams?.length) return message.datagrams;
  return message.udp_delivered && !message.data.length ? [] : [message.data];
}

export class DatagramBatcher {
  private datagrams: Buffer[] = [];
  private written: (() => void)[] = [];
  private bytes = 0;
  private readonly flushSoon = oncePerTurn(() => this.flush());

  /** `send`: writes one message; calls `done` once it left for the connection. */
  constructor(private readonly send: (message: Partial<TunnelMessage>, done: () => void) => void) {}

  add(data: Buffer, done: () => void): void {
    this.datagrams.push(data);
    this.written.push(done);
    this.bytes += data.length;
    if (this.bytes >= BATCH_BYTES) return this.flush();
    this.flushSoon();
  }

  private flush(): void {
    if (!this.datagrams.length) return;
    const [datagrams, written] = [this.datagrams, this.written];
    this.datagrams = [];
    this.written = [];
    this.bytes = 0;
    this.send({ datagrams }, () => {
      for (const done of written) done();
    });
  }
}
