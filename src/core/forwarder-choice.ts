// Which forwarder carries TCP, and whether SSH tries vsock first: Lima's environment
// variables and porthole's flag and config keys, with their precedence. No I/O.
/**
 * auto: direct where the guest is reachable by IP, else porthole's raw data path, else (a
 * one-stream channel to a porthole guest) the lean multiplexer, else gRPC; fast: the same
 * without direct; grpc: Lima's Tunnel only; ssh: direct-tcpip channels.
 */
export type ForwarderKind = "auto" | "fast" | "grpc" | "ssh";
export const FORWARDER_KINDS: readonly ForwarderKind[] = ["auto", "fast", "grpc", "ssh"];

export interface Choice<T> {
  value: T;
  /** Why, for the log: "--forwarder ssh", "LIMA_SSH_PORT_FORWARDER=true", … */
  reason: string;
  /** Something the user should fix (an unparsable variable). */
  warning?: string;
}

/** Go's strconv.ParseBool, which Lima uses for its variables. */
function parseGoBool(text: string): boolean | undefined {
  if (["1", "t", "T", "TRUE", "true", "True"].includes(text)) return true;
  if (["0", "f", "F", "FALSE", "false", "False"].includes(text)) return false;
  return undefined;
}

/** Flag > LIMA_SSH_PORT_FORWARDER > config > default (auto, which falls back to gRPC). */
export function chooseForwarder(flag: ForwarderKind | undefined, env: string | undefined, config: ForwarderKind | undefined): Choice<ForwarderKind> {
  if (flag) return { value: flag, reason: `--forwarder ${flag}` };
  if (env !== undefined && env !== "") {
    const asBool = parseGoBool(env);
    if (asBool === undefined) {
      return {
        value: "grpc",
        reason: "the default",
        warning: `LIMA_SSH_PORT_FORWARDER=${JSON.stringify(env)} is not true or false; using gRPC`,
      };
    }
    return { value: asBool ? "ssh" : "grpc", reason: `LIMA_SSH_PORT_FORWARDER=${env}` };
  }
  if (config) return { value: config, reason: `forwarder: ${config} in the config` };
  return { value: "auto", reason: "the default" };
}

/** LIMA_SSH_OVER_VSOCK (when set) > ssh.overVsock in the config > on. */
export function chooseSshOverVsock(env: string | undefined, config: boolean | undefined): Choice<boolean> {
  if (env !== undefined && env !== "") {
    const asBool = parseGoBool(env);
    if (asBool !== undefined) return { value: asBool, reason: `LIMA_SSH_OVER_VSOCK=${env}` };
    return { value: config ?? true, reason: config === undefined ? "the default" : `ssh.overVsock: ${config} in the config`, warning: `LIMA_SSH_OVER_VSOCK=${JSON.stringify(env)} is not true or false; ignored` };
  }
  if (config !== undefined) return { value: config, reason: `ssh.overVsock: ${config} in the config` };
  return { value: true, reason: "the default" };
}
