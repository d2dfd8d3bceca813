// Who owns each guest port, end to end: real programs (CPython's http.server, socat) in a
// real network namespace, some in a cgroup shaped as a container runtime makes it; the owner
// in `porthole status` (table and JSON) and in events; rules that match on it.
import { describe, expect } from "bun:test";
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseProcNet } from "../../src/core/proc-net.ts";
import { portKey } from "../../src/core/ports.ts";
import { OwnerResolver } from "../../src/guest/port-owners.ts";
import { defer, e2eTest, freePort, Guest, type Proc, runPorthole, startHostAgent, useHarness } from "./harness.ts";

useHarness();

const PYTHON = "/usr/bin/python3";
const AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"];
const ID = (seed: string) => seed.repeat(64).slice(0, 64);

/** CPython's http.server in the guest on 127.0.0.1:port (ip netns exec and setpriv exec, so its pid is the child's). */
async function httpServer(guest: Guest, port: number, options: { prefix?: string[]; cgroup?: string } = {}): Promise<Proc> {
  const argv = [...(options.prefix ?? []), PYTHON, "-u", "-m", "http.server", String(port), "--bind", "127.0.0.1"];
  const server = options.cgroup ? spawnInCgroup(guest, options.cgroup, argv, `http.server ${port}`) : guest.spawn(argv, `http.server ${port}`);
  await server.waitForLine(/Serving HTTP/);
  return server;
}

/** The machine's cgroup v2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host). */
function cgroup2Mount(): string {
  const line = readFileSync("/proc/self/mountinfo", "utf8").split("\n").find((l) => / - cgroup2 /.test(l));
  if (!line) throw new Error("no cgroup v2 hierarchy is mounted");
  return line.split(" ")[4]!;
}

let cgroups = 0;
/**
 * A cgroup at `<mount>/porthole-test-PID-N/<path>`, shaped as a container runtime makes it;
 * removed after the test (once its processes, which the harness kills first, are gone).
 */
function containerCgroup(path: string): string {
  const top = join(cgroup2Mount(), `porthole-test-${process.pid}-${++cgroups}`);
  const dir = join(top, path);
  mkdirSync(dir, { recursive: true });
  defer(async () => {
    for (let tries = 0; tries < 50; tries++) {
      try {
        const parts = path.split("/");
        for (let i = parts.length; i > 0; i--) rmdirSync(join(top, ...parts.slice(0, i)));
        rmdirSync(top);
        return;
      } catch {
        await Bun.sleep(100); // EBUSY until the killed server has left it
      }
    }
  });
  return dir;
}

/**
 * `argv` in the guest inside the cgroup `dir`: a shell waits on its stdin while this process
 * moves it in (`ip netns exec` mounts a sysfs of its own, without the cgroup mounts), then
 * execs `argv`, which stays in the cgroup.
 */
function spawnInCgroup(guest: Guest, dir: string, argv: string[], label: string): Proc {
  const proc = guest.spawn(["sh", "-c", 'read go && exec "$@"', "sh", ...argv], label, { stdin: true });
  writeFileSync(join(dir, "cgroup.procs"), String(proc.child.pid));
  proc.child.stdin!.write("go\n");
  return proc;
}

const statusJSON = (control: string) => JSON.parse(runPorthole(["status", "--control", control, "--json"]).stdout);

describe("who owns each guest port", () => {
  e2eTest("a server started by a known program shows its pid, command, command line and user in status --json, the table and the event", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const port = await freePort();
    const control = join(guest.dir, "control.sock");
    const host = startHostAgent(guest, ["--control", control]);
    const server = await httpServer(guest, port, { prefix: AS_NOBODY });
    const pid = server.child.pid!;
    const owner = { pid, command: "python3", commandLine: `${PYTHON} -u -m http.server ${port} --bind 127.0.0.1`, user: "nobody", uid: 65534 };

    const event = await host.waitForForwarding(port);
    expect(event.owner).toEqual(owner);
    const fwd = statusJSON(control).forwards.find((f: { hostAddr: string }) => f.hostAddr === `127.0.0.1:${port}`);
    expect(fwd.owner).toEqual(owner);
    const table = runPorthole(["status", "--control", control]).stdout;
    expect(table).toMatch(/\bOWNER\b/);
    expect(table).toMatch(new RegExp(`127\\.0\\.0\\.1:${port}\\s.*python3\\[${pid}\\] nobody`));
    // The forward works as ever.
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).status).toBe(200);
  });

  e2eTest("a server in a container's cgroup shows the container id (docker's shape) and the pod (Kubernetes' shape)", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [dockerPort, podPort] = [await freePort(), await freePort()];
    const control = join(guest.dir, "control.sock");
    const host = startHostAgent(guest, ["--control", control]);
    const dockerId = ID("d0c4e5");
    const [podUid, podId] = ["0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5", ID("9e7")];
    const docker = containerCgroup(`system.slice/docker-${dockerId}.scope`);
    const pod = containerCgroup(`kubepods/burstable/pod${podUid}/${podId}`);
    // socat, as a container's process would run it.
    const socat = spawnInCgroup(guest, docker, ["socat", `TCP-LISTEN:${dockerPort},bind=127.0.0.1,reuseaddr,fork`, "EXEC:cat"], "socat in docker's cgroup");
    await httpServer(guest, podPort, { cgroup: pod });

    const dockerEvent = await host.waitForForwarding(dockerPort);
    expect(dockerEvent.owner).toMatchObject({ pid: socat.child.pid, command: "socat", user: "root", container: { runtime: "docker", id: dockerId } });
    const podEvent = await host.waitForForwarding(podPort);
    expect(podEvent.owner).toMatchObject({ command: "python3", container: { runtime: "containerd", id: podId, pod: podUid } });
    const list = statusJSON(control);
    const of = (port: number) => list.forwards.find((f: { hostAddr: string }) => f.hostAddr === `127.0.0.1:${port}`).owner;
    expect(of(dockerPort).container).toEqual({ runtime: "docker", id: dockerId });
    expect(of(podPort).container).toEqual({ runtime: "containerd", id: podId, pod: podUid });
    expect(runPorthole(["status", "--control", control]).stdout).toContain(`socat[${socat.child.pid}] root @${dockerId.slice(0, 12)}`);
  });

  e2eTest("the container's name, where the runtime keeps it in a file (docker's config.v2.json, podman's containers.json, nerdctl's name store, kubelet's pod log directory)", async () => {
    const guest = Guest.create();
    const ports = [await freePort(), await freePort(), await freePort(), await freePort()];
    const ids = [ID("ab1"), ID("cd2"), ID("ef3"), ID("5a7")];
    const podUid = "11111111-2222-3333-4444-555555555555";
    const shapes = [`system.slice/docker-${ids[0]}.scope`, `machine.slice/libpod-${ids[1]}.scope`, `kubepods/pod${podUid}/${ids[2]}`, `system.slice/nerdctl-${ids[3]}.scope`];
    const servers: Proc[] = [];
    for (const [i, shape] of shapes.entries()) servers.push(await httpServer(guest, ports[i]!, { cgroup: containerCgroup(shape) }));
    // The runtimes' own files, in a scratch tree standing for /var/lib and /var/log.
    const root = join(guest.dir, "runtime-files");
    mkdirSync(join(root, "docker", ids[0]!), { recursive: true });
    writeFileSync(join(root, "docker", ids[0]!, "config.v2.json"), JSON.stringify({ ID: ids[0], Name: "/web" }));
    writeFileSync(join(root, "containers.json"), JSON.stringify([{ id: ID("0"), names: ["other"] }, { id: ids[1], names: ["api"] }]));
    mkdirSync(join(root, "pods", `shop_checkout-7d9f_${podUid}`), { recursive: true });
    mkdirSync(join(root, "nerdctl", "1935db59", "names", "default"), { recursive: true });
    writeFileSync(join(root, "nerdctl", "1935db59", "names", "default", "other"), ID("1"));
    writeFileSync(join(root, "nerdctl", "1935db59", "names", "default", "cache"), ids[3]!);

    // The resolver the guest agent runs, over the real /proc: sockets from the guest's /proc/net.
    const resolver = new OwnerResolver({ docker: join(root, "docker"), podman: join(root, "containers.json"), pods: join(root, "pods"), nerdctl: join(root, "nerdctl") });
    const sockets = new Map();
    parseProcNet(readFileSync(`/proc/${servers[0]!.child.pid}/net/tcp`, "latin1"), "tcp", sockets);
    const owners = await resolver.resolve(ports.map((port) => sockets.get(portKey({ protocol: "tcp", ip: "127.0.0.1", port }))));
    expect([...owners.values()].map((o) => o?.container)).toEqual([
      { runtime: "docker", id: ids[0], name: "web" },
      { runtime: "podman", id: ids[1], name: "api" },
      { runtime: "containerd", id: ids[2], pod: podUid, name: "shop/checkout-7d9f" },
      { runtime: "containerd", id: ids[3], name: "cache" },
    ]);
    expect([...owners.values()].map((o) => o?.pid)).toEqual(servers.map((s) => s.child.pid));
  });
});

describe("rules on the owner", () => {
  e2eTest("guestProcess decides: socat's port is ignored by rule 0, python3's forwarded by rule 1 to its host port, others by the built-in rule", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [socatPort, pythonPort, hostPort, otherPort, otherHostPort] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
    const config = guest.writeFile("c.yaml", [
      "portForwards:",
      "- guestProcess: socat",
      "  ignore: true",
      "- guestProcess: \"python3*\"",
      `  guestPort: ${pythonPort}`,
      `  hostPort: ${hostPort}`,
      "- guestProcess: \"python3*\"",
      `  guestPort: ${otherPort}`,
      `  hostPort: ${otherHostPort}`,
      "",
    ].join("\n"));
    const control = join(guest.dir, "control.sock");
    const host = startHostAgent(guest, ["--config", config, "--control", control]);
    guest.spawn(["socat", `TCP-LISTEN:${socatPort},bind=127.0.0.1,reuseaddr,fork`, "EXEC:cat"], "socat");
    await httpServer(guest, pythonPort);
    await guest.startEcho("127.0.0.1", otherPort); // a Bun process: no rule names it

    const ignored = await host.waitForEvent((e) => e.type === "not-forwarding" && e.guestAddr === `127.0.0.1:${socatPort}`, "socat's port not forwarded");
    expect(ignored).toMatchObject({ rule: 0, error: "ignored by rule", owner: { command: "socat" } });
    const forwarded = await host.waitForForwarding(hostPort);
    expect(forwarded).toMatchObject({ guestAddr: `127.0.0.1:${pythonPort}`, rule: 1, owner: { command: "python3" } });
    expect((await fetch(`http://127.0.0.1:${hostPort}/`)).status).toBe(200);
    // The echo server's command is not python3*: rule 2 names its port but not its program,
    // so the built-in rule forwards it to the same port, not to rule 2's host port.
    const other = await host.waitForForwarding(otherPort);
    expect(other.rule).toBe("built-in");
    expect(host.events.some((e) => e.hostAddr === `127.0.0.1:${otherHostPort}`)).toBe(false);
    expect(statusJSON(control).notForwarded).toContainEqual(expect.objectContaining({ guestAddr: `127.0.0.1:${socatPort}`, rule: 0, owner: expect.objectContaining({ command: "socat" }) }));
  });
});
