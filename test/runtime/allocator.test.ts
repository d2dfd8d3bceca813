// The agents' start-up settings (runtime/allocator.ts): what is added to which environment.
import { describe, expect, test } from "bun:test";
import { JIT_SETTINGS, missingSettings } from "../../src/runtime/allocator.ts";

const JIT = JIT_SETTINGS;

describe("allocator settings", () => {
  test("Bun's idle GC timer is turned off (the agents' own collector runs instead), unless the user set the variable", () => {
    expect(missingSettings({ ...JIT, MIMALLOC_PURGE_DELAY: "2000" }, "arm64")).toEqual({ BUN_GC_TIMER_DISABLE: "1" });
    expect(missingSettings({ ...JIT, MIMALLOC_PURGE_DELAY: "2000", BUN_GC_TIMER_DISABLE: "0" }, "arm64")).toEqual({});
  });

  test("x86-64 without either setting: mimalloc's purge delay and glibc's rep-movsb threshold are both added", () => {
    expect(missingSettings({ ...JIT, BUN_GC_TIMER_DISABLE: "1" }, "x64")).toEqual({ MIMALLOC_PURGE_DELAY: "2000", GLIBC_TUNABLES: "glibc.cpu.x86_rep_movsb_threshold=4194304" });
  });

  test("the user's other glibc tunables are kept and ours appended; the user's own threshold is left alone", () => {
    expect(missingSettings({ ...JIT, MIMALLOC_PURGE_DELAY: "50", BUN_GC_TIMER_DISABLE: "1", GLIBC_TUNABLES: "glibc.malloc.arena_max=2" }, "x64")).toEqual({
      GLIBC_TUNABLES: "glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=4194304",
    });
    expect(missingSettings({ ...JIT, MIMALLOC_PURGE_DELAY: "50", BUN_GC_TIMER_DISABLE: "1", GLIBC_TUNABLES: "glibc.cpu.x86_rep_movsb_threshold=8192" }, "x64")).toEqual({});
  });

  test("aarch64 has no such tunable: nothing glibc-specific is added", () => {
    expect(missingSettings({}, "arm64")).toEqual({ MIMALLOC_PURGE_DELAY: "2000", BUN_GC_TIMER_DISABLE: "1", ...JIT });
    expect(missingSettings({ ...JIT, MIMALLOC_PURGE_DELAY: "2000", BUN_GC_TIMER_DISABLE: "1" }, "arm64")).toEqual({});
  });

  test("JavaScriptCore tiers up sooner (a fresh agent's first connections), unless the user set an option", () => {
    expect(missingSettings({ MIMALLOC_PURGE_DELAY: "2000", BUN_GC_TIMER_DISABLE: "1" }, "arm64")).toEqual({
      BUN_JSC_thresholdForJITAfterWarmUp: "50",
      BUN_JSC_thresholdForOptimizeAfterWarmUp: "200",
    });
    expect(missingSettings({ MIMALLOC_PURGE_DELAY: "2000", BUN_GC_TIMER_DISABLE: "1", BUN_JSC_thresholdForJITAfterWarmUp: "500" }, "arm64")).toEqual({
      BUN_JSC_thresholdForOptimizeAfterWarmUp: "200",
    });
  });
});
