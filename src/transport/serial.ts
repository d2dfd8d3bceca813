// The guest side of a virtio-serial port: one long-lived byte stream that carries a whole
// agent connection. The device is joined to a socketpair whose other end is handed over as an
// ordinary socket (`net.Socket({fd})` does not read from such a port under Bun). The shim's
// relay thread moves the bytes between the two (non-blocking read/write on the port, woken by
// epoll); without it, file streams do, through the runtime's thread pool (a write blocks there
// while no host is attached). EOF means the host went away: its connection is dropped and the
// next host's is served on the same open device.
//
// The device stays open across hosts: closing a virtio-serial port throws away what the
// kernel has queued on it (virtio_console's release discards the port's data), and a host
// that reconnects at once may already have sent its first bytes. Only a device that died (a
// pty whose far end closed, an unplugged port) or a path that now names another device is
// opened again by path.
import { openSync, closeSync, createReadStream, createWriteStream, fstatSync, statSync } from "node:fs";
import type * as net from "node:net";
import { loadNative } from "../runtime/native.ts";
import { POLL, type NativeShim } from "../runtime/native-api.ts";
import { joinDevice } from "./fast-relay.ts";
import { socketPair } from "./socketpair.ts";
import { serveSessions } from "./serial-sessions.ts";

/** How often a port with no host attached is looked at again (only while none is). */
const NO_HOST_MS = 200;
/** How often a device that cannot be opened is tried again. */
const REOPEN_MS = 1000;

export interface SerialPort {
  close(): void;
}

interface OpenDevice {
  fd: number;
  dev: number;
  ino: number;
  rdev: number;
}

export async function serveSerial(path: string, onConnection: (socket: net.Socket) => void, log: (line: string) => void): Promise<SerialPort> {
  const { shim, error } = await loadNative();
  if (!shim) throw new Error(`a serial port needs the native shim (for a socketpair), which did not load: ${error}`);
  let closed = false;
  let device: OpenDevice | undefined;
  let current: Session | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let saidStreams = false;
  /** The last reason the device could not be opened, said once until it opens. */
  let openFailure: string | undefined;

  const serveAgainIn = (ms: number) => (timer = setTimeout(serveNextOrRetry, ms));
  /** serveNext, from a timer or a session's end: whatever it throws is said and tried again, never left to end the agent. */
  const serveNextOrRetry = () =>
    void serveNext().catch((err: Error) => {
      log(`serial ${path}: ${err.message}; trying again in ${REOPEN_MS / 1000} s`);
      serveAgainIn(REOPEN_MS);
    });
  const closeDevice = () => {
    if (device) closeQuietly(device.fd);
    device = undefined;
  };
  /** Serves the next host on the device once one is attached, opening the device if need be. */
  const serveNext = async () => {
    if (closed) return;
    const whyReopen = device && whyNotServing(shim, device, path);
    if (whyReopen) {
      log(`serial ${path}: ${whyReopen}; opening it again`);
      closeDevice();
    }
    if (!device) {
      try {
        device = openDevice(path);
      } catch (err) {
        serveAgainIn(REOPEN_MS); // the device may appear later (or the host re-attach)
        const reason = (err as Error).message;
        if (reason !== openFailure) log(`serial ${path}: ${reason}; trying again every ${REOPEN_MS / 1000} s`);
        openFailure = reason;
        return;
      }
      if (openFailure !== undefined) log(`serial ${path}: opened`);
      openFailure = undefined;
    }
    const events = shim.pollNow(device.fd);
    if (events >= 0 && events & POLL.HUP) return void serveAgainIn(NO_HOST_MS); // no host attached yet
    let pair: [net.Socket, net.Socket];
    try {
      pair = (await socketPair())!; // the agent's side, and the side joined to the device
    } catch (err) {
      log(`serial ${path}: cannot serve the next host: ${(err as Error).message}; trying again in ${REOPEN_MS / 1000} s`);
      return void serveAgainIn(REOPEN_MS);
    }
    const [inner, outer] = pair;
    if (closed) return void (inner.destroy(), outer.destroy());
    const session = { fd: device.fd, inner, outer };
    current = session;
    const started = Date.now();
    const over = () => {
      if (current === session) current = undefined;
      if (closed) return closeDevice(); // only now: no read or write of the session's is left on it
      // A session over at once (a device that reads EOF without saying why, such as a plain
      // file) waits before the next: it would otherwise start again in a tight loop.
      if (Date.now() - started < NO_HOST_MS) serveAgainIn(NO_HOST_MS);
      else serveNextOrRetry();
    };
    const notJoined = joinNatively(session, over);
    if (notJoined !== undefined) {
      if (!saidStreams) log(`degraded: serial ${path} is relayed through file streams in the runtime's thread pool, which costs more CPU per byte: ${notJoined}`);
      saidStreams = true;
      // The relay thread may have served earlier hosts on this file and left it non-blocking
      // (the flag belongs to the open file, shared with its dups); file streams need it blocking.
      const blocking = shim.setBlocking(session.fd);
      if (blocking < 0) log(`serial ${path}: the port could not be made blocking for file streams (${shim.strerror(blocking)}); its reads may fail and end each host's session`);
      joinWithStreams(session, over);
    }
    serveSessions(inner, onConnection, `serial ${path}`, log);
  };
  await serveNext();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      if (current) current.inner.destroy(); // its end closes the device
      else closeDevice();
    },
  };
}

function openDevice(path: string): OpenDevice {
  const fd = openSync(path, "r+");
  try {
    const { dev, ino, rdev } = fstatSync(fd);
    return { fd, dev, ino, rdev };
  } catch (err) {
    closeQuietly(fd);
    throw err;
  }
}

/**
 * Why the open device cannot serve another host, if it cannot: it died (a hung-up pty reports
 * an error, an unplugged port a hang-up with nothing to read) or the path names another one.
 */
function whyNotServing(shim: NativeShim, device: OpenDevice, path: string): string | undefined {
  const events = shim.pollNow(device.fd);
  if (events < 0 || events & (POLL.ERR | POLL.NVAL) || (events & POLL.HUP && !(events & POLL.IN))) return "the device went away";
  try {
    const now = statSync(path);
    if (now.dev !== device.dev || now.ino !== device.ino || now.rdev !== device.rdev) return "the path now names another device";
  } catch (err) {
    return `the path is gone (${(err as Error).message})`;
  }
  return undefined;
}

interface Session {
  fd: number;
  inner: net.Socket;
  outer: net.Socket;
}

/** In the relay thread; `over` once the relay let go of the device. Where the relay cannot run, why not. */
function joinNatively(session: Session, over: () => void): string | undefined {
  let ended = false;
  const relay = joinDevice(session.fd, session.outer, () => {
    if (ended) return;
    ended = true;
    session.inner.destroy();
    over(); // the relay closed its copy of the fd; the device itself stays open
  });
  if ("notJoined" in relay) return relay.notJoined;
  // The relay holds its own copies of both fds (the device's own stays open for the next host).
  session.outer.destroy();
  session.inner.once("close", () => relay.abort());
  return undefined;
}

/** Through file streams (reads and writes in the runtime's thread pool). */
function joinWithStreams(session: Session, over: () => void): void {
  const { fd, inner, outer } = session;
  const reader = createReadStream("", { fd, autoClose: false, highWaterMark: 64 * 1024 });
  const writer = createWriteStream("", { fd, autoClose: false });
  reader.pipe(outer);
  outer.pipe(writer);
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    reader.destroy();
    writer.destroy();
    inner.destroy();
    outer.destroy();
    // The next host is served only once both streams have closed: a stream closes after its
    // last thread-pool read or write on the fd returned, so no read of this one takes its bytes.
    void Promise.all([streamClosed(reader), streamClosed(writer)]).then(over);
  };
  reader.once("end", end); // the host went away
  reader.once("error", end);
  writer.once("error", end);
  inner.once("close", end);
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

/** Resolves once a destroyed stream has closed (at once if it already has). */
function streamClosed(stream: { closed?: boolean; once(event: "close", listener: () => void): unknown }): Promise<void> {
  return stream.closed ? Promise.resolve() : new Promise((resolve) => stream.once("close", () => resolve()));
}
