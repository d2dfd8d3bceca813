// The direct path's proof: before the host sends a client's bytes to a guest address by IP,
// the guest agent must show that it answers at that address. The host connects to the
// agent's proof port at the address, sends a fresh nonce, and expects an HMAC of the nonce
// and the address with the session secret (which only the real agent, met over the trusted
// agent channel, knows). A machine that merely has the same address cannot answer. No I/O.
import { createHmac, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import { unmapIPv4 } from "./address.ts";

export const PROOF_MAGIC = "PHPROOF1";
/** The proof bound to both ends: the answer also names the address the request came from. */
export const PROOF_MAGIC_PEER = "PHPROOF2";
/** Longest request or answer line, newline included. */
export const MAX_PROOF_LINE = 256;

/** `peer`: ask for the answer bound to both ends (a guest whose Hello lists "direct-proof-peer"). */
export function proofRequest(nonce: string, peer = false): string {
  return `${peer ? PROOF_MAGIC_PEER : PROOF_MAGIC} ${nonce}\n`;
}

/** The nonce of a request line (without its newline) and whether it asks for the peer-bound answer, or undefined if it is not one. */
export function parseProofRequest(line: string): { nonce: string; peer: boolean } | undefined {
  const m = /^PHPROOF([12]) ([0-9a-f]{32,64})$/.exec(line);
  return m ? { nonce: m[2]!, peer: m[1] === "2" } : undefined;
}

/**
 * The answer to a nonce for a connection that arrived at `address` (the agent's side of it).
 * With `peer` (the address it came from, as the agent sees it) the answer holds only for that
 * sender: a machine that relays the host's nonce to the guest from elsewhere (one holding the
 * guest's address on another network, with a helper in the guest) gets an answer the host
 * refuses, since the host checks it against its own address on that connection.
 */
export function proofAnswer(secret: string, nonce: string, address: string, peer?: string): string {
  const ends = peer === undefined ? unmapIPv4(address).toLowerCase() : `${unmapIPv4(address).toLowerCase()}\n${unmapIPv4(peer).toLowerCase()}`;
  return createHmac("sha256", secret).update(`${peer === undefined ? "porthole direct proof" : "porthole direct proof 2"}\n${nonce}\n${ends}`).digest("hex");
}

export function proofHolds(secret: string, nonce: string, address: string, answer: string, peer?: string): boolean {
  const want = Buffer.from(proofAnswer(secret, nonce, address, peer));
  const got = Buffer.from(answer.trim());
  return got.length === want.length && timingSafeEqual(got, want);
}

/**
 * The addresses a guest reported that may be used by IP at all: literal IPv4 or IPv6
 * addresses, unicast, not loopback, link-local, unspecified or multicast; at most 64.
 */
export function usableGuestAddresses(addresses: unknown): string[] {
  if (!Array.isArray(addresses)) return [];
  const out: string[] = [];
  for (const a of addresses) {
    if (typeof a !== "string" || a.length > 45 || !isIP(a)) continue;
    const ip = unmapIPv4(a.toLowerCase());
    if (isIP(ip) === 4) {
      const [x, y] = ip.split(".").map(Number) as [number, number];
      if (x === 0 || x === 127 || x >= 224 || (x === 169 && y === 254)) continue;
    } else if (ip === "::" || ip === "::1" || /^fe[89ab]/.test(ip) || ip.startsWith("ff")) {
      continue;
    }
    if (!out.includes(ip)) out.push(ip);
    if (out.length === 64) break;
  }
  return out;
}
