// Hands an agent connection to the gRPC server only once its first bytes are the HTTP/2
// preface; anything else (garbage, a port scanner, another protocol) is logged and closed
// here, as the HTTP/2 layer would keep it open without a word.
// - A connection still unread (unix and vsock, with the native shim: transport/unread.ts) is
//   checked in place with MSG_PEEK, up to the client's SETTINGS frame: porthole's host (marked
//   there, see core/h2-client-preface.ts) is given to the HTTP/2 server as it is, with no relay
//   in front; any other client goes through the relay, which fixes an empty :authority (grpc-go
//   as Lima's host agent dials sends one, and the runtimes' HTTP/2 servers refuse it).
// - Otherwise the bytes are read, and since bytes read cannot be put back into a socket the
//   HTTP/2 layer then owns (Bun's reads the native socket and loses them), the connection
//   reaches gRPC through an in-process pair of streams that replays them (transport/memory-pair.ts).
import type * as net from "node:net";
import type { Duplex } from "node:stream";
import { classifyClientPreface } from "../core/h2-client-preface.ts";
import type { NativeShim } from "../runtime/native-api.ts";
import { memoryPair } from "../transport/memory-pair.ts";
import type { UnreadConnection } from "../transport/unread.ts";
import { relayFixingAuthority } from "../runtime/h2-authority.ts";
import { HTTP2_PREFACE, MUX_PROBE } from "../core/mux-frames.ts";

const PREFACE_TIMEOUT_MS = 10_000;
/** What is peeked at: the preface and the client's SETTINGS fit easily. */
const PEEK_BYTES = 4096;
/** Peeks again after 1, 2, 4 … ms, then every this many (bytes queued keep a socket readable,
 * so readiness cannot say "more came"). */
const PEEK_MAX_INTERVAL_MS = 50;
const EAGAIN = 11;
/** The empty-:authority fix is said once per agent, not once per connection. */
let toldEmptyAuthority = false;
const said = new Set<string>();
/** Which way agent connections go is said once per agent (and way), not per connection. */
function sayOnce(log: (line: string) => void, line: string): void {
  if (said.has(line)) return;
  said.add(line);
  log(line);
}

export function checkUnread(connection: UnreadConnection, native: NativeShim, name: string, log: (line: string) => void, serve: (s: Duplex) => void): void {
  const buf = new Uint8Array(PEEK_BYTES);
  const started = Date.now();
  let interval = 1;
  const adoptOr = (then: (socket: net.Socket) => void) => {
    let socket: net.Socket;
    try {
      socket = connection.adopt();
    } catch (err) {
      return log(`${name}: a connection failed: ${(err as Error).message}`);
    }
    // Later looks run from a timer, outside serve.ts's guard: a failure closes this connection only.
    try {
      then(socket);
    } catch (err) {
      socket.destroy();
      log(`${name}: a connection failed: ${(err as Error).message}`);
    }
  };
  const reject = (why: string) => adoptOr((socket) => {
    log(`${name}: closed a connection that ${why}`);
    socket.destroy();
  });
  const look = () => {
    const n = native.peek(connection.fd, buf, buf.length);
    if (n === 0) return adoptOr((socket) => socket.destroy()); // gone before it said anything
    if (n < 0 && n !== -EAGAIN) return adoptOr((socket) => socket.destroy());
    const seen = Buffer.from(buf.buffer, 0, Math.max(n, 0));
    const verdict = n > 0 ? classifyClientPreface(seen) : { kind: "more" as const };
    if (verdict.kind === "garbage") return reject(notGrpc(verdict.bytes));
    if (verdict.kind === "more" && n < buf.length && Date.now() - started < PREFACE_TIMEOUT_MS) {
      setTimeout(look, interval);
      interval = Math.min(interval * 2, PEEK_MAX_INTERVAL_MS);
      return;
    }
    if (seen.length < HTTP2_PREFACE.length) return reject(noPreface());
    if (verdict.kind === "settings" && verdict.portholeHost) {
      sayOnce(log, `${name}: porthole's host agent is served by HTTP/2 directly (checked in place with MSG_PEEK, no relay in front)`);
      return adoptOr(serve);
    }
    // Another client (Lima's host agent, C-core, …): the relay reads from the first byte and
    // fixes an empty :authority if the first request has one.
    adoptOr((socket) => serveThroughRelay(socket, Buffer.alloc(0), name, log, serve));
  };
  look();
}

/**
 * `onMux`: a connection that opens with the porthole host's mux probe (core/mux-frames.ts)
 * goes there, with the bytes after the probe; without it such a connection is plain HTTP/2
 * (the probe is valid HTTP/2), as for any stock server.
 */
export function checkPreface(socket: net.Socket, name: string, log: (line: string) => void, serve: (s: Duplex) => void, onMux?: (socket: net.Socket, rest: Buffer) => void): void {
  let seen = Buffer.alloc(0);
  const reject = (why: string) => {
    log(`${name}: closed a connection that ${why}`);
    socket.destroy();
  };
  const timer = setTimeout(() => reject(noPreface()), PREFACE_TIMEOUT_MS);
  const onData = (chunk: Buffer) => {
    seen = Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, HTTP2_PREFACE.length);
    if (!seen.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n))) {
      clearTimeout(timer);
      socket.off("data", onData);
      return reject(notGrpc(seen.length));
    }
    if (seen.length < HTTP2_PREFACE.length) return;
    // The mux probe starts with the preface: wait while the bytes still match it (a gRPC
    // client's own SETTINGS differ within their first 3 bytes).
    const m = Math.min(seen.length, MUX_PROBE.length);
    const probing = onMux !== undefined && seen.subarray(0, m).equals(MUX_PROBE.subarray(0, m));
    if (probing && seen.length < MUX_PROBE.length) return;
    clearTimeout(timer);
    socket.off("data", onData);
    if (probing) {
      socket.pause();
      return onMux(socket, seen.subarray(MUX_PROBE.length));
    }
    serveThroughRelay(socket, seen, name, log, serve);
  };
  socket.on("data", onData);
  socket.resume(); // a transport may hand it over paused (TCP, after reading the token)
  socket.once("end", () => clearTimeout(timer));
  socket.once("error", () => clearTimeout(timer));
}

const noPreface = () => `sent no HTTP/2 preface within ${PREFACE_TIMEOUT_MS / 1000} s`;
const notGrpc = (bytes: number) => `is not speaking gRPC (${bytes} bytes that are not an HTTP/2 preface)`;

/** `seen`: the bytes already read from the socket (from its first). */
function serveThroughRelay(socket: net.Socket, seen: Buffer, name: string, log: (line: string) => void, serve: (s: Duplex) => void): void {
  const [inner, outer] = memoryPair(socket);
  // The relay also lets clients that send an empty :authority in (Lima's host agent).
  relayFixingAuthority(socket, outer as net.Socket, seen, () => {
    if (!toldEmptyAuthority) log(`${name}: a client sends an empty :authority (as Lima's host agent does); serving its requests as localhost`);
    toldEmptyAuthority = true;
  });
  serve(inner);
}
