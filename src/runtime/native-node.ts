// The shim through koffi (Node; ffi-napi does not build on Node 20).
import { createRequire } from "node:module";
import { bindShim, SIGNATURES, type NativeShim } from "./native-api.ts";

type Koffi = { load(path: string): { func(name: string, result: string, args: string[]): (...a: unknown[]) => unknown } };

export function openShim(path: string): NativeShim {
  const koffi = createRequire(import.meta.url)("koffi") as Koffi;
  const lib = koffi.load(path);
  const type = (t: string) => ({ i32: "int32_t", u32: "uint32_t", ptr: "void *", cstring: "const char *" })[t] ?? t;
  const fns = Object.fromEntries(
    Object.entries(SIGNATURES).map(([name, sig]) => [name, lib.func(name, type(sig.returns), sig.args.map(type))]),
  );
  return bindShim((name, ...args) => fns[name]!(...args));
}
