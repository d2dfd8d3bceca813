// gRPC's length-prefixed messages as they arrive in HTTP/2 DATA chunks: a 1-byte compressed
// flag, a 4-byte big-endian length, the message. Used where porthole serves or calls a Tunnel
// stream straight on HTTP/2 (no grpc-js call in between). A message that lies within one chunk
// comes out as a view of it (no copy); only one split across chunks is joined. No I/O here.

export const MESSAGE_HEADER_BYTES = 5;

export type MessageItem = { kind: "message"; data: Buffer } | { kind: "bad"; reason: string };

export class MessageDecoder {
  /** Bytes of a header or message that a chunk ended inside of. */
  private parts: Buffer[] = [];
  private partBytes = 0;
  private failed = false;

  /** `maxBytes`: a longer message is refused (the peer must not make us buffer without bound). */
  constructor(private readonly maxBytes: number) {}

  /** The whole messages `chunk` completes, in order; after a bad one, nothing more. */
  push(chunk: Buffer): MessageItem[] {
    if (this.failed) return [];
    let buf = chunk;
    if (this.partBytes) {
      this.parts.push(chunk);
      this.partBytes += chunk.length;
      if (!this.complete()) return [];
      buf = Buffer.concat(this.parts, this.partBytes);
      this.parts = [];
      this.partBytes = 0;
    }
    const out: MessageItem[] = [];
    let at = 0;
    while (buf.length - at >= MESSAGE_HEADER_BYTES) {
      const flag = buf[at]!;
      const length = buf.readUInt32BE(at + 1);
      if (flag !== 0) return this.fail(out, flag === 1 ? "a compressed message on a stream that named no compression" : `a message flag of ${flag}`);
      if (length > this.maxBytes) return this.fail(out, `a message of ${length} bytes (at most ${this.maxBytes})`);
      const end = at + MESSAGE_HEADER_BYTES + length;
      if (end > buf.length) break;
      out.push({ kind: "message", data: buf.subarray(at + MESSAGE_HEADER_BYTES, end) });
      at = end;
    }
    if (at < buf.length) {
      const rest = buf.subarray(at);
      if (rest.length >= MESSAGE_HEADER_BYTES && rest[0] !== 0) return this.fail(out, `a message flag of ${rest[0]}`);
      this.parts = [rest];
      this.partBytes = rest.length;
    }
    return out;
  }

  /** Bytes held of a message not yet whole (a stream that ends with some was cut short). */
  get pending(): number {
    return this.partBytes;
  }

  /** Whether the held parts hold a whole message (or a header that must be refused). */
  private complete(): boolean {
    if (this.partBytes < MESSAGE_HEADER_BYTES) return false;
    // A header split across chunks is joined once (joining every time a chunk came would copy
    // the held bytes again per chunk: quadratic in a message the peer sends in tiny pieces).
    if (this.parts[0]!.length < MESSAGE_HEADER_BYTES) this.parts = [Buffer.concat(this.parts, this.partBytes)];
    const head = this.parts[0]!;
    if (head[0] !== 0) return true;
    const length = head.readUInt32BE(1);
    return length > this.maxBytes || this.partBytes >= MESSAGE_HEADER_BYTES + length;
  }

  private fail(out: MessageItem[], reason: string): MessageItem[] {
    this.failed = true;
    this.parts = [];
    this.partBytes = 0;
    out.push({ kind: "bad", reason });
    return out;
  }
}

/** grpc-message's encoding (gRPC over HTTP/2): bytes outside printable ASCII, and '%', as %XX. */
export function percentEncode(text: string): string {
  let out = "";
  for (const byte of Buffer.from(text, "utf8")) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** grpc-message back to text (a malformed escape is left as it is). */
export function percentDecode(text: string): string {
  if (!text.includes("%")) return text;
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const hex = text[i] === "%" ? text.slice(i + 1, i + 3) : "";
    if (/^[0-9a-fA-F]{2}$/.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else bytes.push(...Buffer.from(text[i]!, "utf8"));
  }
  return Buffer.from(bytes).toString("utf8");
}
