// `porthole demo`: a guest in a throwaway network namespace, a web server in it on
// 127.0.0.1, and the page fetched through the host's forward. Cleans up on exit and Ctrl-C.
import type { CAC } from "cac";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import type { HostEvent } from "../core/forward-event.ts";
import { HostAgent } from "../host/host-agent.ts";
import { selfCommand } from "../runtime/self.ts";

export const DEMO_HTTP_SERVER_COMMAND = "__demo-http-server";
const STEP_TIMEOUT_MS = 15_000;

export function registerDemo(cli: CAC): void {
  cli
    .command("demo", "Show porthole at work: a guest in a network namespace, its web server reached from the host")
    .action(async () => {
      process.exitCode = await runDemo();
    });
}

/** How to run a command inside the demo's guest namespace. */
interface Isolation {
  describe: string;
  startGuest(argv: string[]): ChildProcess;
  /** A command in the namespace of the already started guest agent. */
  inGuest(argv: string[], guestPid: number): string[];
  cleanup(): void;
}

function rootIsolation(): Isolation {
  const ns = `porthole-demo-${process.pid}`;
  run(["ip", "netns", "add", ns]);
  run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
  return {
    describe: `network namespace ${ns}`,
    startGuest: (argv) => spawn("ip", ["netns", "exec", ns, ...argv], { stdio: ["ignore", "inherit", "pipe"] }),
    inGuest: (argv) => ["ip", "netns", "exec", ns, ...argv],
    cleanup: () => void spawnSync("ip", ["netns", "del", ns]),
  };
}

function userIsolation(): Isolation {
  const probe = spawnSync("unshare", ["--user", "--net", "--map-root-user", "true"]);
  if (probe.status !== 0) {
    throw new Error(
      "porthole demo needs root (for `ip netns`) or unprivileged user namespaces " +
        "(`unshare --user --net --map-root-user`), and neither is available here. " +
        "Run it with sudo, or enable user namespaces (sysctl kernel.unprivileged_userns_clone=1).",
    );
  }
  return {
    describe: "an unprivileged user+network namespace",
    startGuest: (argv) =>
      spawn("unshare", ["--user", "--net", "--map-root-user", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", ...argv], {
        stdio: ["ignore", "inherit", "pipe"],
      }),
    inGuest: (argv, pid) => ["nsenter", "--target", String(pid), "--user", "--net", "--preserve-credentials", ...argv],
    cleanup: () => {},
  };
}

function run(argv: string[]): void {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${argv.join(" ")} failed: ${(r.stderr || r.error?.message || "").trim()}`);
}

async function runDemo(): Promise<number> {
  const say = (line: string) => process.stdout.write(`${line}\n`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "porthole-demo-"));
  const children: ChildProcess[] = [];
  let isolation: Isolation | undefined;
  let agent: HostAgent | undefined;
  const cleanup = () => {
    agent?.stop();
    for (const child of children) child.kill("SIGTERM");
    isolation?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = () => {
    cleanup();
    process.exit(130);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  try {
    isolation = process.getuid?.() === 0 ? rootIsolation() : userIsolation();
    const socket = path.join(dir, "guest.sock");
    say(`[demo] guest: ${isolation.describe}`);
    const guest = isolation.startGuest([...selfCommand(), "guest", "--listen", `unix://${socket}`]);
    children.push(guest);
    prefixLines(guest.stderr!, "[guest] ", say);
    await waitFor(() => fs.existsSync(socket), "the guest agent's socket");

    const events: HostEvent[] = [];
    agent = new HostAgent({
      guest: { kind: "unix", path: socket },
      stateDir: dir,
      logFormat: "text",
      write: (line) => say(`[host] ${line}`),
      onEvent: (e) => events.push(e),
    });
    await agent.start();
    await waitFor(() => events.some((e) => e.type === "guest-connected"), "the host agent to connect");

    const port = await freeHostPort();
    say(`[demo] starting a web server in the guest on 127.0.0.1:${port}`);
    const argv = isolation.inGuest([...selfCommand(), DEMO_HTTP_SERVER_COMMAND, String(port)], guest.pid!);
    const server = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "inherit", "inherit"] });
    children.push(server);
    const forwarded = (e: HostEvent) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${port}`;
    await waitFor(() => events.some(forwarded), `the forward of port ${port}`);

    const url = `http://127.0.0.1:${port}/`;
    say(`[demo] GET ${url} on the host:`);
    say((await (await fetch(url)).text()).trimEnd());

    say("[demo] stopping the guest's web server");
    server.kill("SIGTERM");
    await waitFor(() => events.some((e) => e.type === "stopping" && e.hostAddr === `127.0.0.1:${port}`), "the forward to stop");
    say("[demo] done: the forward came and went with the guest's server");
    return 0;
  } catch (err) {
    process.stderr.write(`porthole demo: ${(err as Error).message}\n`);
    return 1;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    cleanup();
  }
}

function prefixLines(stream: NodeJS.ReadableStream, prefix: string, say: (line: string) => void): void {
  let rest = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop()!;
    for (const line of lines) say(prefix + line);
  });
}

async function waitFor(done: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function freeHostPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** The web server the demo runs inside the guest. */
export function runDemoHttpServer(args: string[]): Promise<void> {
  const port = Number(args[0]);
  return new Promise((resolve) => {
    const server = http.createServer((_req, res) => {
      res.setHeader("content-type", "text/plain");
      res.end(`Hello from inside the guest! This page was served on 127.0.0.1:${port} in the guest's own network namespace\nand reached you through porthole's forward to the host's 127.0.0.1:${port}.\n`);
    });
    server.listen(port, "127.0.0.1");
    process.once("SIGTERM", () => server.close(() => resolve()));
  });
}
