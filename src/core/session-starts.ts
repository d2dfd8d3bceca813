// Where a new host connection begins on a stream that outlives its hosts (a virtio-serial
// port: QEMU's flag for "a host is connected" can drop and rise again before the guest reads,
// so the next host's first bytes follow the last host's on the same open device). Every host
// connection opens with the HTTP/2 client preface (grpc-js, grpc-go, and porthole's mux probe,
// which is a valid HTTP/2 start). This follows the host's frames, HTTP/2's or the lean mux's,
// and marks a preface that stands where a frame header should: neither framing can start a
// frame with those bytes (HTTP/2: type 0x20 with a 5 MiB length; the mux: kind 0x2a). Where the
// frames cannot be followed (garbage, or a host killed mid-frame), it looks for the next
// preface anywhere. No I/O here.
import { HTTP2_PREFACE, MUX_HEADER_BYTES, MUX_MAX_FRAME, MUX_PROBE, MuxKind } from "./mux-frames.ts";

/** A mark among the bytes: what follows belongs to a new host connection. */
export const NEW_SESSION = Symbol("new session");
export type Segment = Buffer | typeof NEW_SESSION;

const HEADER_BYTES = MUX_HEADER_BYTES; // the mux's frame header, and HTTP/2's: 9 bytes each
const PREFACE_HEAD = HTTP2_PREFACE.subarray(0, HEADER_BYTES);
const MAX_MUX_KIND = Math.max(...Object.values(MuxKind));

type State =
  /** At a connection's start: the bytes so far (up to the mux probe's length) say which framing follows. */
  | { at: "start"; seen: Buffer }
  /**
   * Following frames; `skip` payload bytes still to pass; `header` a header's first bytes, held
   * back. `tail`: the frame's last bytes so far (a preface may begin there); `since`: a copy of
   * the frame's bytes from a preface found in it on (see stalled()).
   */
  | { at: "frames"; mux: boolean; skip: number; header: Buffer; tail: Buffer; since?: Buffer[]; sinceBytes: number }
  /** Lost: looking for the next preface; `held` the bytes that may be its beginning. */
  | { at: "lost"; held: Buffer };

/** The most kept after a preface inside an unfinished frame (a new host's first flight is far less). */
const MAX_CUT_BYTES = 64 * 1024;

function frames(mux: boolean): State {
  return { at: "frames", mux, skip: 0, header: Buffer.alloc(0), tail: Buffer.alloc(0), sinceBytes: 0 };
}

export class SessionStarts {
  private state: State = { at: "start", seen: Buffer.alloc(0) };

  /** The current connection's framing cannot be followed any more (its reader gave up on it): look for the next preface. */
  lose(): void {
    const s = this.state;
    // Bytes held back are looked through too: a preface may begin among them.
    if (s.at === "start") this.state = { at: "lost", held: s.seen };
    else if (s.at === "frames") this.state = { at: "lost", held: s.since ? Buffer.concat(s.since) : s.header };
  }

  /**
   * The chunk's bytes in order, cut where a new connection begins (NEW_SESSION, followed by
   * its bytes). A few bytes may be held back until the next chunk says what they are.
   */
  push(chunk: Buffer): Segment[] {
    const out: Segment[] = [];
    let rest = chunk;
    while (rest.length) rest = this.step(rest, out);
    return out;
  }

  /** Takes what it can of `bytes`, and returns the rest. */
  private step(bytes: Buffer, out: Segment[]): Buffer {
    const s = this.state;
    if (s.at === "start") {
      // Held back until it is clear which framing follows (within the client's first SETTINGS
      // frame, which it sends with the preface).
      const n = Math.min(bytes.length, MUX_PROBE.length - s.seen.length);
      const seen = Buffer.concat([s.seen, bytes.subarray(0, n)]);
      const rest = bytes.subarray(n);
      const p = Math.min(seen.length, HTTP2_PREFACE.length);
      if (!seen.subarray(0, p).equals(HTTP2_PREFACE.subarray(0, p))) {
        // Not a client's start: its reader refuses it; the next preface is a new connection.
        this.state = { at: "lost", held: Buffer.alloc(0) };
        return Buffer.concat([seen, rest]);
      }
      const m = Math.min(seen.length, MUX_PROBE.length);
      if (seen.length >= HTTP2_PREFACE.length && !seen.subarray(0, m).equals(MUX_PROBE.subarray(0, m))) {
        // Plain HTTP/2: its frames begin right after the preface.
        out.push(seen.subarray(0, HTTP2_PREFACE.length));
        this.state = frames(false);
        return Buffer.concat([seen.subarray(HTTP2_PREFACE.length), rest]);
      }
      if (m === MUX_PROBE.length) {
        out.push(seen);
        this.state = frames(true);
        return rest;
      }
      this.state = { at: "start", seen };
      return rest;
    }
    if (s.at === "frames") return this.frames(s, bytes, out);
    return this.lost(s, bytes, out);
  }

  private frames(s: Extract<State, { at: "frames" }>, bytes: Buffer, out: Segment[]): Buffer {
    if (s.skip) {
      const n = Math.min(s.skip, bytes.length);
      s.skip -= n;
      const piece = bytes.subarray(0, n);
      out.push(piece);
      if (s.skip) this.watchCut(s, piece);
      else this.state = frames(s.mux); // the frame is whole: whatever it carried was its payload
      return bytes.subarray(n);
    }
    const header = Buffer.concat([s.header, bytes.subarray(0, HEADER_BYTES - s.header.length)]);
    const used = header.length - s.header.length;
    if (header.length < HEADER_BYTES) {
      s.header = header; // held back: a header's first bytes may be a new connection's
      return bytes.subarray(used);
    }
    s.header = Buffer.alloc(0);
    if (header.equals(PREFACE_HEAD)) {
      out.push(NEW_SESSION);
      this.state = { at: "start", seen: Buffer.alloc(0) };
      return Buffer.concat([header, bytes.subarray(used)]);
    }
    const length = s.mux ? header.readUInt32BE(5) : header.readUIntBE(0, 3);
    if (s.mux && (header[4]! < 1 || header[4]! > MAX_MUX_KIND || length > MUX_MAX_FRAME)) {
      // Its reader ends the session on this; a preface may begin inside the bad header.
      this.state = { at: "lost", held: Buffer.alloc(0) };
      return Buffer.concat([header, bytes.subarray(used)]);
    }
    out.push(header);
    s.skip = length;
    if (length) this.watchCut(s, header);
    return bytes.subarray(used);
  }

  /**
   * Whether a preface was found inside a frame that has not ended: the bytes from it on are
   * kept, in case the frame's sender is gone (see stalled()).
   */
  get waiting(): boolean {
    return this.state.at === "frames" && this.state.since !== undefined;
  }

  /**
   * Nothing came for a while inside an unfinished frame that carries a preface: the last host
   * was killed mid-frame and the next one's first bytes were read as the rest of that frame
   * (a sender still there finishes its frame at once; the new host waits for an answer). The
   * bytes from that preface on start a new session. Called by the reader's timer.
   */
  stalled(): Segment[] {
    const s = this.state;
    if (s.at !== "frames" || !s.since) return [];
    const bytes = Buffer.concat(s.since);
    this.state = { at: "start", seen: Buffer.alloc(0) };
    return [NEW_SESSION, ...this.push(bytes)];
  }

  /** Looks for a preface in a frame's bytes (with the frame's last few before them), and keeps what follows one. */
  private watchCut(s: Extract<State, { at: "frames" }>, piece: Buffer): void {
    if (s.since) {
      s.since.push(Buffer.from(piece));
      s.sinceBytes += piece.length;
      // A new host sends a few hundred bytes and waits: this much more is a frame's own payload.
      if (s.sinceBytes > MAX_CUT_BYTES) {
        s.since = undefined;
        s.tail = Buffer.from(piece.subarray(Math.max(0, piece.length - (HTTP2_PREFACE.length - 1))));
      }
      return;
    }
    // A preface that begins in the tail is looked for in a small copy; the piece itself is
    // searched in place (no copy of the payload).
    const joint = s.tail.length ? Buffer.concat([s.tail, piece.subarray(0, HTTP2_PREFACE.length - 1)]) : undefined;
    const inJoint = joint ? joint.indexOf(HTTP2_PREFACE) : -1;
    const inPiece = inJoint >= 0 ? -1 : piece.indexOf(HTTP2_PREFACE);
    if (inJoint >= 0 || inPiece >= 0) {
      const from = inJoint >= 0 ? [joint!.subarray(inJoint, s.tail.length), piece] : [piece.subarray(inPiece)];
      const bytes = Buffer.concat(from);
      if (bytes.length <= MAX_CUT_BYTES) {
        s.since = [bytes];
        s.sinceBytes = bytes.length;
        return;
      }
    }
    const keep = HTTP2_PREFACE.length - 1;
    s.tail = piece.length >= keep ? Buffer.from(piece.subarray(piece.length - keep)) : Buffer.concat([s.tail, piece]).subarray(-keep);
  }

  private lost(s: Extract<State, { at: "lost" }>, bytes: Buffer, out: Segment[]): Buffer {
    const all = s.held.length ? Buffer.concat([s.held, bytes]) : bytes;
    const at = all.indexOf(HTTP2_PREFACE);
    if (at >= 0) {
      if (at) out.push(all.subarray(0, at));
      out.push(NEW_SESSION);
      this.state = { at: "start", seen: Buffer.alloc(0) };
      return all.subarray(at);
    }
    // Hold back the longest tail that could begin a preface.
    let keep = Math.min(all.length, HTTP2_PREFACE.length - 1);
    while (keep && !all.subarray(all.length - keep).equals(HTTP2_PREFACE.subarray(0, keep))) keep--;
    if (all.length > keep) out.push(all.subarray(0, all.length - keep));
    s.held = Buffer.from(all.subarray(all.length - keep));
    return Buffer.alloc(0);
  }
}
