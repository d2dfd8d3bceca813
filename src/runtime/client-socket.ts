// An outgoing TCP or unix connection with the part of net.Socket the relays use (events
// connect, data, end, drain, error, close; write, end, pause, resume, destroy, resetAndDestroy),
// made with Bun's own socket API where it runs. A net.Socket is a Duplex stream with two
// stream states, and each of its events goes through them: per wake-up of the event loop it
// cost about twice the CPU of Bun's socket (runtime/fd-socket.ts, bench/wake-cost.ts), and a
// forwarded connection's guest side wakes the loop three or four times (connected, data,
// EOF). Elsewhere (Node, Deno) it is net.connect.
//
// Bun's socket closes with an error for a reset (ECONNRESET) and without one for an orderly
// end; it reports the peer's EOF ("end") only while this side still writes, so an EOF that
// comes after this side's own is told here as "end" before "close", as net.Socket does. A
// reset that a write meets (Bun's write returns -1, then Bun reports "end" and an orderly
// close) is told as the reset it is.
import { EventEmitter } from "node:events";
import * as net from "node:net";
import { runtimeName } from "./self.ts";

/** What the relays use of a connected (or connecting) client socket. */
export interface ClientSocket extends EventEmitter {
  readonly connecting: boolean;
  readonly destroyed: boolean;
  readonly writableEnded: boolean;
  write(chunk: Buffer): boolean;
  end(): void;
  pause(): unknown;
  resume(): unknown;
  destroy(): void;
  resetAndDestroy(): void;
}

export type ClientTarget = { host: string; port: number } | { path: string };

/** Connects with half-close allowed (each direction ends on its own) and TCP_NODELAY (Bun sets it on every TCP socket it connects). */
export function connectClient(target: ClientTarget): ClientSocket {
  if (runtimeName() === "bun") return new BunClientSocket(target);
  return "path" in target
    ? (net.connect({ path: target.path, allowHalfOpen: true }) as unknown as ClientSocket)
    : (net.connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true }) as unknown as ClientSocket);
}

interface BunSocket {
  write(data: Uint8Array): number;
  shutdown(): void;
  end(): void;
  terminate(): void;
  pause(): void;
  resume(): void;
}
interface BunHandlers {
  open(s: BunSocket): void;
  data(s: BunSocket, chunk: Buffer): void;
  drain(s: BunSocket): void;
  end(s: BunSocket): void;
  close(s: BunSocket, err?: Error): void;
  error(s: BunSocket, err: Error): void;
  connectError(s: BunSocket, err: Error): void;
}
type BunConnect = (options: ({ hostname: string; port: number } | { unix: string }) & { allowHalfOpen: boolean; socket: BunHandlers }) => Promise<BunSocket>;

class BunClientSocket extends EventEmitter implements ClientSocket {
  connecting = true;
  destroyed = false;
  writableEnded = false;
  private socket: BunSocket | undefined;
  /** Bytes written but not yet taken by the kernel, in order. */
  private readonly pending: Buffer[] = [];
  private needDrain = false;
  private paused = false;
  private peerEnded = false;
  private shutDown = false;
  private over = false;
  /** Closed by this side (destroy, reset): no "end" is made up for it. */
  private closedHere = false;
  /** A write found the connection gone (Bun then reports an "end" that was a reset). */
  private broken = false;

  constructor(target: ClientTarget) {
    super();
    const connect = (globalThis as unknown as { Bun: { connect: BunConnect } }).Bun.connect;
    const where = "path" in target ? { unix: target.path } : { hostname: target.host, port: target.port };
    connect({
      ...where,
      allowHalfOpen: true,
      socket: {
        open: (s) => this.opened(s),
        data: (_s, chunk) => this.emit("data", chunk),
        drain: () => this.flush(),
        end: () => {
          if (this.peerEnded || this.broken) return;
          this.peerEnded = true;
          this.emit("end");
        },
        close: (_s, err) => this.closed(err),
        error: (_s, err) => this.closed(err),
        // Out of fds, Bun fails the dial inside Bun.connect (as ECONNREFUSED): told after the
        // caller has its listeners, as net.Socket tells its errors.
        connectError: (_s, err) => queueMicrotask(() => this.closed(err)),
      },
    }).catch((err: Error) => queueMicrotask(() => this.closed(err)));
  }

  private opened(s: BunSocket): void {
    this.socket = s;
    this.connecting = false;
    if (this.closedHere) return s.terminate();
    if (this.paused) s.pause();
    this.emit("connect");
    this.flush();
  }

  write(chunk: Buffer): boolean {
    if (this.destroyed || this.writableEnded) return false;
    if (this.socket && this.pending.length === 0) {
      const n = this.socket.write(chunk);
      if (n === chunk.length) return true;
      if (n < 0) return this.gone();
      this.pending.push(n > 0 ? chunk.subarray(n) : chunk);
    } else {
      this.pending.push(chunk);
    }
    this.needDrain = true;
    return false;
  }

  /** Hands what waits to the kernel; then the EOF asked for, and "drain". */
  private flush(): void {
    const s = this.socket;
    if (!s || this.destroyed) return;
    while (this.pending.length) {
      const chunk = this.pending[0]!;
      const n = s.write(chunk);
      if (n < 0) return void this.gone();
      if (n !== chunk.length) {
        if (n > 0) this.pending[0] = chunk.subarray(n);
        return;
      }
      this.pending.shift();
    }
    if (this.writableEnded && !this.shutDown) {
      this.shutDown = true;
      s.shutdown();
    }
    if (this.needDrain) {
      this.needDrain = false;
      this.emit("drain");
    }
  }

  /**
   * Bun's write said the connection is gone: it was reset under this side (Bun goes on to
   * report an end and an orderly close, which must not pass for the peer's EOF).
   */
  private gone(): false {
    if (!this.broken) {
      this.broken = true;
      queueMicrotask(() => this.closed(Object.assign(new Error("the connection was reset"), { code: "ECONNRESET" })));
    }
    return false;
  }

  end(): void {
    if (this.writableEnded || this.destroyed) return;
    this.writableEnded = true;
    this.flush();
  }

  pause(): this {
    this.paused = true;
    this.socket?.pause();
    return this;
  }

  resume(): this {
    this.paused = false;
    this.socket?.resume();
    return this;
  }

  /** Closes at once, unsent bytes dropped (as net.Socket's destroy); "close" follows, as there. */
  destroy(): void {
    this.closeHere(() => this.socket?.end());
  }

  /** Closes with a TCP reset (Bun's terminate: no linger). */
  resetAndDestroy(): void {
    this.closeHere(() => this.socket?.terminate());
  }

  private closeHere(close: () => void): void {
    if (this.destroyed) return;
    this.closedHere = this.destroyed = this.writableEnded = true;
    this.pending.length = 0;
    close();
    queueMicrotask(() => this.closed());
  }

  private closed(err?: Error): void {
    if (this.over) return;
    this.over = true;
    this.destroyed = true;
    this.writableEnded = true;
    this.pending.length = 0;
    if (!err && !this.peerEnded && !this.closedHere) {
      if (this.shutDown) {
        // An orderly close that Bun did not report as an end: the peer's EOF after ours.
        this.peerEnded = true;
        this.emit("end");
      } else {
        // Closed under this side while it still wrote, with no end and no error (Bun, for a
        // reset met by a write): a reset, never a clean EOF.
        err = Object.assign(new Error("the connection was reset"), { code: "ECONNRESET" });
      }
    }
    if (err && this.listenerCount("error")) this.emit("error", err);
    this.emit("close", err !== undefined);
  }
}
