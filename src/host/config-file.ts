// Reads a config file (porthole's own or a Lima instance file) and resolves relative
// host sockets under the state directory, as Lima does under its instance directory.
import { readFileSync, watch, type FSWatcher } from "node:fs";
import { basename, dirname, isAbsolute, resolve } from "node:path";
import { ConfigError, parseConfig, type Config, type ConfigDefaults } from "../core/config.ts";

export function loadConfigFile(file: string, stateDir: string, defaults: ConfigDefaults = {}): Config {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError([`${file}: cannot read: ${(err as Error).message}`], { cause: err });
  }
  const config = parseConfig(text, file, defaults);
  return {
    ...config,
    rules: config.rules.map((r) => (r.hostSocket && !isAbsolute(r.hostSocket) ? { ...r, hostSocket: resolve(stateDir, r.hostSocket) } : r)),
  };
}

/**
 * Calls `onChange` when the file changes. Watches the directory, not the file, so that
 * editors that save by writing a new file and renaming it over the old one are seen too.
 */
export function watchConfigFile(file: string, onChange: () => void): FSWatcher {
  const name = basename(file);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const watcher = watch(dirname(resolve(file)), (_event, changed) => {
    if (changed !== null && changed !== name) return;
    clearTimeout(timer);
    timer = setTimeout(onChange, 100); // one reload for the several events of one save
  });
  watcher.unref();
  return watcher;
}
