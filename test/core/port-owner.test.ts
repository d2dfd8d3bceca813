// Who owns a port: the cgroup shapes container runtimes make, the rule keys that match an
// owner (with Lima's first-match semantics kept), and the host's checks on what the guest sent.
import { describe, expect, test } from "bun:test";
import { parseCgroupFile } from "../../src/core/cgroup.ts";
import { parseConfig } from "../../src/core/config.ts";
import { globToRegExp } from "../../src/core/owner-match.ts";
import { checkedOwner, formatOwner, type PortOwner } from "../../src/core/port-owner.ts";
import { planForwards } from "../../src/core/forward-plan.ts";
import { decide, rulesInForce, withDefaults } from "../../src/core/rules.ts";

const ID = "4f1c2a9e0b7d6c5a3e2f1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a";
const POD = "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5";

describe("the container from /proc/PID/cgroup", () => {
  const cases: [string, string, object | undefined][] = [
    ["docker, systemd driver (cgroup v2)", `0::/system.slice/docker-${ID}.scope`, { runtime: "docker", id: ID }],
    ["docker, cgroupfs driver (cgroup v1)", `12:pids:/docker/${ID}\n11:memory:/docker/${ID}`, { runtime: "docker", id: ID }],
    ["podman, systemd", `0::/machine.slice/libpod-${ID}.scope/container`, { runtime: "podman", id: ID }],
    ["podman, cgroupfs", `0::/libpod_parent/libpod-${ID}`, { runtime: "podman", id: ID }],
    ["nerdctl, systemd", `0::/system.slice/nerdctl-${ID}.scope`, { runtime: "containerd", id: ID }],
    ["containerd, cgroupfs (namespace/id)", `0::/default/${ID}`, { runtime: "containerd", id: ID }],
    ["cri-o", `0::/machine.slice/crio-${ID}.scope`, { runtime: "cri-o", id: ID }],
    [
      "Kubernetes, systemd (pod uid with _ for -)",
      `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${POD.replaceAll("-", "_")}.slice/cri-containerd-${ID}.scope`,
      { runtime: "containerd", id: ID, pod: POD },
    ],
    ["Kubernetes, cgroupfs", `0::/kubepods/besteffort/pod${POD}/${ID}`, { runtime: "containerd", id: ID, pod: POD }],
    ["a hybrid host: the v2 line first, then v1", `4:memory:/process_api/a8eff332af4d18f1\n0::/system.slice/docker-${ID}.scope`, { runtime: "docker", id: ID }],
    ["a plain service", "0::/system.slice/nginx.service", undefined],
    ["a user session", "0::/user.slice/user-1000.slice/session-3.scope", undefined],
    ["an id of the wrong length", `0::/system.slice/docker-${ID.slice(1)}.scope`, undefined],
    ["nothing", "", undefined],
  ];
  for (const [what, text, want] of cases) {
    test(what, () => expect(parseCgroupFile(text)).toEqual(want as never));
  }
});

const owner = (command: string, container?: PortOwner["container"]): PortOwner => ({ pid: 42, command, commandLine: command, user: "me", uid: 1000, ...(container ? { container } : {}) });
const port = (o?: PortOwner) => ({ protocol: "tcp", ip: "127.0.0.1", port: 3000, ...(o ? { owner: o } : {}) });

describe("rules on the owner", () => {
  test("globs: * ? [set] [!set], whole-name, escapes", () => {
    const matches = (glob: string, s: string) => (globToRegExp(glob) as RegExp).test(s);
    expect(matches("node*", "node")).toBe(true);
    expect(matches("node*", "nodejs")).toBe(true);
    expect(matches("node*", "bun-node")).toBe(false);
    expect(matches("python3.1?", "python3.12")).toBe(true);
    expect(matches("python3.1?", "python3x12")).toBe(false); // "." is a dot
    expect(matches("[jn]ava", "java")).toBe(true);
    expect(matches("[!jn]ava", "java")).toBe(false);
    expect(matches("a\\*", "a*")).toBe(true);
    expect(matches("a\\*", "ab")).toBe(false);
    expect(globToRegExp("[abc")).toContain("no closing");
  });

  test("the first rule whose process glob matches decides; others fall through to the next rules", () => {
    const rules = rulesInForce([
      withDefaults({ guestProcess: "node*", hostPortRange: [13000, 13000], guestPortRange: [3000, 3000] }),
      withDefaults({ guestProcess: "python*", ignore: true }),
    ]);
    expect(decide(port(owner("node")), rules)).toMatchObject({ kind: "forward", hostPort: 13000, origin: 0 });
    expect(decide(port(owner("python3")), rules)).toEqual({ kind: "ignore", origin: 1 });
    expect(decide(port(owner("ruby")), rules)).toMatchObject({ kind: "forward", hostPort: 3000, origin: "built-in" });
  });

  test("a port whose owner is unknown (a stock Lima guest) matches no owner rule", () => {
    const rules = rulesInForce([withDefaults({ guestProcess: "*", ignore: true }), withDefaults({ guestContainer: "web", ignore: true })]);
    expect(decide(port(), rules)).toMatchObject({ kind: "forward", origin: "built-in" });
  });

  test("guestContainer: the name, the id, or 12+ leading digits of it; never a process outside containers", () => {
    const c = { runtime: "docker" as const, id: ID, name: "web" };
    const rule = (guestContainer: string) => rulesInForce([withDefaults({ guestContainer, ignore: true })]);
    for (const name of ["web", ID, ID.slice(0, 12)]) expect(decide(port(owner("nginx", c)), rule(name)).kind).toBe("ignore");
    for (const name of ["we", ID.slice(0, 11), "db"]) expect(decide(port(owner("nginx", c)), rule(name)).kind).toBe("forward");
    expect(decide(port(owner("nginx")), rule("web")).kind).toBe("forward");
  });

  test("both keys must hold, and the Lima keys still apply", () => {
    const c = { runtime: "podman" as const, id: ID, name: "api" };
    const rules = rulesInForce([withDefaults({ guestProcess: "node", guestContainer: "api", guestPortRange: [4000, 4000], ignore: true })]);
    expect(decide({ ...port(owner("node", c)), port: 4000 }, rules).kind).toBe("ignore");
    expect(decide({ ...port(owner("node", c)), port: 4001 }, rules).kind).toBe("forward");
    expect(decide({ ...port(owner("node")), port: 4000 }, rules).kind).toBe("forward");
    expect(decide({ ...port(owner("deno", c)), port: 4000 }, rules).kind).toBe("forward");
  });

  test("a static forward (a rule or one added at run time) shows the owner of the guest socket it dials", () => {
    const rules = [
      { rule: withDefaults({ guestPort: 7100, hostPort: 17100, static: true, proto: "tcp" }), origin: "runtime" as const },
      ...rulesInForce([withDefaults({ guestPortRange: [7000, 7002], hostPortRange: [17000, 17002], static: true, proto: "tcp" })]),
    ];
    const ports = [
      { protocol: "tcp", ip: "0.0.0.0", port: 7000, owner: owner("node") }, // the wildcard answers on 127.0.0.1
      { protocol: "tcp", ip: "127.0.0.2", port: 7001, owner: owner("other") }, // another address: not what it dials
      { protocol: "udp", ip: "127.0.0.1", port: 7002, owner: owner("dns") }, // another protocol
      { protocol: "tcp", ip: "::", port: 7100, owner: owner("deno") },
      { protocol: "tcp", ip: "127.0.0.1", port: 7100, owner: owner("bun") }, // the exact address wins
    ];
    const plan = planForwards(ports, rules, { udp: { idleTimeoutMs: 60_000, maxFlows: 1024 }, ipv6Loopback: false });
    const owners = Object.fromEntries([...plan.forwards.values()].filter((f) => f.static).map((f) => [f.key, f.owner?.command]));
    expect(owners).toEqual({ "tcp 127.0.0.1:17000": "node", "tcp 127.0.0.1:17001": undefined, "tcp 127.0.0.1:17002": undefined, "tcp 127.0.0.1:17100": "bun" });
  });

  test("a Lima file without the keys gives the same rules as before", () => {
    const text = "portForwards:\n- guestPort: 8080\n  hostPort: 18080\n- guestIP: 0.0.0.0\n  guestIPMustBeZero: false\n  ignore: true\n";
    const rules = parseConfig(text, "lima.yaml").rules;
    expect(rules.every((r) => !("guestProcess" in r) && !("guestContainer" in r))).toBe(true);
    expect(decide({ ...port(owner("node")), port: 8080 }, rulesInForce(rules))).toMatchObject({ kind: "forward", hostPort: 18080 });
  });

  test("malformed values are named by file, line, column and field", () => {
    const bad = [
      "portForwards:",
      "- guestProcess: 42",
      "- guestProcess: \"[node\"",
      "- guestContainer: \"\"",
      "- guestSocket: /run/x.sock",
      "  hostSocket: x.sock",
      "  guestProcess: node",
      "- guestPort: 80",
      "  static: true",
      "  guestContainer: web",
      "",
    ].join("\n");
    let problems: string[] = [];
    try {
      parseConfig(bad, "c.yaml");
    } catch (err) {
      problems = (err as { problems: string[] }).problems;
    }
    expect(problems).toEqual([
      "c.yaml:2:17: portForwards[0].guestProcess: 42 is not a command glob (a string)",
      'c.yaml:3:17: portForwards[1].guestProcess: "[node" is not a glob: "[" at position 1 has no closing "]"',
      "c.yaml:4:19: portForwards[2].guestContainer: must not be empty",
      "c.yaml:7:17: portForwards[3].guestProcess: must not be set together with guestSocket (only guest ports have an owner)",
      "c.yaml:10:19: portForwards[4].guestContainer: must not be set together with static (a static forward is made before anything listens)",
    ]);
  });
});

describe("what the host takes from the guest", () => {
  const wire = { pid: 7, command: "node", command_line: "node server.js", user: "app", uid: 1000, container_runtime: "", container_id: "", container_name: "", container_pod: "" };

  test("a well-formed owner, with its container", () => {
    expect(checkedOwner({ ...wire, container_runtime: "docker", container_id: ID, container_name: "web" })).toEqual({
      owner: { pid: 7, command: "node", commandLine: "node server.js", user: "app", uid: 1000, container: { runtime: "docker", id: ID, name: "web" } },
    });
    expect(checkedOwner(null)).toEqual({});
  });

  test("control characters become ?, long strings are cut", () => {
    const { owner } = checkedOwner({ ...wire, command: "evil\n\u001b[31m", command_line: "x".repeat(5000) });
    expect(owner!.command).toBe("evil??[31m");
    expect(owner!.commandLine).toHaveLength(1024);
    expect(owner!.commandLine.endsWith("…")).toBe(true);
    expect(formatOwner(owner)).toBe("evil??[31m[7] app");
  });

  test("wrong types, impossible pids and malformed container ids refuse the owner", () => {
    expect(checkedOwner({ ...wire, command: 5 }).error).toContain("not a string");
    expect(checkedOwner({ ...wire, pid: 0 }).error).toContain("not a process id");
    expect(checkedOwner({ ...wire, pid: 99_999_999 }).error).toContain("not a process id");
    expect(checkedOwner({ ...wire, container_runtime: "docker", container_id: "../../etc" }).error).toContain("64 hex");
    expect(checkedOwner({ ...wire, container_runtime: "lxc", container_id: ID }).error).toContain("runtime");
    expect(checkedOwner("x").error).toContain("not a message");
  });
});
