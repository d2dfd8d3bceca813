import { expect, test } from "bun:test";
import { formatMetrics, formatStatusTable, type AgentStatus } from "../../src/core/status.ts";

const status: AgentStatus = {
  agent: { version: "0.1.0", pid: 42, guest: "unix:///g.sock", guestConnected: true, forwarder: "auto", forwarderReason: "the default", startedAt: "2026-01-01T00:00:00.000Z" },
  guest: { version: "0.1.0", addresses: ["10.0.0.2"] },
  forwards: [
    { key: "tcp 127.0.0.1:8080", protocol: "tcp", guestAddr: "0.0.0.0:8080", hostAddr: "127.0.0.1:8080", path: "fast", rule: 0, label: "web", state: "forwarding", since: "2026-01-01T00:00:00.000Z", connections: 2, bytesIn: 2048, bytesOut: 5 },
    { key: "tcp 127.0.0.1:5432", protocol: "tcp", guestAddr: "127.0.0.1:5432", hostAddr: "127.0.0.1:5432", path: "fast", rule: "built-in", state: "failed", lastError: "address already in use", since: "2026-01-01T00:00:50.000Z", connections: 0, bytesIn: 0, bytesOut: 0 },
  ],
  notForwarded: [{ protocol: "tcp", guestAddr: "127.0.0.2:3000", state: "not-forwarding", reason: "no rule matches" }],
  events: { forwarding: 3, failed: 1 },
};

test("the table has one line per forward and per port not forwarded", () => {
  const table = formatStatusTable(status, Date.parse("2026-01-01T00:01:00.000Z"));
  const lines = table.split("\n");
  expect(lines[0]).toBe("porthole host agent 0.1.0 (pid 42), guest unix:///g.sock: connected; auto forwarder (the default)");
  expect(lines[1]).toContain("10.0.0.2");
  expect(lines[3]).toMatch(/^PROTO\s+GUEST\s+HOST\s+STATE\s+PATH\s+RULE\s+OWNER\s+CONNS\s+IN\s+OUT\s+SINCE\s+NOTE$/);
  expect(lines[4]).toMatch(/^tcp\s+0\.0\.0\.0:8080\s+127\.0\.0\.1:8080\s+forwarding\s+fast\s+0 \(web\)\s+2\s+2\.0 KiB\s+5 B\s+60s$/);
  expect(lines[5]).toContain("address already in use");
  expect(lines[6]).toMatch(/^tcp\s+127\.0\.0\.2:3000\s+not-forwarding.*no rule matches$/);
});

test("a paused agent, its host IP and static forwards are marked", () => {
  const table = formatStatusTable({
    ...status,
    agent: { ...status.agent, autoForwarding: "paused", hostIP: "127.0.0.2" },
    forwards: [{ ...status.forwards[0]!, hostAddr: "127.0.0.2:18080", rule: "runtime", label: undefined, static: true }],
  }, Date.parse("2026-01-01T00:01:00.000Z")).split("\n");
  expect(table[1]).toBe("auto-forwarding: PAUSED (guest ports are not forwarded; static forwards stay; porthole forward resume turns it back on)");
  expect(table[2]).toBe("host IP: 127.0.0.2 (where forwards listen unless their rule says otherwise)");
  expect(table.find((l) => l.startsWith("tcp    0.0.0.0:8080"))).toMatch(/127\.0\.0\.2:18080\s+forwarding\s+fast\s+runtime static\s+2/);
});

test("metrics in Prometheus text format", () => {
  const text = formatMetrics(status);
  expect(text).toContain("# TYPE porthole_guest_connected gauge\nporthole_guest_connected 1\n");
  expect(text).toContain('porthole_forwards{state="forwarding"} 1');
  expect(text).toContain('porthole_forwards{state="not-forwarding"} 1');
  expect(text).toContain('porthole_connections_open{protocol="tcp",host="127.0.0.1:8080",guest="0.0.0.0:8080",label="web"} 2');
  expect(text).toContain('porthole_bytes_total{protocol="tcp",host="127.0.0.1:8080",guest="0.0.0.0:8080",label="web",direction="in"} 2048');
  expect(text).toContain('porthole_events_total{type="failed"} 1');
});

test("a UDP forward's datagrams dropped over budget: in the table's note and as a counter", () => {
  const udp = { key: "udp 127.0.0.1:5201", protocol: "udp", guestAddr: "0.0.0.0:5201", hostAddr: "127.0.0.1:5201", path: "fast", rule: 0, state: "forwarding", since: "2026-01-01T00:00:00.000Z", connections: 1, bytesIn: 1400, bytesOut: 0, datagramsDropped: 7 };
  const withUdp = { ...status, forwards: [...status.forwards, udp] };
  const table = formatStatusTable(withUdp, Date.parse("2026-01-01T00:01:00.000Z")).split("\n");
  expect(table.find((l) => l.startsWith("udp"))).toMatch(/7 datagrams dropped \(agent channel or agent lagged\)$/);
  const text = formatMetrics(withUdp);
  expect(text).toContain('porthole_udp_datagrams_dropped_total{protocol="udp",host="127.0.0.1:5201",guest="0.0.0.0:5201"} 7');
  expect(text).not.toContain('porthole_udp_datagrams_dropped_total{protocol="tcp"');
});
