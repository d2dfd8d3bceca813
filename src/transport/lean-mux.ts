// One lean-mux session (core/mux-frames.ts) over one agent stream: streams opened by the
// host, each joined to a local endpoint (a client socket on the host, the dialed target or
// the gRPC server's side on the guest). Each stream has its own credit each way, so a slow
// reader holds back only its own stream; the agent stream's own backpressure holds back
// every endpoint while it is full. A stream ends as its far end ended it: EOF as EOF (the
// other direction goes on), a reset as a reset; when the session itself ends (the agent
// stream closed, or the far side broke the format) every stream is reset, never ended.
import type { Duplex } from "node:stream";
import type * as net from "node:net";
import { creditFrame, MUX_MAX_FRAME, MUX_WINDOW, muxDataHeader, MuxDecoder, muxFrame, MuxKind, type MuxItem } from "../core/mux-frames.ts";
import { compactView, HeldBytes } from "./held-bytes.ts";
import { resetAfterFlush, resetSocket } from "./tunnel-relay.ts";

type Endpoint = Duplex & Partial<Pick<net.Socket, "resetAndDestroy">>;

interface Stream {
  id: number;
  endpoint?: Endpoint;
  /** Bytes this side may still send. */
  credit: number;
  /** Bytes the far side may still send (what this side granted and has not received). */
  allowed: number;
  /** Bytes received and delivered but not yet credited back. */
  owed: number;
  /** Read from the endpoint, waiting for credit. */
  queue: Buffer[];
  /** Received while the endpoint could not take them (not attached yet, or waiting for its drain). */
  held: HeldBytes;
  /** The endpoint's last write asked for a drain. */
  blocked: boolean;
  localEOF: boolean;
  sentEOF: boolean;
  gotEOF: boolean;
  /** A reset went out or came in: the stream is over. */
  reset: boolean;
  /** Paused for lack of credit. */
  starved: boolean;
  opened?: { resolve(): void; reject(err: Error): void };
}

export class MuxRefused extends Error {}

export interface MuxHandlers {
  /** Guest: the host opened a stream; answer with accept() or refuse(). */
  onOpen?(id: number, target: string): void;
  /** The session ended (once), and why. */
  onClose?(reason: string): void;
}

/** What the counters show: streams opened, and DATA bytes sent and received over this session. */
export interface MuxTotals {
  streams: number;
  open: number;
  sent: number;
  received: number;
}

const MAX_STREAMS = 8192;
/** A refusal's text, as sent (at most 500 characters) and as taken. */
const MAX_REFUSAL_CHARS = 500;
const MAX_REFUSAL_BYTES = 4 * MAX_REFUSAL_CHARS; // UTF-8
const MUX_OPEN_TIMEOUT_MS = 140_000;

export class MuxSession {
  private readonly streams = new Map<number, Stream>();
  private readonly decoder = new MuxDecoder();
  private nextId = 1;
  private rawBlocked = false;
  private readonly waitingForRaw = new Set<Stream>();
  private closed: string | undefined;
  readonly totals: MuxTotals = { streams: 0, open: 0, sent: 0, received: 0 };

  constructor(
    private readonly raw: net.Socket | Duplex,
    private readonly role: "host" | "guest",
    private readonly handlers: MuxHandlers = {},
    initial?: Buffer,
    /** Host: how long an OPEN may wait for the guest's answer (a connect there may retry its SYN for ~2 min). */
    private readonly openTimeoutMs = MUX_OPEN_TIMEOUT_MS,
  ) {
    raw.on("data", (chunk: Buffer) => this.receive(chunk));
    raw.on("drain", () => {
      this.rawBlocked = false;
      const waiting = [...this.waitingForRaw];
      this.waitingForRaw.clear();
      for (const s of waiting) this.flush(s);
    });
    raw.once("end", () => this.close("the agent stream ended"));
    raw.once("error", (err) => this.close(`the agent stream failed: ${err.message}`));
    raw.once("close", () => this.close("the agent stream closed"));
    if (initial?.length) this.receive(initial);
    raw.resume();
  }

  get isClosed(): boolean {
    return this.closed !== undefined;
  }

  /** Host: opens a stream to `target`; resolves with its id once the guest connected it. */
  open(target: string): Promise<number> {
    if (this.closed) return Promise.reject(new Error(`the mux session is closed (${this.closed})`));
    const id = this.nextId++;
    const stream = this.newStream(id);
    return new Promise((resolve, reject) => {
      // A guest that never answers must not hold the stream (and its client) forever.
      const timer = setTimeout(() => {
        if (!stream.opened) return;
        stream.opened = undefined;
        this.resetStream(stream, true);
        reject(new Error(`no answer to the stream's open in ${this.openTimeoutMs} ms`));
      }, this.openTimeoutMs);
      stream.opened = {
        resolve: () => (clearTimeout(timer), resolve(id)),
        reject: (err) => (clearTimeout(timer), reject(err)),
      };
      this.send(muxFrame(id, MuxKind.OPEN, Buffer.from(target)));
    });
  }

  /** Guest: the stream's target is connected; its bytes now move. */
  accept(id: number, endpoint: Endpoint): void {
    const stream = this.streams.get(id);
    if (!stream || this.closed) return void resetEndpoint(endpoint);
    this.send(muxFrame(id, MuxKind.OPENED));
    this.attach(id, endpoint);
  }

  /** Guest: the stream's target could not be reached. */
  refuse(id: number, why: string): void {
    if (!this.streams.delete(id)) return;
    this.totals.open--;
    this.send(muxFrame(id, MuxKind.REFUSED, Buffer.from(why.slice(0, MAX_REFUSAL_CHARS))));
  }

  /** Joins an open stream to its local endpoint (the endpoint may be paused; it is resumed). */
  attach(id: number, endpoint: Endpoint): void {
    const stream = this.streams.get(id);
    if (!stream || stream.reset) return void resetEndpoint(endpoint);
    if (endpoint.destroyed) return this.resetStream(stream, true); // e.g. a client gone while its stream opened
    stream.endpoint = endpoint;
    endpoint.on("data", (chunk: Buffer) => this.fromEndpoint(stream, chunk));
    endpoint.on("drain", () => this.drained(stream));
    endpoint.once("end", () => {
      stream.localEOF = true;
      this.flush(stream);
    });
    let failed = false;
    endpoint.on("error", () => void (failed = true)); // "close" follows: a reset
    endpoint.once("close", () => {
      if (stream.reset || this.streams.get(stream.id) !== stream) return;
      // Closed without EOF (an error, a reset, destroyed), or reset after its EOF while the far
      // end still sends: the far end gets a reset.
      if (!stream.localEOF || (failed && !stream.gotEOF)) this.resetStream(stream, true);
    });
    this.release(stream);
    if (stream.gotEOF) endpoint.end();
    endpoint.resume();
  }

  /** Ends every stream with a reset and closes the agent stream. */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = reason;
    for (const stream of this.streams.values()) {
      stream.reset = true;
      stream.opened?.reject(new Error(`the mux session ended (${reason})`));
      if (stream.endpoint) resetEndpoint(stream.endpoint);
    }
    this.streams.clear();
    this.totals.open = 0;
    resetEndpoint(this.raw);
    this.handlers.onClose?.(reason);
  }

  private newStream(id: number): Stream {
    const stream: Stream = { id, credit: MUX_WINDOW, allowed: MUX_WINDOW, owed: 0, queue: [], held: new HeldBytes(), blocked: false, localEOF: false, sentEOF: false, gotEOF: false, reset: false, starved: false };
    this.streams.set(id, stream);
    this.totals.streams++;
    this.totals.open++;
    return stream;
  }

  private send(frame: Buffer): void {
    if (this.closed) return;
    if (!this.raw.write(frame)) this.rawBlocked = true;
  }

  /** Bytes read from a stream's endpoint: out as DATA while credit lasts, the rest waits. */
  private fromEndpoint(stream: Stream, chunk: Buffer): void {
    if (stream.reset || this.closed) return;
    this.totals.sent += chunk.length;
    stream.queue.push(chunk);
    this.flush(stream);
  }

  /** Sends what credit allows of the stream's queue, then its EOF once the queue is empty. */
  private flush(stream: Stream): void {
    if (stream.reset || this.closed) return;
    // No cork, and nothing more once the agent stream is full: the runtime gathers buffered
    // writes into one new buffer (a copy of every byte: `concat` was 20% of the host agent's
    // samples in a profile); header and bytes go as two writes instead (with a copy into one
    // buffer, or cork, no faster here).
    while (stream.queue.length && stream.credit > 0 && !this.rawBlocked) {
      const head = stream.queue[0]!;
      const n = Math.min(head.length, stream.credit, MUX_MAX_FRAME);
      const piece = n === head.length ? head : head.subarray(0, n);
      if (n === head.length) stream.queue.shift();
      else stream.queue[0] = head.subarray(n);
      stream.credit -= n;
      this.raw.write(muxDataHeader(stream.id, n));
      if (!this.raw.write(piece)) this.rawBlocked = true;
    }
    if (!stream.queue.length && stream.localEOF && !stream.sentEOF && !this.rawBlocked) {
      stream.sentEOF = true;
      this.send(muxFrame(stream.id, MuxKind.EOF));
      this.doneIfOver(stream);
    }
    const endpoint = stream.endpoint;
    if (!endpoint) return;
    stream.starved = stream.queue.length > 0;
    if (stream.starved || this.rawBlocked) {
      endpoint.pause();
      if (this.rawBlocked) this.waitingForRaw.add(stream);
    } else if (!stream.localEOF) endpoint.resume();
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    try {
      for (const item of this.decoder.push(chunk)) {
        this.handle(item);
        if (this.closed) return;
      }
    } catch (err) {
      // Whatever the far side sent, it ends this session only, never the agent.
      this.close(`a frame from the ${this.peer} could not be handled (${(err as Error).message})`);
    }
  }

  private handle(item: MuxItem): void {
    if (item.kind === "bad") return this.close(`the ${this.peer} broke the mux format (${item.reason})`);
    const stream = this.streams.get(item.id);
    switch (item.kind) {
      case "OPEN":
        if (this.role !== "guest") return this.close(`the ${this.peer} opened a stream (only the host may)`);
        if (this.streams.has(item.id) || item.id === 0) return this.close(`the ${this.peer} reused stream id ${item.id}`);
        if (this.streams.size >= MAX_STREAMS) return void this.send(muxFrame(item.id, MuxKind.REFUSED, Buffer.from(`more than ${MAX_STREAMS} open streams`)));
        this.newStream(item.id);
        return this.handlers.onOpen?.(item.id, item.payload.toString());
      case "OPENED":
        if (this.role !== "host" || !stream?.opened) return;
        stream.opened.resolve();
        stream.opened = undefined;
        return;
      case "REFUSED":
        if (this.role !== "host" || !stream?.opened) return;
        this.streams.delete(item.id);
        this.totals.open--;
        return stream.opened.reject(new MuxRefused(refusalText(item.payload)));
      case "DATA":
        if (!stream || stream.reset) return; // a stream already over on this side
        if (item.data.length > stream.allowed) return this.close(`the ${this.peer} sent more than its credit on stream ${item.id}`);
        if (stream.gotEOF) return this.close(`the ${this.peer} sent data after its EOF on stream ${item.id}`);
        stream.allowed -= item.data.length;
        this.totals.received += item.data.length;
        if (!stream.endpoint || stream.blocked) return stream.held.add(item.data);
        return this.deliver(stream, item.data);
      case "EOF":
        if (!stream || stream.reset || stream.gotEOF) return;
        stream.gotEOF = true;
        if (stream.endpoint) {
          this.release(stream); // what came before the EOF goes first
          stream.endpoint.end();
        }
        return this.doneIfOver(stream);
      case "RESET":
        if (!stream || stream.reset) return;
        stream.reset = true;
        stream.opened?.reject(new MuxRefused("reset"));
        this.forget(stream);
        if (!stream.endpoint) return;
        this.release(stream); // what came before the reset is delivered first
        return resetAfterFlush(stream.endpoint as net.Socket);
      case "CREDIT": {
        if (!stream || stream.reset) return;
        const more = item.payload.readUInt32BE(0);
        if (stream.credit + more > 2 * MUX_WINDOW) return this.close(`the ${this.peer} granted more credit than a window on stream ${item.id}`);
        stream.credit += more;
        return this.flush(stream);
      }
    }
  }

  private get peer(): string {
    return this.role === "host" ? "guest agent" : "host agent";
  }

  /** Received bytes to the endpoint; credit goes back once it took them. */
  private deliver(stream: Stream, data: Buffer): void {
    const endpoint = stream.endpoint!;
    if (endpoint.destroyed || endpoint.writableEnded) return this.resetStream(stream, true); // nobody reads them any more
    stream.owed += data.length;
    // The endpoint may queue it (below its high-water mark a write says yes and still waits):
    // a tiny piece must not keep the whole read buffer it is a view of.
    if (endpoint.write(compactView(data))) this.creditBack(stream, MUX_WINDOW / 4);
    else stream.blocked = true;
  }

  /** What was held goes to the endpoint, in order (even if it asks for a drain on the way). */
  private release(stream: Stream): void {
    for (const part of stream.held.take()) this.deliver(stream, part);
  }

  /** The endpoint took its queue: what was held meanwhile follows, and the credit goes back once it is taken too. */
  private drained(stream: Stream): void {
    stream.blocked = false;
    this.release(stream);
    if (!stream.blocked) this.creditBack(stream);
  }

  private creditBack(stream: Stream, atLeast = 1): void {
    if (stream.reset || stream.owed < atLeast || stream.gotEOF) return;
    stream.allowed += stream.owed;
    this.send(creditFrame(stream.id, stream.owed));
    stream.owed = 0;
  }

  private resetStream(stream: Stream, tellFar: boolean): void {
    if (stream.reset) return;
    stream.reset = true;
    this.forget(stream);
    if (tellFar) this.send(muxFrame(stream.id, MuxKind.RESET));
    if (stream.endpoint) resetEndpoint(stream.endpoint);
  }

  private doneIfOver(stream: Stream): void {
    if (stream.sentEOF && stream.gotEOF) this.forget(stream);
  }

  private forget(stream: Stream): void {
    if (this.streams.get(stream.id) === stream) {
      this.streams.delete(stream.id);
      this.totals.open--;
    }
    this.waitingForRaw.delete(stream);
  }
}

/** A refusal's words as the far side gave them, but no longer than this side's own (refuse()). */
function refusalText(payload: Buffer): string {
  const text = payload.subarray(0, MAX_REFUSAL_BYTES).toString();
  return payload.length > MAX_REFUSAL_BYTES ? `${text}…` : text;
}

function resetEndpoint(endpoint: Duplex): void {
  resetSocket(endpoint as net.Socket);
}
