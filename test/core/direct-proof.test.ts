// The direct path's proof: only the holder of the session secret can answer, and the answer
// is bound to the nonce and to the address the connection arrived at. Guest-reported
// addresses are validated before any is dialed.
import { describe, expect, test } from "bun:test";
import { parseProofRequest, proofAnswer, proofHolds, proofRequest, usableGuestAddresses } from "../../src/core/direct-proof.ts";

describe("direct-path proof", () => {
  const secret = "00112233445566778899aabbccddeeff0011223344556677";
  const nonce = "0123456789abcdef0123456789abcdef";

  test("the answer holds only for the same secret, nonce and address", () => {
    const answer = proofAnswer(secret, nonce, "10.0.0.7");
    expect(proofHolds(secret, nonce, "10.0.0.7", `${answer}\n`)).toBe(true);
    expect(proofHolds(secret, nonce, "::ffff:10.0.0.7", answer)).toBe(true); // the same address, mapped
    expect(proofHolds(`${secret}0`, nonce, "10.0.0.7", answer)).toBe(false);
    expect(proofHolds(secret, nonce.replace("0", "1"), "10.0.0.7", answer)).toBe(false);
    expect(proofHolds(secret, nonce, "10.0.0.8", answer)).toBe(false);
    expect(proofHolds(secret, nonce, "10.0.0.7", "")).toBe(false);
  });

  test("the answer bound to both ends holds only for the same sender, and differs from the old one", () => {
    const answer = proofAnswer(secret, nonce, "10.0.0.7", "10.0.0.1");
    expect(proofHolds(secret, nonce, "10.0.0.7", answer, "10.0.0.1")).toBe(true);
    expect(proofHolds(secret, nonce, "10.0.0.7", answer, "::ffff:10.0.0.1")).toBe(true); // as a dual-stack socket names it
    expect(proofHolds(secret, nonce, "10.0.0.7", answer, "10.0.0.9")).toBe(false);
    expect(proofHolds(secret, nonce, "10.0.0.7", answer)).toBe(false);
    expect(proofHolds(secret, nonce, "10.0.0.7", proofAnswer(secret, nonce, "10.0.0.7"), "10.0.0.1")).toBe(false);
  });

  test("requests are parsed strictly", () => {
    expect(parseProofRequest(proofRequest(nonce).trimEnd())).toEqual({ nonce, peer: false });
    expect(parseProofRequest(proofRequest(nonce, true).trimEnd())).toEqual({ nonce, peer: true });
    expect(parseProofRequest(`PHPROOF3 ${nonce}`)).toBeUndefined();
    expect(parseProofRequest(`PHPROOF1 ${nonce} extra`)).toBeUndefined();
    expect(parseProofRequest("PHPROOF1 short")).toBeUndefined();
    expect(parseProofRequest("GET / HTTP/1.1")).toBeUndefined();
  });

  test("guest addresses: only unicast, non-loopback, non-link-local literals, deduplicated and bounded", () => {
    expect(usableGuestAddresses(["10.0.0.7", "127.0.0.1", "0.0.0.0", "169.254.1.1", "224.0.0.1", "fe80::1", "::1", "::", "ff02::1", "fd00::7", "::ffff:10.0.0.7", "host.example", 42, "10.0.0.7"])).toEqual(["10.0.0.7", "fd00::7"]);
    expect(usableGuestAddresses("10.0.0.7")).toEqual([]);
    expect(usableGuestAddresses(Array.from({ length: 100 }, (_, i) => `10.1.${i}.1`))).toHaveLength(64);
  });
});
