// --on-forward CMD: runs once per new forward (not per listener: 127.0.0.1 and its [::1]
// companion are one forward) through /bin/sh -c with the forward in PORTHOLE_* variables;
// its output goes to the agent's log, and a failing, slow or missing command is an event
// while the agent goes on forwarding.
import { describe, expect } from "bun:test";
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { e2eTest, exchange, freePort, Guest, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const VARS = ["PORTHOLE_EVENT", "PORTHOLE_PROTO", "PORTHOLE_GUEST_ADDR", "PORTHOLE_GUEST_IP", "PORTHOLE_GUEST_PORT", "PORTHOLE_HOST_ADDR", "PORTHOLE_HOST_IP", "PORTHOLE_HOST_PORT", "PORTHOLE_RULE", "PORTHOLE_LABEL", "PORTHOLE_GUEST"];

describe("--on-forward", () => {
  e2eTest("runs once per forward with the forward's details in PORTHOLE_* variables, its output in the log", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [tcp, udp] = [await freePort(), await freePort()];
    const out = join(guest.dir, "runs.txt");
    // One line per run: every variable, tab-separated, appended (O_APPEND: runs never interleave a line).
    const command = `printf '${VARS.map(() => "%s").join("\\t")}\\n' ${VARS.map((v) => `"$${v}"`).join(" ")} >> '${out}'; echo "hello from the hook for $PORTHOLE_HOST_ADDR"`;
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestPort: ${tcp}, label: web}\n`);
    const host = startHostAgent(guest, ["--on-forward", command, "--config", config]);
    await guest.startEcho("127.0.0.1", tcp);
    await guest.startServer("udp-echo", [["127.0.0.1", udp]]);
    await host.waitForForwarding(tcp);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${udp}`, "the UDP forward");
    await host.proc.waitFor(() => (existsSync(out) && readFileSync(out, "utf8").split("\n").length > 2) || undefined, "two runs");
    await host.waitForEvent((e) => e.type === "log" && String(e.message).includes(`hello from the hook for 127.0.0.1:${udp}`), "the hook's output in the log");
    // The agent is still forwarding while and after hooks run.
    expect((await exchange(tcp, Buffer.from("ping"))).toString()).toBe("ping");
    const runs = readFileSync(out, "utf8").trim().split("\n").map((l) => Object.fromEntries(l.split("\t").map((v, i) => [VARS[i], v])));
    expect(runs.length).toBe(2); // the TCP forward's [::1] companion is the same forward: no second run
    const guestAgent = `unix://${guest.socket}`;
    expect(runs).toContainEqual({
      PORTHOLE_EVENT: "forwarding", PORTHOLE_PROTO: "tcp", PORTHOLE_GUEST_ADDR: `127.0.0.1:${tcp}`, PORTHOLE_GUEST_IP: "127.0.0.1", PORTHOLE_GUEST_PORT: String(tcp),
      PORTHOLE_HOST_ADDR: `127.0.0.1:${tcp}`, PORTHOLE_HOST_IP: "127.0.0.1", PORTHOLE_HOST_PORT: String(tcp), PORTHOLE_RULE: "0", PORTHOLE_LABEL: "web", PORTHOLE_GUEST: guestAgent,
    });
    expect(runs).toContainEqual({
      PORTHOLE_EVENT: "forwarding", PORTHOLE_PROTO: "udp", PORTHOLE_GUEST_ADDR: `127.0.0.1:${udp}`, PORTHOLE_GUEST_IP: "127.0.0.1", PORTHOLE_GUEST_PORT: String(udp),
      PORTHOLE_HOST_ADDR: `127.0.0.1:${udp}`, PORTHOLE_HOST_IP: "127.0.0.1", PORTHOLE_HOST_PORT: String(udp), PORTHOLE_RULE: "built-in", PORTHOLE_LABEL: "", PORTHOLE_GUEST: guestAgent,
    });
    expect(host.events.filter((e) => e.type === "on-forward-failed")).toEqual([]);
  });

  e2eTest("a command that fails or outlives its timeout is an on-forward-failed event; the agent goes on", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [a, b] = [await freePort(), await freePort()];
    const marker = join(guest.dir, "killed-too");
    // Port a: exits 3. Port b: hangs (with a child of its own) until the timeout kills its process group.
    const command = `if [ "$PORTHOLE_GUEST_PORT" = ${a} ]; then echo oops >&2; exit 3; fi; (sleep 30; touch '${marker}') & sleep 30`;
    const host = startHostAgent(guest, ["--on-forward", command, "--on-forward-timeout", "1s"]);
    await guest.startEcho("127.0.0.1", a);
    await guest.startEcho("127.0.0.1", b);
    const failedA = await host.waitForEvent((e) => e.type === "on-forward-failed" && String(e.message).includes(`127.0.0.1:${a}`), "the failing run");
    expect(failedA.message).toBe(`for tcp 127.0.0.1:${a}: exited with status 3`);
    await host.waitForEvent((e) => e.type === "log" && e.message === `on-forward (tcp 127.0.0.1:${a}): oops`, "its stderr in the log");
    const failedB = await host.waitForEvent((e) => e.type === "on-forward-failed" && String(e.message).includes(`127.0.0.1:${b}`), "the timed-out run", 20_000);
    expect(failedB.message).toContain("timed out after 1s and was killed");
    // The whole process group went: the background child never gets to touch its file.
    // (The agent's own command line names the marker too: it is left out.)
    const hookProcesses = () => Bun.spawnSync(["pgrep", "-f", marker]).stdout.toString().split("\n").filter((p) => p && Number(p) !== host.proc.child.pid);
    await host.proc.waitFor(() => hookProcesses().length === 0 || undefined, "the hook's children gone");
    expect((await exchange(b, Buffer.from("still forwarding"))).toString()).toBe("still forwarding");
  });
});
