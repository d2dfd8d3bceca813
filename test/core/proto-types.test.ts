// The hand-kept TypeScript types of the protos (src/proto/guest-service.ts) must say what
// proto/*.proto say: every field, with a matching type. Read from both files, so adding a
// field to a .proto without its type (or the other way round) fails here.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type protobuf from "protobufjs";
import { loadRoot } from "../../src/proto/guest-service.ts";

const SOURCE = readFileSync(join(import.meta.dir, "../../src/proto/guest-service.ts"), "utf8");

/** TypeScript interface -> the proto message it types. */
const TYPES: Record<string, string> = {
  IPPort: "IPPort",
  OwnedIPPort: "porthole.OwnedIPPort",
  WireOwner: "porthole.PortOwner",
  Timestamp: "google.protobuf.Timestamp",
  Info: "Info",
  GuestEvent: "Event",
  TunnelMessage: "porthole.ExtendedTunnelMessage",
  HelloResponse: "porthole.HelloResponse",
  ReverseEvent: "porthole.ReverseEvent",
};

/** The fields of `export interface NAME { ... }` as name -> type text (comments dropped). */
function interfaceFields(name: string): Map<string, string> {
  const body = new RegExp(`export interface ${name} \\{([^}]*)\\}`).exec(SOURCE)?.[1];
  if (body === undefined) throw new Error(`no interface ${name}`);
  const fields = new Map<string, string>();
  for (const m of body.replace(/\/\*\*[\s\S]*?\*\//g, "").matchAll(/^\s*(\w+)\??:\s*([^;]+);/gm)) fields.set(m[1]!, m[2]!.trim());
  return fields;
}

/** What TypeScript type a proto field decodes to (protoLoader: longs as String, bytes as Buffer). */
function expectedType(field: protobuf.Field): string[] {
  const scalar: Record<string, string[]> = {
    string: ["string"],
    bool: ["boolean"],
    bytes: ["Buffer"],
    int32: ["number"],
    uint32: ["number"],
    int64: ["string | number"],
    uint64: ["string | number"],
  };
  const base = scalar[field.type] ?? Object.entries(TYPES).filter(([, msg]) => msg.endsWith(field.type)).flatMap(([ts]) => [ts, `${ts} | null`]);
  return field.repeated ? base.map((t) => `${t}[]`) : base;
}

test("every hand-kept proto type has exactly the .proto's fields, with matching types", () => {
  const root = loadRoot();
  const problems: string[] = [];
  for (const [ts, message] of Object.entries(TYPES)) {
    const type = root.lookupType(message);
    const fields = interfaceFields(ts);
    for (const field of type.fieldsArray) {
      const got = fields.get(field.name);
      if (got === undefined) problems.push(`${ts} lacks ${message}.${field.name}`);
      else if (!expectedType(field).includes(got)) problems.push(`${ts}.${field.name} is ${got}, but ${message} says ${field.repeated ? "repeated " : ""}${field.type}`);
    }
    for (const name of fields.keys()) if (!type.fields[name]) problems.push(`${ts}.${name} is not in ${message}`);
  }
  expect(problems).toEqual([]);
});
