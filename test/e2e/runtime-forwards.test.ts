// Forwards changed at run time through the control socket: `porthole forward add|remove|
// pause|resume` change what listens on the host (checked with socat as the client), show in
// status and events, refuse bad requests, and `--save` keeps a forward in the config file
// for the next agent.
import { describe, expect } from "bun:test";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import { e2eTest, freePort, Guest, readToEnd, refusedSoon, runPorthole, startHostAgent, tryConnect, useHarness } from "./harness.ts";

useHarness();

/** socat as the client: sends `text`, half-closes, prints what came back. */
function socat(host: string, port: number, text: string): { code: number | null; out: string; err: string } {
  const r = spawnSync("socat", ["-t", "5", "-", `TCP:${host}:${port}`], { input: text, encoding: "utf8", timeout: 20_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const forward = (control: string, ...args: string[]) => runPorthole(["forward", ...args, "--control", control]);

describe("porthole forward", () => {
  e2eTest("add, remove, pause and resume change what listens on the host; status and events show it", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [auto, extra, notYet] = [await freePort(), await freePort(), await freePort()];
    const host = startHostAgent(guest);
    const control = join(guest.dir, "state", "control.sock");
    await guest.startEcho("127.0.0.1", auto);
    await host.waitForForwarding(auto);

    // add: a second way in to the same guest port, listening at once.
    const added = forward(control, "add", String(auto), `127.0.0.1:${extra}`);
    expect(added.code).toBe(0);
    expect(added.stdout).toContain(`TCP guest 127.0.0.1:${auto} to host 127.0.0.1:${extra} (lasts until the host agent stops`);
    await host.waitForForwarding(extra);
    expect(socat("127.0.0.1", extra, "through the added forward").out).toBe("through the added forward");
    expect(socat("127.0.0.1", auto, "auto still").out).toBe("auto still");
    expect(host.events.find((e) => e.type === "forward-added")?.message).toContain(`127.0.0.1:${extra}`);

    // A static forward to a guest port nobody listens on yet: the host listens now, the guest refuses.
    expect(forward(control, "add", String(notYet)).code).toBe(0);
    await host.waitForForwarding(notYet);
    expect(await tryConnect(notYet)).toBe("connected");
    expect(socat("127.0.0.1", notYet, "anyone?").out).toBe("");
    expect(await readToEnd(notYet, { data: Buffer.from("anyone?") })).toEqual({ end: "ECONNRESET", bytes: 0 }); // refused in the guest: a reset, as for a refused connection
    await guest.startEcho("127.0.0.1", notYet);
    expect(socat("127.0.0.1", notYet, "now yes").out).toBe("now yes");

    const rows = JSON.parse(runPorthole(["status", "--control", control, "--json"]).stdout);
    const row = rows.forwards.find((f: { hostAddr: string }) => f.hostAddr === `127.0.0.1:${extra}`);
    expect(row).toMatchObject({ rule: "runtime", static: true, state: "forwarding", guestAddr: `127.0.0.1:${auto}` });
    // It dials the same guest socket as the auto forward: the same owner (the echo server's process).
    const autoRow = rows.forwards.find((f: { hostAddr: string }) => f.hostAddr === `127.0.0.1:${auto}`);
    expect(row.owner?.pid).toBeGreaterThan(0);
    expect(row.owner).toEqual(autoRow.owner);
    expect(runPorthole(["status", "--control", control]).stdout).toMatch(new RegExp(`127\\.0\\.0\\.1:${extra}\\s+forwarding\\s+\\S+\\s+runtime static`));

    // pause: the auto forward closes, the static ones stay and carry data.
    const paused = forward(control, "pause");
    expect(paused.code).toBe(0);
    expect(paused.stdout).toContain("auto-forwarding paused");
    expect(await refusedSoon(auto, "127.0.0.1", 5000)).toBe("ECONNREFUSED");
    expect(socat("127.0.0.1", extra, "static while paused").out).toBe("static while paused");
    const pausedStatus = JSON.parse(runPorthole(["status", "--control", control, "--json"]).stdout);
    expect(pausedStatus.agent.autoForwarding).toBe("paused");
    expect(pausedStatus.notForwarded).toContainEqual(expect.objectContaining({ guestAddr: `127.0.0.1:${auto}`, reason: expect.stringContaining("paused") }));
    expect(runPorthole(["status", "--control", control]).stdout).toContain("auto-forwarding: PAUSED");
    // A guest port that opens while paused is not forwarded either.
    const lateAuto = await freePort();
    await guest.startEcho("127.0.0.1", lateAuto);
    await host.waitForEvent((e) => e.type === "not-forwarding" && e.guestAddr === `127.0.0.1:${lateAuto}`, "the late port reported as paused");
    expect(await tryConnect(lateAuto)).toBe("ECONNREFUSED");

    // resume: both guest ports come back.
    expect(forward(control, "resume").code).toBe(0);
    await host.waitForNthEvent(2, (e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${auto}`, "the auto forward back");
    await host.waitForForwarding(lateAuto);
    expect(socat("127.0.0.1", auto, "resumed").out).toBe("resumed");
    expect(socat("127.0.0.1", lateAuto, "late").out).toBe("late");

    // remove: the added listener goes, the auto forward of the same guest port stays.
    const removed = forward(control, "remove", String(auto), `127.0.0.1:${extra}`);
    expect(removed.code).toBe(0);
    expect(await refusedSoon(extra, "127.0.0.1", 5000)).toBe("ECONNREFUSED");
    expect(socat("127.0.0.1", auto, "still here").out).toBe("still here");
    expect(host.events.map((e) => e.type)).toEqual(expect.arrayContaining(["forward-added", "auto-forwarding-paused", "auto-forwarding-resumed", "forward-removed"]));
  });

  e2eTest("on the host port of an auto forward: the same guest port pins it (it stays through a pause), another one is refused", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [port, other] = [await freePort(), await freePort()];
    const host = startHostAgent(guest);
    const control = join(guest.dir, "state", "control.sock");
    await guest.startEcho("127.0.0.1", port);
    await guest.startEcho("127.0.0.1", other);
    await host.waitForForwarding(port);
    await host.waitForForwarding(other);

    const taken = forward(control, "add", String(other), String(port));
    expect(taken.code).toBe(1);
    expect(taken.stderr).toBe(`porthole: host 127.0.0.1:${port} (tcp) already forwards guest 127.0.0.1:${port} (rule built-in); pick another host port, or remove that forward first\n`);

    expect(forward(control, "add", String(port)).code).toBe(0);
    expect(forward(control, "pause").code).toBe(0);
    expect(await refusedSoon(other, "127.0.0.1", 5000)).toBe("ECONNREFUSED");
    expect(socat("127.0.0.1", port, "pinned").out).toBe("pinned");
    // One listener all along: never stopped, never bound twice.
    expect(host.events.filter((e) => e.hostAddr === `127.0.0.1:${port}`).map((e) => e.type)).toEqual(["forwarding"]);
  });

  e2eTest("bad requests are refused with a clear message (400 on the socket, a non-zero exit in the CLI)", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const host = startHostAgent(guest);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    const control = join(guest.dir, "state", "control.sock");

    const bigPort = forward(control, "add", "70000");
    expect(bigPort.code).toBe(1);
    expect(bigPort.stderr).toBe('porthole: guest "70000": 70000 is not a port (1-65535)\n');
    const badIP = forward(control, "add", "8080", "1.2.3:80");
    expect(badIP.code).toBe(1);
    expect(badIP.stderr).toContain('host "1.2.3:80" is not [IP:]PORT');
    const unknown = forward(control, "remove", "12345");
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("no forward added at run time is TCP guest 127.0.0.1:12345 to host 127.0.0.1:12345 (there are none");
    const noAgent = runPorthole(["forward", "pause", "--control", join(guest.dir, "nothing.sock")]);
    expect(noAgent.code).toBe(1);
    expect(noAgent.stderr).toContain("no host agent is running with the control socket");
    const noFile = forward(control, "add", "12345", "--save");
    expect(noFile.code).toBe(1);
    expect(noFile.stderr).toContain("no config file to save to: start it with --config FILE (nothing was added)");

    // The socket itself: malformed JSON, unknown fields and wrong types are 400 with a reason.
    const post = (path: string, body: string, method = "POST") =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request({ socketPath: control, method, path }, (res) => {
          let text = "";
          res.on("data", (c) => (text += c));
          res.on("end", () => resolve({ status: res.statusCode!, body: text }));
        });
        req.on("error", reject);
        req.end(body);
      });
    expect(await post("/forwards", "{not json")).toEqual({ status: 400, body: '{"error":"the request body is not JSON"}\n' });
    expect((await post("/forwards", '{"guest":"80","colour":"red"}')).body).toContain("unknown field(s) colour");
    expect((await post("/forwards", '{"guest":80}')).status).toBe(400);
    expect((await post("/forwards", '{"guest":"80","proto":"sctp"}')).body).toContain('proto \\"sctp\\" is not tcp or udp');
    expect((await post("/status", "{}")).status).toBe(404);
    expect((await post("/pause", "", "PUT")).status).toBe(405);
    expect(host.proc.running).toBe(true);
    expect(JSON.parse(runPorthole(["status", "--control", control, "--json"]).stdout).forwards).toEqual([]);
  });

  e2eTest("UDP: forward add --udp listens on the host's UDP port and carries datagrams", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    const host = startHostAgent(guest, ["--config", guest.writeFile("ignore-all.yaml", "portForwards:\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n")]);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    const control = join(guest.dir, "state", "control.sock");
    await guest.startServer("udp-echo", [["127.0.0.1", guestPort]]);
    expect(forward(control, "add", String(guestPort), String(hostPort), "--udp").code).toBe(0);
    await host.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${hostPort}`, "the UDP forward");
    const r = spawnSync("socat", ["-t", "3", "-", `UDP:127.0.0.1:${hostPort}`], { input: "datagram", encoding: "utf8", timeout: 20_000 });
    expect(r.stdout).toBe("datagram");
  });

  e2eTest("--save appends the rule to the config file, leaving the rest of it as it was, and a restarted agent honours it", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [guestPort, hostPort, other] = [await freePort(), await freePort(), await freePort()];
    const original = `# my porthole config\nipv6Loopback: true   # keep ::1\nportForwards:\n  - guestPort: ${other}   # a rule of mine\n    label: mine\n\n# the end\n`;
    const file = guest.writeFile("config.yaml", original);
    let host = startHostAgent(guest, ["--config", file]);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    const control = join(guest.dir, "state", "control.sock");
    const saved = forward(control, "add", String(guestPort), `127.0.0.1:${hostPort}`, "--save");
    expect(saved.code).toBe(0);
    expect(saved.stdout).toContain(`(saved in ${file}: it stays after a restart)`);
    const text = readFileSync(file, "utf8");
    const line = `  - {guestIP: 127.0.0.1, guestPort: ${guestPort}, hostIP: 127.0.0.1, hostPort: ${hostPort}, proto: tcp, static: true}\n`;
    expect(text).toBe(original.replace("    label: mine\n", `    label: mine\n${line}`));
    await host.waitForForwarding(hostPort);

    await host.proc.kill("SIGTERM");
    host = startHostAgent(guest, ["--config", file]);
    await host.waitForForwarding(hostPort); // static: before the guest listens
    await guest.startEcho("127.0.0.1", guestPort);
    expect(socat("127.0.0.1", hostPort, "after a restart").out).toBe("after a restart");
    expect(host.events.find((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`)?.rule).toBe(1);

    // remove --save takes it out again: the file is as the user wrote it, the port closes.
    const removed = forward(join(guest.dir, "state", "control.sock"), "remove", String(guestPort), `127.0.0.1:${hostPort}`, "--save");
    expect(removed.code).toBe(0);
    expect(removed.stdout).toBe(`removed TCP guest 127.0.0.1:${guestPort} to host 127.0.0.1:${hostPort} from ${file}\n`);
    expect(readFileSync(file, "utf8")).toBe(original);
    expect(await refusedSoon(hostPort, "127.0.0.1", 5000)).toBe("ECONNREFUSED");
  });
});
