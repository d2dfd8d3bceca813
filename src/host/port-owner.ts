// Who holds a busy host port, for the `failed` event of a forward that cannot bind: the
// process (from the socket's inode in /proc/net and each process's fds) and, when that is
// another porthole host agent, which one (its control socket answers with its pid and guest).
// Best effort and bounded: what cannot be read is left out, never an error.
import { readdir, readFile, readlink } from "node:fs/promises";
import * as http from "node:http";
import { inodesOnPort, listeningUnixPaths, socketInode } from "../core/socket-owner.ts";

const STATUS_TIMEOUT_MS = 1000;

function read(file: string): Promise<string> {
  return readFile(file, "utf8").catch(() => "");
}

/** Which process holds `ip:port`, in words, or undefined when it cannot be told. */
export async function portOwner(protocol: "tcp" | "udp", ip: string, port: number): Promise<string | undefined> {
  const inodes = new Set([
    ...inodesOnPort(await read(`/proc/net/${protocol}`), protocol, ip, port),
    ...inodesOnPort(await read(`/proc/net/${protocol}6`), protocol, ip, port),
  ]);
  if (!inodes.size) return undefined;
  const owner = await findProcess(inodes);
  if (!owner) return "a process this user cannot see (as root, `ss -lntup` names it)";
  if (owner.pid === process.pid) return "this host agent itself (another of its forwards)";
  const command = (await read(`/proc/${owner.pid}/cmdline`)).split("\0").filter(Boolean).join(" ").slice(0, 200);
  for (const control of listeningUnixPaths(await read("/proc/net/unix"), owner.sockets)) {
    const status = await agentStatus(control);
    if (status?.agent?.pid === owner.pid) {
      return `another porthole host agent (pid ${owner.pid}, guest ${status.agent.guest}, control socket ${control}); give each guest its own address with porthole host --host-ip 127.0.0.N`;
    }
  }
  return `pid ${owner.pid} (${command || "command unknown"})`;
}

/**
 * The first process with an fd on one of the inodes, and all its socket inodes. Asynchronous
 * reads, a process at a time: a host with thousands of fds does not stall the event loop.
 */
async function findProcess(inodes: Set<number>): Promise<{ pid: number; sockets: Set<number> } | undefined> {
  let pids: string[];
  try {
    pids = (await readdir("/proc")).filter((n) => /^\d+$/.test(n));
  } catch {
    return undefined;
  }
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    const links = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => "")));
    const sockets = new Set(links.map(socketInode).filter((i): i is number => i !== undefined));
    if ([...sockets].some((i) => inodes.has(i))) return { pid: Number(pid), sockets };
  }
  return undefined;
}

/** GET /status on a control socket, or undefined (not a porthole agent, or no answer in time). */
function agentStatus(socketPath: string): Promise<{ agent?: { pid?: number; guest?: string } } | undefined> {
  return new Promise((resolve) => {
    const req = http.get({ socketPath, path: "/status", timeout: STATUS_TIMEOUT_MS }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
        if (body.length > 4 << 20) req.destroy();
      });
      res.on("end", () => {
        try {
          resolve(JSON.parse(body));
        } catch {
          resolve(undefined);
        }
      });
      res.on("error", () => resolve(undefined));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(undefined));
  });
}
