// Parses a config file's text (YAML) into rules, or into errors that each name the file,
// line and column, the field and what is wrong.
import { isMap, isScalar, LineCounter, parseDocument, visit, type Document, type Node } from "yaml";
import type { z } from "zod";
import { configSchema } from "./config-schema.ts";
import type { ForwarderKind } from "./forwarder-choice.ts";
import { withDefaults, type ConflictPolicy, type Rule } from "./rules.ts";

export interface Config {
  rules: Rule[];
  /** Lima's `ssh.localPort`: that guest port is never forwarded either. */
  sshLocalPort?: number;
  ipv6Loopback: boolean;
  udp: UdpSettings;
  forwarder?: ForwarderKind;
  ssh: SshSettings;
  onConflict: ConflictPolicy;
}

/** The SSH forwarder's settings from the config (flags and Lima's variables may override). */
export interface SshSettings {
  overVsock?: boolean;
  address?: string;
  vsockAddress?: string;
  user?: string;
  identity?: string;
}

export interface UdpSettings {
  idleTimeoutMs: number;
  maxFlows: number;
}

export const DEFAULT_UDP: UdpSettings = { idleTimeoutMs: 60_000, maxFlows: 1024 };

export class ConfigError extends Error {
  constructor(readonly problems: string[], options?: { cause?: unknown }) {
    super(problems.join("\n"), options);
    this.name = "ConfigError";
  }
}

export const DEFAULT_CONFIG: Config = { rules: [], ipv6Loopback: true, udp: DEFAULT_UDP, ssh: {}, onConflict: "fail" };

/** `["portForwards", 2, "guestPortRange", 1]` -> `portForwards[2].guestPortRange`: the field, not the element. */
function fieldName(path: PropertyKey[]): string {
  let end = path.length;
  while (end > 0 && typeof path[end - 1] === "number" && typeof path[end - 2] === "string" && end - 2 > 0) end--;
  return path.slice(0, end).reduce<string>((s, p) => (typeof p === "number" ? `${s}[${p}]` : s ? `${s}.${String(p)}` : String(p)), "");
}

/** Defaults from the command line: `hostIP` for rules that name none (`porthole host --host-ip`). */
export interface ConfigDefaults {
  hostIP?: string;
}

/** Aliases expanded at most this often (yaml's own default): a file of nested aliases cannot grow without end. */
const MAX_ALIAS_COUNT = 100;

/** Where the first alias that names no anchor is (else the first alias). */
function aliasOffset(doc: Document): number {
  let first: number | undefined;
  let unresolved: number | undefined;
  visit(doc, {
    Alias(_, alias) {
      first ??= alias.range?.[0];
      if (!alias.resolve(doc)) {
        unresolved = alias.range?.[0];
        return visit.BREAK;
      }
    },
  });
  return unresolved ?? first ?? 0;
}

export function parseConfig(text: string, file: string, defaults: ConfigDefaults = {}): Config {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, merge: true }); // merge: `<<` as Lima's YAML readers take it
  const at = (offset: number) => {
    const { line, col } = lines.linePos(offset);
    return `${file}:${line}:${col}`;
  };
  if (doc.errors.length) {
    throw new ConfigError(doc.errors.map((e) => `${at(e.pos[0])}: not valid YAML: ${e.message.split("\n")[0]}`));
  }

  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) ?? {};
  } catch (err) {
    // An alias to no anchor, or too many (an alias bomb): said where the alias is.
    throw new ConfigError([`${at(aliasOffset(doc))}: ${(err as Error).message.split("\n")[0]}`]);
  }
  const result = configSchema.safeParse(data);
  if (!result.success) {
    const located = result.error.issues.flatMap((issue) => describeIssue(issue, doc.contents as Node | null));
    located.sort((a, b) => a.offset - b.offset);
    throw new ConfigError(located.map((p) => `${at(p.offset)}: ${p.text}`));
  }
  const input = result.data;
  return {
    rules: (input.portForwards ?? []).map((r) => withDefaults(defaults.hostIP && r.hostIP === undefined ? { ...r, hostIP: defaults.hostIP } : r)),
    sshLocalPort: input.ssh?.localPort || undefined,
    ipv6Loopback: input.ipv6Loopback ?? true,
    udp: {
      idleTimeoutMs: input.udp?.idleTimeout ?? DEFAULT_UDP.idleTimeoutMs,
      maxFlows: input.udp?.maxFlows ?? DEFAULT_UDP.maxFlows,
    },
    ...(input.forwarder ? { forwarder: input.forwarder } : {}),
    onConflict: input.onConflict ?? "fail",
    ssh: {
      ...(input.ssh?.overVsock !== undefined ? { overVsock: input.ssh.overVsock } : {}),
      ...(input.ssh?.address ? { address: input.ssh.address } : {}),
      ...(input.ssh?.vsockAddress ? { vsockAddress: input.ssh.vsockAddress } : {}),
      ...(input.ssh?.user ? { user: input.ssh.user } : {}),
      ...(input.ssh?.identity ? { identity: input.ssh.identity } : {}),
    },
  };
}

/** Finds the YAML node for a path, or the deepest one that exists, to point at. */
function locate(root: Node | null, path: PropertyKey[], key?: string): number {
  let node: unknown = root;
  let offset = 0;
  for (const step of [...path, ...(key !== undefined ? [key] : [])]) {
    const range = (node as { range?: [number, number] } | null)?.range;
    if (range) offset = range[0];
    if (!node || typeof (node as { get?: unknown }).get !== "function") return offset;
    if (isMap(node) && step === key) {
      // An unknown key: point at the key itself, not its value.
      const pair = node.items.find((p) => isScalar(p.key) && p.key.value === key);
      return (pair?.key as Node | undefined)?.range?.[0] ?? offset;
    }
    node = (node as { get(k: unknown, keep: true): unknown }).get(step, true);
  }
  return (node as { range?: [number, number] } | null)?.range?.[0] ?? offset;
}

function describeIssue(issue: z.core.$ZodIssue, root: Node | null): { offset: number; text: string }[] {
  const path = issue.path;
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((key) => ({ offset: locate(root, path, key), text: `${fieldName([...path, key])}: unknown field` }));
  }
  const name = fieldName(path);
  return [{ offset: locate(root, path), text: `${name ? `${name}: ` : ""}${issue.message}` }];
}
