// The guest side of a virtio-serial port: one long-lived byte stream that carries a whole
// agent connection. The device is opened once and joined to a socketpair whose other end is
// handed over as an ordinary socket (`net.Socket({fd})` does not read from such a port under
// Bun). The shim's relay thread moves the bytes between the two (non-blocking read/write on
// the port, woken by epoll); without it, file streams do, through the runtime's thread pool
// (a write blocks there while no host is attached). EOF means the host went away: the
// connection is dropped and the port opened again for the next one.
import { openSync, closeSync, createReadStream, createWriteStream } from "node:fs";
import type * as net from "node:net";
import { loadNative } from "../runtime/native.ts";
import { joinDevice } from "./fast-relay.ts";
import { socketPair } from "./socketpair.ts";
import { serveSessions } from "./serial-sessions.ts";

const REOPEN_MS = 200;

export interface SerialPort {
  close(): void;
}

export async function serveSerial(path: string, onConnection: (socket: net.Socket) => void, log: (line: string) => void): Promise<SerialPort> {
  const { shim, error } = await loadNative();
  if (!shim) throw new Error(`a serial port needs the native shim (for a socketpair), which did not load: ${error}`);
  let closed = false;
  let current: { fd: number; inner: net.Socket; outer: net.Socket } | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let saidStreams = false;

  const reopen = (ms: number) => (timer = setTimeout(() => void open(), ms));
  const open = async () => {
    if (closed) return;
    let fd: number;
    try {
      fd = openSync(path, "r+");
    } catch (err) {
      reopen(REOPEN_MS * 5); // the device may appear later (or the host re-attach)
      return void log(`serial ${path}: ${(err as Error).message}; retrying`);
    }
    const [inner, outer] = (await socketPair())!; // the agent's side, and the side joined to the device
    const session = { fd, inner, outer };
    current = session;
    const over = () => {
      if (current === session) current = undefined;
      reopen(REOPEN_MS);
    };
    const notJoined = joinNatively(session, over);
    if (notJoined !== undefined) {
      if (!saidStreams) log(`degraded: serial ${path} is relayed through file streams in the runtime's thread pool, which costs more CPU per byte: ${notJoined}`);
      saidStreams = true;
      joinWithStreams(session, over);
    }
    serveSessions(inner, onConnection, `serial ${path}`, log);
  };
  await open();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      current?.inner.destroy();
    },
  };
}

interface Session {
  fd: number;
  inner: net.Socket;
  outer: net.Socket;
}

/** In the relay thread; `over` once the device is released. Where the relay cannot run, why not. */
function joinNatively(session: Session, over: () => void): string | undefined {
  let ended = false;
  const relay = joinDevice(session.fd, session.outer, () => {
    if (ended) return;
    ended = true;
    session.inner.destroy();
    over(); // the relay closed its copy of the fd: the port can be opened again
  });
  if ("notJoined" in relay) return relay.notJoined;
  // The relay holds its own copies of both fds.
  closeQuietly(session.fd);
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
    // The fd is closed only once both streams have closed: a stream closes after its last
    // thread-pool read or write on the fd returned, so no read can land on a reused fd number.
    void Promise.all([streamClosed(reader), streamClosed(writer)]).then(() => {
      closeQuietly(fd);
      over();
    });
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
