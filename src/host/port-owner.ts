// Who holds a busy host port, for the `failed` event of a forward that cannot bind: the
// process (from the socket's inode in /proc/net and each process's fds) and, when that is
// another porthole host agent, which one (its control socket answers with its pid and guest).
// Best effort and bounded: what cannot be read is left out, never an error.
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import * as http from "node:http";
import { inodesOnPort, listeningUnixPaths, socketInode } from "../core/socket-owner.ts";

const STATUS_TIMEOUT_MS = 1000;

function read(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return "";
  }
}

/** Which process holds `ip:port`, in words, or undefined when it cannot be told. */
export async function portOwner(protocol: "tcp" | "udp", ip: string, port: number): Promise<string | undefined> {
  const inodes = new Set([
    ...inodesOnPort(read(`/proc/net/${protocol}`), protocol, ip, port),
    ...inodesOnPort(read(`/proc/net/${protocol}6`), protocol, ip, port),
  ]);
  if (!inodes.size) return undefined;
  const owner = findProcess(inodes);
  if (!owner) return "a process this user cannot see (as root, `ss -lntup` names it)";
  if (owner.pid === process.pid) return "this host agent itself (another of its forwards)";
  const command = read(`/proc/${owner.pid}/cmdline`).split("\0").filter(Boolean).join(" ").slice(0, 200);
  for (const control of listeningUnixPaths(read("/proc/net/unix"), owner.sockets)) {
    const status = await agentStatus(control);
    if (status?.agent?.pid === owner.pid) {
      return `another porthole host agent (pid ${owner.pid}, guest ${status.agent.guest}, control socket ${control}); give each guest its own address with porthole host --host-ip 127.0.0.N`;
    }
  }
  return `pid ${owner.pid} (${command || "command unknown"})`;
}

/** The first process with an fd on one of the inodes, and all its socket inodes. */
function findProcess(inodes: Set<number>): { pid: number; sockets: Set<number> } | undefined {
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((n) => /^\d+$/.test(n));
  } catch {
    return undefined;
  }
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    const sockets = new Set<number>();
    let holds = false;
    for (const fd of fds) {
      let link: string;
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const inode = socketInode(link);
      if (inode === undefined) continue;
      sockets.add(inode);
      if (inodes.has(inode)) holds = true;
    }
    if (holds) return { pid: Number(pid), sockets };
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
