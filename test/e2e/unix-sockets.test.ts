// Unix socket forwards: a guest socket on the host, and (reverse) a host socket in the guest.
import { describe, expect } from "bun:test";
import { existsSync, mkdirSync, statSync } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import { useHarness, defer, e2eTest, Guest, startHostAgent } from "./harness.ts";

useHarness();

function getOverSocket(socketPath: string, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http.get({ socketPath, path }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve(body));
    }).on("error", reject);
  });
}

describe("unix sockets", () => {
  e2eTest("guestSocket -> hostSocket: an HTTP request through a guest socket, and the host file removed at the end", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    mkdirSync(join(guest.dir, "in-guest"));
    const guestSocket = join(guest.dir, "in-guest", "http.sock");
    await guest.startFixture(["http-unix", guestSocket]);
    const stateDir = join(guest.dir, "state");
    const config = guest.writeFile("c.yaml", `portForwards:\n- guestSocket: ${guestSocket}\n  hostSocket: http.sock\n`);
    const host = startHostAgent(guest, ["--config", config, "--state-dir", stateDir]);
    const hostSocket = join(stateDir, "http.sock");
    const event = await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === hostSocket, "the socket forward");
    expect(event.guestAddr).toBe(guestSocket);
    expect(await getOverSocket(hostSocket, "/ping")).toBe("hello from the guest's unix socket, you asked for /ping");

    await host.proc.kill("SIGTERM");
    expect(existsSync(hostSocket)).toBe(false);
  });

  e2eTest("reverse: a host socket nobody listens on is said once (a warning naming it), and the guest's clients are reset", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const hostSocket = join(guest.dir, "nobody-here.sock");
    mkdirSync(join(guest.dir, "in-guest"));
    const guestSocket = join(guest.dir, "in-guest", "from-host.sock");
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestSocket: ${guestSocket}, hostSocket: ${hostSocket}, reverse: true}\n`);
    const host = startHostAgent(guest, ["--config", config]);
    await host.waitForEvent((e) => e.type === "forwarding" && e.reverse === true, "the reverse forward");
    for (let i = 0; i < 3; i++) expect(await guest.runFixture(["http-get-unix", guestSocket]).exited).not.toBe(0);
    const warned = await host.waitForEvent((e) => e.type === "warning" && String(e.message).includes(hostSocket), "the warning");
    expect(String(warned.message)).toContain("ENOENT");
    expect(host.events.filter((e) => e.type === "warning" && String(e.message).includes(hostSocket))).toHaveLength(1);
  });

  e2eTest("reverse: a host socket appears in the guest (mode 0600) and carries an HTTP request back", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const hostSocket = join(guest.dir, "host-http.sock");
    const server = http.createServer((req, res) => res.end(`hello from the host, you asked for ${req.url}`));
    await new Promise<void>((resolve) => server.listen(hostSocket, resolve));
    defer(() => new Promise<void>((resolve) => server.close(() => resolve())));

    mkdirSync(join(guest.dir, "in-guest"));
    const guestSocket = join(guest.dir, "in-guest", "from-host.sock");
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestSocket: ${guestSocket}, hostSocket: ${hostSocket}, reverse: true}\n`);
    const host = startHostAgent(guest, ["--config", config]);
    const event = await host.waitForEvent((e) => e.type === "forwarding" && e.reverse === true, "the reverse forward");
    expect([event.guestAddr, event.hostAddr]).toEqual([guestSocket, hostSocket]);
    expect(statSync(guestSocket).mode & 0o777).toBe(0o600);

    const client = guest.runFixture(["http-get-unix", guestSocket]);
    expect(await client.exited).toBe(0);
    expect(client.stdout.join("\n")).toBe("hello from the host, you asked for /from-guest");

    // The forward ends with the host agent: the guest stops listening and removes the file.
    await host.proc.kill("SIGTERM");
    await client.waitFor(() => !existsSync(guestSocket) || undefined, "the guest socket file to go");
  });
});
