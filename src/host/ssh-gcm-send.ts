// Channel data to sshd without ssh2's per-packet copy. ssh2 copies every chunk (up to 32 KiB)
// into a fresh packet, fills its padding with a randomFillSync call, then encrypts the whole
// packet; the copy was the host agent's top profile entry host to guest. AES-GCM is a counter
// mode: encrypting the header, the chunk and the padding with successive update() calls gives
// the same bytes, so the chunk is encrypted where it lies. Only for ssh2's JavaScript AES-GCM
// cipher (the one we negotiate on Bun) and outside key exchanges; anything else, or an ssh2
// whose internals look different, goes ssh2's own way.
import { createCipheriv, randomFillSync } from "node:crypto";
import type { Client } from "ssh2";

const CHANNEL_DATA = 94;
const HEADER = 4 + 1 + 1 + 4 + 4; // packet length, padding length, message, channel, data length

/** ssh2's AESGCMCipherNative, as far as it is used here. */
interface GcmCipher {
  _encSSLName: string;
  _encKey: Buffer;
  _encIV: Buffer;
  _onWrite: (data: Buffer) => void;
  _dead: boolean;
  outSeqno: number;
  allocPacket: unknown;
  encrypt: unknown;
}

interface Protocol {
  _cipher: unknown;
  _kexinit: unknown;
  _debug: unknown;
  channelData(chan: number, data: Buffer | string): void;
}

function gcmCipher(cipher: unknown): GcmCipher | undefined {
  const c = cipher as Partial<GcmCipher> | undefined;
  if (!c || typeof c._onWrite !== "function" || typeof c.encrypt !== "function" || typeof c.allocPacket !== "function") return undefined;
  if (c._encSSLName !== "aes-128-gcm" && c._encSSLName !== "aes-256-gcm") return undefined;
  if (!Buffer.isBuffer(c._encKey) || !Buffer.isBuffer(c._encIV) || c._encIV.length !== 12 || typeof c.outSeqno !== "number") return undefined;
  return c as GcmCipher;
}

/** Padding bytes: random, drawn from a pool refilled 4 KiB at a time (not one call a packet). */
const pool = Buffer.allocUnsafe(4096);
let poolPos = pool.length;
function padding(n: number): Buffer {
  if (poolPos + n > pool.length) {
    randomFillSync(pool);
    poolPos = 0;
  }
  return pool.subarray(poolPos, (poolPos += n));
}

/** One CHANNEL_DATA packet, written as ssh2's AESGCMCipherNative would (RFC 5647 framing). */
export function sendGcmChannelData(cipher: GcmCipher, chan: number, data: Buffer): void {
  const payload = 1 + 4 + 4 + data.length;
  let pad = 16 - ((1 + payload) & 15);
  if (pad < 4) pad += 16;
  const head = Buffer.allocUnsafe(HEADER);
  head.writeUInt32BE(1 + payload + pad, 0);
  head[4] = pad;
  head[5] = CHANNEL_DATA;
  head.writeUInt32BE(chan, 6);
  head.writeUInt32BE(data.length, 10);
  const gcm = createCipheriv(cipher._encSSLName as "aes-128-gcm", cipher._encKey, cipher._encIV);
  gcm.setAutoPadding(false);
  const length = head.subarray(0, 4);
  gcm.setAAD(length);
  cipher._onWrite(length);
  cipher._onWrite(gcm.update(head.subarray(4)));
  cipher._onWrite(gcm.update(data));
  cipher._onWrite(gcm.update(padding(pad)));
  const rest = gcm.final();
  if (rest.length) cipher._onWrite(rest);
  cipher._onWrite(gcm.getAuthTag());
  incrementIV(cipher._encIV);
  cipher.outSeqno = (cipher.outSeqno + 1) >>> 0;
}

/** The nonce's 64-bit invocation counter (its last 8 bytes) + 1, as ssh2 and RFC 5647 do. */
function incrementIV(iv: Buffer): void {
  for (let i = 11; i >= 4; i--) if (++iv[i]! <= 0xff) return;
}

/** Puts the copy-free path in front of this connection's ssh2 channelData; false if ssh2 has none. */
export function sendChannelDataInPlace(client: Client): boolean {
  const protocol = (client as unknown as { _protocol?: Protocol })._protocol;
  if (!protocol || typeof protocol.channelData !== "function") return false;
  const original = protocol.channelData;
  protocol.channelData = function (this: Protocol, chan: number, data: Buffer | string) {
    const cipher = this._kexinit === undefined && !this._debug && Buffer.isBuffer(data) ? gcmCipher(this._cipher) : undefined;
    if (!cipher || cipher._dead) return original.call(this, chan, data);
    sendGcmChannelData(cipher, chan, data as Buffer);
  };
  return true;
}
