// The lean multiplexer's wire format: many forwarded connections (and the agents' own gRPC
// connection) over ONE agent stream, where the agent channel is a single stream
// (virtio-serial, tcp:// with a token) and no per-connection data path exists. Between two
// porthole agents only; a stock Lima peer never sees it. No I/O here.
//
// How the agents agree, on the stream itself: the host opens the agent connection with a
// probe that is a valid HTTP/2 start: the client preface and a SETTINGS frame whose one
// setting has an identifier HTTP/2 tells every peer to ignore (RFC 9113 §6.5.2). A stock
// HTTP/2 server (Lima's grpc-go, grpc C-core, an older porthole) must send SETTINGS as its
// first frame (§3.4) and ignores the setting; a porthole guest recognises the exact probe and
// answers MUX_ACCEPT instead, after which both directions carry mux frames. No PING: a stock
// peer sees nothing but an ordinary connection start.
//
// A frame: stream id (u32), kind (u8), length (u32), then `length` bytes.
//   OPEN     host -> guest: the target, "tcp HOST:PORT", "unix /path" or "agent" (the gRPC server)
//   OPENED   guest -> host: the target accepted
//   REFUSED  guest -> host: it did not (the text says why); the stream is over
//   DATA     bytes, counted against the receiver's credit for that stream
//   EOF      the sender sends no more on this stream (half-close); the other way goes on
//   RESET    the stream is aborted both ways (a reset, never taken for an EOF)
//   CREDIT   4 bytes: how many more DATA bytes the sender of CREDIT can take on this stream
export const MUX_HEADER_BYTES = 9;
/** The largest frame payload; a length above it is garbage and ends the session. */
export const MUX_MAX_FRAME = 1 << 20;
/** Each stream's initial credit, each way: what may wait between the two sockets of a stream. */
export const MUX_WINDOW = 2 << 20;

export const MuxKind = { OPEN: 1, OPENED: 2, REFUSED: 3, DATA: 4, EOF: 5, RESET: 6, CREDIT: 7 } as const;
export type MuxKindName = keyof typeof MuxKind;
const KIND_NAMES = new Map(Object.entries(MuxKind).map(([name, kind]) => [kind as number, name as MuxKindName]));

export const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/** A SETTINGS identifier no HTTP/2 peer knows ("PH"), and its value (the mux version). */
const PROBE_SETTING = 0x5048;
const PROBE_VERSION = 1;
const H2_SETTINGS = 0x4;
const H2_ACK = 0x1;
/** Not an HTTP/2 frame type in use; only a porthole host that probed ever reads it. */
const ACCEPT_TYPE = 0xf1;

/** An HTTP/2 frame on stream 0 (the probe's SETTINGS, and what tests build). */
export function h2Frame(type: number, flags: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(9 + payload.length);
  b.writeUIntBE(payload.length, 0, 3);
  b[3] = type;
  b[4] = flags;
  payload.copy(b, 9);
  return b;
}

function probeSetting(): Buffer {
  const p = Buffer.alloc(6);
  p.writeUInt16BE(PROBE_SETTING, 0);
  p.writeUInt32BE(PROBE_VERSION, 2);
  return p;
}

/** What the host sends first on an agent connection that may become a mux. */
export const MUX_PROBE = Buffer.concat([HTTP2_PREFACE, h2Frame(H2_SETTINGS, 0, probeSetting())]);
/** A porthole guest's answer to the probe; mux frames follow it. */
export const MUX_ACCEPT = h2Frame(ACCEPT_TYPE, 0, Buffer.from("porthole-mux/1"));

export function muxFrame(id: number, kind: number, payload?: Buffer): Buffer {
  const b = Buffer.allocUnsafe(MUX_HEADER_BYTES + (payload?.length ?? 0));
  b.writeUInt32BE(id >>> 0, 0);
  b[4] = kind;
  b.writeUInt32BE(payload?.length ?? 0, 5);
  payload?.copy(b, MUX_HEADER_BYTES);
  return b;
}

/** A DATA frame's header alone (the bytes follow as their own buffer: no copy). */
export function muxDataHeader(id: number, length: number): Buffer {
  const b = Buffer.allocUnsafe(MUX_HEADER_BYTES);
  b.writeUInt32BE(id >>> 0, 0);
  b[4] = MuxKind.DATA;
  b.writeUInt32BE(length, 5);
  return b;
}

export function creditFrame(id: number, bytes: number): Buffer {
  const p = Buffer.allocUnsafe(4);
  p.writeUInt32BE(bytes >>> 0);
  return muxFrame(id, MuxKind.CREDIT, p);
}

export type MuxItem =
  | { kind: "DATA"; id: number; data: Buffer }
  | { kind: Exclude<MuxKindName, "DATA">; id: number; payload: Buffer }
  | { kind: "bad"; reason: string };

/**
 * Mux frames back out of received bytes. DATA comes out as views of the input, as soon as it
 * arrives (a frame need not be complete); the other kinds once whole. After a bad frame it
 * yields nothing more.
 */
export class MuxDecoder {
  private header: Buffer = Buffer.alloc(0);
  private id = 0;
  private kind = 0;
  /** Bytes of the current frame still to come. */
  private remaining = 0;
  private control: Buffer[] = [];
  private broken = false;

  push(chunk: Buffer, out: MuxItem[] = []): MuxItem[] {
    let at = 0;
    while (at < chunk.length && !this.broken) {
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, chunk.length - at);
        const piece = chunk.subarray(at, at + n);
        this.remaining -= n;
        at += n;
        if (this.kind === MuxKind.DATA) out.push({ kind: "DATA", id: this.id, data: piece });
        else {
          this.control.push(piece);
          if (this.remaining === 0) this.emitControl(out);
        }
        continue;
      }
      const need = MUX_HEADER_BYTES - this.header.length;
      const take = chunk.subarray(at, at + need);
      at += take.length;
      this.header = this.header.length ? Buffer.concat([this.header, take]) : take;
      if (this.header.length < MUX_HEADER_BYTES) break;
      this.id = this.header.readUInt32BE(0);
      this.kind = this.header[4]!;
      this.remaining = this.header.readUInt32BE(5);
      this.header = Buffer.alloc(0);
      if (!KIND_NAMES.has(this.kind)) return this.bad(out, `unknown frame kind ${this.kind}`);
      if (this.remaining > MUX_MAX_FRAME) return this.bad(out, `a frame of ${this.remaining} bytes (at most ${MUX_MAX_FRAME})`);
      if (this.kind === MuxKind.DATA && this.remaining === 0) return this.bad(out, "an empty DATA frame");
      if (this.kind === MuxKind.CREDIT && this.remaining !== 4) return this.bad(out, "a CREDIT frame that is not 4 bytes");
      if (this.remaining === 0) this.emitControl(out);
    }
    return out;
  }

  private emitControl(out: MuxItem[]): void {
    const payload = this.control.length === 1 ? this.control[0]! : Buffer.concat(this.control);
    this.control = [];
    out.push({ kind: KIND_NAMES.get(this.kind) as Exclude<MuxKindName, "DATA">, id: this.id, payload });
  }

  private bad(out: MuxItem[], reason: string): MuxItem[] {
    this.broken = true;
    out.push({ kind: "bad", reason });
    return out;
  }
}

export type MuxTarget = { kind: "agent" } | { kind: "tcp"; address: string } | { kind: "unix"; path: string };

export function formatMuxTarget(t: MuxTarget): string {
  return t.kind === "agent" ? "agent" : t.kind === "tcp" ? `tcp ${t.address}` : `unix ${t.path}`;
}

export function parseMuxTarget(text: string): MuxTarget | { error: string } {
  if (text === "agent") return { kind: "agent" };
  const space = text.indexOf(" ");
  const [kind, rest] = space < 0 ? [text, ""] : [text.slice(0, space), text.slice(space + 1)];
  if (kind === "tcp" && rest) return { kind: "tcp", address: rest };
  if (kind === "unix" && rest.startsWith("/")) return { kind: "unix", path: rest };
  return { error: `not a target: ${JSON.stringify(text.slice(0, 100))}` };
}

/** What the host keeps of an agent's answer to the probe before the SETTINGS ACK must have come. */
export const MAX_PROBE_ANSWER_BYTES = 64 * 1024;

/**
 * The host's reading of the first frames after the probe. MUX_ACCEPT first: a porthole guest
 * (the bytes after it are mux frames). SETTINGS first: a stock HTTP/2 server, whose frames go
 * on to grpc-js, except the ACK of the probe's SETTINGS (grpc-js never sent those): the
 * server's first SETTINGS ACK, and the probe is over once it came.
 */
export class ProbeReader {
  private buf: Buffer = Buffer.alloc(0);
  /** Chunks not yet joined to `buf`: joined once they complete what the next frame needs (a byte at a time must not copy `buf` each time). */
  private waiting: Buffer[] = [];
  private waitingBytes = 0;
  private need = 9;
  private first = true;
  /** The stock server's frames for grpc-js, in order. */
  private kept: Buffer[] = [];
  private keptBytes = 0;

  push(chunk: Buffer): { state: "more" } | { state: "accepted"; rest: Buffer } | { state: "stock"; pass: Buffer; rest: Buffer } | { state: "bad"; reason: string } {
    // A stock server sends ~100 bytes before its ACK (its SETTINGS, a WINDOW_UPDATE): a peer
    // that sends much more without one is held to a bound, not kept until the probe times out.
    if (this.keptBytes + this.buf.length + this.waitingBytes + chunk.length > MAX_PROBE_ANSWER_BYTES) {
      return { state: "bad", reason: `the agent sent more than ${MAX_PROBE_ANSWER_BYTES / 1024} KiB without acknowledging the probe's SETTINGS` };
    }
    this.waiting.push(chunk);
    this.waitingBytes += chunk.length;
    if (this.buf.length + this.waitingBytes < this.need) return { state: "more" };
    this.buf = this.buf.length || this.waiting.length > 1 ? Buffer.concat([this.buf, ...this.waiting]) : chunk;
    this.waiting = [];
    this.waitingBytes = 0;
    this.need = 9;
    let at = 0;
    while (this.buf.length - at >= 9) {
      const length = this.buf.readUIntBE(at, 3);
      const type = this.buf[at + 3]!;
      const flags = this.buf[at + 4]!;
      if (this.first) {
        if (type === ACCEPT_TYPE && this.buf.length >= MUX_ACCEPT.length) {
          if (!this.buf.subarray(0, MUX_ACCEPT.length).equals(MUX_ACCEPT)) return { state: "bad", reason: "a malformed answer to the mux probe" };
          return { state: "accepted", rest: this.buf.subarray(MUX_ACCEPT.length) };
        }
        if (type !== ACCEPT_TYPE && (type !== H2_SETTINGS || flags & H2_ACK)) return { state: "bad", reason: "the agent did not start its answer with HTTP/2 SETTINGS" };
      }
      if (this.buf.length - at < 9 + length) {
        this.need = 9 + length;
        break;
      }
      this.first = false;
      const frame = this.buf.subarray(at, at + 9 + length);
      at += 9 + length;
      if (type === H2_SETTINGS && flags & H2_ACK) {
        return { state: "stock", pass: Buffer.concat(this.kept), rest: this.buf.subarray(at) };
      }
      this.kept.push(Buffer.from(frame));
      this.keptBytes += frame.length;
    }
    this.buf = Buffer.from(this.buf.subarray(at));
    return { state: "more" };
  }
}
