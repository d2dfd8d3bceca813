// What `porthole --version` reports: the version, the machine architecture, the JavaScript
// runtime, and whether the native shim (vsock, netlink) loaded here, or why not.
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
  ];
}
