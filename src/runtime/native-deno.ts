// The shim through Deno.dlopen (Deno only).
import { bindShim, SIGNATURES, type NativeShim } from "./native-api.ts";

type DenoFFI = {
  dlopen(path: string, symbols: Record<string, { parameters: string[]; result: string }>): { symbols: Record<string, (...a: unknown[]) => unknown> };
  UnsafePointerView: { getCString(p: unknown): string };
  UnsafePointer: { of(buf: ArrayBufferView): unknown };
};

export function openShim(path: string): NativeShim {
  const Deno = (globalThis as unknown as { Deno: DenoFFI }).Deno;
  const map = (t: string) => (t === "cstring" ? "pointer" : t === "ptr" ? "buffer" : t);
  const defs = Object.fromEntries(
    Object.entries(SIGNATURES).map(([name, sig]) => [name, { parameters: sig.args.map(map), result: map(sig.returns) }]),
  );
  const lib = Deno.dlopen(path, defs);
  return bindShim((name, ...args) => {
    const result = lib.symbols[name]!(...args);
    return SIGNATURES[name].returns === "cstring" ? Deno.UnsafePointerView.getCString(result) : result;
  });
}
