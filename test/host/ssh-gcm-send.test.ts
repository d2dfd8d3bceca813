// The copy-free CHANNEL_DATA sender (host/ssh-gcm-send.ts) against ssh2's own AES-GCM code:
// ssh2's decipher reads what it wrote, packet after packet (the nonce counter carried as
// ssh2 carries it), and its cipher state moves on exactly as ssh2's encrypt() moves it.
// (The e2e tests carry 64 MiB each way through OpenSSH's sshd with it.)
import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { sendGcmChannelData } from "../../src/host/ssh-gcm-send.ts";
// @ts-expect-error ssh2's internal module has no types
import * as ssh2Crypto from "ssh2/lib/protocol/crypto.js";

const INFO = ssh2Crypto.CIPHER_INFO["aes128-gcm@openssh.com"];

function pair(iv: Buffer) {
  const key = randomBytes(16);
  const written: Buffer[] = [];
  const cipher = ssh2Crypto.createCipher({ outbound: { onWrite: (b: Buffer) => written.push(Buffer.from(b)), cipherInfo: INFO, cipherKey: key, cipherIV: Buffer.from(iv), seqno: 0, forceNative: true } });
  const payloads: Buffer[] = [];
  const decipher = ssh2Crypto.createDecipher({ inbound: { onPayload: (p: Buffer) => void payloads.push(Buffer.from(p)), decipherInfo: INFO, decipherKey: key, decipherIV: Buffer.from(iv), seqno: 0, forceNative: true } });
  const deliver = () => {
    const wire = Buffer.concat(written.splice(0));
    decipher.decrypt(wire, 0, wire.length);
  };
  return { cipher, payloads, deliver };
}

const channelData = (chan: number, data: Buffer) => Buffer.concat([Buffer.from([94]), Buffer.from([chan >>> 24, chan >>> 16, chan >>> 8, chan]), Buffer.from([data.length >>> 24, data.length >>> 16, data.length >>> 8, data.length]), data]);

describe("copy-free AES-GCM channel data", () => {
  test("ssh2's AES-GCM decipher reads every packet, of every size up to 32 KiB, with the nonce counter carried over a byte boundary", () => {
    const iv = randomBytes(12);
    iv[11] = 0xfe; // the counter's low byte wraps after two packets
    iv[10] = 0xff;
    const { cipher, payloads, deliver } = pair(iv);
    const chunks = [1, 2, 3, 15, 16, 17, 1000, 32768, 32767, 7].map((n) => randomBytes(n));
    for (const [i, chunk] of chunks.entries()) sendGcmChannelData(cipher, i + 1, chunk);
    deliver();
    expect(payloads).toEqual(chunks.map((c, i) => channelData(i + 1, c)));
    expect(cipher.outSeqno).toBe(chunks.length);
  });

  test("packets from it and from ssh2's own encrypt() interleave on one connection (the cipher state stays ssh2's)", () => {
    const { cipher, payloads, deliver } = pair(randomBytes(12));
    const a = randomBytes(5000);
    const b = randomBytes(300);
    sendGcmChannelData(cipher, 7, a);
    const packet = cipher.allocPacket(1 + 4 + 4 + b.length); // ssh2's way, as Protocol.channelData does it
    channelData(9, b).copy(packet, 5);
    cipher.encrypt(packet);
    sendGcmChannelData(cipher, 7, a.subarray(0, 16));
    deliver();
    expect(payloads).toEqual([channelData(7, a), channelData(9, b), channelData(7, a.subarray(0, 16))]);
  });
});
