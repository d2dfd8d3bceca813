// The host's end of an agent channel that is one stream (a virtio-serial port's chardev
// socket, tcp:// with a token): grpc-js dials a private unix socket, and each of its
// connections becomes one agent connection opened with the mux probe (core/mux-frames.ts).
// A porthole guest answers it: the stream becomes a lean-mux session whose first stream
// carries grpc-js's connection, and forwarded connections open streams beside it
// (`open`). A stock peer (Lima's agent, an older porthole) answers it as HTTP/2: its answers
// to the probe are taken out, grpc-js's own preface too, and the connection goes on as plain
// gRPC, joined natively. Either way grpc-js sees an ordinary HTTP/2 connection.
import * as net from "node:net";
import { logText } from "../core/log-text.ts";
import { HTTP2_PREFACE, MUX_PROBE, ProbeReader } from "../core/mux-frames.ts";
import type { TransportAddress } from "../core/transport-address.ts";
import { privateUnixListener, type ClientTarget } from "../transport/client-target.ts";
import { dialTransport } from "../transport/dial.ts";
import { joinSockets } from "../transport/fast-relay.ts";
import { MuxSession, type MuxTotals } from "../transport/lean-mux.ts";
import { tokenLine } from "../transport/token.ts";
import { resetSocket } from "../transport/tunnel-relay.ts";

const DIAL_TIMEOUT_MS = 5000;
const PROBE_TIMEOUT_MS = 5000;

export interface MuxLinkEvents {
  /** The multiplexer became usable (a porthole guest took it) or not (a stock peer), with why: said on changes only. */
  changed(usable: boolean, reason: string): void;
  /** The agent connection broke the protocol (grpc-js connects again). */
  failed(message: string): void;
}

/**
 * Is the agent channel one stream? TCP, and a unix socket that is there without a porthole
 * data endpoint beside it: a QEMU chardev (or an SSH-forwarded agent socket). A socket not
 * there yet is left to plain gRPC: it may be a porthole guest agent's, which is not one stream.
 */
export function singleStream(address: TransportAddress, exists: (path: string) => boolean): boolean {
  if (address.kind === "tcp") return true;
  return address.kind === "unix" && exists(address.path) && !exists(`${address.path}.data`);
}

export class MuxLink {
  private readonly relay: ClientTarget;
  private lastDialError: string | undefined;
  private current: MuxSession | undefined;
  private readonly events: MuxLinkEvents;
  private usable: boolean | undefined;
  /** Totals of the sessions already over (the current one's are added on read). */
  private readonly past: MuxTotals = { streams: 0, open: 0, sent: 0, received: 0 };

  /** Protocol failures already said (a guest that keeps failing the same way is said once). */
  private readonly said = new Set<string>();

  constructor(
    private readonly address: Extract<TransportAddress, { kind: "unix" | "tcp" }>,
    events: MuxLinkEvents,
    private readonly token?: string,
  ) {
    this.events = {
      changed: events.changed,
      failed: (message) => {
        if (this.said.has(message) || this.said.size > 100) return;
        this.said.add(message);
        events.failed(message);
      },
    };
    // Each grpc-js connection: a fresh agent connection, probed.
    this.relay = privateUnixListener((local) => {
      local.on("error", () => {}); // its session or join resets the far side
      this.connect(local).catch((err: Error) => {
        this.events.failed(err.message);
        local.destroy();
      });
    }, (message) => this.events.failed(message));
  }

  /** For grpc-js: `unix:///…`. */
  get target(): string {
    return this.relay.target;
  }

  /** Why the last dial of the agent channel failed (until one succeeds). */
  dialError(): string | undefined {
    return this.lastDialError;
  }

  /** The live session, if a porthole guest took the multiplexer on the current connection. */
  get session(): MuxSession | undefined {
    return this.current && !this.current.isClosed ? this.current : undefined;
  }

  totals(): MuxTotals {
    const now = this.session?.totals;
    return {
      streams: this.past.streams + (now?.streams ?? 0),
      open: now?.open ?? 0,
      sent: this.past.sent + (now?.sent ?? 0),
      received: this.past.received + (now?.received ?? 0),
    };
  }

  close(): void {
    this.relay.close();
    this.current?.close("the host agent stopped");
  }

  private async dial(): Promise<net.Socket> {
    const socket = await dialTransport(this.address, DIAL_TIMEOUT_MS, { allowHalfOpen: true });
    if (this.address.kind === "tcp") socket.write(tokenLine(this.token ?? ""));
    return socket;
  }

  private async connect(local: net.Socket): Promise<void> {
    local.pause();
    let raw: net.Socket;
    try {
      raw = await this.dial();
      this.lastDialError = undefined;
    } catch (err) {
      // Nothing answers: grpc-js sees its connection fail, and the guest connection says so
      // with this error (grpc-js itself only sees the private socket close).
      this.lastDialError = (err as Error).message;
      return void local.destroy();
    }
    if (local.destroyed) return void raw.destroy();
    raw.write(MUX_PROBE);
    const reader = new ProbeReader();
    const answer = await new Promise<ReturnType<ProbeReader["push"]>>((resolve) => {
      const done = (a: ReturnType<ProbeReader["push"]>) => {
        clearTimeout(timer);
        raw.off("data", onData);
        raw.off("close", onClose);
        raw.pause();
        resolve(a);
      };
      const onData = (chunk: Buffer) => {
        const a = reader.push(chunk);
        if (a.state !== "more") done(a);
      };
      const onClose = () => done({ state: "bad", reason: "the agent connection closed during the probe" });
      const timer = setTimeout(() => done({ state: "bad", reason: `no answer to the probe within ${PROBE_TIMEOUT_MS / 1000} s` }), PROBE_TIMEOUT_MS);
      raw.on("data", onData);
      raw.once("close", onClose);
      raw.on("error", () => {});
    });
    if (answer.state === "more") return; // never: resolved only with an answer
    if (answer.state === "bad") {
      raw.destroy();
      throw new Error(`agent connection: ${answer.reason}`);
    }
    if (local.destroyed) return void raw.destroy();
    if (answer.state === "accepted") return this.multiplex(local, raw, answer.rest);
    this.say(false, "the guest agent does not offer porthole's lean multiplexer (a stock Lima agent, or an older porthole): forwarded connections go through gRPC tunnels; run `porthole guest` in the guest to get it");
    try {
      await stripPreface(local, raw);
    } catch (err) {
      raw.destroy(); // the agent channel may take one client at a time (a QEMU chardev): never left open
      throw err;
    }
    local.write(Buffer.concat([answer.pass, answer.rest]));
    joinSockets(local, raw);
  }

  private async multiplex(local: net.Socket, raw: net.Socket, rest: Buffer): Promise<void> {
    this.retire();
    const session = new MuxSession(raw, "host", {
      // The guest going away is the ordinary end (grpc-js reconnects); a broken format is said.
      onClose: (reason) => reason.startsWith("the agent stream") || this.events.failed(`closed the multiplexed agent connection: ${reason}; its connections were reset`),
    }, rest);
    this.current = session;
    try {
      const id = await session.open("agent");
      session.attach(id, local);
    } catch (err) {
      resetSocket(local);
      throw new Error(`the guest agent did not open the agent stream on the multiplexer (${logText((err as Error).message)})`);
    }
    this.say(true, "the agent channel is one stream: forwarded connections share it through porthole's lean multiplexer, each with its own flow control");
  }

  /** The previous session's totals join the past ones. */
  private retire(): void {
    const old = this.current;
    if (!old) return;
    this.past.streams += old.totals.streams;
    this.past.sent += old.totals.sent;
    this.past.received += old.totals.received;
    this.current = undefined;
    old.close("a new agent connection replaced it");
  }

  private say(usable: boolean, reason: string): void {
    if (this.usable === usable) return;
    this.usable = usable;
    this.events.changed(usable, reason);
  }
}

/** Reads grpc-js's 24-byte HTTP/2 preface off `local` (the probe sent one already) and passes on what follows. */
function stripPreface(local: net.Socket, raw: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      seen = Buffer.concat([seen, chunk]);
      if (seen.length < HTTP2_PREFACE.length) return;
      local.off("data", onData);
      local.pause();
      if (!seen.subarray(0, HTTP2_PREFACE.length).equals(HTTP2_PREFACE)) return reject(new Error("grpc-js did not start with the HTTP/2 preface"));
      const after = seen.subarray(HTTP2_PREFACE.length);
      if (after.length) raw.write(after);
      resolve();
    };
    local.on("data", onData);
    // (Half-open allowed: grpc-js going away is its EOF, and no close follows by itself.)
    const gone = () => reject(new Error("grpc-js closed its connection"));
    local.once("end", gone);
    local.once("close", gone);
    local.resume();
  });
}
