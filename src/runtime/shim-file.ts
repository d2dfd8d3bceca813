// Where the embedded native shim lives at run time: copied once to a private, per-user,
// content-addressed path (not a new temp file on every run), because dlopen() needs a real
// file and a compiled binary embeds its assets in a virtual file system.
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
// No import attribute: Bun embeds unknown file types as files by default, and esbuild has
// no "file" attribute (its .so loader is set to "file" in the bundle build instead). Both
// architectures' shims are embedded (~20 KB each), so one source builds every binary and the
// bundle; the one matching process.arch is loaded.
import shimArm64 from "../../native/build/porthole-shim-arm64.so";
import shimX64 from "../../native/build/porthole-shim-x64.so";

const SHIMS: Record<string, string> = { x64: shimX64 as unknown as string, arm64: shimArm64 as unknown as string };

/** The architecture whose shim this process loads (process.arch), if there is one. */
export function shimArch(): string | undefined {
  return SHIMS[process.arch] ? process.arch : undefined;
}

function candidateDirs(): string[] {
  const uid = process.getuid?.() ?? 0;
  const dirs = [process.env.XDG_CACHE_HOME ? join(process.env.XDG_CACHE_HOME, "porthole") : "", join(homedir(), ".cache", "porthole")];
  return [...dirs.filter(Boolean), join(tmpdir(), `porthole-${uid}`)];
}

/** A directory only this user can write (created 0700; an existing one must be ours). */
function privateDir(dir: string): boolean {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = statSync(dir);
    return st.uid === (process.getuid?.() ?? st.uid) && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

/** The path of the shim's bytes as this build carries them (bundlers give a relative URL). */
function assetPath(): string {
  const asset = SHIMS[process.arch];
  if (!asset) throw new Error(`no native shim is built for this architecture (${process.arch}); porthole has x64 and arm64`);
  return isAbsolute(asset) ? asset : fileURLToPath(new URL(asset, import.meta.url));
}

export function extractShim(): string {
  const bytes = readFileSync(assetPath());
  const name = `porthole-shim-${createHash("sha256").update(bytes).digest("hex").slice(0, 16)}.so`;
  const errors: string[] = [];
  for (const dir of candidateDirs()) {
    if (!privateDir(dir)) {
      errors.push(`${dir}: not a private writable directory`);
      continue;
    }
    const file = join(dir, name);
    if (existsSync(file)) return file;
    try {
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, bytes, { mode: 0o500 });
      chmodSync(tmp, 0o500);
      renameSync(tmp, file);
      return file;
    } catch (err) {
      errors.push(`${dir}: ${(err as Error).message}`);
    }
  }
  throw new Error(`cannot place the native shim: ${errors.join("; ")}`);
}
