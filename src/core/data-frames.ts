// How a data-path stream says how it ended. A unix or vsock stream closes the same way
// whether the far end sent EOF, was reset, or its agent died, so with `PHDATA2` each
// direction is framed: data frames (a 4-byte big-endian length, then the bytes), and one end
// frame, EOF or RESET. A stream that closes without an end frame ended by accident (an agent
// died): the receiver resets its peer, never a clean EOF. No I/O here: both relays (the
// JavaScript one and a native one) share this format.
/** The largest data frame (bigger chunks go as several): a length above it is garbage. */
export const MAX_FRAME = 16 << 20;
const END_EOF_CODE = 0xffff_ffff;
const END_RESET_CODE = 0xffff_fffe;

export type StreamEnd = "eof" | "reset";

export const END_EOF = frameHeader(END_EOF_CODE);
export const END_RESET = frameHeader(END_RESET_CODE);

function frameHeader(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** The 4 bytes that go before `length` bytes of data (1 ≤ length ≤ MAX_FRAME). */
export function dataFrameHeader(length: number): Buffer {
  if (!Number.isInteger(length) || length < 1 || length > MAX_FRAME) throw new RangeError(`data frame length ${length}`);
  return frameHeader(length);
}

export type FrameItem = { kind: "data"; data: Buffer } | { kind: "end"; how: StreamEnd } | { kind: "bad"; reason: string };

/**
 * Turns received bytes back into data and the end. Data comes out as soon as it arrives
 * (a frame need not be complete), as views of the input, never copied. After an end or a
 * bad frame it yields nothing more but "bad" for any further byte.
 */
export class FrameDecoder {
  /** Bytes of the current data frame still to come; 0 when a header is next. */
  private remaining = 0;
  private header: Buffer = Buffer.alloc(0);
  private done = false;

  push(chunk: Buffer): FrameItem[] {
    const out: FrameItem[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.done) {
        out.push({ kind: "bad", reason: "bytes after the end of the stream" });
        return out;
      }
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, chunk.length - at);
        out.push({ kind: "data", data: chunk.subarray(at, at + n) });
        this.remaining -= n;
        at += n;
        continue;
      }
      const need = 4 - this.header.length;
      const take = chunk.subarray(at, at + need);
      at += take.length;
      this.header = this.header.length ? Buffer.concat([this.header, take]) : take;
      if (this.header.length < 4) break;
      const code = this.header.readUInt32BE(0);
      this.header = Buffer.alloc(0);
      if (code === END_EOF_CODE || code === END_RESET_CODE) {
        this.done = true;
        out.push({ kind: "end", how: code === END_EOF_CODE ? "eof" : "reset" });
      } else if (code === 0 || code > MAX_FRAME) {
        this.done = true;
        out.push({ kind: "bad", reason: `invalid frame header 0x${code.toString(16)}` });
        return out;
      } else {
        this.remaining = code;
      }
    }
    return out;
  }

  /** True when the stream stopped in the middle of a frame. */
  get partial(): boolean {
    return this.remaining > 0 || this.header.length > 0;
  }
}
