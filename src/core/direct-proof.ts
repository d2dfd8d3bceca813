// The direct path's proof: before the host sends a client's bytes to a guest address by IP,
// the guest agent must show that it answers at that address. The host connects to the
// agent's proof port at the address, sends a fresh nonce, and expects an HMAC of the nonce
// and the address with the session secret (which only the real agent, met over the trusted
// agent channel, knows). A machine that merely has the same address cannot answer. No I/O.
import { createHmac, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import { unmapIPv4 } from "./address.ts";

export const PROOF_MAGIC = "PHPROOF1";
/** Longest request or answer line, newline included. */
export const MAX_PROOF_LINE = 256;

export function proofRequest(nonce: string): string {
  return `${PROOF_MAGIC} ${nonce}\n`;
}

/** The nonce of a request line (without its newline), or undefined if it is not one. */
export function parseProofRequest(line: string): string | undefined {
  const m = /^PHPROOF1 ([0-9a-f]{32,64})$/.exec(line);
  return m?.[1];
}

/** The answer to a nonce for a connection that arrived at `address` (the agent's side of it). */
export function proofAnswer(secret: string, nonce: string, address: string): string {
  return createHmac("sha256", secret).update(`porthole direct proof\n${nonce}\n${unmapIPv4(address).toLowerCase()}`).digest("hex");
}

export function proofHolds(secret: string, nonce: string, address: string, answer: string): boolean {
  const want = Buffer.from(proofAnswer(secret, nonce, address));
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
