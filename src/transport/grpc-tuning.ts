// HTTP/2 settings for the agent channel. grpc-js's 64 KiB default windows cap one
// stream at ~1.5 Gbit/s; larger windows let a tunnel run at the speed of the relay while
// flow control still bounds what a stalled stream can buffer (one window per stream).
import * as grpc from "@grpc/grpc-js";
import { CompressionFilter } from "@grpc/grpc-js/build/src/compression-filter.js";
import { BaseServerInterceptingCall } from "@grpc/grpc-js/build/src/server-interceptors.js";
import type * as http2 from "node:http2";
import * as net from "node:net";
import { PORTHOLE_CLIENT_WINDOW } from "../core/h2-client-preface.ts";
import { framedMessage } from "../proto/tunnel-codec.ts";

export const STREAM_WINDOW_BYTES = 16 << 20;
export const MAX_MESSAGE_BYTES = 16 << 20;
/** grpc-go's default keepalive.EnforcementPolicy.MinTime is 5 minutes; half a minute of margin. */
export const KEEPALIVE_TIME_MS = 330_000;

export const CLIENT_OPTIONS: grpc.ChannelOptions = {
  // Sets both the stream and the connection window on the client side; the odd value marks the
  // client's SETTINGS as porthole's host, whom the guest serves without a relay in front.
  "grpc-node.flow_control_window": PORTHOLE_CLIENT_WINDOW,
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  // Find a restarted guest agent quickly instead of grpc-js's 1 s..120 s backoff.
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 1000,
  // HTTP/2 pings as a stock Lima guest (grpc-go's default enforcement) accepts them: no more
  // often than every 5 minutes, and only while a call is open (the host always has GetEvents
  // open). More often, grpc-go counts strikes and closes the connection (GOAWAY too_many_pings)
  // with every tunnel on it. A dead guest is noticed sooner by guest-connection.ts's probe.
  "grpc.keepalive_time_ms": KEEPALIVE_TIME_MS,
  "grpc.keepalive_timeout_ms": 20_000,
  "grpc.keepalive_permit_without_calls": 0,
  // channelz (on by default) counts every call and message; nothing here reads it.
  "grpc.enable_channelz": 0,
};

export const SERVER_OPTIONS: grpc.ServerOptions = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_concurrent_streams": 4096,
  // Accept the client's keepalive pings as often as it sends them.
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.http2.min_ping_interval_without_data_ms": 5_000,
  "grpc.enable_channelz": 0,
};

/**
 * grpc-js has no public option for the server's stream window, so raise it on its
 * private HTTP/2 settings. The session (connection) window is deliberately left alone:
 * under Bun 1.4, `session.setLocalWindowSize()` on the server stalls every stream
 * (an echo test moved 0 bytes; with a raised stream window it stopped after one window).
 * Kept in this one place; test/transport/grpc-tuning.test.ts checks it still takes.
 */
export function createTunedServer(): grpc.Server {
  sendFramedAsIs();
  handOverStreams();
  const server = new grpc.Server(SERVER_OPTIONS);
  const internals = server as unknown as { commonServerOptions?: http2.ServerOptions };
  if (!internals.commonServerOptions) {
    throw new Error("grpc-js internals changed: cannot raise the server's HTTP/2 stream window");
  }
  internals.commonServerOptions.settings = {
    ...internals.commonServerOptions.settings,
    initialWindowSize: STREAM_WINDOW_BYTES,
  };
  widenConnectionWindow(server);
  return server;
}

type SessionHandler = (this: grpc.Server, http2Server: http2.Http2Server) => (session: http2.ServerHttp2Session) => void;

/**
 * The connection (session) window: HTTP/2 starts it at 64 KiB whatever SETTINGS say, and grpc-js
 * never raises it on a server, so a client could send only 64 KiB before waiting for the
 * guest's WINDOW_UPDATE: host and guest took turns, each waiting for the other, and a tunnel
 * ran at half the speed of the other direction (whose window the host's client raises). Raised
 * here to the stream window as each connection opens (after the server's SETTINGS, which Bun
 * and Node send first). Exactly the stream window, not more: Bun's setLocalWindowSize also sets
 * every stream's local window to it and sends a stream's WINDOW_UPDATE only once half of that
 * is used, so a value above twice the advertised stream window would stall every stream.
 * Only on a connection that is a socket of the runtime's (porthole's host handed over as it
 * is): on a lean-mux stream (in-process) it lowered CPU per Gbit/s but not throughput, for
 * reasons not found yet, so in-process streams (that, and the relay for other clients, not
 * measured) keep HTTP/2's 64 KiB (see the README).
 */
function widenConnectionWindow(server: grpc.Server): void {
  const instance = server as unknown as Record<"_sessionHandler" | "_channelzSessionHandler", SessionHandler>;
  for (const name of ["_sessionHandler", "_channelzSessionHandler"] as const) {
    const original = instance[name];
    if (typeof original !== "function") throw new Error(`grpc-js internals changed: no Server.${name} to wrap`);
    instance[name] = function (http2Server) {
      const handle = original.call(this, http2Server);
      return (session) => {
        try {
          if (session.socket instanceof net.Socket) session.setLocalWindowSize(STREAM_WINDOW_BYTES);
        } catch {
          // A session already closing: nothing to widen.
        }
        handle(session);
      };
    };
  }
}

let framedAsIs = false;

/**
 * grpc-js copies every message it sends into a new buffer behind a 5-byte header. A Tunnel
 * message (proto/tunnel-codec.ts) is serialized with that header already in front of it: the
 * client's compression filter (uncompressed) and the server's serializer send that buffer as
 * it is. Other messages take grpc-js's own path. Patched on grpc-js's internal prototypes,
 * checked by test/transport/grpc-tuning.test.ts; once per process.
 */
export function sendFramedAsIs(): void {
  if (framedAsIs) return;
  framedAsIs = true;
  type Sent = { message: Buffer; flags?: number };
  const client = CompressionFilter.prototype as unknown as {
    sendMessage(this: { currentCompressionAlgorithm: string; maxSendMessageLength: number }, message: Promise<Sent>): Promise<Sent>;
  };
  const sendMessage = client.sendMessage;
  if (typeof sendMessage !== "function") throw new Error("grpc-js internals changed: no CompressionFilter.sendMessage to patch");
  client.sendMessage = async function (message) {
    const sent = await message;
    const frame = framedMessage(sent.message);
    const fits = this.maxSendMessageLength === -1 || sent.message.length <= this.maxSendMessageLength;
    if (frame && fits && this.currentCompressionAlgorithm === "identity") return { message: frame, flags: sent.flags };
    return sendMessage.call(this, Promise.resolve(sent));
  };

  const server = BaseServerInterceptingCall.prototype as unknown as {
    serializeMessage(this: { handler: { serialize(value: unknown): Buffer } }, value: unknown): Buffer;
  };
  if (typeof server.serializeMessage !== "function") throw new Error("grpc-js internals changed: no serializeMessage to patch");
  server.serializeMessage = function (value) {
    const serialized = this.handler.serialize(value);
    const frame = framedMessage(serialized);
    if (frame) return frame;
    // grpc-js's own: a new buffer, the header (responses are never compressed), the message.
    const output = Buffer.allocUnsafe(serialized.byteLength + 5);
    output.writeUInt8(0, 0);
    output.writeUInt32BE(serialized.byteLength, 1);
    serialized.copy(output, 5);
    return output;
  };
}

type StreamHandler = (stream: http2.ServerHttp2Stream) => void;
const handedOver = new WeakMap<grpc.Server, Map<string, StreamHandler>>();

/**
 * Streams of `path` (a bidi method of `server`) go to `handler` as plain HTTP/2 streams instead
 * of through grpc-js's call machinery: for Tunnel, which carries every forwarded byte and opens
 * once per forwarded connection. Only plain gRPC requests (no message compression) are handed
 * over; anything else stays with grpc-js. Set before the server serves its first connection.
 */
export function serveOnHttp2(server: grpc.Server, path: string, handler: StreamHandler): void {
  handOverStreams();
  const handlers = handedOver.get(server) ?? new Map<string, StreamHandler>();
  handedOver.set(server, handlers);
  handlers.set(path, handler);
}

let streamsHandedOver = false;

/**
 * Patches grpc-js's stream dispatch (both of its handlers, with and without channelz) so that a
 * stream of a handed-over path skips it. Checked by test/transport/grpc-tuning.test.ts.
 */
function handOverStreams(): void {
  if (streamsHandedOver) return;
  streamsHandedOver = true;
  type Dispatch = (this: grpc.Server, extra: unknown, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void;
  const proto = grpc.Server.prototype as unknown as Record<"_streamHandler" | "_channelzHandler", Dispatch> & { onStreamOpened?: unknown };
  for (const name of ["_streamHandler", "_channelzHandler"] as const) {
    const original = proto[name];
    if (typeof original !== "function" || typeof proto.onStreamOpened !== "function") throw new Error(`grpc-js internals changed: no Server.${name} to patch`);
    proto[name] = function (extra, stream, headers) {
      const handler = handedOver.get(this)?.get(headers[":path"] ?? "");
      if (!handler || !plainGrpc(headers)) return original.call(this, extra, stream, headers);
      stream.once("error", () => {}); // as grpc-js: "close" follows any error
      (this as unknown as { onStreamOpened(s: http2.ServerHttp2Stream): void }).onStreamOpened(stream); // its idle timer
      handler(stream);
    };
  }
}

/** A request grpc-js would serve with identity messages: gRPC's content type, no compression. */
function plainGrpc(headers: http2.IncomingHttpHeaders): boolean {
  const type = headers["content-type"] ?? "";
  const encoding = headers["grpc-encoding"];
  return headers[":method"] === "POST" && (type === "application/grpc" || type.startsWith("application/grpc+proto") || type.startsWith("application/grpc;")) && (encoding === undefined || encoding === "identity");
}

/** A message's parts (proto/tunnel-codec.ts's tunnelFrameParts) written in order; the last write's answer. */
export function writeParts(stream: NodeJS.WritableStream & { write(chunk: Buffer, cb?: (err?: Error | null) => void): boolean }, parts: Buffer[], written?: (err?: Error | null) => void): boolean {
  for (let i = 0; i < parts.length - 1; i++) stream.write(parts[i]!);
  return stream.write(parts[parts.length - 1]!, written);
}
