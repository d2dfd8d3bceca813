// The guest end of porthole's raw data path: a stream whose header names a target and the
// session secret; the guest dials the target and then only relays bytes, kernel socket to
// kernel socket, with half-close both ways and backpressure through pipe().
import { randomBytes, timingSafeEqual } from "node:crypto";
import * as net from "node:net";
import { parseHostPort } from "../core/address.ts";
import { parseDataHeader, STATUS_CONNECTED, STATUS_FAILED } from "../core/data-header.ts";
import { resetSocket } from "../transport/tunnel-relay.ts";

export function newDataSecret(): string {
  return randomBytes(24).toString("hex");
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Handles one incoming data stream (any transport). */
export function handleDataStream(stream: net.Socket, secret: string): void {
  let got: Buffer = Buffer.alloc(0);
  const timer = setTimeout(() => resetSocket(stream), 5000);
  const onData = (chunk: Buffer) => {
    got = got.length ? Buffer.concat([got, chunk]) : chunk;
    const header = parseDataHeader(got);
    if (header.kind === "need-more") return;
    clearTimeout(timer);
    stream.off("data", onData);
    stream.pause();
    if (header.kind === "bad" || !sameSecret(header.secret, secret)) return resetSocket(stream);
    const { target } = header;
    let dial: net.NetConnectOpts;
    try {
      dial = target.protocol === "unix" ? { path: target.address, allowHalfOpen: true } : { ...parseHostPort(target.address), allowHalfOpen: true, noDelay: true };
    } catch {
      return resetSocket(stream);
    }
    const upstream = net.connect(dial);
    if (header.rest.length) upstream.write(header.rest);
    let connected = false;
    upstream.once("connect", () => {
      connected = true;
      stream.write(Buffer.of(STATUS_CONNECTED));
      stream.pipe(upstream);
      upstream.pipe(stream);
      stream.resume();
    });
    // A refused target: say so (the host resets its client); a later failure: reset.
    upstream.once("error", () => (connected ? resetSocket(stream) : stream.end(Buffer.of(STATUS_FAILED))));
    stream.once("error", () => resetSocket(upstream));
    stream.once("close", () => upstream.writableEnded || resetSocket(upstream));
    upstream.once("close", () => stream.writableEnded || resetSocket(stream));
  };
  stream.on("data", onData);
  stream.once("error", () => clearTimeout(timer));
}
