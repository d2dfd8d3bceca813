// Hands an agent connection to the gRPC server only once its first bytes are the HTTP/2
// preface; anything else (garbage, a port scanner, another protocol) is logged and closed
// here, as the HTTP/2 layer would keep it open without a word. The bytes already read cannot
// be put back into a socket the HTTP/2 layer then owns (Bun's reads the native socket and
// loses them), so an accepted connection reaches gRPC through an in-process pair of streams
// that replays them (transport/memory-pair.ts): no socketpair, no native shim, so the check
// holds on every runtime and architecture.
import type * as net from "node:net";
import type { Duplex } from "node:stream";
import { memoryPair } from "../transport/memory-pair.ts";
import { relayFixingAuthority } from "../runtime/h2-authority.ts";
import { HTTP2_PREFACE, MUX_PROBE } from "../core/mux-frames.ts";
const PREFACE_TIMEOUT_MS = 10_000;
/** The empty-:authority fix is said once per agent, not once per connection. */
let toldEmptyAuthority = false;

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
  const timer = setTimeout(() => reject(`sent no HTTP/2 preface within ${PREFACE_TIMEOUT_MS / 1000} s`), PREFACE_TIMEOUT_MS);
  const onData = (chunk: Buffer) => {
    seen = Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, HTTP2_PREFACE.length);
    if (!seen.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n))) {
      clearTimeout(timer);
      socket.off("data", onData);
      return reject(`is not speaking gRPC (${seen.length} bytes that are not an HTTP/2 preface)`);
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
    const [inner, outer] = memoryPair(socket);
    // The relay also lets clients that send an empty :authority in (Lima's host agent).
    relayFixingAuthority(socket, outer as net.Socket, seen, () => {
      if (!toldEmptyAuthority) log(`${name}: a client sends an empty :authority (as Lima's host agent does); serving its requests as localhost`);
      toldEmptyAuthority = true;
    });
    serve(inner);
  };
  socket.on("data", onData);
  socket.resume(); // a transport may hand it over paused (TCP, after reading the token)
  socket.once("end", () => clearTimeout(timer));
  socket.once("error", () => clearTimeout(timer));
}
