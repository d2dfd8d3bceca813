// A UDP flow over porthole's own data stream (between porthole agents): after the data
// header and the status byte, each direction is a run of frames with a 4-byte big-endian
// head. Below 2^31 it is a datagram's length (0 to MAX_DATAGRAM: an empty datagram is a
// datagram), and that many bytes follow; with the top bit set, the low 31 bits are a credit
// report (bytes the sender of the report handed to its UDP socket, see
// transport/datagram-budget.ts) and nothing follows. The stream's end ends the flow. No I/O.

/** The largest UDP payload (IPv6's 65,527; IPv4 allows 65,507). */
export const MAX_DATAGRAM = 65_535;
const CREDIT_BIT = 0x8000_0000;
/** The largest credit one frame reports; a bigger one goes as several. */
const MAX_CREDIT = 0x7fff_ffff;

/** Bytes a frame of `length` bytes takes. */
export function datagramFrameSize(length: number): number {
  return 4 + length;
}

/** Writes the datagram's frame into `out` at `at`; returns where the next frame goes. */
export function writeDatagramFrame(out: Buffer, at: number, datagram: Uint8Array): number {
  if (datagram.length > MAX_DATAGRAM) throw new RangeError(`a datagram of ${datagram.length} bytes`);
  out.writeUInt32BE(datagram.length, at);
  out.set(datagram, at + 4);
  return at + 4 + datagram.length;
}

/** The frames reporting `bytes` delivered. */
export function creditFrames(bytes: number): Buffer {
  const heads: number[] = [];
  for (let left = Math.max(0, Math.floor(bytes)); left > 0; left -= Math.min(left, MAX_CREDIT)) heads.push(Math.min(left, MAX_CREDIT));
  const out = Buffer.allocUnsafe(4 * heads.length);
  heads.forEach((n, i) => out.writeUInt32BE((CREDIT_BIT | n) >>> 0, 4 * i));
  return out;
}

export interface DatagramChunk {
  datagrams: Buffer[];
  /** Bytes the far end reported delivered in this chunk's frames. */
  delivered: number;
  /** The stream broke its framing: nothing after it is read. */
  bad?: string;
}

/**
 * Turns received bytes back into whole datagrams and credit reports. A datagram that arrives
 * in one chunk comes out as a view of it; one split across chunks is put together (a copy).
 */
export class DatagramFrameDecoder {
  private head = Buffer.alloc(4);
  private headBytes = 0;
  /** The datagram being put together, and how much of it arrived. */
  private partial: Buffer | undefined;
  private partialBytes = 0;
  private broken = false;

  push(chunk: Buffer): DatagramChunk {
    const out: DatagramChunk = { datagrams: [], delivered: 0 };
    if (this.broken) return { ...out, bad: "bytes after a framing error" };
    let at = 0;
    while (at < chunk.length) {
      if (this.partial) {
        const n = Math.min(this.partial.length - this.partialBytes, chunk.length - at);
        chunk.copy(this.partial, this.partialBytes, at, at + n);
        this.partialBytes += n;
        at += n;
        if (this.partialBytes === this.partial.length) {
          out.datagrams.push(this.partial);
          this.partial = undefined;
        }
        continue;
      }
      let head: number;
      if (this.headBytes === 0 && chunk.length - at >= 4) {
        head = chunk.readUInt32BE(at);
        at += 4;
      } else {
        const n = Math.min(4 - this.headBytes, chunk.length - at);
        chunk.copy(this.head, this.headBytes, at, at + n);
        this.headBytes += n;
        at += n;
        if (this.headBytes < 4) break;
        this.headBytes = 0;
        head = this.head.readUInt32BE(0);
      }
      if (head & CREDIT_BIT) {
        out.delivered += head & MAX_CREDIT;
        continue;
      }
      if (head > MAX_DATAGRAM) {
        this.broken = true;
        return { ...out, bad: `a datagram frame of ${head} bytes (at most ${MAX_DATAGRAM})` };
      }
      if (chunk.length - at >= head) {
        out.datagrams.push(chunk.subarray(at, at + head));
        at += head;
      } else {
        this.partial = Buffer.allocUnsafe(head);
        this.partialBytes = 0;
      }
    }
    return out;
  }

  /** True when the stream stopped in the middle of a frame. */
  get midFrame(): boolean {
    return this.partial !== undefined || this.headBytes > 0;
  }
}
