// The SSH ciphers this runtime's crypto can actually do, best first. Bun, for one, has no
// chacha20-poly1305; offering it would let a server pick a cipher that then fails.
import { getCiphers } from "node:crypto";

const PREFERRED: [ssh: string, crypto: string][] = [
  ["aes128-gcm@openssh.com", "aes-128-gcm"],
  ["aes256-gcm@openssh.com", "aes-256-gcm"],
  ["chacha20-poly1305@openssh.com", "chacha20-poly1305"],
  ["aes128-ctr", "aes-128-ctr"],
  ["aes256-ctr", "aes-256-ctr"],
];

export function supportedSshCiphers(): string[] {
  const available = new Set(getCiphers());
  return PREFERRED.filter(([, name]) => available.has(name)).map(([ssh]) => ssh);
}
