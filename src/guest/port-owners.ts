// Finds the process that owns a socket: sock_diag (or /proc/net) gives the socket's inode,
// and a process holding it has /proc/PID/fd/N -> "socket:[inode]". Only new inodes are
// looked up, all of a scan's new ones in one pass over /proc that stops once each is found
// (processes in the agent's own network namespace first), and answers (found or not) are
// cached until the socket goes away: an idle guest costs nothing, and a port that appears
// costs one pass. Then the process's command line, user and container (core/cgroup.ts).
import { readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { basename } from "node:path";
import { parseCgroupFile, type CgroupContainer } from "../core/cgroup.ts";
import { boundedText, OWNER_LIMITS, type PortOwner, type SocketId } from "../core/port-owner.ts";

/** The pass yields to the event loop after this many fds read (a guest with many fds). */
const YIELD_EVERY = 2048;

export interface OwnerPaths {
  proc: string;
  passwd: string;
  /** Where docker keeps each container's config (its name is in config.v2.json). */
  docker: string;
  /** containers/storage's list of podman containers (ids and names). */
  podman: string;
  /** Kubernetes' pod log directories, named NAMESPACE_NAME_UID. */
  pods: string;
  /** nerdctl's data root: STORE/names/NAMESPACE/NAME files hold container ids. */
  nerdctl: string;
}

const DEFAULT_PATHS: OwnerPaths = {
  proc: "/proc",
  passwd: "/etc/passwd",
  docker: "/var/lib/docker/containers",
  podman: "/var/lib/containers/storage/overlay-containers/containers.json",
  pods: "/var/log/pods",
  nerdctl: "/var/lib/nerdctl",
};
/** A kept description is taken without a look at the process for this long. */
const RECHECK_MS = 1000;
/** Processes whose description is kept (cleared when full). */
const MAX_DESCRIBED = 1024;
/** Sockets whose fd is remembered, and freed fds kept per process (cleared when full). */
const MAX_PLACES = 4096;
const MAX_FREED = 64;
/** At most this many nerdctl name files are read to find one container's name. */
const MAX_NAME_FILES = 4096;

export class OwnerResolver {
  /** inode -> its owner, or null: looked for and not found (a kernel socket, a process gone). */
  private readonly cache = new Map<number, PortOwner | null>();
  private users: { mtimeMs: number; names: Map<number, string> } | undefined;
  private readonly paths: OwnerPaths;

  constructor(
    paths: Partial<OwnerPaths> = {},
    private readonly recheckMs = RECHECK_MS,
  ) {
    this.paths = { ...DEFAULT_PATHS, ...paths };
  }

  /**
   * The owner of each socket, by inode; sockets not in the cache cost a look at the likely
   * owners' fds (`likely`: the processes the kernel saw bind them), else at the processes
   * that bound anything lately (`more.recent`), else one pass over /proc. A socket not where
   * the kernel said is first asked after (`more.alive`): under a churn it is most often closed
   * already, and a gone socket needs no owner, while looking for it reads every fd of every
   * process (thousands beside a busy server: what made a churn cost a core).
   */
  async resolve(sockets: SocketId[], likely: number[] = [], more: { recent?: number[]; alive?: (inode: number) => boolean } = {}): Promise<Map<number, PortOwner | null>> {
    const wanted = new Set(sockets.map((s) => s.inode).filter((i) => i && !this.cache.has(i)));
    if (wanted.size) {
      const pids = this.findInLikely(wanted, likely);
      let rest = new Set([...wanted].filter((inode) => !pids.has(inode)));
      if (rest.size && more.alive) rest = new Set([...rest].filter((inode) => more.alive!(inode)));
      if (rest.size && more.recent?.length) {
        for (const [inode, pid] of this.findInLikely(rest, more.recent)) {
          pids.set(inode, pid);
          rest.delete(inode);
        }
      }
      if (rest.size) for (const [inode, pid] of await this.findPids(rest)) pids.set(inode, pid);
      for (const inode of wanted) {
        const pid = pids.get(inode);
        this.cache.set(inode, pid === undefined ? null : this.describe(pid));
      }
    }
    return new Map(sockets.map((s) => [s.inode, this.cache.get(s.inode) ?? null]));
  }

  /** Sockets whose answer is kept. */
  get size(): number {
    return this.cache.size;
  }

  /** Forgets these sockets (gone: an inode number may be reused); their fds are free now. */
  forget(inodes: number[]): void {
    for (const inode of inodes) {
      this.cache.delete(inode);
      const place = this.places.get(inode);
      if (!place) continue;
      this.places.delete(inode);
      let fds = this.freed.get(place.pid);
      if (!fds) {
        if (this.freed.size >= MAX_PLACES) this.freed.clear();
        this.freed.set(place.pid, (fds = new Set()));
      }
      if (fds.size < MAX_FREED) fds.add(place.fd);
    }
  }

  /** Forgets every socket but these. */
  keepOnly(inodes: Set<number>): void {
    for (const inode of this.cache.keys()) if (!inodes.has(inode)) this.cache.delete(inode);
    for (const inode of this.places.keys()) if (!inodes.has(inode)) this.places.delete(inode);
  }

  /**
   * Where each socket found was (its process and fd), and the fds of sockets gone since, by
   * process: the kernel gives a new socket the lowest free fd, so a process that binds again
   * (a churn of short-lived servers) most likely reuses one of those, and a readlink of each
   * (lowest first) finds it without listing the process's fds.
   */
  private readonly places = new Map<number, { pid: number; fd: number }>();
  private readonly freed = new Map<number, Set<number>>();

  private foundAt(inode: number, pid: number, fd: number): void {
    if (this.places.size >= MAX_PLACES) this.places.clear();
    this.places.set(inode, { pid, fd });
  }

  /** The wanted sockets held by these processes (a process's own word is checked against its fds). */
  private findInLikely(wanted: Set<number>, pids: number[]): Map<number, number> {
    const found = new Map<number, number>();
    for (const pid of new Set(pids)) {
      if (!Number.isInteger(pid) || pid <= 0) continue;
      const dir = `${this.paths.proc}/${pid}/fd`;
      const freed = this.freed.get(pid);
      if (freed?.size) {
        for (const fd of [...freed].sort((a, b) => a - b)) {
          freed.delete(fd); // reused or not, it is no longer known to be free
          const target = linkOf(`${dir}/${fd}`);
          if (!target?.startsWith("socket:[")) continue;
          const inode = Number(target.slice(8, -1));
          if (wanted.has(inode) && !found.has(inode)) {
            found.set(inode, pid);
            this.foundAt(inode, pid, fd);
            if (found.size === wanted.size) return found;
          }
        }
      }
      let fds: string[];
      try {
        fds = readdirSync(dir);
      } catch {
        continue; // gone already: the full pass looks
      }
      // Newest fds first (a socket just bound has most likely the highest number), and no
      // further than the last one wanted.
      fds.sort((a, b) => Number(b) - Number(a));
      for (const fd of fds) {
        const target = linkOf(`${dir}/${fd}`);
        if (!target?.startsWith("socket:[")) continue;
        const inode = Number(target.slice(8, -1));
        if (wanted.has(inode) && !found.has(inode)) {
          found.set(inode, pid);
          this.foundAt(inode, pid, Number(fd));
        }
        if (found.size === wanted.size) return found;
      }
    }
    return found;
  }

  private async findPids(wanted: Set<number>): Promise<Map<number, number>> {
    const found = new Map<number, number>();
    const { proc } = this.paths;
    let pids: string[];
    try {
      pids = readdirSync(proc).filter((name) => /^\d+$/.test(name));
    } catch {
      return found;
    }
    const ownNet = linkOf(`${proc}/self/ns/net`);
    const sameNet = new Set(pids.filter((pid) => linkOf(`${proc}/${pid}/ns/net`) === ownNet));
    const others = pids.filter((pid) => !sameNet.has(pid));
    let read = 0;
    for (const pid of [...sameNet, ...others]) {
      if (found.size === wanted.size) break;
      let fds: string[];
      try {
        fds = readdirSync(`${proc}/${pid}/fd`);
      } catch {
        continue; // gone, or not ours to read
      }
      for (const fd of fds) {
        if (++read % YIELD_EVERY === 0) await new Promise((r) => setImmediate(r));
        const target = linkOf(`${proc}/${pid}/fd/${fd}`);
        if (!target?.startsWith("socket:[")) continue;
        const inode = Number(target.slice(8, -1));
        if (wanted.has(inode) && !found.has(inode)) {
          found.set(inode, Number(pid));
          this.foundAt(inode, Number(pid), Number(fd));
        }
      }
    }
    return found;
  }

  /**
   * A process's description by pid, kept while /proc/PID/stat shows the same start time (a pid
   * reused is another process). Checked at most once in recheckMs: the kernel hands out a pid
   * again only after going through the rest of pid_max, which no machine does that fast, and a
   * process binding port after port (a churn) cost a read of its stat file for every port.
   */
  private readonly described = new Map<number, { started: string; checkedAt: number; owner: PortOwner | null }>();

  private describe(pid: number): PortOwner | null {
    const known = this.described.get(pid);
    const now = performance.now();
    if (known && now - known.checkedAt < this.recheckMs) return known.owner;
    const started = startTime(readText(`${this.paths.proc}/${pid}/stat`));
    if (started && known?.started === started) {
      known.checkedAt = now;
      return known.owner;
    }
    const owner = this.describeNow(pid);
    if (this.described.size >= MAX_DESCRIBED) this.described.clear();
    if (started) this.described.set(pid, { started, checkedAt: now, owner });
    return owner;
  }

  private describeNow(pid: number): PortOwner | null {
    const dir = `${this.paths.proc}/${pid}`;
    const comm = readText(`${dir}/comm`)?.trim();
    if (comm === undefined) return null; // exited since
    const args = (readText(`${dir}/cmdline`) ?? "").split("\0").filter(Boolean);
    const uid = Number(/^Uid:\s+\d+\s+(\d+)/m.exec(readText(`${dir}/status`) ?? "")?.[1] ?? NaN);
    const container = parseCgroupFile(readText(`${dir}/cgroup`) ?? "");
    // argv[0]'s base name is what a user typed (comm is cut at 15 characters); a process that
    // rewrote its argv into one string ("nginx: master process") keeps its first word.
    const command = args[0] ? basename(args[0].split(" ")[0]!) || comm : comm;
    return {
      pid,
      command: boundedText(command, OWNER_LIMITS.command),
      commandLine: boundedText(args.length ? args.join(" ") : `[${comm}]`, OWNER_LIMITS.commandLine),
      uid: Number.isInteger(uid) ? uid : 0,
      user: Number.isInteger(uid) ? this.userName(uid) : "",
      ...(container ? { container: this.named(container) } : {}),
    };
  }

  /** The name for a uid from /etc/passwd (read again only when it changes), else the number. */
  private userName(uid: number): string {
    try {
      const { mtimeMs } = statSync(this.paths.passwd);
      if (this.users?.mtimeMs !== mtimeMs) {
        const names = new Map<number, string>();
        for (const line of readFileSync(this.paths.passwd, "utf8").split("\n")) {
          const [name, , id] = line.split(":");
          if (name && id && !names.has(Number(id))) names.set(Number(id), name);
        }
        this.users = { mtimeMs, names };
      }
    } catch {
      // no passwd file: numbers only
    }
    return this.users?.names.get(uid) ?? String(uid);
  }

  /** The container's name where its runtime keeps it in a file; else the id alone. */
  private named(c: CgroupContainer): NonNullable<PortOwner["container"]> {
    const name = (() => {
      if (c.pod) return podName(this.paths.pods, c.pod);
      if (c.runtime === "docker") return jsonField(`${this.paths.docker}/${c.id}/config.v2.json`, (j) => String((j as { Name?: string }).Name ?? "").replace(/^\//, ""));
      if (c.runtime === "podman") {
        return jsonField(this.paths.podman, (j) => (j as { id: string; names?: string[] }[]).find((e) => e.id === c.id)?.names?.[0] ?? "");
      }
      if (c.runtime === "containerd") return nerdctlName(this.paths.nerdctl, c.id);
      return undefined;
    })();
    return { ...c, ...(name ? { name: boundedText(name, OWNER_LIMITS.containerName) } : {}) };
  }
}

/** Field 22 of /proc/PID/stat (after the command in parentheses): when the process started. */
function startTime(stat: string | undefined): string | undefined {
  if (!stat) return undefined;
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
}

function linkOf(path: string): string | undefined {
  try {
    return readlinkSync(path);
  } catch {
    return undefined;
  }
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

function jsonField(path: string, pick: (json: unknown) => string): string | undefined {
  try {
    return pick(JSON.parse(readFileSync(path, "utf8"))) || undefined;
  } catch {
    return undefined;
  }
}

function listDir(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

/** nerdctl's name store (ROOT/STORE/names/NAMESPACE/NAME holds the id): the name of a containerd container. */
function nerdctlName(root: string, id: string): string | undefined {
  let read = 0;
  for (const store of listDir(root)) {
    for (const namespace of listDir(`${root}/${store}/names`)) {
      for (const name of listDir(`${root}/${store}/names/${namespace}`)) {
        if (++read > MAX_NAME_FILES) return undefined;
        if (readText(`${root}/${store}/names/${namespace}/${name}`)?.trim() === id) return name;
      }
    }
  }
  return undefined;
}

/** kubelet's /var/log/pods/NAMESPACE_NAME_UID: the pod as NAMESPACE/NAME. */
function podName(dir: string, uid: string): string | undefined {
  try {
    const entry = readdirSync(dir).find((e) => e.endsWith(`_${uid}`));
    if (!entry) return undefined;
    const [namespace, ...rest] = entry.slice(0, -uid.length - 1).split("_");
    return `${namespace}/${rest.join("_")}`;
  } catch {
    return undefined;
  }
}
