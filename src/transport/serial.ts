// The guest side of a virtio-serial port: one long-lived byte stream that carries a whole
// agent connection. The device is opened once, read and written through file streams (a
// write blocks in the thread pool while no host is attached; `net.Socket({fd})` does not
// read from such a port under Bun), and joined to a socketpair whose other end is handed
// over as an ordinary socket. EOF means the host went away: the connection is dropped and
// the port opened again for the next one.
import { openSync, closeSync, createReadStream, createWriteStream } from "node:fs";
import type * as net from "node:net";
import { loadNative } from "../runtime/native.ts";
import { socketPair } from "./socketpair.ts";

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
    const reader = createReadStream("", { fd, autoClose: false, highWaterMark: 64 * 1024 });
    const writer = createWriteStream("", { fd, autoClose: false });
    reader.pipe(outer);
    outer.pipe(writer);
    const session = { fd, inner, outer };
    current = session;
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
        try {
          closeSync(fd);
        } catch {
          // already closed
        }
        if (current === session) current = undefined;
        reopen(REOPEN_MS);
      });
    };
    reader.once("end", end); // the host went away
    reader.once("error", end);
    writer.once("error", end);
    inner.once("close", end);
    onConnection(inner);
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

/** Resolves once a destroyed stream has closed (at once if it already has). */
function streamClosed(stream: { closed?: boolean; once(event: "close", listener: () => void): unknown }): Promise<void> {
  return stream.closed ? Promise.resolve() : new Promise((resolve) => stream.once("close", () => resolve()));
}
