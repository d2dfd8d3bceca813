// A Tunnel call served straight on its HTTP/2 stream, without grpc-js's call machinery (its
// interceptor chain, per-message promises, the copy of every message into a new buffer): the
// same call object tunnel-endpoint.ts has from grpc-js (messages in and out, pause/resume,
// "end", "cancelled", a status sent by emitting "error"), on the wire exactly as a gRPC server
// answers: response headers with the first message, messages with the 5-byte prefix, then
// trailers with grpc-status. grpc-js hands these streams over (transport/grpc-tuning.ts's
// serveOnHttp2); every other call still goes through grpc-js.
import { EventEmitter } from "node:events";
import type * as http2 from "node:http2";
import { MessageDecoder, percentEncode } from "../core/grpc-messages.ts";
import type { TunnelMessage } from "../proto/guest-service.ts";
import { decodeTunnelMessage, tunnelFrameParts } from "../proto/tunnel-codec.ts";
import { MAX_MESSAGE_BYTES, writeParts } from "../transport/grpc-tuning.ts";

const OK = 0;
const INTERNAL = 13;

interface Status {
  code: number;
  details?: string;
}
const isStatus = (value: unknown): value is Status => typeof (value as Status | undefined)?.code === "number";

export class H2TunnelCall extends EventEmitter {
  private responded = false;
  private statusSent = false;
  private trailers: http2.OutgoingHttpHeaders = {};
  private paused = false;
  private readonly queue: TunnelMessage[] = [];
  private requestEnded = false;
  private endEmitted = false;
  private readonly decoder = new MessageDecoder(MAX_MESSAGE_BYTES);
  writableEnded = false;

  constructor(private readonly stream: http2.ServerHttp2Stream) {
    super();
    stream.on("data", (chunk: Buffer) => this.receive(chunk));
    stream.once("end", () => {
      this.requestEnded = true;
      this.deliver();
    });
    stream.on("drain", () => this.emit("drain"));
    stream.once("wantTrailers", () => stream.sendTrailers(this.trailers));
    // Closed before a status went out: the client cancelled (RST_STREAM) or the connection died.
    stream.once("close", () => {
      if (!this.statusSent) {
        this.statusSent = this.writableEnded = true;
        this.emit("cancelled");
      }
    });
    stream.on("error", () => {}); // "close" follows and says it
  }

  get destroyed(): boolean {
    return this.stream.destroyed;
  }

  write(message: Partial<TunnelMessage>, written?: (err?: Error | null) => void): boolean {
    if (this.writableEnded || this.stream.destroyed) {
      if (written) queueMicrotask(() => written(new Error("the Tunnel call has ended")));
      return false;
    }
    this.respond();
    return writeParts(this.stream, tunnelFrameParts(message), written);
  }

  end(): void {
    this.sendStatus({ code: OK });
  }

  pause(): this {
    this.paused = true;
    this.stream.pause();
    return this;
  }

  resume(): this {
    this.paused = false;
    this.deliver();
    if (!this.paused) this.stream.resume();
    return this;
  }

  /** As with grpc-js's server calls, emitting "error" with a status ends the call with it. */
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event !== "error" || !isStatus(args[0])) return super.emit(event, ...args);
    this.sendStatus(args[0]);
    return this.listenerCount("error") > 0 ? super.emit(event, ...args) : false;
  }

  private respond(): void {
    if (this.responded) return;
    this.responded = true;
    this.stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
  }

  private sendStatus(status: Status): void {
    if (this.statusSent) return;
    this.statusSent = this.writableEnded = true;
    if (this.stream.destroyed || this.stream.closed) return;
    this.trailers = { "grpc-status": String(status.code), ...(status.details ? { "grpc-message": percentEncode(status.details) } : {}) };
    this.respond();
    this.stream.end();
  }

  private receive(chunk: Buffer): void {
    for (const item of this.decoder.push(chunk)) {
      if (item.kind === "bad") return this.refuse(item.reason);
      let message: TunnelMessage;
      try {
        message = decodeTunnelMessage(item.data);
      } catch (err) {
        return this.refuse((err as Error).message);
      }
      this.queue.push(message);
    }
    this.deliver();
  }

  /** Hands queued messages on while not paused (a handler may pause in the middle), then the end. */
  private deliver(): void {
    while (!this.paused && this.queue.length) this.emit("data", this.queue.shift()!);
    if (this.paused || !this.requestEnded || this.endEmitted || this.statusSent) return;
    if (this.decoder.pending) return this.refuse("the request ended inside a message");
    this.endEmitted = true;
    this.emit("end");
  }

  /** A malformed request: INTERNAL, as grpc-js answers one, and the handler hears "cancelled". */
  private refuse(reason: string): void {
    this.queue.length = 0;
    this.sendStatus({ code: INTERNAL, details: `a malformed Tunnel message: ${reason}` });
    this.emit("cancelled");
  }
}
