// One UDP flow over a data stream of its own (core/datagram-frames.ts), used by both agents
// between porthole peers. Over the agent's HTTP/2 session a flood's datagrams cost grpc-js
// and HTTP/2 their per-message work in both agents (1.5 and 1 core per Gbit/s here, more than
// the 2-core machine had to spare: 74% of a 1 Gbit/s flood dropped over budget) and shared
// the session with every TCP tunnel and the control stream. Here the datagrams of one turn
// of the event loop leave in one write, and the stream is the flow's alone.
import type * as net from "node:net";
import { creditFrames, DatagramFrameDecoder, datagramFrameSize, writeDatagramFrame } from "../core/datagram-frames.ts";
import { oncePerTurn } from "./once-per-turn.ts";

/** A batch is written once it holds this much, without waiting for the turn to end. */
const BATCH_BYTES = 256 * 1024;

export interface DatagramStreamHandlers {
  /** Datagrams from the far end, and the bytes it reported delivered (credits), in order of arrival. */
  onDatagrams(datagrams: Buffer[], delivered: number): void;
  /** The stream ended or failed (`bad`: it broke its framing); nothing more comes. */
  onEnd(bad?: string): void;
}

export class DatagramStream {
  private batch: Buffer[] = [];
  private batchBytes = 0;
  /** Called once the batch's write is handed to the stream's socket. */
  private handed: (() => void)[] = [];
  private credit = 0;
  private readonly flushSoon = oncePerTurn(() => this.flush());
  private ended = false;

  constructor(
    private readonly stream: net.Socket,
    handlers: DatagramStreamHandlers,
    initial?: Buffer,
  ) {
    const decoder = new DatagramFrameDecoder();
    const onChunk = (chunk: Buffer) => {
      if (this.ended) return;
      const got = decoder.push(chunk);
      if (got.datagrams.length || got.delivered) handlers.onDatagrams(got.datagrams, got.delivered);
      if (got.bad) {
        this.destroy();
        finish(got.bad);
      }
    };
    let finished = false;
    const finish = (bad?: string) => {
      if (finished) return;
      finished = true;
      this.ended = true;
      handlers.onEnd(bad);
    };
    stream.on("data", onChunk);
    stream.once("end", () => {
      finish();
      stream.end(); // the flow ends both ways
    });
    stream.once("close", () => finish());
    stream.on("error", () => finish());
    if (initial?.length) queueMicrotask(() => onChunk(initial));
    stream.resume();
  }

  /** Queues one datagram; the turn's datagrams leave together (`written`: once the kernel took their write). */
  send(datagram: Buffer, written?: () => void): void {
    if (this.ended) return;
    this.batch.push(datagram);
    if (written) this.handed.push(written);
    this.batchBytes += datagramFrameSize(datagram.length);
    if (this.batchBytes >= BATCH_BYTES) return this.flush();
    this.flushSoon();
  }

  /**
   * Reports `bytes` delivered to the far end now, with whatever datagrams are batched. Callers
   * already gather a turn's deliveries (DeliveryReport); deferring again cost the far end's
   * budget a whole extra turn of this loop before it could send more.
   */
  report(bytes: number): void {
    if (this.ended || bytes <= 0) return;
    this.credit += bytes;
    this.flush();
  }

  /** Ends the flow: what is queued leaves, then the stream's end. */
  end(): void {
    if (this.ended) return;
    this.flush();
    this.ended = true;
    this.stream.end();
  }

  destroy(): void {
    this.ended = true;
    this.stream.destroy();
  }


  private flush(): void {
    if (this.ended || (!this.batch.length && !this.credit)) return;
    const credit = this.credit ? creditFrames(this.credit) : undefined;
    const out = Buffer.allocUnsafe(this.batchBytes + (credit?.length ?? 0));
    let at = 0;
    for (const d of this.batch) at = writeDatagramFrame(out, at, d);
    if (credit) credit.copy(out, at);
    const handed = this.handed;
    this.batch = [];
    this.batchBytes = 0;
    this.credit = 0;
    this.handed = [];
    if (!handed.length) return void this.stream.write(out);
    this.stream.write(out, () => {
      for (const done of handed) done();
    });
  }
}
