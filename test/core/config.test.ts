// Config files: what is accepted, and for each malformed file the exact error.
import { describe, expect, test } from "bun:test";
import { ConfigError, parseConfig } from "../../src/core/config.ts";

function errorsOf(text: string): string[] {
  try {
    parseConfig(text, "lima.yaml");
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error("the config was accepted");
}

describe("aliases", () => {
  test("an alias to no anchor is an error at the alias, not a crash", () => {
    expect(errorsOf("cpus: 2\nportForwards: *nope\n")).toEqual([expect.stringMatching(/^lima\.yaml:2:15: .*nope/)]);
  });
  test("an alias bomb is an error, not a file that grows without end", () => {
    const bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"];
    for (let i = 1; i < 9; i++) bomb.push(`${"abcdefghij"[i]}: &${"abcdefghij"[i]} [${Array(9).fill(`*${"abcdefghij"[i - 1]}`).join(", ")}]`);
    const problems = errorsOf(`${bomb.join("\n")}\n`);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^lima\.yaml:\d+:\d+: .*alias/i);
  });
  test("an anchor and its alias still work", () => {
    expect(parseConfig("rule: &r {guestPort: 80}\nportForwards: [*r]\n", "c.yaml").rules[0]!.guestPortRange).toEqual([80, 80]);
  });
  test("merge keys (<<) merge, as Lima's YAML readers do: in a rule and under ssh, never dropped", () => {
    const config = parseConfig("base: &b {guestPort: 80, hostIP: 127.0.0.1}\ns: &s {localPort: 60022}\nssh:\n  <<: *s\nportForwards:\n  - <<: *b\n    hostPort: 8080\n", "c.yaml");
    expect(config.rules[0]!.guestPortRange).toEqual([80, 80]);
    expect(config.rules[0]!.hostPortRange).toEqual([8080, 8080]);
    expect(config.sshLocalPort).toBe(60022);
  });
  test("a merged field that is wrong is named", () => {
    expect(errorsOf("base: &b {guestPort: 99999}\nportForwards:\n  - <<: *b\n")).toEqual([expect.stringMatching(/^lima\.yaml:\d+:\d+: portForwards\[0\]\.guestPort: /)]);
  });
});

describe("accepted configs", () => {
  test("an empty file, and a file without portForwards, mean the built-in rules only", () => {
    expect(parseConfig("", "c.yaml")).toEqual({
      rules: [], sshLocalPort: undefined, ipv6Loopback: true, udp: { idleTimeoutMs: 60_000, maxFlows: 1024 }, ssh: {}, onConflict: "fail",
    });
    expect(parseConfig("cpus: 4\nportForwards: []\n", "c.yaml").rules).toEqual([]);
    expect(parseConfig("portForwards:\n", "c.yaml").rules).toEqual([]);
  });
  test("Lima keys porthole does not use are ignored; the rules get Lima's defaults", () => {
    const config = parseConfig("vmType: vz\nmounts: [{location: '~'}]\nportForwards:\n- guestPort: 8080\n  hostPort: 80\n", "c.yaml");
    expect(config.rules).toEqual([
      {
        guestIPMustBeZero: false, guestIP: "127.0.0.1", guestPortRange: [8080, 8080], guestSocket: undefined,
        hostIP: "127.0.0.1", hostPortRange: [80, 80], hostSocket: undefined, proto: "any",
        reverse: false, ignore: false, static: false,
      },
    ]);
  });
  test("UDP flow settings: globally and per rule, durations with units", () => {
    const config = parseConfig("udp: {idleTimeout: 90s, maxFlows: 16}\nportForwards:\n- {guestPort: 53, udpIdleTimeout: 500ms, udpMaxFlows: 2}\n- {guestPort: 54, udpIdleTimeout: 2}\n", "c.yaml");
    expect(config.udp).toEqual({ idleTimeoutMs: 90_000, maxFlows: 16 });
    expect(config.rules.map((r) => [r.udpIdleTimeoutMs, r.udpMaxFlows])).toEqual([[500, 2], [2000, undefined]]);
  });
  test("porthole's own key turns the ::1 listeners off", () => {
    expect(parseConfig("ipv6Loopback: false\n", "c.yaml").ipv6Loopback).toBe(false);
  });
  test("a reverse socket rule and a static rule are valid", () => {
    const config = parseConfig(
      "portForwards:\n- guestSocket: /run/docker.sock\n  hostSocket: docker.sock\n  reverse: true\n- guestPort: 9000\n  static: true\n  proto: tcp\n",
      "c.yaml",
    );
    expect(config.rules.map((r) => [r.reverse, r.static])).toEqual([[true, false], [false, true]]);
  });
});

describe("malformed configs name file, line, column, field and problem", () => {
  test.each([
    ["bad YAML", "portForwards: [\n", ["lima.yaml:2:1: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]"]],
    ["duplicate key", "portForwards: []\nportForwards: []\n", ["lima.yaml:2:1: not valid YAML: Map keys must be unique"]],
    ["not a mapping", "- 1\n- 2\n", ["lima.yaml:1:1: the config must be a mapping of keys to values"]],
    ["portForwards not a list", "portForwards: yes\n", ["lima.yaml:1:15: portForwards: must be a list of rules"]],
    ["a rule that is not a mapping", "portForwards:\n  - 8080\n", ["lima.yaml:2:5: portForwards[0]: a rule must be a mapping, not 8080"]],
    ["port out of range", "portForwards:\n- guestPort: 1\n- guestPortRange: [1, 70000]\n", [
      "lima.yaml:3:23: portForwards[1].guestPortRange: 70000 is not a port (1-65535)",
    ]],
    ["port zero", "portForwards:\n- hostPort: 0\n", ["lima.yaml:2:13: portForwards[0].hostPort: 0 is not a port (1-65535)"]],
    ["port of the wrong type", "portForwards:\n- guestPort: \"8080\"\n", ["lima.yaml:2:14: portForwards[0].guestPort: \"8080\" is not a number"]],
    ["fractional port", "portForwards:\n- guestPort: 80.5\n", ["lima.yaml:2:14: portForwards[0].guestPort: 80.5 is not a whole number"]],
    ["range that is not a pair", "portForwards:\n- guestPortRange: [1000]\n", ["lima.yaml:2:19: portForwards[0].guestPortRange: must be a [low, high] pair of ports"]],
    ["range upside down", "portForwards:\n- guestPortRange: [2000, 1000]\n  hostPortRange: [2000, 1000]\n", [
      "lima.yaml:2:19: portForwards[0].guestPortRange: [2000,1000] is not a range: the high port is below the low one",
      "lima.yaml:3:18: portForwards[0].hostPortRange: [2000,1000] is not a range: the high port is below the low one",
    ]],
    ["ranges of unequal length", "portForwards:\n- guestPortRange: [3000, 3009]\n  hostPortRange: [2000, 2001]\n", [
      "lima.yaml:3:18: portForwards[0].hostPortRange: covers 2 ports but guestPortRange covers 10",
    ]],
    ["guestPort not the start of its range", "portForwards:\n- guestPort: 80\n  guestPortRange: [81, 82]\n  hostPortRange: [81, 82]\n", [
      "lima.yaml:2:14: portForwards[0].guestPort: 80 must equal guestPortRange[0] (81)",
    ]],
    ["hostPort not the start of its range", "portForwards:\n- hostPort: 80\n  hostPortRange: [81, 81]\n  guestPort: 81\n", [
      "lima.yaml:2:13: portForwards[0].hostPort: 80 must equal hostPortRange[0] (81)",
    ]],
    ["reverse without sockets", "portForwards:\n- guestPort: 80\n  reverse: true\n", ["lima.yaml:3:12: portForwards[0].reverse: needs both guestSocket and hostSocket"]],
    ["relative guestSocket", "portForwards:\n- guestSocket: run/x.sock\n  hostSocket: x.sock\n", [
      "lima.yaml:2:16: portForwards[0].guestSocket: \"run/x.sock\" must be an absolute path",
    ]],
    ["guestPort with guestSocket", "portForwards:\n- guestSocket: /run/x.sock\n  guestPort: 80\n", [
      "lima.yaml:3:14: portForwards[0].guestPort: must not be set together with guestSocket",
    ]],
    ["hostSocket from a range", "portForwards:\n- guestPortRange: [80, 81]\n  hostSocket: x.sock\n", [
      "lima.yaml:3:15: portForwards[0].hostSocket: can only be mapped from a single port or socket, not a range",
    ]],
    ["mustBeZero with another IP", "portForwards:\n- guestIPMustBeZero: true\n  guestIP: 127.0.0.1\n", [
      "lima.yaml:2:22: portForwards[0].guestIPMustBeZero: can only be true when guestIP is 0.0.0.0",
    ]],
    ["not an IP", "portForwards:\n- hostIP: localhost\n", ["lima.yaml:2:11: portForwards[0].hostIP: \"localhost\" is not an IP address"]],
    ["unknown proto", "portForwards:\n- proto: sctp\n", ["lima.yaml:2:10: portForwards[0].proto: \"sctp\" is not one of tcp, udp, any"]],
    ["not a boolean", "portForwards:\n- ignore: \"yes\"\n", ["lima.yaml:2:11: portForwards[0].ignore: \"yes\" is not true or false"]],
    ["a duration without a unit we know", "udp:\n  idleTimeout: 1 fortnight\n", ["lima.yaml:2:16: udp.idleTimeout: \"1 fortnight\" is not a duration (e.g. 60s, 500ms, 2m)"]],
    ["unknown key in udp", "udp: {idle: 5}\n", ["lima.yaml:1:7: udp.idle: unknown field"]],
    ["an empty label", "portForwards:\n- label: \"\"\n", ["lima.yaml:2:10: portForwards[0].label: must not be empty"]],
    ["a label too long", `portForwards:\n- label: ${"x".repeat(101)}\n`, ["lima.yaml:2:10: portForwards[0].label: must be at most 100 characters"]],
    ["an empty ssh user", "ssh: {user: \"\"}\n", ["lima.yaml:1:13: ssh.user: must not be empty"]],
    ["unknown key in a rule", "portForwards:\n- guestPort: 80\n  hostPorts: 8080\n", ["lima.yaml:3:3: portForwards[0].hostPorts: unknown field"]],
    ["several problems, in file order", "portForwards:\n- proto: x\n- guestPort: -1\n", [
      "lima.yaml:2:10: portForwards[0].proto: \"x\" is not one of tcp, udp, any",
      "lima.yaml:3:14: portForwards[1].guestPort: -1 is not a port (1-65535)",
    ]],
  ])("%s", (_name, text, expected) => {
    expect(errorsOf(text)).toEqual(expected);
  });
});
