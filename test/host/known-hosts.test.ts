import { afterEach, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkHostKey, HostKeyMismatch } from "../../src/host/known-hosts.ts";
import { supportedSshCiphers } from "../../src/runtime/ssh-ciphers.ts";

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

/** An SSH public key blob: string type, then key data. */
function blob(type: string, data: string): Buffer {
  const t = Buffer.from(type);
  const d = Buffer.from(data);
  const len = (n: number) => Buffer.from([0, 0, 0, n]);
  return Buffer.concat([len(t.length), t, len(d.length), d]);
}

test("trust on first use, then known; another key for the same host is refused with file and line", () => {
  const dir = mkdtempSync(join(tmpdir(), "porthole-kh-"));
  dirs.push(dir);
  const file = join(dir, "state", "known_hosts");
  expect(checkHostKey(file, "[10.0.0.2]:22", blob("ssh-ed25519", "A"))).toBe("added");
  expect(checkHostKey(file, "[10.0.0.2]:22", blob("ssh-ed25519", "A"))).toBe("known");
  expect(checkHostKey(file, "unix:///run/ssh.sock", blob("ssh-rsa", "B"))).toBe("added");
  expect(readFileSync(file, "utf8").split("\n")[1]).toStartWith("unix:///run/ssh.sock ssh-rsa ");
  const changed = () => checkHostKey(file, "[10.0.0.2]:22", blob("ecdsa-sha2-nistp256", "C"));
  expect(changed).toThrow(HostKeyMismatch);
  expect(changed).toThrow(`the SSH host key of [10.0.0.2]:22 changed (now ecdsa-sha2-nistp256, was ssh-ed25519 at ${file}:1)`);
});

test("a known_hosts that exists but cannot be read refuses every key (it is not taken for a first use)", () => {
  const dir = mkdtempSync(join(tmpdir(), "porthole-kh-"));
  dirs.push(dir);
  const file = join(dir, "known_hosts");
  mkdirSync(file); // readable by no one as a file (root reads any file, so a directory stands in for one it may not)
  expect(() => checkHostKey(file, "[10.0.0.2]:22", blob("ssh-ed25519", "A"))).toThrow(`cannot read the known hosts file ${file}`);
});

test("only ciphers the runtime's crypto can do are offered, AES-GCM first", () => {
  const ciphers = supportedSshCiphers();
  expect(ciphers[0]).toBe("aes128-gcm@openssh.com");
  expect(ciphers).not.toContain("chacha20-poly1305@openssh.com"); // these tests run on Bun, whose crypto has none
});
