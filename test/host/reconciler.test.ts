// The reconciler keeps the host's forwards equal to the plan: opens what is new, leaves what
// stays, closes what is gone (whose open connections are still counted and ended on stop),
// and says once per decision why a port is not forwarded.
import { expect, test } from "bun:test";
import type { ForwardEvent } from "../../src/core/forward-event.ts";
import type { PlannedForward, PlanOptions } from "../../src/core/forward-plan.ts";
import { toPortSet } from "../../src/core/ports.ts";
import { rulesInForce, withDefaults } from "../../src/core/rules.ts";
import type { ForwardStatus, HostForward } from "../../src/host/host-forward.ts";
import { Reconciler } from "../../src/host/reconciler.ts";

const options: PlanOptions = { ipv6Loopback: false, udp: { idleTimeoutMs: 60_000, maxFlows: 16 } };
const tcp = (ip: string, port: number) => ({ protocol: "tcp", ip, port });

class FakeForward {
  closed = false;
  destroyed = false;
  openConnections = 0;
  retargets = 0;
  constructor(public plan: PlannedForward) {}
  retarget(plan: PlannedForward) {
    this.plan = plan;
    this.retargets++;
  }
  close() {
    this.closed = true;
  }
  destroy() {
    this.closed = this.destroyed = true;
    this.openConnections = 0;
  }
  status(): ForwardStatus[] {
    const s = this.closed ? "closing" : "forwarding";
    return [{ key: this.plan.key, protocol: "tcp", guestAddr: this.plan.guestAddr, hostAddr: this.plan.key.split(" ")[1]!, path: "grpc", rule: this.plan.origin, state: s, since: "", connections: this.openConnections, bytesIn: 0, bytesOut: 0 }];
  }
}

function setup(rules = rulesInForce([])) {
  const made: FakeForward[] = [];
  const reverses: { connections: number; destroyed: boolean }[] = [];
  const events: ForwardEvent[] = [];
  const reconciler = new Reconciler(rules, options, {
    forward: (plan) => {
      const f = new FakeForward(plan);
      made.push(f);
      return f as unknown as HostForward;
    },
    reverse: (plan) => {
      const r = { connections: 0, destroyed: false };
      reverses.push(r);
      return { close() {}, destroy: () => void (r.destroyed = true), status: () => ({ hostAddr: plan.hostSocket, connections: r.connections }) as ForwardStatus };
    },
  }, (e) => events.push(e as ForwardEvent));
  return { reconciler, made, events, reverses };
}

test("new ports open forwards, ports still there keep theirs, ports gone close theirs", () => {
  const { reconciler, made } = setup();
  reconciler.reconcile(toPortSet([tcp("127.0.0.1", 8080), tcp("0.0.0.0", 9090)]));
  expect(made.map((f) => f.plan.key).sort()).toEqual(["tcp 127.0.0.1:8080", "tcp 127.0.0.1:9090"]);
  // [::]:8080 joins 127.0.0.1:8080 on the same host port: the forward stays, retargeted.
  reconciler.reconcile(toPortSet([tcp("127.0.0.1", 8080), tcp("::", 8080)]));
  expect(made).toHaveLength(2);
  const byKey = (k: string) => made.find((f) => f.plan.key === k)!;
  expect(byKey("tcp 127.0.0.1:8080").retargets).toBe(1);
  expect(byKey("tcp 127.0.0.1:8080").closed).toBe(false);
  expect(byKey("tcp 127.0.0.1:9090").closed).toBe(true);
  expect(reconciler.snapshot().forwards.map((f) => f.hostAddr)).toEqual(["127.0.0.1:8080"]);
});

test("a forward closed by a reconcile stays in status while its connections are open, and stop ends them", () => {
  const { reconciler, made } = setup();
  reconciler.reconcile(toPortSet([tcp("127.0.0.1", 8080), tcp("127.0.0.1", 8081)]));
  made[0]!.openConnections = 2;
  reconciler.reconcile(toPortSet([tcp("127.0.0.1", 8081)]));
  expect(made[0]!.closed).toBe(true);
  expect(reconciler.snapshot().forwards.map((f) => [f.hostAddr, f.state, f.connections])).toEqual([
    ["127.0.0.1:8081", "forwarding", 0],
    ["127.0.0.1:8080", "closing", 2],
  ]);
  reconciler.destroy();
  expect(made.map((f) => f.destroyed)).toEqual([true, true]);

  // Once its last connection ends, a closed forward leaves the status.
  const second = setup();
  second.reconciler.reconcile(toPortSet([tcp("127.0.0.1", 8080)]));
  second.made[0]!.openConnections = 1;
  second.reconciler.reconcile(new Map());
  expect(second.reconciler.snapshot().forwards).toHaveLength(1);
  second.made[0]!.openConnections = 0;
  expect(second.reconciler.snapshot().forwards).toHaveLength(0);
});

test("a port not forwarded is reported once per decision, and again when the reason changes", () => {
  const rules = rulesInForce([withDefaults({ guestPort: 3000, ignore: true })]);
  const { reconciler, events } = setup(rules);
  const ports = toPortSet([tcp("127.0.0.1", 3000), tcp("127.0.0.2", 4000)]);
  reconciler.reconcile(ports);
  reconciler.reconcile(ports);
  expect(events.map((e) => [e.type, e.guestAddr, e.error])).toEqual([
    ["not-forwarding", "127.0.0.1:3000", "ignored by rule"],
    ["not-forwarding", "127.0.0.2:4000", "no rule matches"],
  ]);
  reconciler.setRules(rulesInForce([]), options, ports); // the ignore rule is gone: 3000 is forwarded
  reconciler.setRules(rules, options, ports); // and back: said again
  expect(events.filter((e) => e.guestAddr === "127.0.0.1:3000").map((e) => e.error)).toEqual(["ignored by rule", "ignored by rule"]);
  expect(reconciler.snapshot().notForwarded.map((n) => n.guestAddr)).toEqual(["127.0.0.1:3000", "127.0.0.2:4000"]);
});

test("a reverse forward dropped from the config keeps its open connections in status until they end, and stop ends them", () => {
  const rules = rulesInForce([withDefaults({ guestSocket: "/run/a.sock", hostSocket: "/h/a.sock", reverse: true })]);
  const { reconciler, reverses } = setup(rules);
  reconciler.reconcile(new Map());
  reverses[0]!.connections = 1;
  reconciler.setRules(rulesInForce([]), options, new Map());
  expect(reconciler.snapshot().forwards.map((f) => [f.hostAddr, f.connections])).toEqual([["/h/a.sock", 1]]);
  reconciler.destroy();
  expect(reverses[0]!.destroyed).toBe(true);
});

test("a burst of guest events is planned once, at the end of the turn; a reconcile now supersedes one still due", async () => {
  const { reconciler, made } = setup();
  const ports = toPortSet([tcp("127.0.0.1", 8080)]);
  reconciler.reconcile(ports);
  for (let i = 0; i < 10_000; i++) reconciler.reconcileSoon(ports); // as 10,000 events in one read
  expect(made[0]!.retargets).toBe(0); // made by the first reconcile, not planned again yet
  await new Promise((r) => setImmediate(r));
  expect(made[0]!.retargets).toBe(1); // once for the whole burst
  // A new session's ports reconciled at once: the old session's reconcile still due must not undo them.
  reconciler.reconcileSoon(toPortSet([tcp("127.0.0.1", 8080)]));
  reconciler.reconcile(toPortSet([tcp("127.0.0.1", 9090)]));
  await new Promise((r) => setImmediate(r));
  expect(made.filter((f) => !f.closed).map((f) => f.plan.key)).toEqual(["tcp 127.0.0.1:9090"]);
});
