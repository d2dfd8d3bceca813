// Host key checking for the SSH forwarder: trust on first use, then refuse a changed key.
// One line per guest address: `<address> <key type> <base64 key>` (OpenSSH's layout).
import { appendFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname } from "node:path";

export class HostKeyMismatch extends Error {}

/** The key type named inside an SSH public key blob (its first string). */
function keyType(blob: Buffer): string {
  const len = blob.readUInt32BE(0);
  return blob.subarray(4, 4 + len).toString("latin1");
}

/**
 * Checks `key` for `host` against the file; records it if the host is new. Throws
 * HostKeyMismatch (with the file and line) when the host is known with another key.
 */
export function checkHostKey(file: string, host: string, key: Buffer): "known" | "added" {
  const encoded = key.toString("base64");
  let lines: string[] = [];
  try {
    lines = readFileSync(file, "utf8").split("\n");
  } catch (err) {
    // No file yet: every host is new. Any other failure must not pass as that (any key would be taken).
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw new Error(`cannot read the known hosts file ${file}: ${(err as Error).message}`);
  }
  for (const [i, line] of lines.entries()) {
    const [name, type, data] = line.trim().split(/\s+/);
    if (name !== host) continue;
    if (data === encoded) return "known";
    throw new HostKeyMismatch(
      `the SSH host key of ${host} changed (now ${keyType(key)}, was ${type} at ${file}:${i + 1}); refusing to connect. ` +
        `If the VM was recreated, delete that line.`,
    );
  }
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  appendFileSync(file, `${host} ${keyType(key)} ${encoded}\n`, { mode: 0o600 });
  return "added";
}
