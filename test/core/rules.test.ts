// The built-in rules that apply before the config file exists (Lima's defaults).
import { describe, expect, test } from "bun:test";
import { planForwards } from "../../src/core/forward-plan.ts";
import { decide, rulesInForce, withDefaults } from "../../src/core/rules.ts";

const builtins = rulesInForce([]);
const tcp = (ip: string, port: number) => ({ protocol: "tcp", ip, port });

describe("built-in rules", () => {
  test.each(["127.0.0.1", "::1", "0.0.0.0", "::"])("guest %s:8080 goes to host 127.0.0.1:8080", (ip) => {
    expect(decide(tcp(ip, 8080), builtins)).toEqual({ kind: "forward", hostIP: "127.0.0.1", hostPort: 8080, origin: "built-in" });
  });
  test.each(["127.0.0.1", "0.0.0.0", "::", "192.168.5.15"])("guest port 22 on %s is never forwarded", (ip) => {
    expect(decide(tcp(ip, 22), builtins).kind).toBe("ignore");
  });
  test("a bind on another address is not forwarded", () => {
    expect(decide(tcp("127.0.0.2", 3000), builtins)).toEqual({ kind: "none" });
    expect(decide(tcp("192.168.5.15", 3000), builtins)).toEqual({ kind: "none" });
  });
  test("UDP follows the same rules (proto any)", () => {
    expect(decide({ protocol: "udp", ip: "127.0.0.1", port: 5353 }, builtins).kind).toBe("forward");
  });
  test("the host's SSH port is ignored too when given", () => {
    expect(decide(tcp("127.0.0.1", 60022), rulesInForce([], 60022)).kind).toBe("ignore");
  });
});

describe("defaults", () => {
  test("an empty rule forwards guest 127.0.0.1, every port, to host 127.0.0.1", () => {
    expect(withDefaults({})).toMatchObject({
      guestIP: "127.0.0.1",
      guestIPMustBeZero: false,
      guestPortRange: [1, 65535],
      hostIP: "127.0.0.1",
      hostPortRange: [1, 65535],
      proto: "any",
    });
  });
  test("guestIP 0.0.0.0 means must-be-zero unless said otherwise; :: never does", () => {
    expect(withDefaults({ guestIP: "0.0.0.0" }).guestIPMustBeZero).toBe(true);
    expect(withDefaults({ guestIP: "0.0.0.0", guestIPMustBeZero: false }).guestIPMustBeZero).toBe(false);
    expect(withDefaults({ guestIP: "::" }).guestIPMustBeZero).toBe(false);
  });
  test("a user rule decides before the fallback and maps the port range", () => {
    const rules = rulesInForce([withDefaults({ guestPortRange: [3000, 3009], hostPortRange: [2000, 2009] })]);
    expect(decide(tcp("127.0.0.1", 3005), rules)).toEqual({ kind: "forward", hostIP: "127.0.0.1", hostPort: 2005, origin: 0 });
  });
});

describe("forward plan", () => {
  const udp = { idleTimeoutMs: 60_000, maxFlows: 1024 };
  const base = { udp };
  const v4only = { ...base, ipv6Loopback: false };
  const dual = { ...base, ipv6Loopback: true };
  test("guest 0.0.0.0:P and [::]:P share one host listener, dialing the IPv4 bind", () => {
    const plan = planForwards([tcp("::", 8080), tcp("0.0.0.0", 8080)], builtins, v4only);
    expect([...plan.forwards.keys()]).toEqual(["tcp 127.0.0.1:8080"]);
    expect(plan.forwards.get("tcp 127.0.0.1:8080")!.guestAddr).toBe("0.0.0.0:8080");
  });
  test("a forward to host 127.0.0.1 also listens on ::1, as one forward (its listeners stand or fall together)", () => {
    const plan = planForwards([tcp("::", 8080), tcp("0.0.0.0", 8080)], builtins, dual);
    expect([...plan.forwards.values()].map((f) => [f.key, f.ipv6Companion])).toEqual([["tcp 127.0.0.1:8080", true]]);
  });
  test("a forward of its own on [::1]:P takes the place of another's companion there", () => {
    const rules = rulesInForce([withDefaults({ guestPort: 80, hostPort: 8080, hostIP: "::1" }), withDefaults({ guestPort: 81, hostPort: 8080 })]);
    const plan = planForwards([tcp("127.0.0.1", 80), tcp("127.0.0.1", 81)], rules, dual);
    expect([...plan.forwards.values()].map((f) => [f.key, f.ipv6Companion])).toEqual([
      ["tcp [::1]:8080", false],
      ["tcp 127.0.0.1:8080", false],
    ]);
  });
  test("explicit host addresses get no companion", () => {
    const rules = rulesInForce([withDefaults({ guestPort: 80, hostPort: 8080, hostIP: "::1" }), withDefaults({ guestPort: 81, hostIP: "0.0.0.0" })]);
    const plan = planForwards([tcp("127.0.0.1", 80), tcp("127.0.0.1", 81)], rules, dual);
    expect([...plan.forwards.keys()]).toEqual(["tcp [::1]:8080", "tcp 0.0.0.0:81"]);
  });
  test("a host socket forward", () => {
    const rules = rulesInForce([withDefaults({ guestPort: 5000, hostSocket: "/run/p/5000.sock" })]);
    const plan = planForwards([tcp("127.0.0.1", 5000)], rules, v4only);
    expect(plan.forwards.get("tcp unix:/run/p/5000.sock")?.host).toEqual({ kind: "unix", path: "/run/p/5000.sock" });
  });
  test("static rules forward their whole range without guest listeners; the dynamic path skips it", () => {
    const rules = rulesInForce([
      withDefaults({ guestPortRange: [7000, 7002], hostPortRange: [17000, 17002], static: true, proto: "tcp" }),
      withDefaults({ guestIP: "0.0.0.0", guestPort: 7100, static: true, guestIPMustBeZero: false, proto: "tcp" }),
    ]);
    const plan = planForwards([tcp("0.0.0.0", 7001), tcp("127.0.0.1", 7003)], rules, v4only);
    const summary = [...plan.forwards.values()].map((f) => `${f.key} -> ${f.guestAddr} ${f.static ? "static" : "dynamic"}`);
    expect(summary).toEqual([
      "tcp 127.0.0.1:17000 -> 127.0.0.1:7000 static",
      "tcp 127.0.0.1:17001 -> 127.0.0.1:7001 static",
      "tcp 127.0.0.1:17002 -> 127.0.0.1:7002 static",
      "tcp 127.0.0.1:7100 -> 127.0.0.1:7100 static",
      "tcp 127.0.0.1:7003 -> 127.0.0.1:7003 dynamic",
    ]);
  });
  test("a static rule with proto any forwards TCP and UDP", () => {
    const rules = rulesInForce([withDefaults({ guestPort: 5353, static: true })]);
    expect([...planForwards([], rules, v4only).forwards.keys()]).toEqual(["tcp 127.0.0.1:5353", "udp 127.0.0.1:5353"]);
  });
  test("UDP servers in the ephemeral range are forwarded (the guest reports only servers); DHCP's 68 only by an explicit rule", () => {
    const udpPort = (port: number) => ({ protocol: "udp", ip: "0.0.0.0", port });
    const plan = planForwards([udpPort(68), udpPort(40011), udpPort(51820), udpPort(5353), tcp("127.0.0.1", 40000)], builtins, v4only);
    expect([...plan.forwards.keys()].sort()).toEqual(["tcp 127.0.0.1:40000", "udp 127.0.0.1:40011", "udp 127.0.0.1:51820", "udp 127.0.0.1:5353"]);
    expect(plan.notForwarded.map((n) => `${n.port.port} ${n.reason}`)).toEqual(["68 the DHCP client's port"]);
    const explicit = rulesInForce([withDefaults({ guestPort: 68, proto: "udp", guestIP: "0.0.0.0", hostPort: 10068 })]);
    expect([...planForwards([udpPort(68)], explicit, v4only).forwards.keys()]).toEqual(["udp 127.0.0.1:10068"]);
  });
  test("unix socket rules: forward a guest socket to a host socket, and reverse", () => {
    const rules = rulesInForce([
      withDefaults({ guestSocket: "/var/run/docker.sock", hostSocket: "/h/docker.sock" }),
      withDefaults({ guestSocket: "/run/agent.sock", hostSocket: "/h/agent.sock", reverse: true }),
    ]);
    const plan = planForwards([], rules, v4only);
    expect([...plan.forwards.values()].map((f) => [f.key, f.protocol, f.guestAddr])).toEqual([["unix unix:/h/docker.sock", "unix", "/var/run/docker.sock"]]);
    expect([...plan.reverses.values()]).toEqual([{ key: "reverse /run/agent.sock", guestSocket: "/run/agent.sock", hostSocket: "/h/agent.sock", origin: 1 }]);
  });
  test("ports the rules skip are listed with the reason", () => {
    const plan = planForwards([tcp("0.0.0.0", 22), tcp("127.0.0.2", 3000)], builtins, v4only);
    expect(plan.forwards.size).toBe(0);
    expect(plan.notForwarded.map((n) => n.reason).sort()).toEqual(["ignored by rule", "no rule matches"]);
  });
});
