// A Tunnel call made straight on the HTTP/2 session grpc-js already has to the guest agent,
// without grpc-js's call machinery (interceptors, resolving, retrying and load-balancing calls,
// a promise per message, a copy of every message): one request with gRPC's headers, messages
// with the 5-byte prefix (tunnel-codec.ts frames them), the answer's messages decoded as views
// of what arrived, and the call's end from its trailers (grpc-status). The same call object
// bridgeSocket and the UDP flows use from grpc-js: "data", "drain", "end" (status OK), "error"
// (any other status, or a stream that closed without one). Where grpc-js's session cannot be
// had (not connected yet, its internals changed), grpc-forwarder.ts takes grpc-js's own call.
import * as grpc from "@grpc/grpc-js";
import { EventEmitter } from "node:events";
import * as http2 from "node:http2";
import { MessageDecoder, percentDecode } from "../core/grpc-messages.ts";
import type { TunnelMessage } from "../proto/guest-service.ts";
import { decodeTunnelMessage, tunnelFrameParts } from "../proto/tunnel-codec.ts";
import { MAX_MESSAGE_BYTES, writeParts } from "../transport/grpc-tuning.ts";

/** grpc-js's PickResultType.COMPLETE: a connected subchannel was picked. */
const PICK_COMPLETE = 0;

interface ChannelInternals {
  internalChannel?: {
    defaultAuthority?: string;
    doPick?(metadata: grpc.Metadata, extra: object): { pickResultType: number; subchannel?: { getRealSubchannel?(): { transport?: { session?: http2.ClientHttp2Session } | null } } | null };
  };
}

/**
 * The connected HTTP/2 session grpc-js would put a call on now, and its authority; `changed`
 * where grpc-js's internals are not where this expects them (another grpc-js than the one
 * pinned); else undefined (not connected now: grpc-js's own call waits for it).
 */
export function grpcSession(client: grpc.Client): { session: http2.ClientHttp2Session; authority: string } | "changed" | undefined {
  try {
    const internal = (client.getChannel() as unknown as ChannelInternals).internalChannel;
    if (typeof internal?.doPick !== "function") return "changed";
    const pick = internal.doPick(new grpc.Metadata(), {});
    if (pick?.pickResultType !== PICK_COMPLETE) return undefined;
    const real = pick.subchannel?.getRealSubchannel?.();
    if (!real || !("transport" in real)) return "changed";
    if (real.transport && !("session" in real.transport)) return "changed";
    const session = real.transport?.session;
    if (!session || session.closed || session.destroyed) return undefined;
    return { session, authority: internal.defaultAuthority ?? "localhost" };
  } catch {
    return "changed";
  }
}

export class H2TunnelClientCall extends EventEmitter {
  private readonly stream: http2.ClientHttp2Stream;
  private readonly decoder = new MessageDecoder(MAX_MESSAGE_BYTES);
  private readonly queue: TunnelMessage[] = [];
  private paused = false;
  private status: { code: number; details: string } | undefined;
  private closed = false;
  private finished = false;
  writableEnded = false;

  /** Throws where the session refuses a new stream (closing, GOAWAY): the caller falls back. */
  constructor(session: http2.ClientHttp2Session, authority: string, path: string) {
    super();
    this.stream = session.request({
      ":method": "POST",
      ":path": path,
      ":authority": authority,
      "content-type": "application/grpc",
      te: "trailers",
    });
    const stream = this.stream;
    stream.on("response", (headers) => this.headers(headers));
    stream.on("trailers", (headers) => this.headers(headers));
    stream.on("data", (chunk: Buffer) => this.receive(chunk));
    stream.on("drain", () => this.emit("drain"));
    stream.on("error", () => {}); // "close" follows and says it
    // The answer is over (trailers and END_STREAM, or the stream closed): the call is, as in
    // gRPC; a request side still open is closed with it.
    const over = () => {
      if (this.closed) return;
      this.closed = true;
      if (!this.writableEnded && !stream.destroyed) stream.close(http2.constants.NGHTTP2_NO_ERROR);
      this.writableEnded = true;
      this.deliver();
    };
    stream.once("end", over);
    stream.once("close", over);
  }

  get destroyed(): boolean {
    return this.stream.destroyed;
  }

  write(message: Partial<TunnelMessage>, written?: (err?: Error | null) => void): boolean {
    if (this.writableEnded || this.stream.destroyed) {
      if (written) queueMicrotask(() => written(new Error("the Tunnel call has ended")));
      return false;
    }
    return writeParts(this.stream, tunnelFrameParts(message), written);
  }

  /** Half-closes the request (END_STREAM); the answer goes on. */
  end(): void {
    if (this.writableEnded) return;
    this.writableEnded = true;
    if (!this.stream.destroyed) this.stream.end();
  }

  /** RST_STREAM CANCEL, as grpc-js's cancel(). */
  cancel(): void {
    if (this.closed) return;
    this.status ??= { code: grpc.status.CANCELLED, details: "Cancelled on client" };
    this.writableEnded = true;
    this.stream.close(http2.constants.NGHTTP2_CANCEL);
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

  private headers(headers: http2.IncomingHttpHeaders): void {
    if (this.status) return;
    const code = headers["grpc-status"];
    if (code !== undefined) {
      const message = headers["grpc-message"];
      this.status = { code: Number(code), details: percentDecode(typeof message === "string" ? message : "") };
      return;
    }
    const type = headers["content-type"] ?? "";
    if (headers[":status"] !== undefined && (Number(headers[":status"]) !== 200 || !String(type).startsWith("application/grpc"))) {
      this.fail(grpc.status.UNKNOWN, `the guest agent answered a Tunnel with HTTP ${headers[":status"]} ${type}`);
    }
  }

  private receive(chunk: Buffer): void {
    for (const item of this.decoder.push(chunk)) {
      if (item.kind === "bad") return this.fail(grpc.status.INTERNAL, `a malformed Tunnel message from the guest agent: ${item.reason}`);
      try {
        this.queue.push(decodeTunnelMessage(item.data));
      } catch (err) {
        return this.fail(grpc.status.INTERNAL, `a malformed Tunnel message from the guest agent: ${(err as Error).message}`);
      }
    }
    this.deliver();
  }

  /** What the guest sent that cannot be followed: the call ends with this status, at once. */
  private fail(code: number, details: string): void {
    this.status = { code, details };
    this.queue.length = 0;
    this.writableEnded = true;
    this.stream.close(http2.constants.NGHTTP2_CANCEL);
  }

  /** Queued messages while not paused (a listener may pause in the middle); then, once closed, the end. */
  private deliver(): void {
    while (!this.paused && this.queue.length) this.emit("data", this.queue.shift()!);
    if (this.paused || !this.closed || this.finished) return;
    this.finished = true;
    const status = this.status ?? { code: grpc.status.UNAVAILABLE, details: "the Tunnel stream closed without a status (the connection to the guest agent was lost)" };
    if (status.code === grpc.status.OK && this.decoder.pending === 0) return void this.emit("end");
    const err = Object.assign(new Error(`${status.code} ${grpc.status[status.code] ?? ""}: ${status.details}`), { code: status.code, details: status.details, metadata: new grpc.Metadata() });
    this.emit("error", err);
  }
}
