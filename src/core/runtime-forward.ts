// Forwards added at run time through the control socket (`porthole forward add`): parsing
// and checking a request, and the static rule each one stands for. No I/O.
import { isIP } from "./address.ts";
import { formatHostPort } from "./address.ts";
import { withDefaults, type Rule } from "./rules.ts";

export interface RuntimeForward {
  protocol: "tcp" | "udp";
  guestIP: string;
  guestPort: number;
  hostIP: string;
  hostPort: number;
}

/** What `POST /forwards` and `DELETE /forwards` take. */
export interface ForwardRequest {
  guest: string;
  host?: string;
  proto?: "tcp" | "udp";
  save?: boolean;
}

/** A request the agent refuses, with the HTTP status and a message for the user. */
export class RequestError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** At most this many forwards added at run time (each holds listeners). */
export const MAX_RUNTIME_FORWARDS = 1000;

const KEYS = new Set(["guest", "host", "proto", "save"]);

/** `8080`, `127.0.0.1:8080` or `[::1]:8080`: an optional IP literal and a port. */
export function parseEndpoint(text: string, what: string): { ip?: string; port: number } {
  const m = /^(?:(?:\[([0-9a-fA-F:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):)?(\d{1,5})$/.exec(text);
  if (!m) throw new RequestError(400, `${what} ${JSON.stringify(text)} is not [IP:]PORT (e.g. 8080, 127.0.0.1:8080 or [::1]:8080)`);
  const ip = m[1] ?? m[2];
  if (ip !== undefined && !isIP(ip)) throw new RequestError(400, `${what} ${JSON.stringify(text)}: ${JSON.stringify(ip)} is not an IP address`);
  const port = Number(m[3]);
  if (port < 1 || port > 65535) throw new RequestError(400, `${what} ${JSON.stringify(text)}: ${port} is not a port (1-65535)`);
  return { ...(ip !== undefined ? { ip } : {}), port };
}

/** Checks a request body (parsed JSON) and fills in the defaults. */
export function parseForwardRequest(body: unknown, defaultHostIP: string): { forward: RuntimeForward; save: boolean } {
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new RequestError(400, "the request must be a JSON object such as {\"guest\": \"8080\"}");
  const unknown = Object.keys(body).filter((k) => !KEYS.has(k));
  if (unknown.length) throw new RequestError(400, `unknown field(s) ${unknown.join(", ")} (known: guest, host, proto, save)`);
  const r = body as Record<string, unknown>;
  if (typeof r.guest !== "string") throw new RequestError(400, "guest ([GUEST_IP:]GUEST_PORT) is required and must be a string");
  if (r.host !== undefined && typeof r.host !== "string") throw new RequestError(400, "host ([HOST_IP:]HOST_PORT) must be a string");
  if (r.proto !== undefined && r.proto !== "tcp" && r.proto !== "udp") throw new RequestError(400, `proto ${JSON.stringify(r.proto)} is not tcp or udp`);
  if (r.save !== undefined && typeof r.save !== "boolean") throw new RequestError(400, "save must be true or false");
  const guest = parseEndpoint(r.guest, "guest");
  const host = r.host === undefined ? { port: guest.port } : parseEndpoint(r.host, "host");
  return {
    forward: {
      protocol: r.proto ?? "tcp",
      guestIP: guest.ip ?? "127.0.0.1",
      guestPort: guest.port,
      hostIP: host.ip ?? defaultHostIP,
      hostPort: host.port,
    },
    save: r.save ?? false,
  };
}

export function sameForward(a: RuntimeForward, b: RuntimeForward): boolean {
  return a.protocol === b.protocol && a.guestIP === b.guestIP && a.guestPort === b.guestPort && a.hostIP === b.hostIP && a.hostPort === b.hostPort;
}

/** `TCP guest 127.0.0.1:8080 to host 127.0.0.1:18080`. */
export function describeForward(f: RuntimeForward): string {
  return `${f.protocol.toUpperCase()} guest ${formatHostPort(f.guestIP, f.guestPort)} to host ${formatHostPort(f.hostIP, f.hostPort)}`;
}

/** The `static: true` rule a forward added at run time stands for (listening whether or not the guest does). */
export function runtimeRule(f: RuntimeForward): Rule {
  return withDefaults({ guestIP: f.guestIP, guestPort: f.guestPort, hostIP: f.hostIP, hostPort: f.hostPort, proto: f.protocol, static: true });
}

/** The same rule as one line of YAML (a flow mapping), for `--save`. */
export function ruleYaml(f: RuntimeForward): string {
  const ip = (v: string) => (v.includes(":") ? `"${v}"` : v);
  return `{guestIP: ${ip(f.guestIP)}, guestPort: ${f.guestPort}, hostIP: ${ip(f.hostIP)}, hostPort: ${f.hostPort}, proto: ${f.protocol}, static: true}`;
}
