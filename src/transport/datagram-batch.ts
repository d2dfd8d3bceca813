// Several UDP datagrams per Tunnel message between porthole agents: one message per datagram
// cost grpc-js and HTTP/2 their whole per-message work for 1,400 bytes, which held UDP far
// below a gigabit. Datagrams that arrive in one turn of the event loop (one poll of the
// socket) leave together at its end, each with its own bounds (`datagrams`, field 102).
import type { TunnelMessage } from "../proto/guest-service.ts";
import { oncePerTurn } from "./once-per-turn.ts";

/** A batch is sent once it holds this much, or this many datagrams, without waiting for the turn to end. */
const BATCH_BYTES = 64 * 1024;
export const MAX_DATAGRAMS_PER_MESSAGE = 4096;
/** The largest payload a UDP datagram can have (IPv6; IPv4's is 65,507). */
export const MAX_UDP_PAYLOAD = 65_527;

/**
 * The datagrams a message carries: a batch, or Lima's one per message in `data`; none in a
 * porthole peer's report of what it delivered (`udp_delivered` alone). A peer's message may
 * hold anything a 16 MiB message can: datagrams no UDP socket could send, and more of them
 * than a batch ever holds, are left out and counted in `refused` (the caller says so).
 */
export function datagramsOf(message: TunnelMessage): { datagrams: Buffer[]; refused: number; refusedBytes: number } {
  const all = message.datagrams?.length ? message.datagrams : message.udp_delivered && !message.data.length ? [] : [message.data];
  const datagrams = (all.length > MAX_DATAGRAMS_PER_MESSAGE ? all.slice(0, MAX_DATAGRAMS_PER_MESSAGE) : all).filter((d) => d.length <= MAX_UDP_PAYLOAD);
  const refused = all.length - datagrams.length;
  let refusedBytes = 0;
  if (refused) {
    for (const d of all) refusedBytes += d.length;
    for (const d of datagrams) refusedBytes -= d.length;
  }
  return { datagrams, refused, refusedBytes };
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
    if (this.bytes >= BATCH_BYTES || this.datagrams.length >= MAX_DATAGRAMS_PER_MESSAGE) return this.flush();
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
