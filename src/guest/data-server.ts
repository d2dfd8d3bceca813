// The guest end of porthole's raw data path: a stream whose header names a target and the
// session secret; the guest dials the target and then only relays bytes, kernel socket to
// kernel socket, with half-close both ways and backpressure (transport/tunnel-relay.ts).
// A `PHDATA2` stream is framed both ways so that its end says EOF or reset.
import { randomBytes, timingSafeEqual } from "node:crypto";
import * as net from "node:net";
import { noteDialError } from "./fd-pressure.ts";
import { parseHostPort } from "../core/address.ts";
import { parseDataHeader, STATUS_CONNECTED, STATUS_FAILED } from "../core/data-header.ts";
import { dialAndJoin, joinFramed, joinSockets } from "../transport/fast-relay.ts";
import { resetSocket } from "../transport/tunnel-relay.ts";
import { handleUdpDataStream } from "./udp-stream-endpoint.ts";
import type { TransportAddress } from "../core/transport-address.ts";
import { listenDataNatively } from "../transport/data-listen.ts";
import { serveTransport, type Served, type ServeOptions } from "../transport/serve.ts";

const HEADER_TIMEOUT_MS = 5000;
/** A native dial's deadline: longer than the kernel's own TCP connect timeout (~127 s), which decides as in JavaScript. */
const NATIVE_DIAL_DEADLINE_MS = 135_000;

export function newDataSecret(): string {
  return randomBytes(24).toString("hex");
}

export function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * Serves the data endpoint: in the shim's relay thread where it runs (transport/data-listen.ts:
 * well-formed TCP and unix streams never reach JavaScript; the rest come to handleDataStream),
 * else in JavaScript. `refuse` hears why a stream was refused (rate-limit it: anything may connect).
 */
export async function serveDataEndpoint(address: TransportAddress, secret: string, refuse: (why: string) => void, options: ServeOptions): Promise<Served> {
  const native = await listenDataNatively(address, {
    secret,
    dialMs: NATIVE_DIAL_DEADLINE_MS,
    vsockAnyCid: options.vsockAnyCid,
    onHandoff: (socket) => handleDataStream(socket, secret, refuse, options.log),
    onDialFailed: (err) => noteDialError(err, "a target the host asked for"),
    log: refuse,
  });
  if (native) return { address, close: () => native.close(), nativeStats: () => native.stats() };
  return serveTransport(address, (socket) => handleDataStream(socket, secret, refuse, options.log), { ...options, halfOpen: true });
}

/** Handles one incoming data stream (any transport). `refuse` hears why one was refused; `log`, what a UDP flow drops. */
export function handleDataStream(stream: net.Socket, secret: string, refuse: (why: string) => void = () => {}, log: (line: string) => void = () => {}): void {
  let got: Buffer = Buffer.alloc(0);
  let headerDone = false;
  const timer = setTimeout(() => {
    refuse(`data path: closed a stream that sent no complete header within ${HEADER_TIMEOUT_MS / 1000} s`);
    resetSocket(stream);
  }, HEADER_TIMEOUT_MS);
  const onData = (chunk: Buffer) => {
    got = got.length ? Buffer.concat([got, chunk]) : chunk;
    const header = parseDataHeader(got);
    if (header.kind === "need-more") return;
    clearTimeout(timer);
    headerDone = true;
    stream.off("data", onData);
    stream.pause();
    if (header.kind === "bad") {
      refuse(`data path: refused a stream with a bad header (${header.reason})`);
      return resetSocket(stream);
    }
    if (!sameSecret(header.secret, secret)) {
      refuse("data path: refused a stream with a wrong secret (a stale host agent, or something else probing the data endpoint)");
      return resetSocket(stream);
    }
    const { target } = header;
    const onBad = (why: string) => refuse(`data path: closed a stream from the host that broke its framing (${why})`);
    if (target.protocol === "udp") return handleUdpDataStream(stream, target.address, header.rest, onBad, log);
    // A framed stream: the relay thread dials the target, answers the status byte and relays,
    // with no JavaScript between (a failed dial comes back here for its status and event).
    const to = target.protocol === "unix" ? { path: target.address } : parseHostPort(target.address);
    const shape = { framed: "handed" as const, hello: { bytes: Buffer.of(STATUS_CONNECTED), to: "handed" as const } };
    const native =
      header.framed &&
      dialAndJoin(
        stream,
        to,
        { timeoutMs: NATIVE_DIAL_DEADLINE_MS, keepAliveMs: 0, shape, initial: header.rest, onBad },
        () => {},
        (err, again) => {
          noteDialError(err, target.address);
          again.on("error", () => {});
          again.end(Buffer.of(STATUS_FAILED));
        },
      );
    if (native) return;
    const dial: net.NetConnectOpts =
      target.protocol === "unix" ? { path: target.address, allowHalfOpen: true } : { ...parseHostPort(target.address), allowHalfOpen: true, noDelay: true };
    const upstream = net.connect(dial);
    // Until the target answers: a refusal is said in the status byte (the host resets its
    // client), and a host that goes away takes the half-made connection with it.
    const refused = () => stream.end(Buffer.of(STATUS_FAILED));
    const hostGone = () => resetSocket(upstream);
    const dialFailed = (err: Error) => (noteDialError(err, target.address), refused());
    upstream.once("error", dialFailed);
    stream.once("error", hostGone);
    stream.once("close", hostGone);
    upstream.once("connect", () => {
      // From now on an error ends the relay (through "close"), never a status byte inside the frames.
      upstream.off("error", dialFailed);
      upstream.on("error", () => {});
      stream.off("error", hostGone);
      stream.off("close", hostGone);
      stream.write(Buffer.of(STATUS_CONNECTED));
      if (header.framed) {
        joinFramed(upstream, stream, header.rest, onBad);
      } else {
        if (header.rest.length) upstream.write(header.rest);
        joinSockets(stream, upstream);
      }
    });
  };
  stream.on("data", onData);
  // Ended (or gone) before a whole header: nothing to wait for.
  stream.once("end", () => {
    if (!headerDone) {
      clearTimeout(timer);
      refuse(`data path: closed a stream that ended after ${got.length} bytes, before its header was complete`);
      stream.destroy();
    }
  });
  stream.once("error", () => clearTimeout(timer));
  stream.once("close", () => clearTimeout(timer));
}
