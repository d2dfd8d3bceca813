// The guest end of porthole's raw data path: a stream whose header names a target and the
// session secret; the guest dials the target and then only relays bytes, kernel socket to
// kernel socket, with half-close both ways and backpressure (transport/tunnel-relay.ts).
import { randomBytes, timingSafeEqual } from "node:crypto";
import * as net from "node:net";
import { parseHostPort } from "../core/address.ts";
import { parseDataHeader, STATUS_CONNECTED, STATUS_FAILED } from "../core/data-header.ts";
import { joinSockets } from "../transport/fast-relay.ts";
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
    // Until the target answers: a refusal is said in the status byte (the host resets its
    // client), and a host that goes away takes the half-made connection with it.
    const refused = () => stream.end(Buffer.of(STATUS_FAILED));
    const hostGone = () => resetSocket(upstream);
    upstream.once("error", refused);
    stream.once("error", hostGone);
    stream.once("close", hostGone);
    upstream.once("connect", () => {
      upstream.off("error", refused);
      stream.off("error", hostGone);
      stream.off("close", hostGone);
      stream.write(Buffer.of(STATUS_CONNECTED));
      joinSockets(stream, upstream);
    });
  };
  stream.on("data", onData);
  stream.once("error", () => clearTimeout(timer));
}
