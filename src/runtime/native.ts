// Loads the native shim through this runtime's FFI, once. The only place that picks an
// adapter by runtime; everything else sees a NativeShim or the reason there is none.
import type { NativeShim } from "./native-api.ts";
import { runtimeName } from "./self.ts";
import { extractShim } from "./shim-file.ts";

let loaded: Promise<{ shim?: NativeShim; error?: string }> | undefined;

export function loadNative(): Promise<{ shim?: NativeShim; error?: string }> {
  loaded ??= (async () => {
    try {
      const path = extractShim();
      const runtime = runtimeName();
      const adapter =
        runtime === "bun"
          ? await import("./native-bun.ts")
          : runtime === "deno"
            ? await import("./native-deno.ts")
            : await import("./native-node.ts");
      return { shim: adapter.openShim(path) };
    } catch (err) {
      return { error: (err as Error).message };
    }
  })();
  return loaded;
}
