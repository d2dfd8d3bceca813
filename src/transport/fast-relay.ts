// Joins the two connected sockets of a forwarded connection. Where the native shim runs, the
// bytes move in its relay thread (splice() through a pipe per direction) and never pass
// through JavaScript: the runtime's socket objects hand over their fds and are destroyed.
// Elsewhere (no shim, a runtime that does not show its fds, PORTHOLE_NATIVE_RELAY=0) today's
// JavaScript relay (spliceSockets) carries them, and that is said once.
//   PORTHOLE_NATIVE_RELAY=0     the JavaScript relay
//   PORTHOLE_NATIVE_RELAY=copy  the native relay with read()/send() both ways (as where a
//                               socket family cannot splice), for tests and the benchmark
import type * as net from "node:net";
import type { RelayStatus } from "../core/status.ts";
import { loadNative } from "../runtime/native.ts";
import {
  fdsHidden,
  RELAY_AFTER_END,
  RELAY_BAD_FRAME,
  RELAY_CONSUMED,
  RELAY_DIAL_FAILED,
  RELAY_NO_STATUS,
  RELAY_RESET,
  RELAY_STATUS_REFUSED,
  sharedRelayLoop,
  socketFd,
  type DialShape,
  type ForwardTarget,
  type NativeRelayLoop,
  type RelayEnd,
} from "../runtime/native-relay.ts";
import { socketFromFd } from "../runtime/fd-socket.ts";
import { canStopAccepting, listenerFd, stopAccepting } from "../runtime/server-handle.ts";
import { resetSocket, spliceFramed, spliceSockets } from "./tunnel-relay.ts";

/** A framed data-path stream's side of a join (PHDATA2, core/data-frames.ts). */
interface Framed {
  /** Bytes of the stream already read (after its data header or status byte). */
  initial: Buffer;
  /** Hears why the stream was closed when it broke its framing. */
  onBad?: (reason: string) => void;
}

interface Handed {
  id: number;
  /** Moved by another native mover (a UDP flow's pump, handedElsewhere()): its bytes since. */
  moved?: () => { read: number; written: number };
  /** This socket is side a (its reads are the a -> b direction). */
  sideA: boolean;
  baseRead: number;
  baseWritten: number;
  end?: RelayEnd;
  waiters: (() => void)[];
  /** A failed native dial handed the connection back as this socket: it carries on. */
  successor?: net.Socket;
}

let loop: NativeRelayLoop | undefined;
let copyMode = false;
let fallbackReason: string | undefined = "the relay was not prepared";
let notice: (message: string) => void = () => {};
let noticed = false;
let javascriptRelays = 0;
let acceptedNatively = 0;
let acceptHandedBack = 0;
let resets = 0;
const handed = new WeakMap<net.Socket, Handed>();

/**
 * Starts the native relay where it can run and says which relay carries connections, once,
 * through `say` (also used later if the native relay has to give way).
 */
export async function prepareRelay(say: (message: string) => void, env: NodeJS.ProcessEnv = process.env): Promise<RelayStatus> {
  notice = say;
  noticed = false; // a new preparation (tests prepare several times in one process) says it anew
  saidOnce.clear();
  const setting = env.PORTHOLE_NATIVE_RELAY ?? "";
  if (setting === "0" || setting === "false") {
    fallbackReason = `PORTHOLE_NATIVE_RELAY=${setting}`;
  } else {
    const { shim, error } = await loadNative();
    try {
      if (!shim) throw new Error(`the native shim did not load (${error})`);
      const hidden = fdsHidden();
      if (hidden) throw new Error(hidden);
      loop ??= sharedRelayLoop(shim);
      copyMode = setting === "copy";
      fallbackReason = undefined;
    } catch (err) {
      fallbackReason = (err as Error).message;
    }
  }
  if (fallbackReason) sayFallback(fallbackReason);
  else say(`forwarded connections are relayed natively (${copyMode ? "read/send, PORTHOLE_NATIVE_RELAY=copy" : "splice"}); their bytes do not pass through JavaScript`);
  return relayStatus();
}

/** Notices about some connections or listeners only (the native relay carries the others), each said once. */
const saidOnce = new Set<string>();
function sayOnce(key: string, message: string): void {
  if (saidOnce.has(key)) return;
  saidOnce.add(key);
  notice(message);
}

function sayFallback(reason: string): void {
  if (noticed) return;
  noticed = true;
  notice(
    `forwarded connections are relayed in JavaScript, which is slower and costs more CPU: ${reason}. ` +
      "The native relay needs the porthole shim (built by make) and Bun, Node or Deno on Linux; unset PORTHOLE_NATIVE_RELAY to use it.",
  );
}

function usableLoop(): NativeRelayLoop | undefined {
  if (loop?.broken && !fallbackReason) {
    fallbackReason = `the native relay stopped: ${loop.broken}`;
    sayFallback(fallbackReason);
  }
  return fallbackReason ? undefined : loop;
}

/** The native relay loop where it carries connections (and whether in read/send mode). */
export function nativeRelay(): { loop: NativeRelayLoop; copy: boolean } | undefined {
  const native = usableLoop();
  return native ? { loop: native, copy: copyMode } : undefined;
}

function javascript(a: net.Socket, b: net.Socket, framed?: Framed): void {
  javascriptRelays++;
  if (framed) return spliceFramed(a, b, framed.initial, framed.onBad);
  spliceSockets(a, b);
  a.resume();
  b.resume();
}

function badFrameReason(end: RelayEnd): string {
  return end.flags & RELAY_AFTER_END ? "bytes after the end of the stream" : `invalid frame header 0x${end.err.toString(16)}`;
}

/** What either socket had already read and not yet delivered. */
function drain(socket: net.Socket): Buffer {
  const parts: Buffer[] = [];
  for (let chunk: Buffer | null; (chunk = socket.read() as Buffer | null) !== null; ) parts.push(chunk);
  return Buffer.concat(parts);
}

/**
 * Relays a character device (a virtio-serial port's fd) and a socket in the relay thread:
 * read() and write() on the device, nothing through the runtime's thread pool or JavaScript.
 * The relay holds its own dup of both fds (the caller may close its own). `onEnd` runs once
 * it ended: the device's EOF or error, the socket's, or abort(). Where the native relay
 * cannot run, why not (the caller moves the bytes itself, and says so).
 */
export function joinDevice(deviceFd: number, socket: net.Socket, onEnd: () => void): { abort(): void } | { notJoined: string } {
  const native = usableLoop();
  if (!native) return { notJoined: fallbackReason ?? "the native relay is not running" };
  const fd = socketFd(socket);
  if (fd === undefined) return { notJoined: "the runtime does not show the socket's file descriptor" };
  try {
    const id = native.add(deviceFd, fd, new Uint8Array(0), new Uint8Array(0), true, () => onEnd());
    return { abort: () => native.abort(id) };
  } catch (err) {
    return { notJoined: `the relay thread refused the port (${(err as Error).message})` };
  }
}

/**
 * Relays between two connected sockets until both directions ended (EOF each way, passed on
 * as a half-close) or one failed (both reset). Both sockets are paused until then; the
 * caller's own handlers on them see them close when the native relay takes over (use
 * `afterRelay` and `relayedBytes` for what happens later).
 */
export function joinSockets(a: net.Socket, b: net.Socket): void {
  join(a, b);
}

/**
 * Joins a plain socket to a framed data-path stream (PHDATA2) with spliceFramed()'s
 * semantics (transport/tunnel-relay.ts): the plain side's EOF or reset goes out as an end
 * frame, the stream's end frame is played back on the plain side, a stream that closes
 * without one (or breaks its framing) resets the plain side. Natively where it can.
 */
export function joinFramed(plain: net.Socket, framed: net.Socket, initial: Buffer = Buffer.alloc(0), onBad?: (reason: string) => void): void {
  join(plain, framed, { initial, onBad });
}

function join(a: net.Socket, b: net.Socket, framed?: Framed): void {
  const native = usableLoop();
  if (!native) return javascript(a, b, framed);
  a.pause();
  b.pause();
  const hand = () => {
    if (a.destroyed || b.destroyed) {
      resetSocket(a);
      resetSocket(b);
      return;
    }
    const fdA = socketFd(a);
    const fdB = socketFd(b);
    if (fdA === undefined || fdB === undefined) {
      fallbackReason = "this runtime does not expose its sockets' file descriptors";
      sayFallback(fallbackReason);
      return javascript(a, b, framed);
    }
    const toB = drain(a);
    const toA = framed ? Buffer.concat([framed.initial, drain(b)]) : drain(b);
    const sides: [net.Socket, Handed][] = [
      [a, { id: 0, sideA: true, baseRead: a.bytesRead - toB.length, baseWritten: a.bytesWritten, waiters: [] }],
      [b, { id: 0, sideA: false, baseRead: b.bytesRead - toA.length, baseWritten: b.bytesWritten, waiters: [] }],
    ];
    let id: number;
    try {
      id = native.add(
        fdA,
        fdB,
        toB,
        toA,
        copyMode,
        (end) => {
          if (end.flags & RELAY_RESET) resets++;
          if (end.flags & RELAY_BAD_FRAME) framed?.onBad?.(badFrameReason(end));
          for (const [, h] of sides) {
            h.end = end;
            for (const w of h.waiters.splice(0)) w();
          }
        },
        framed !== undefined,
      );
    } catch (err) {
      // Out of relay slots or fds: this connection goes the JavaScript way, with what was read.
      // (Said apart from sayFallback: the others stay native, and a later stop must still be said.)
      sayOnce(
        "refused",
        `the native relay refused a connection (${(err as Error).message}); such connections are relayed in JavaScript, the others stay native. If it goes on, raise the agent's file limit (ulimit -n)`,
      );
      if (framed) {
        if (toB.length) a.unshift(toB); // the JavaScript relay frames them
        return javascript(a, b, { ...framed, initial: toA });
      }
      if (toB.length) b.write(toB);
      if (toA.length) a.write(toA);
      return javascript(a, b);
    }
    for (const [socket, h] of sides) {
      h.id = id;
      handed.set(socket, h);
      socket.destroy(); // closes only the runtime's fd: the relay holds its own dup()
    }
  };
  // Bytes the runtime still has to write go out before the handover (an empty write's
  // callback runs once everything before it is flushed).
  const waiting = [a, b].filter((s) => s.writableLength > 0);
  if (waiting.length === 0) return hand();
  let left = waiting.length;
  const abandon = () => {
    resetSocket(a);
    resetSocket(b);
  };
  a.once("close", abandon);
  b.once("close", abandon);
  for (const s of waiting) {
    s.write(Buffer.alloc(0), (err) => {
      if (err || --left > 0) return;
      a.off("close", abandon);
      b.off("close", abandon);
      hand();
    });
  }
}

/** The dialed side answered the data header with a failure status: its target refused. */
export class RefusedByPeer extends Error {}

/**
 * Connects to a target (a numeric TCP address, or a unix socket's path) from the native relay
 * thread and joins `client` to it there: no JavaScript runs between the client's accept and its
 * first relayed byte. With `shape`, the same for a data-path stream (native-relay.ts's
 * DialShape): the host's stream gets its header and answers its status byte there, the guest's
 * stream gets its status byte once the target connected. `initial`: bytes the caller already
 * read from the client and not yet delivered (they go first).
 * The client's socket object closes at once (use `afterRelay` and `relayedBytes` as for a
 * join). `onConnected` runs once the target accepted (and answered); `onFailed` when it did
 * not (refused, reset, unreachable, a RefusedByPeer status, or no answer within timeoutMs),
 * with the client's connection untouched as a new socket object (reset already, when its first
 * bytes went out with the data header before the dial failed) (paused, what it had sent
 * still to be read), for the caller to route elsewhere or reset; the old object's
 * afterRelay/relayedBytes follow the new one. Returns false where the native relay cannot do
 * it (the caller dials in JavaScript).
 */
export function dialAndJoin(
  client: net.Socket,
  target: { host: string; port: number } | { path: string },
  options: { timeoutMs: number; keepAliveMs: number; shape?: DialShape; initial?: Buffer; onBad?: (reason: string) => void },
  onConnected: () => void,
  onFailed: (err: NodeJS.ErrnoException, client: net.Socket) => void,
): boolean {
  const native = usableLoop();
  const fd = socketFd(client);
  if (!native || fd === undefined || client.destroyed || client.writableLength > 0) return false;
  client.pause();
  const drained = drain(client);
  const toB = options.initial?.length ? Buffer.concat([options.initial, drained]) : drained;
  const sideA = options.shape?.framed !== "handed";
  const h: Handed = { id: 0, sideA, baseRead: client.bytesRead - toB.length, baseWritten: client.bytesWritten, waiters: [] };
  const [host, port] = "path" in target ? [target.path, 0] : [target.host, target.port];
  const name = "path" in target ? `unix://${target.path}` : `tcp://${target.host.includes(":") ? `[${target.host}]` : target.host}:${target.port}`;
  try {
    h.id = native.dial(fd, host, port, toB, copyMode, options.timeoutMs, options.keepAliveMs > 0 ? Math.max(1, Math.round(options.keepAliveMs / 1000)) : 0, onConnected, (end) => {
      if (end.flags & RELAY_DIAL_FAILED) {
        // The relay hands the client's connection back (its fd in aToB): a new socket object.
        const again = socketFromFd(end.aToB, true);
        again.pause();
        if (toB.length) again.unshift(toB);
        h.baseRead = client.bytesRead;
        h.successor = again;
        h.end = { flags: end.flags, err: end.err, aToB: 0, bToA: 0 };
        for (const w of h.waiters.splice(0)) afterRelay(client, w);
        const { code, message } = native.errnoText(end.err);
        // What the client sent first already went towards the guest: it cannot take another path.
        if (end.flags & RELAY_CONSUMED && !(end.flags & RELAY_STATUS_REFUSED)) resetSocket(again);
        if (end.flags & RELAY_STATUS_REFUSED) return onFailed(new RefusedByPeer(`${name} answered that its target refused`), again);
        const why =
          code === "ETIMEDOUT" ? `no answer in ${options.timeoutMs} ms` : end.flags & RELAY_NO_STATUS ? `it closed without an answer (${code})` : `${message} (${code})`;
        return onFailed(Object.assign(new Error(`cannot connect to ${name}: ${why}`), { code }), again);
      }
      if (end.flags & RELAY_RESET) resets++;
      if (end.flags & RELAY_BAD_FRAME) options.onBad?.(badFrameReason(end));
      h.end = end;
      for (const w of h.waiters.splice(0)) w();
    }, options.shape);
  } catch (err) {
    // The connect failed at once: the client is as it was.
    if (toB.length) client.unshift(toB);
    const { code, message } = err as NodeJS.ErrnoException;
    queueMicrotask(() => onFailed(Object.assign(new Error(`cannot connect to ${name}: ${message}`), { code }), client));
    return true;
  }
  handed.set(client, h);
  client.destroy(); // closes only the runtime's fd: the relay holds its own dup()
  return true;
}

/** A failed native dial handed the client back (its fd in end.aToB): a socket again, with the reason. */
function handedBack(end: RelayEnd, native: NativeRelayLoop, name: string, timeoutMs: number): { again: net.Socket; err: NodeJS.ErrnoException } {
  const again = socketFromFd(end.aToB, true);
  again.pause();
  const { code, message } = native.errnoText(end.err);
  // What the client sent first already went towards the guest: it cannot take another path.
  if (end.flags & RELAY_CONSUMED && !(end.flags & RELAY_STATUS_REFUSED)) resetSocket(again);
  if (end.flags & RELAY_STATUS_REFUSED) return { again, err: new RefusedByPeer(`${name} answered that its target refused`) };
  const why = code === "ETIMEDOUT" ? `no answer in ${timeoutMs} ms` : end.flags & RELAY_NO_STATUS ? `it closed without an answer (${code})` : `${message} (${code})`;
  return { again, err: Object.assign(new Error(`cannot connect to ${name}: ${why}`), { code }) };
}

export interface NativeAccept {
  /** Sets where the forward's next clients are dialled in the relay thread (undefined: none, they come to onHandoff). */
  setTarget(target: ForwardTarget | undefined): void;
  close(): void;
  /** Clients dialled in the relay thread, and clients handed to JavaScript. */
  stats(): { carried: number; handed: number };
}

/** How many targets of one listener are remembered for the records of clients still dialling. */
const TARGETS_KEPT = 64;

/**
 * Accepts on a listening server's socket in the relay thread too (through its own dup) while
 * a target is set: its clients are dialled there, to the guest's data endpoint (header, status
 * byte and all) or directly to the guest's address, and JavaScript hears only `onDialed` (a
 * stand-in socket whose relayedBytes/whenOver/dropConnection work as for any handed
 * connection, and the target it was dialled to); on a failed dial (`onFailed`) or when the
 * relay cannot take one (`onHandoff`) the client comes back as a socket.
 * Undefined where the native relay cannot do it (the server alone accepts).
 */
export function acceptNatively(
  server: net.Server,
  timeoutMs: number,
  on: {
    onHandoff(socket: net.Socket): void;
    onDialed(connection: net.Socket, target: ForwardTarget | undefined): void;
    onFailed(err: NodeJS.ErrnoException, again: net.Socket, target: ForwardTarget | undefined): void;
    onAcceptFailed(err: NodeJS.ErrnoException): void;
  },
): NativeAccept | undefined {
  const native = usableLoop();
  const fd = listenerFd(server);
  if (!native || fd === undefined) return undefined;
  // Where the runtime can stop accepting (Bun), the relay thread alone accepts: its server,
  // woken by the same client, would otherwise take the ones it reaches first (the runtime's
  // thread gets there first whenever it is awake for other work: a third of them and more).
  const alone = canStopAccepting(server);
  /** The targets set, by the number the relay thread gave each (its records name it). */
  const targets = new Map<number, ForwardTarget>();
  let id: number;
  try {
    id = native.forwardListen(fd, copyMode, timeoutMs, {
      handoff: (conn) => native.adopt(conn, on.onHandoff),
      dialed: (relay, number) => {
        // A stand-in for the client's socket: the relay owns the connection.
        const stand = { closed: true, destroyed: true, destroy() {} } as unknown as net.Socket;
        const h: Handed = { id: relay, sideA: true, baseRead: 0, baseWritten: 0, waiters: [] };
        handed.set(stand, h);
        acceptedNatively++;
        on.onDialed(stand, targets.get(number));
        return (end) => {
          if (end.flags & RELAY_RESET) resets++;
          h.end = end;
          for (const w of h.waiters.splice(0)) w();
        };
      },
      failed: (end, number) => {
        const target = targets.get(number);
        const name = !target ? "the guest" : "path" in target ? `unix://${target.path}` : `tcp://${target.host.includes(":") ? `[${target.host}]` : target.host}:${target.port}`;
        const { again, err } = handedBack(end, native, name, target?.timeoutMs ?? timeoutMs);
        acceptHandedBack++;
        on.onFailed(err, again, target);
      },
      acceptFailed: (err) => {
        const { code, message } = native.errnoText(err);
        on.onAcceptFailed(Object.assign(new Error(message), { code }));
      },
    }, alone);
  } catch (err) {
    // e.g. all listener slots taken: the server keeps accepting in JavaScript
    sayOnce("accept", `a forward's clients are accepted by the runtime, not the relay thread (${(err as Error).message}): each costs the event loop a wake-up more; the bytes still go natively`);
    return undefined;
  }
  // Alone: the thread holds its own dup of the socket, so the runtime's fd can go; clients it
  // does not dial (no target set) come to onHandoff as sockets. Otherwise (Node) the server
  // keeps accepting too, and while a target is set whichever takes a client first carries it.
  if (alone) stopAccepting(server);
  return {
    setTarget(target) {
      const number = native.forwardTarget(id, target);
      if (!target) return;
      targets.set(number, target);
      if (targets.size > TARGETS_KEPT) targets.delete(targets.keys().next().value!);
    },
    close: () => native.dataUnlisten(id),
    stats: () => native.dataListenerStats(id),
  };
}

/** Runs `fn` once the socket closed and the connection it carried is over (see afterRelay). */
export function whenOver(socket: net.Socket, fn: () => void): void {
  if (socket.closed) return afterRelay(socket, fn);
  socket.once("close", () => afterRelay(socket, fn));
}

/** Bytes a socket has read and written, including what the native relay moved for it. */
export function relayedBytes(socket: net.Socket): { read: number; written: number } {
  const h = handed.get(socket);
  if (!h) return { read: socket.bytesRead, written: socket.bytesWritten };
  if (h.successor) {
    const next = relayedBytes(h.successor);
    return { read: h.baseRead + next.read, written: h.baseWritten + next.written };
  }
  const elsewhere = h.moved?.();
  const moved = h.end ?? (elsewhere ? { aToB: elsewhere.read, bToA: elsewhere.written } : loop?.progress(h.id)) ?? { aToB: 0, bToA: 0 };
  const [read, written] = h.sideA ? [moved.aToB, moved.bToA] : [moved.bToA, moved.aToB];
  return { read: h.baseRead + read, written: h.baseWritten + written };
}

/**
 * A socket whose fd a native mover other than the relay thread took (a UDP flow's pump): its
 * counts (relayedBytes, whenOver) follow `moved` (bytes read and written since) until the
 * returned function is called at its end.
 */
export function handedElsewhere(socket: net.Socket, moved: () => { read: number; written: number }): () => void {
  const h: Handed = { id: -1, sideA: true, baseRead: socket.bytesRead, baseWritten: socket.bytesWritten, waiters: [], moved };
  handed.set(socket, h);
  return () => {
    if (h.end) return;
    const m = moved();
    h.end = { flags: 0, err: 0, aToB: m.read, bToA: m.written };
    for (const w of h.waiters.splice(0)) w();
  };
}

/** Bytes the runtime read for a paused socket and did not deliver yet (they go to whoever takes its fd). */
export function unreadBytes(socket: net.Socket): Buffer {
  return drain(socket);
}

/** Runs `fn` once the connection is over: at once for a socket the native relay never took. */
export function afterRelay(socket: net.Socket, fn: () => void): void {
  const h = handed.get(socket);
  if (h?.successor) return whenOver(h.successor, fn);
  if (!h || h.end) return fn();
  h.waiters.push(fn);
}

/** Resets a connection now, both of its sockets, wherever its bytes move. */
export function resetConnection(socket: net.Socket, other: net.Socket): void {
  const h = handed.get(socket) ?? handed.get(other);
  if (h?.successor) return resetConnection(h.successor, h.successor);
  if (h && !h.end) return void loop?.abort(h.id);
  // The client first: once the other side is gone, a JavaScript relay could take the close for an EOF.
  resetSocket(socket);
  resetSocket(other);
}

/**
 * Resets every connection the relay thread holds (relaying, or still dialling for a listener)
 * and resolves once it did, or after `ms`: an agent that exits first would leave the kernel to
 * close those sockets, with a FIN, as if their transfers were complete.
 */
export async function resetAllRelays(ms: number): Promise<void> {
  if (!loop || loop.broken) return;
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([loop.abortAll(), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

/** Ends a connection now (a reset), wherever its bytes move. */
export function dropConnection(socket: net.Socket): void {
  const h = handed.get(socket);
  if (h?.successor) return dropConnection(h.successor);
  if (h && !h.end) loop?.abort(h.id);
  resetSocket(socket); // not a FIN: a client cut off mid-transfer must not take it for the end
}

export type { ForwardTarget, RelayStatus };

export function relayStatus(): RelayStatus {
  const totals = loop?.totals() ?? { relays: 0, spliced: 0, copied: 0 };
  return {
    mode: fallbackReason ? "javascript" : copyMode ? "native-copy" : "native",
    ...(fallbackReason ? { reason: fallbackReason } : {}),
    nativeRelays: totals.relays,
    open: loop?.openRelays() ?? 0,
    bytesSpliced: totals.spliced,
    bytesCopied: totals.copied,
    acceptedNatively,
    acceptHandedBack,
    recordReads: loop?.recordReads ?? 0,
    javascriptRelays,
    resets,
  };
}
