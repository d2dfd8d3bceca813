// Requests to add or remove a forward at run time: what is accepted, the defaults, and the
// message for what is not; and the rule each one stands for (YAML included).
import { describe, expect, test } from "bun:test";
import { parseConfig } from "../../src/core/config.ts";
import { parseForwardRequest, RequestError, ruleYaml, runtimeRule } from "../../src/core/runtime-forward.ts";

const refusal = (body: unknown) => {
  try {
    parseForwardRequest(body, "127.0.0.1");
  } catch (err) {
    expect(err).toBeInstanceOf(RequestError);
    return `${(err as RequestError).status} ${(err as Error).message}`;
  }
  throw new Error("accepted");
};

describe("parseForwardRequest", () => {
  test("fills in guest 127.0.0.1, the same host port, TCP, and the agent's host IP", () => {
    expect(parseForwardRequest({ guest: "8080" }, "127.0.0.7")).toEqual({
      forward: { protocol: "tcp", guestIP: "127.0.0.1", guestPort: 8080, hostIP: "127.0.0.7", hostPort: 8080 },
      save: false,
    });
    expect(parseForwardRequest({ guest: "[::1]:53", host: "[::1]:5353", proto: "udp", save: true }, "127.0.0.1")).toEqual({
      forward: { protocol: "udp", guestIP: "::1", guestPort: 53, hostIP: "::1", hostPort: 5353 },
      save: true,
    });
    expect(parseForwardRequest({ guest: "0.0.0.0:80", host: "18080" }, "127.0.0.1").forward).toMatchObject({ guestIP: "0.0.0.0", hostIP: "127.0.0.1", hostPort: 18080 });
  });

  test("refuses what is not a forward, saying what is wrong", () => {
    expect(refusal(null)).toBe('400 the request must be a JSON object such as {"guest": "8080"}');
    expect(refusal({})).toBe("400 guest ([GUEST_IP:]GUEST_PORT) is required and must be a string");
    expect(refusal({ guest: "0" })).toBe('400 guest "0": 0 is not a port (1-65535)');
    expect(refusal({ guest: "localhost:80" })).toContain('400 guest "localhost:80" is not [IP:]PORT');
    expect(refusal({ guest: "::1:80" })).toContain("is not [IP:]PORT");
    expect(refusal({ guest: "[fe80::zz]:80" })).toContain("is not [IP:]PORT");
    expect(refusal({ guest: "300.1.1.1:80" })).toBe('400 guest "300.1.1.1:80": "300.1.1.1" is not an IP address');
    expect(refusal({ guest: "80", host: 81 })).toBe("400 host ([HOST_IP:]HOST_PORT) must be a string");
    expect(refusal({ guest: "80", proto: "any" })).toBe('400 proto "any" is not tcp or udp');
    expect(refusal({ guest: "80", save: "yes" })).toBe("400 save must be true or false");
    expect(refusal({ guest: "80", extra: 1 })).toBe("400 unknown field(s) extra (known: guest, host, proto, save)");
  });
});

test("the YAML line of a forward parses back to the same static rule", () => {
  for (const f of [
    { protocol: "tcp" as const, guestIP: "127.0.0.1", guestPort: 80, hostIP: "127.0.0.2", hostPort: 8080 },
    { protocol: "udp" as const, guestIP: "::", guestPort: 53, hostIP: "::1", hostPort: 5353 },
  ]) {
    expect(parseConfig(`portForwards:\n- ${ruleYaml(f)}\n`, "c.yaml").rules).toEqual([runtimeRule(f)]);
  }
});
