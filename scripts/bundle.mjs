// dist/porthole.mjs: one ESM file that runs with `node dist/porthole.mjs` and
// `deno run -A dist/porthole.mjs`. grpc-js and ssh2 use require() and __dirname, which plain
// ESM lacks: the banner defines them. Native addons stay outside the bundle; both shims
// (x64, arm64) are copied beside it as porthole-shim-<arch>.so and the one matching
// process.arch is placed in a private cache on first use, like the single binary's.
import { build } from "esbuild";

const banner = [
  "import { createRequire as __phRequire } from 'node:module';",
  "import { fileURLToPath as __phPath } from 'node:url';",
  "import { dirname as __phDir } from 'node:path';",
  "const require = __phRequire(import.meta.url);",
  "const __filename = __phPath(import.meta.url);",
  "const __dirname = __phDir(__filename);",
].join(" ");

await build({
  entryPoints: ["src/cli/main.ts"],
  outfile: "dist/porthole.mjs",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  loader: { ".proto": "text", ".so": "file" },
  assetNames: "[name]",
  external: ["koffi", "cpu-features", "*.node", "bun:ffi", "bun:jsc"],
  banner: { js: banner },
  logLevel: "warning",
});
