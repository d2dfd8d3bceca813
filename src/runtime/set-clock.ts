// Sets the system clock (CLOCK_REALTIME) to a time given in nanoseconds, as Lima's guest agent
// does with settimeofday(2) for SyncTime. No JavaScript runtime can, so libc's clock_settime is
// called through this runtime's FFI (bun:ffi on Bun, koffi on Node; the guest role does not run
// on Deno). Needs CAP_SYS_TIME; the error says why it failed, as Go's error string would.
import { createRequire } from "node:module";
import { runtimeName } from "./self.ts";

const CLOCK_REALTIME = 0;
const LIBC = "libc.so.6";
const ERRNO_TEXT: Record<number, string> = { 1: "operation not permitted", 22: "invalid argument", 14: "bad address" };

type SetClock = (timespec: Buffer) => { result: number; errno: number };

let setter: SetClock | undefined;

function bunSetter(): SetClock {
  const { dlopen, read } = require("bun:ffi") as typeof import("bun:ffi");
  const lib = dlopen(LIBC, {
    clock_settime: { args: ["i32", "ptr"], returns: "i32" },
    __errno_location: { args: [], returns: "ptr" },
  });
  return (timespec) => {
    const result = lib.symbols.clock_settime(CLOCK_REALTIME, timespec) as number;
    const errno = result === 0 ? 0 : read.i32(lib.symbols.__errno_location()!, 0);
    return { result, errno };
  };
}

function nodeSetter(): SetClock {
  type Koffi = {
    load(path: string): { func(signature: string): (...a: unknown[]) => unknown };
    decode(pointer: unknown, type: string): unknown;
  };
  const koffi = createRequire(import.meta.url)("koffi") as Koffi;
  const lib = koffi.load(LIBC);
  const clockSettime = lib.func("int clock_settime(int, void *)");
  const errnoLocation = lib.func("int *__errno_location(void)");
  return (timespec) => {
    const result = clockSettime(CLOCK_REALTIME, timespec) as number;
    const errno = result === 0 ? 0 : (koffi.decode(errnoLocation(), "int") as number);
    return { result, errno };
  };
}

/** Throws with the reason when the clock could not be set. */
export function setSystemClock(epochNanos: bigint): void {
  if (!setter) {
    const runtime = runtimeName();
    if (runtime === "deno") throw new Error("setting the clock is not supported on Deno");
    setter = runtime === "bun" ? bunSetter() : nodeSetter();
  }
  // struct timespec on 64-bit Linux: two 64-bit fields, seconds and nanoseconds.
  const timespec = Buffer.alloc(16);
  timespec.writeBigInt64LE(epochNanos / 1_000_000_000n, 0);
  timespec.writeBigInt64LE(epochNanos % 1_000_000_000n, 8);
  const { result, errno } = setter(timespec);
  if (result !== 0) throw new Error(ERRNO_TEXT[errno] ?? `clock_settime failed (errno ${errno})`);
}
