// The config file's schema: porthole's own keys plus Lima's `portForwards` (and
// `ssh.localPort`), so that a Lima instance file is a valid porthole config as it is.
// Field checks are declared per field; Lima's cross-field rules are refinements.
import { isAbsolute } from "node:path";
import { z } from "zod";
import { isIP } from "./address.ts";
import { parseDuration } from "./duration.ts";
import { parseTransportAddress } from "./transport-address.ts";
import { globToRegExp } from "./owner-match.ts";
import { withDefaults, type RuleInput } from "./rules.ts";

const show = (v: unknown) => (typeof v === "string" ? JSON.stringify(v) : String(v));

const port = z
  .number({ error: (iss) => `${show(iss.input)} is not a number` })
  .int({ error: (iss) => `${show(iss.input)} is not a whole number` })
  .min(1, { error: (iss) => `${show(iss.input)} is not a port (1-65535)` })
  .max(65535, { error: (iss) => `${show(iss.input)} is not a port (1-65535)` });

const portRange = z.tuple([port, port], { error: () => "must be a [low, high] pair of ports" });

const ip = z
  .string({ error: (iss) => `${show(iss.input)} is not an IP address` })
  .refine(isIP, { error: (iss) => `${show(iss.input)} is not an IP address` });

/** A duration: seconds as a number, or a string with a unit (`500ms`, `60s`, `2m`), in ms. */
const duration = z
  .union([z.number(), z.string()], { error: (iss) => `${show(iss.input)} is not a duration (e.g. 60s, 500ms, 2m)` })
  .transform((v, ctx) => {
    const ms = parseDuration(v);
    if (Number.isNaN(ms)) ctx.addIssue({ code: "custom", message: `${show(v)} is not a duration (e.g. 60s, 500ms, 2m)` });
    return ms;
  });
const count = z
  .number({ error: (iss) => `${show(iss.input)} is not a number` })
  .int({ error: (iss) => `${show(iss.input)} is not a whole number` })
  .min(1, { error: (iss) => `${show(iss.input)} must be at least 1` });

const conflictPolicy = z.enum(["fail", "next-free"], { error: (iss) => `${show(iss.input)} is not one of fail, next-free` });

const bool = z.boolean({ error: (iss) => `${show(iss.input)} is not true or false` });
const path = z.string({ error: (iss) => `${show(iss.input)} is not a path` }).min(1, { error: "must not be empty" });

/** A non-empty, one-line string for the owner keys. */
const ownerText = (what: string) =>
  z
    .string({ error: (iss) => `${show(iss.input)} is not ${what} (a string)` })
    .min(1, { error: "must not be empty" })
    .max(256, { error: "must be at most 256 characters" })
    .refine((s) => !/[\u0000-\u001f\u007f]/.test(s), { error: (iss) => `${show(iss.input)} must not contain control characters` });

/** Longest unix socket path the kernel takes (sun_path is 108 bytes with the NUL). */
const UNIX_PATH_MAX = 107;

export const ruleSchema = z
  .strictObject({
    guestIPMustBeZero: bool.optional(),
    guestIP: ip.optional(),
    guestPort: port.optional(),
    guestPortRange: portRange.optional(),
    guestSocket: path.optional(),
    hostIP: ip.optional(),
    hostPort: port.optional(),
    hostPortRange: portRange.optional(),
    hostSocket: path.max(UNIX_PATH_MAX, { error: `must be at most ${UNIX_PATH_MAX} characters (a unix socket path)` }).optional(),
    proto: z.enum(["tcp", "udp", "any"], { error: (iss) => `${show(iss.input)} is not one of tcp, udp, any` }).optional(),
    reverse: bool.optional(),
    ignore: bool.optional(),
    static: bool.optional(),
    // porthole's own (a Lima file has none of them)
    udpIdleTimeout: duration.optional(),
    udpMaxFlows: count.optional(),
    label: z
      .string({ error: (iss) => `${show(iss.input)} is not a label (a string)` })
      .min(1, { error: "must not be empty" })
      .max(100, { error: "must be at most 100 characters" })
      .optional(),
    onConflict: conflictPolicy.optional(),
    guestProcess: ownerText("a command glob").superRefine((glob, ctx) => {
      const re = globToRegExp(glob);
      if (typeof re === "string") ctx.addIssue({ code: "custom", message: `${show(glob)} is not a glob: ${re}` });
    }).optional(),
    guestContainer: ownerText("a container name or id").optional(),
  }, { error: (iss) => (iss.code === "invalid_type" ? `a rule must be a mapping, not ${show(iss.input)}` : undefined) })
  .superRefine((input, ctx) => {
    // Lima's cross-field checks (pkg/limayaml/validate.go), on the rule with defaults filled in.
    const r = withDefaults(input as RuleInput);
    const fail = (field: string, message: string) => ctx.addIssue({ code: "custom", path: [field], message });
    const span = (range: [number, number]) => range[1] - range[0];
    if (r.guestIPMustBeZero && r.guestIP !== "0.0.0.0") fail("guestIPMustBeZero", "can only be true when guestIP is 0.0.0.0");
    if (input.guestPort !== undefined && input.guestSocket) fail("guestPort", "must not be set together with guestSocket");
    if (input.guestPort !== undefined && input.guestPort !== r.guestPortRange[0]) fail("guestPort", `${input.guestPort} must equal guestPortRange[0] (${r.guestPortRange[0]})`);
    if (input.hostPort !== undefined && input.hostSocket) fail("hostPort", "must not be set together with hostSocket");
    if (input.hostPort !== undefined && input.hostPort !== r.hostPortRange[0]) fail("hostPort", `${input.hostPort} must equal hostPortRange[0] (${r.hostPortRange[0]})`);
    if (span(r.guestPortRange) < 0) fail("guestPortRange", `[${r.guestPortRange}] is not a range: the high port is below the low one`);
    if (span(r.hostPortRange) < 0) fail("hostPortRange", `[${r.hostPortRange}] is not a range: the high port is below the low one`);
    if (r.guestSocket && !isAbsolute(r.guestSocket)) fail("guestSocket", `${show(r.guestSocket)} must be an absolute path`);
    if (r.guestSocket && !r.hostSocket && span(r.hostPortRange) > 0) fail("guestSocket", "can only be mapped to a single port or socket, not a range");
    if (r.hostSocket && !r.guestSocket && span(r.guestPortRange) > 0) fail("hostSocket", "can only be mapped from a single port or socket, not a range");
    if (!r.hostSocket && span(r.guestPortRange) >= 0 && span(r.hostPortRange) >= 0 && span(r.guestPortRange) !== span(r.hostPortRange)) {
      fail("hostPortRange", `covers ${span(r.hostPortRange) + 1} ports but guestPortRange covers ${span(r.guestPortRange) + 1}`);
    }
    if (r.reverse && !(r.guestSocket && r.hostSocket)) fail("reverse", "needs both guestSocket and hostSocket");
    // An owner is known only for a port something listens on: a socket or static rule has none.
    for (const key of ["guestProcess", "guestContainer"] as const) {
      if (r[key] === undefined) continue;
      if (r.guestSocket) fail(key, "must not be set together with guestSocket (only guest ports have an owner)");
      else if (r.static) fail(key, "must not be set together with static (a static forward is made before anything listens)");
    }
  }, { when: (payload) => payload.issues.length === 0 }); // fields first: no follow-on errors from a bad field

const transportAddress = z.string({ error: (iss) => `${show(iss.input)} is not an address` }).superRefine((text, ctx) => {
  try {
    parseTransportAddress(text);
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message });
  }
});

export const configSchema = z.looseObject(
  {
    portForwards: z.array(ruleSchema, { error: () => "must be a list of rules" }).nullish(),
    /** porthole: which data path carries TCP (LIMA_SSH_PORT_FORWARDER and --forwarder win). */
    forwarder: z.enum(["auto", "fast", "grpc", "ssh"], { error: (iss) => `${show(iss.input)} is not one of auto, fast, grpc, ssh` }).optional(),
    ssh: z.looseObject(
      {
        // Lima's keys
        localPort: z.union([z.literal(0), port]).optional(),
        overVsock: bool.optional(),
        // porthole's keys, for the SSH forwarder
        address: transportAddress.optional(),
        vsockAddress: transportAddress.optional(),
        user: z.string({ error: (iss) => `${show(iss.input)} is not a user name` }).min(1, { error: "must not be empty" }).optional(),
        identity: path.optional(),
      },
      { error: () => "must be a mapping" },
    ).nullish(),
    /** porthole: a forward to host 127.0.0.1 also listens on ::1 (so `localhost` works either way). */
    ipv6Loopback: bool.optional(),
    /** porthole: what a forward does when its host port is taken (a rule may set its own). */
    onConflict: conflictPolicy.optional(),
    /** porthole: defaults for UDP forwards (a rule may set its own). */
    udp: z.strictObject({ idleTimeout: duration.optional(), maxFlows: count.optional() }, { error: (iss) => (iss.code === "invalid_type" ? "must be a mapping" : undefined) }).optional(),
  },
  { error: () => "the config must be a mapping of keys to values" },
);

export type ConfigInput = z.infer<typeof configSchema>;
