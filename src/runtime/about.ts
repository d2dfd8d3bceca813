// What `porthole --version` reports: the version, the machine architecture, the JavaScript
// runtime, whether the native shim (vsock, netlink) loaded here, or why not, and which port
// detector a guest agent would run here.
import type { NativeShim } from "./native-api.ts";
import { loadNative } from "./native.ts";
import { runtimeName } from "./self.ts";
import { shimArch } from "./shim-file.ts";

function runtimeVersion(): string {
  const name = runtimeName();
  const deno = (globalThis as { Deno?: { version: { deno: string } } }).Deno;
  const version = name === "bun" ? process.versions.bun : name === "deno" ? deno?.version.deno : process.versions.node;
  return `${name} ${version ?? "?"}`;
}

export async function aboutLines(version: string): Promise<string[]> {
  const { shim, error } = await loadNative();
  return [
    `porthole ${version}`,
    `architecture: ${process.arch} (${process.platform})`,
    `runtime: ${runtimeVersion()}`,
    shim ? `native shim: loaded (${shimArch()})` : `native shim: not loaded (${error})`,
    `port detector: ${detectorHere(shim)}`,
  ];
}

/** Loads the kernel-event programs and detaches them at once: whether a guest agent here gets "ebpf". */
function detectorHere(shim: NativeShim | undefined): string {
  if (!shim) return "poll (no native shim)";
  const msg = new Uint8Array(16384);
  const fd = shim.eventsStart(msg, msg.length, 1);
  if (fd >= 0) {
    shim.eventsStop();
    return "ebpf (kernel events load here)";
  }
  const text = Buffer.from(msg.subarray(0, Math.max(0, msg.indexOf(0)))).toString("utf8").split("; verifier log:")[0];
  return `poll (eBPF does not load here: ${text || shim.errnoName(fd)})`;
}
