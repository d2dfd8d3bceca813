// Two connected in-process duplex streams: what one end writes, the other reads, with
// backpressure, end (EOF) and destroy carried across. It stands in for a socketpair where
// bytes only move between two parts of this process (the preface check and the HTTP/2
// server), so it needs no native shim and costs no system call. `like` lends its addresses to
// the end handed over (gRPC reports the peer from it).
import type * as net from "node:net";
import { Duplex } from "node:stream";

class PairEnd extends Duplex {
  other!: PairEnd;
  /** The write callback held back while the other end's read buffer is full. */
  waiting: (() => void) | undefined;

  override _read(): void {
    const resume = this.other.waiting;
    this.other.waiting = undefined;
    resume?.();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.other.destroyed) return callback(new Error("the other end of the pair is closed"));
    if (this.other.push(chunk)) callback();
    else this.waiting = callback;
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.other.push(null);
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const resume = this.waiting;
    this.waiting = undefined;
    resume?.();
    if (!this.other.destroyed) this.other.destroy(error ?? undefined);
    callback(error);
  }
}

/** [inner, outer]: `inner` behaves as an accepted socket (no half-open), `outer` relays. */
export function memoryPair(like?: net.Socket): [Duplex, Duplex] {
  const inner = new PairEnd({ allowHalfOpen: false });
  const outer = new PairEnd({ allowHalfOpen: true });
  inner.other = outer;
  outer.other = inner;
  if (like) {
    // What HTTP/2 servers and gRPC ask of a socket beyond the stream interface.
    Object.defineProperties(inner, {
      remoteAddress: { get: () => like.remoteAddress },
      remotePort: { get: () => like.remotePort },
      remoteFamily: { get: () => like.remoteFamily },
      localAddress: { get: () => like.localAddress },
      localPort: { get: () => like.localPort },
    });
    const extra = inner as unknown as Record<string, unknown>;
    extra.setNoDelay = (on?: boolean) => (like.setNoDelay(on), inner);
    extra.setKeepAlive = (on?: boolean, delay?: number) => (like.setKeepAlive(on, delay), inner);
    extra.setTimeout = (ms: number, cb?: () => void) => (like.setTimeout(ms, cb), inner);
    extra.ref = () => (like.ref(), inner);
    extra.unref = () => (like.unref(), inner);
  }
  return [inner, outer];
}
