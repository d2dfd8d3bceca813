// Lima's rule test matrix (lima-reference.md §3, hack/test-port-forwarding.pl), table-driven,
// with the rules read from a Lima instance file exactly as Lima would read them.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { parseConfig } from "../../src/core/config.ts";
import { decide, rulesInForce } from "../../src/core/rules.ts";

const IPV4 = "192.0.2.10"; // stands for the host's own IPv4 (a documentation address)
const text = readFileSync(`${import.meta.dir}/../fixtures/config/lima-matrix.yaml`, "utf8").replaceAll("IPV4", IPV4);
const config = parseConfig(text, "lima-matrix.yaml");
const rules = rulesInForce(config.rules, config.sshLocalPort);

type Expect = [guest: string, host: string | "ignore" | "none", rule: number | "built-in" | null];

// [guest bind, host address (or socket), deciding rule (1-based as in the matrix)]
const MATRIX: Expect[] = [
  ["127.0.0.2:3000", "ignore", 1],
  ["0.0.0.0:3010", "ignore", 2],
  ["127.0.0.1:3011", "ignore", 2],
  ["127.0.0.3:3001", "127.0.0.1:2001", 3],
  ["0.0.0.0:3002", "127.0.0.1:2002", 3],
  ["127.0.0.2:3020", "127.0.0.1:2020", 3],
  ["127.0.0.1:3021", "127.0.0.1:2021", 3],
  ["0.0.0.0:3022", "127.0.0.1:2022", 3],
  ["[::]:3023", "127.0.0.1:2023", 3],
  ["[::1]:3024", "127.0.0.1:2024", 3],
  ["127.0.0.1:3030", `${IPV4}:2030`, 5],
  ["0.0.0.0:3031", `${IPV4}:2031`, 5],
  ["[::]:3032", `${IPV4}:2032`, 5],
  ["[::1]:3033", `${IPV4}:2033`, 5],
  ["127.0.0.1:300", "127.0.0.1:300", 6],
  ["0.0.0.0:301", "127.0.0.1:301", 6],
  ["[::]:302", "127.0.0.1:302", 6],
  ["[::1]:303", "127.0.0.1:303", 6],
  ["192.168.5.15:304", "none", null],
  ["127.0.0.1:305", "127.0.0.1:305", 7],
  ["0.0.0.0:306", "127.0.0.1:306", 7],
  ["[::]:307", "127.0.0.1:307", 7],
  ["[::1]:308", "127.0.0.1:308", 7],
  ["192.168.5.15:309", "none", null],
  ["127.0.0.1:310", "0.0.0.0:310", 8],
  ["0.0.0.0:311", "0.0.0.0:311", 8],
  ["[::]:312", "0.0.0.0:312", 8],
  ["[::1]:313", "0.0.0.0:313", 8],
  ["192.168.5.15:314", "none", null],
  ["127.0.0.1:315", "0.0.0.0:315", 9],
  ["0.0.0.0:316", "0.0.0.0:316", 9],
  ["[::]:317", "0.0.0.0:317", 9],
  ["[::1]:318", "0.0.0.0:318", 9],
  ["192.168.5.15:319", "none", null],
  ["192.168.5.15:4000", `${IPV4}:4000`, 10],
  ["[::1]:4010", "[::]:4010", 11],
  ...(["127.0.0.1", "127.0.0.2", "192.168.5.15", "0.0.0.0", "[::]", "[::1]"].flatMap((ip, i): Expect[] => [
    [`${ip}:${4020 + i}`, `${IPV4}:${4020 + i}`, 12],
    [`${ip}:${4030 + i}`, `${IPV4}:${4030 + i}`, 13],
  ])),
  ["0.0.0.0:4040", "127.0.0.1:4040", 14],
  ["[::]:4041", "127.0.0.1:4041", 14],
  ["127.0.0.1:4043", "ignore", 15],
  ["192.168.5.15:4044", "ignore", 15],
  ["0.0.0.0:8888", "0.0.0.0:8888", 16],
  ["127.0.0.1:5000", "sock:port5000.sock", 17],
  ["192.168.5.15:5001", "none", null],
  ["127.0.0.1:5002", "sock:port5002.sock", 19],
  ["192.168.5.15:5003", "none", null],
  // Always: guest port 22 is never forwarded (and neither is Lima's ssh.localPort).
  ["0.0.0.0:22", "ignore", "built-in"],
  ["127.0.0.1:22", "ignore", "built-in"],
  ["[::]:22", "ignore", "built-in"],
  ["127.0.0.1:60022", "ignore", "built-in"],
];

function parseBind(text: string) {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(text)!;
  return { protocol: "tcp", ip: m[1]!, port: Number(m[2]) };
}

describe("Lima's port forwarding test matrix", () => {
  test("the Lima instance file loads with its 20 rules", () => {
    expect(config.rules).toHaveLength(20);
    expect(config.sshLocalPort).toBe(60022);
  });

  test.each(MATRIX)("guest %s -> %s (rule %p)", (guest, host, rule) => {
    const decision = decide(parseBind(guest), rules);
    const origin = typeof rule === "number" ? rule - 1 : rule;
    if (host === "none") return void expect(decision).toEqual({ kind: "none" });
    if (host === "ignore") return void expect(decision).toEqual({ kind: "ignore", origin: origin! });
    if (host.startsWith("sock:")) {
      return void expect(decision).toEqual({ kind: "forward-socket", hostSocket: host.slice(5), origin: origin! });
    }
    const h = parseBind(host);
    expect(decision).toEqual({ kind: "forward", hostIP: h.ip, hostPort: h.port, origin: origin! });
  });

  test("rule 4 is shadowed by rule 3: it never decides", () => {
    for (let port = 3020; port <= 3029; port++) {
      for (const ip of ["127.0.0.1", "0.0.0.0", "::", "127.0.0.2"]) {
        expect(decide({ protocol: "tcp", ip, port }, rules)).toMatchObject({ origin: 2 });
      }
    }
  });
});
