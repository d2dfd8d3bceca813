// Received bytes held for an endpoint that cannot take them now. What a peer sends arrives as
// views of the runtime's read buffers, and a peer chooses its frame sizes: held as they came,
// a million one-byte frames would cost a million Buffers, and each one-byte view would keep
// its whole read buffer (64 KiB or more) alive. Held here, small pieces are copied together
// and a view that uses little of its buffer is copied out of it, so that what is held costs
// about what it is, whatever the frames.

/** Pieces smaller than this are copied together. */
const JOIN_BELOW = 16 * 1024;
/** The buffers small pieces are copied into. */
const CHUNK_BYTES = 64 * 1024;
/** A piece below this that is a view of a buffer at least 8 times its size is copied out before it is kept. */
const SMALL_VIEW = 4096;

/** `data`, or a copy where keeping it would keep a much larger read buffer alive. */
export function compactView(data: Buffer): Buffer {
  return data.length < SMALL_VIEW && data.length * 8 < data.buffer.byteLength ? Buffer.from(data) : data;
}

export class HeldBytes {
  private parts: Buffer[] = [];
  private tail: Buffer | undefined;
  private tailLength = 0;
  /** Bytes held now. */
  bytes = 0;

  add(data: Buffer): void {
    if (!data.length) return;
    this.bytes += data.length;
    if (data.length >= JOIN_BELOW) {
      this.seal();
      // A large piece is kept as it is, unless it uses less than half of its buffer.
      this.parts.push(data.length * 2 < data.buffer.byteLength ? Buffer.from(data) : data);
      return;
    }
    if (!this.tail || this.tailLength + data.length > this.tail.length) {
      this.seal();
      this.tail = Buffer.allocUnsafeSlow(CHUNK_BYTES);
    }
    data.copy(this.tail, this.tailLength);
    this.tailLength += data.length;
  }

  /** Everything held, in order; nothing is held after. */
  take(): Buffer[] {
    this.seal();
    const parts = this.parts;
    this.parts = [];
    this.bytes = 0;
    return parts;
  }

  private seal(): void {
    if (this.tail && this.tailLength) {
      const used = this.tail.subarray(0, this.tailLength);
      this.parts.push(this.tailLength * 2 < this.tail.length ? Buffer.from(used) : used); // a mostly empty chunk is not kept whole
    }
    this.tail = undefined;
    this.tailLength = 0;
  }
}
