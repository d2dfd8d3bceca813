// The shim through bun:ffi (Bun only). Loaded with require() so that bundles for Node and
// Deno, which never run this file, do not import "bun:ffi" at the top.
import type { FFIFunction } from "bun:ffi";
import { bindShim, SIGNATURES, type NativeShim } from "./native-api.ts";

export function openShim(path: string): NativeShim {
  const { dlopen } = require("bun:ffi") as typeof import("bun:ffi");
  const lib = dlopen(path, SIGNATURES as unknown as Record<string, FFIFunction>);
  const symbols = lib.symbols as unknown as Record<string, (...args: unknown[]) => unknown>;
  return bindShim((name, ...args) => {
    const result = symbols[name]!(...args);
    return result !== null && typeof result === "object" ? String(result) : result; // CString -> string
  });
}
