// Bun's runtime for another platform, for `bun build --compile --compile-executable-path`:
// taken from the npm registry (Bun's own per-platform package, e.g. @oven/bun-linux-aarch64)
// with `npm pack`, at the version and integrity package-lock.json pins for it, so `make dist`
// downloads nothing from anywhere else and a tampered or different package is refused.
//   node scripts/bun-runtime.mjs linux-aarch64 OUT_FILE
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

const [platform, out] = process.argv.slice(2);
if (!platform || !out) throw new Error("usage: node scripts/bun-runtime.mjs PLATFORM OUT_FILE");
const name = `@oven/bun-${platform}`;
const lock = JSON.parse(readFileSync("package-lock.json", "utf8"));
const pinned = lock.packages?.[`node_modules/${name}`];
const bun = lock.packages?.["node_modules/bun"];
// package.json lists it as an optional dependency (npm skips it on other machines), so the
// lock file keeps its integrity.
if (!pinned?.integrity) throw new Error(`package-lock.json pins no ${name}: npm install --save-optional --save-exact ${name}@<the bun version>`);
if (pinned.version !== bun?.version) throw new Error(`package-lock.json pins ${name} ${pinned.version} but bun ${bun?.version}`);

const work = mkdtempSync(join(tmpdir(), "porthole-bun-runtime-"));
try {
  // npm pack fetches through npm's own cache: offline after the first time.
  const packed = JSON.parse(execFileSync("npm", ["pack", `${name}@${pinned.version}`, "--pack-destination", work, "--json", "--silent"], { encoding: "utf8" }));
  const tarball = join(work, packed[0].filename);
  const [algorithm, expected] = pinned.integrity.split("-", 2);
  const actual = createHash(algorithm).update(readFileSync(tarball)).digest("base64");
  if (actual !== expected) throw new Error(`${name}@${pinned.version}: integrity ${algorithm}-${actual} is not the pinned ${pinned.integrity}`);
  execFileSync("tar", ["-xzf", tarball, "-C", work, "package/bin/bun"]);
  mkdirSync(dirname(out), { recursive: true });
  copyFileSync(join(work, "package/bin/bun"), `${out}.tmp`); // /tmp may be another file system
  chmodSync(`${out}.tmp`, 0o755);
  renameSync(`${out}.tmp`, out);
  console.log(`${out}: ${name}@${pinned.version} (integrity checked against package-lock.json)`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
