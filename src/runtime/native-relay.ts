// The shim's relay thread as the event loop sees it: joined fd pairs whose bytes move in
// native code, and fds whose readiness the thread reports. Its records arrive as the bytes of
// one socket the runtime adopts (like the netlink watcher's), so nothing here polls.
import type * as net from "node:net";
import { check, type NativeShim } from "./native-api.ts";
import { readFd, socketFromFd, type FdReader } from "./fd-socket.ts";
import { runtimeName } from "./self.ts";

const RECORD_BYTES = 32;
const REC_RELAY_DONE = 1;
const REC_READY = 2;
const REC_DIALED = 3;
const REC_HANDOFF = 4;
const REC_REJECTED = 5;
const REC_ACCEPT_FAILED = 6;
const REC_ALL_ABORTED = 7;
const REC_UNLISTENED = 8;
/** Record flags (native/relay.c). */
export const RELAY_RESET = 1;
export const RELAY_SPLICE_AB = 2;
export const RELAY_SPLICE_BA = 4;
export const RELAY_ABORTED = 32;
/** The framed side broke its framing (err: the header it sent). */
export const RELAY_BAD_FRAME = 64;
/** The framed side closed without an end frame (its agent died). */
export const RELAY_LOST = 128;
/** With RELAY_BAD_FRAME: bytes came after the end frame. */
export const RELAY_AFTER_END = 256;
/** dial(): the dialed side never connected (err says why); the handed fd is the caller's again. */
export const RELAY_DIAL_FAILED = 512;
/** With RELAY_DIAL_FAILED: the dialed side answered a failure status byte. */
export const RELAY_STATUS_REFUSED = 1024;
/** With RELAY_DIAL_FAILED: the dialed side closed (or failed) before its status byte. */
export const RELAY_NO_STATUS = 2048;
/** With RELAY_DIAL_FAILED: the handed side's first bytes already went out (it cannot take another path). */
export const RELAY_CONSUMED = 4096;
/** With RELAY_DIAL_FAILED: a data listener's stream (it was answered the failure status natively). */
export const RELAY_ACCEPTED = 8192;
const FORCE_COPY = 1;
const FRAMED_B = 2;
const DIAL_A = 4;
const HELLO_HANDED = 8;
const AWAIT_STATUS = 16;

/** How dial() sets up its connection (all optional: a plain TCP dial relayed with fd as side a). */
export interface DialShape {
  /** The connection carries PHDATA2 frames: the dialed socket (host) or the handed fd (guest). */
  framed?: "dialed" | "handed";
  /** Bytes sent once connected: to the dialed socket (a data header), or to the handed fd. */
  hello?: { bytes: Uint8Array; to: "dialed" | "handed" };
  /** After hello, the dialed side answers one status byte (0: connected) before the relay starts. */
  awaitStatus?: boolean;
}
/**
 * Where a forward listener's clients are dialled in the relay thread: the data path (the
 * guest's data endpoint, a unix socket, with the header they open with) or direct (the guest's
 * proven TCP address, relayed plain, with keepalive). timeoutMs: the dial's (and status
 * byte's) deadline.
 */
export type ForwardTarget =
  | { path: string; header: Uint8Array; timeoutMs?: number }
  | { host: string; port: number; timeoutMs: number; keepAliveMs: number };

/** What a data listener (dataListen) or a forward listener (forwardListen) tells the event loop. */
export interface DataListenerHandlers {
  /** A connection the relay thread did not take (data: not a well-formed PHDATA2 tcp/unix header with the secret, or slow; forward: no target set): its fd, nothing read. */
  handoff(fd: number): void;
  /** Data listener: a target's dial failed (the stream was answered the failure status): the errno. */
  dialFailed?(err: number): void;
  /** Forward listener: a client's dial went through (relay id, and the number forwardTarget gave its target); returns what hears its end. */
  dialed?(id: number, target: number): (end: RelayEnd) => void;
  /** Forward listener: a client's dial failed; the client's fd is in end.aToB (RELAY_DIAL_FAILED and its reasons in flags), its target's number in target. */
  failed?(end: RelayEnd, target: number): void;
  /** A vsock peer other than the allowed CID connected (and was closed). */
  rejected?(cid: number): void;
  /** accept() failed (out of fds, …); the listener rests 100 ms. */
  acceptFailed(err: number): void;
}
const LISTEN_FORWARD = 2;
/** With LISTEN_FORWARD: the relay thread accepts on its own dup, always (no target: every client comes to handoff). */
const LISTEN_OWN = 4;

export const EPOLLIN = 1;
export const EPOLLOUT = 4;

export interface RelayEnd {
  flags: number;
  /** errno of the error that ended it (0: both sides ended with EOF). */
  err: number;
  aToB: number;
  bToA: number;
}

/** Why this runtime's sockets cannot be handed to the native relay, if they cannot. */
export function fdsHidden(): string | undefined {
  // Deno's node:net sockets wrap Deno.Conn resources, which have no fd to hand over.
  return runtimeName() === "deno" ? "Deno's sockets do not expose their file descriptors" : undefined;
}

/** The fd a runtime's socket object reads and writes, where the runtime tells it. */
export function socketFd(socket: net.Socket): number | undefined {
  // Bun's and Node's socket handles both carry the fd as `_handle.fd` (Node: TCP and Pipe wraps).
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === "number" && fd >= 0 ? fd : undefined;
}

let shared: NativeRelayLoop | undefined;

/** The process's one relay loop (the shim has one relay thread); throws where it cannot start. */
export function sharedRelayLoop(shim: NativeShim): NativeRelayLoop {
  shared ??= NativeRelayLoop.start(shim);
  return shared;
}

export class NativeRelayLoop {
  private readonly done = new Map<number, (end: RelayEnd) => void>();
  private readonly ready = new Map<number, (events: number) => void>();
  private readonly dialed = new Map<number, () => void>();
  private readonly listeners = new Map<number, DataListenerHandlers>();
  /** Forward listeners closed whose late records (REC_DIALED) may still come, until REC_UNLISTENED. */
  private readonly closedForwards = new Map<number, DataListenerHandlers>();
  private nextToken = 1;
  private pending: Buffer = Buffer.alloc(0);
  /** Reads of records (each a wake of the event loop by the relay thread). */
  recordReads = 0;
  private readonly counters = new BigUint64Array(2);
  private readonly empty = new Uint8Array(1);

  private readonly records: FdReader;

  private constructor(
    private readonly shim: NativeShim,
    recordsFd: number,
  ) {
    // Every record read is a wake-up of the event loop: read with the runtime's cheapest reader.
    // The thread lives as long as the process: a lost records socket cannot be replaced, so
    // the loop is no longer usable (callers fall back; see `broken`).
    this.records = readFd(recordsFd, {
      data: (chunk) => this.onRecords(chunk),
      end: (err) => (this.broken ??= err?.message ?? "the relay's records socket closed"),
    });
    this.records.unref();
  }

  broken: string | undefined;

  /** Starts the shim's relay thread; throws where it cannot (the caller falls back). */
  static start(shim: NativeShim): NativeRelayLoop {
    const fd = check(shim, shim.relayStart(), "relay thread");
    return new NativeRelayLoop(shim, fd);
  }

  /**
   * Relays fdA <-> fdB (both dup()ed by the shim); `onEnd` gets the record when it ends.
   * framedB: fdB is a framed data-path stream (PHDATA2); toA are then its bytes as read.
   */
  add(fdA: number, fdB: number, toB: Uint8Array, toA: Uint8Array, copy: boolean, onEnd: (end: RelayEnd) => void, framedB = false): number {
    const flags = (copy ? FORCE_COPY : 0) | (framedB ? FRAMED_B : 0);
    const id = check(
      this.shim,
      this.shim.relayAdd(fdA, fdB, toB.length ? toB : this.empty, toB.length, toA.length ? toA : this.empty, toA.length, flags),
      "relay",
    );
    this.done.set(id, onEnd);
    return id;
  }

  /**
   * Connects to host:port (a numeric address) or to a unix socket (host: its absolute path)
   * in the relay thread and relays fd <-> that connection, with nothing of JavaScript between.
   * fd is side a unless the handed side is the framed one (then b). `pre`: bytes already read
   * from fd. `onDialed` runs once it is connected (and answered, with awaitStatus: the caller
   * then lets go of its socket for fd); `onEnd` as for add(), with RELAY_DIAL_FAILED (and the
   * errno in err) when it never got there: fd is then the caller's again. Throws (a
   * NativeError with the errno's name as code) when the connect failed at once.
   */
  dial(
    fd: number,
    host: string,
    port: number,
    pre: Uint8Array,
    copy: boolean,
    timeoutMs: number,
    keepAliveS: number,
    onDialed: () => void,
    onEnd: (end: RelayEnd) => void,
    shape: DialShape = {},
  ): number {
    const flags =
      (copy ? FORCE_COPY : 0) |
      (shape.framed ? FRAMED_B : 0) |
      (shape.framed === "handed" ? DIAL_A : 0) |
      (shape.hello?.to === "handed" ? HELLO_HANDED : 0) |
      (shape.awaitStatus ? AWAIT_STATUS : 0);
    const hello = shape.hello?.bytes ?? this.empty;
    const helloLen = shape.hello?.bytes.length ?? 0;
    const id = check(
      this.shim,
      this.shim.relayDial(fd, Buffer.from(`${host}\0`), port, pre.length ? pre : this.empty, pre.length, flags, timeoutMs, keepAliveS, helloLen ? hello : this.empty, helloLen),
      host.startsWith("/") ? `connect to ${host}` : `connect to ${host.includes(":") ? `[${host}]` : host}:${port}`,
    );
    this.dialed.set(id, onDialed);
    this.done.set(id, onEnd);
    return id;
  }

  /**
   * Accepts on listening socket fd (dup()ed) in the relay thread as the guest's data endpoint:
   * streams whose header names a TCP or unix target with `secret` are dialled, answered and
   * relayed there; the others come to `handlers.handoff` untouched. allowCid: the one vsock
   * peer accepted (-1: any). Returns the listener id; throws where it cannot.
   */
  dataListen(fd: number, secret: string, allowCid: number, copy: boolean, headerMs: number, dialMs: number, handlers: DataListenerHandlers): number {
    const id = check(this.shim, this.shim.dataListen(fd, Buffer.from(`${secret}\0`), allowCid, copy ? FORCE_COPY : 0, headerMs, dialMs), "data listener");
    this.listeners.set(id, handlers);
    return id;
  }

  /**
   * Accepts a host forward's listening socket fd in the relay thread: with a target set
   * (forwardTarget), each client is dialled there (see native/relay.c, "forward listeners");
   * without one it comes to `handlers.handoff`. The fd is borrowed (the runtime's server
   * accepts beside the thread, which watches it only while a target is set), or with `own`
   * dup()ed and always watched: the caller then stops the runtime's own accepting.
   */
  forwardListen(fd: number, copy: boolean, dialMs: number, handlers: DataListenerHandlers, own = false): number {
    const flags = (copy ? FORCE_COPY : 0) | LISTEN_FORWARD | (own ? LISTEN_OWN : 0);
    const id = check(this.shim, this.shim.dataListen(fd, Buffer.from("\0"), -1, flags, 0, dialMs), "forward listener");
    this.listeners.set(id, handlers);
    return id;
  }

  /** Sets (or with undefined clears) a forward listener's target; returns its number (records name it). */
  forwardTarget(id: number, target: ForwardTarget | undefined): number {
    if (target && "host" in target) {
      const host = Buffer.from(`${target.host}\0`);
      return check(this.shim, this.shim.forwardTarget(id, host, target.port, this.empty, 0, target.timeoutMs, Math.max(1, Math.round(target.keepAliveMs / 1000))), "forward target");
    }
    const path = Buffer.from(`${target?.path ?? ""}\0`);
    return check(this.shim, this.shim.forwardTarget(id, path, 0, target?.header ?? this.empty, target?.header.length ?? 0, target?.timeoutMs ?? 0, 0), "forward target");
  }

  /** Stops a data listener (its accepted streams carry on; handoffs already posted still come). */
  dataUnlisten(id: number): void {
    const handlers = this.listeners.get(id);
    this.listeners.delete(id);
    // A forward's clients dialled just before are told late (REC_DIALED): its handlers stay
    // for them until REC_UNLISTENED, which comes after their records.
    if (handlers?.dialed) this.closedForwards.set(id, handlers);
    this.shim.dataUnlisten(id);
  }

  /** Streams a data listener dialled itself, and those it handed to JavaScript. */
  dataListenerStats(id: number): { carried: number; handed: number } {
    this.shim.dataListenerStats(id, this.counters);
    return { carried: Number(this.counters[0]), handed: Number(this.counters[1]) };
  }

  /** Closes an fd the relay handed over that nobody will adopt. */
  /** A listener's connection handed to JavaScript, as a socket (closed, so lost, where the runtime will not adopt it). */
  adopt(fd: number, onSocket: (socket: net.Socket) => void): void {
    let socket: net.Socket;
    try {
      socket = socketFromFd(fd, true);
    } catch {
      this.shim.close(fd);
      return;
    }
    onSocket(socket);
  }

  /**
   * Cuts off a client whose listener closed while it was on its way to JavaScript (an agent
   * stopping): a reset, as every connection the agent cuts off, never a FIN that would make a
   * truncated transfer look complete.
   */
  private resetFd(fd: number): void {
    this.adopt(fd, (socket) => {
      socket.on("error", () => {});
      try {
        if (typeof socket.resetAndDestroy === "function") return void socket.resetAndDestroy();
      } catch {
        // not connected after all: a plain close will do
      }
      socket.destroy();
    });
  }

  closeFd(fd: number): void {
    this.shim.close(fd);
  }

  /** The errno's name (ECONNREFUSED, …) and its words. */
  errnoText(err: number): { code: string; message: string } {
    return { code: this.shim.errnoName(err), message: this.shim.strerror(err) };
  }

  /** Bytes moved so far each way, or undefined once it ended. */
  progress(id: number): { aToB: number; bToA: number } | undefined {
    if (this.shim.relayCounters(id, this.counters) < 0) return undefined;
    return { aToB: Number(this.counters[0]), bToA: Number(this.counters[1]) };
  }

  openRelays(): number {
    return this.done.size;
  }

  abort(id: number): void {
    this.shim.relayAbort(id);
  }

  private allAborted: (() => void)[] = [];

  /** Resets every relay (an agent that exits); resolves once the relay thread did. */
  abortAll(): Promise<void> {
    return new Promise((resolve) => {
      this.allAborted.push(resolve);
      this.shim.relayAbortAll();
    });
  }

  totals(): { relays: number; spliced: number; copied: number } {
    const out = new BigUint64Array(3);
    this.shim.relayTotals(out);
    return { relays: Number(out[0]), spliced: Number(out[1]), copied: Number(out[2]) };
  }

  /** Calls `onReady` once when fd is ready for `events` (EPOLLIN, EPOLLOUT). Returns a cancel. */
  watchOnce(fd: number, events: number, onReady: (events: number) => void): () => void {
    const token = this.nextToken++ >>> 0 || this.nextToken++;
    this.ready.set(token, onReady);
    const r = this.shim.watch(fd, events, token);
    if (r < 0) {
      this.ready.delete(token);
      check(this.shim, r, `watch fd ${fd}`);
    }
    return () => {
      if (this.ready.delete(token)) this.shim.unwatch(fd);
    };
  }

  /** Stops watching fd (before it is closed). */
  unwatch(fd: number): void {
    this.shim.unwatch(fd);
  }

  private onRecords(chunk: Buffer): void {
    this.recordReads++;
    const buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const whole = buf.length - (buf.length % RECORD_BYTES);
    for (let at = 0; at < whole; at += RECORD_BYTES) {
      const kind = buf.readUInt32LE(at);
      const id = buf.readUInt32LE(at + 4);
      const flags = buf.readUInt32LE(at + 8);
      const err = buf.readUInt32LE(at + 12);
      if (kind === REC_RELAY_DONE) {
        const end = { flags, err, aToB: Number(buf.readBigUInt64LE(at + 16)), bToA: Number(buf.readBigUInt64LE(at + 24)) };
        const onEnd = this.done.get(id);
        this.done.delete(id);
        this.dialed.delete(id);
        this.shim.relayRelease(id);
        if (flags & RELAY_ACCEPTED) {
          // b_to_a: the listener's id, and (a forward's) its target's number above bit 32
          const listener = this.listeners.get(end.bToA % 2 ** 32);
          if (listener?.failed) safely(() => listener.failed!(end, Math.floor(end.bToA / 2 ** 32)));
          else if (listener) safely(() => listener.dialFailed?.(err));
          else if (end.aToB >= 0 && end.aToB < 2 ** 31) this.resetFd(end.aToB); // its listener is gone: so is the client, with a reset (its dial failed)
        } else {
          safely(() => onEnd?.(end));
        }
      } else if (kind === REC_DIALED) {
        const onDialed = this.dialed.get(id);
        this.dialed.delete(id);
        const listener = onDialed ? undefined : Number(buf.readBigUInt64LE(at + 16));
        if (listener) {
          // A forward listener's connection: JavaScript learns of it now (its listener may
          // have closed meanwhile, and its id gone to a new one: the closed one's first).
          const handlers = this.closedForwards.get(listener) ?? this.listeners.get(listener);
          safely(() => {
            const onEnd = handlers?.dialed?.(id, Number(buf.readBigUInt64LE(at + 24)));
            if (onEnd) this.done.set(id, onEnd);
            else this.shim.relayAbort(id);
          });
        } else {
          safely(() => onDialed?.());
        }
      } else if (kind === REC_HANDOFF || kind === REC_REJECTED || kind === REC_ACCEPT_FAILED) {
        const listener = this.listeners.get(id);
        if (kind === REC_HANDOFF && !listener) this.resetFd(err); // its listener is gone: so is the stream
        else if (kind === REC_HANDOFF) safely(() => listener!.handoff(err));
        else if (kind === REC_REJECTED) safely(() => listener?.rejected?.(err));
        else safely(() => listener?.acceptFailed(err));
      } else if (kind === REC_UNLISTENED) {
        this.closedForwards.delete(id);
      } else if (kind === REC_ALL_ABORTED) {
        for (const resolve of this.allAborted.splice(0)) resolve();
      } else if (kind === REC_READY) {
        const onReady = this.ready.get(id);
        this.ready.delete(id);
        safely(() => onReady?.(flags));
      }
    }
    this.pending = Buffer.from(buf.subarray(whole));
  }
}

/** A callback's exception must not stop the records after it (nor the agent). */
/** Runs a handler of the relay thread's records: one that throws is said (a bug of ours) and the others still run. */
export function safely(fn: () => void, what = "a relay callback"): void {
  try {
    fn();
  } catch (err) {
    process.stderr.write(`porthole: ${what} failed: ${(err as Error).stack ?? err}\n`);
  }
}
