// Who owns a guest port: the process (pid, command, user) and its container, as the guest
// agent reports it in porthole's extension (proto/porthole.proto, PortOwner). The guest is
// untrusted, so the host takes an owner only through `checkedOwner`: every field of the
// right type, strings bounded and free of control characters. No I/O.
import type { WireOwner } from "../proto/guest-service.ts";
import type { ContainerRuntime } from "./cgroup.ts";

/** The socket behind a port, from sock_diag or /proc/net: enough to find its process. */
export interface SocketId {
  inode: number;
  uid: number;
}

export interface PortOwner {
  pid: number;
  /** The short form: the program's name (argv[0]'s base name, else the kernel's comm). */
  command: string;
  /** The full command line, arguments joined by spaces. */
  commandLine: string;
  user: string;
  uid: number;
  container?: { runtime: ContainerRuntime; id: string; name?: string; pod?: string };
}


export const OWNER_LIMITS = { command: 64, commandLine: 1024, user: 64, containerName: 128 };
const MAX_PID = 4_194_304; // the kernel's PID_MAX_LIMIT
const RUNTIMES: ContainerRuntime[] = ["docker", "podman", "containerd", "cri-o"];
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;
const HEX64 = /^[0-9a-f]{64}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** `s` cut to `max` characters (an ellipsis says so), control characters as `?`. */
export function boundedText(s: string, max: number): string {
  const clean = s.replace(CONTROL, "?");
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
}

/** The wire form; fields without a value are left out (protobufjs would send them empty). */
export function toWireOwner(o: PortOwner): Partial<WireOwner> {
  const c = o.container;
  return {
    pid: o.pid,
    command: o.command,
    command_line: o.commandLine,
    user: o.user,
    uid: o.uid,
    ...(c ? { container_runtime: c.runtime, container_id: c.id } : {}),
    ...(c?.name ? { container_name: c.name } : {}),
    ...(c?.pod ? { container_pod: c.pod } : {}),
  };
}

/**
 * The owner the guest sent, checked, or why it is refused. An over-long string is cut and a
 * control character becomes `?` (the rest of the owner is still worth showing); a wrong
 * type, a pid out of range or a malformed container id refuses the whole owner.
 */
export function checkedOwner(raw: unknown): { owner?: PortOwner; error?: string } {
  if (raw === null || raw === undefined) return {};
  if (typeof raw !== "object") return { error: "the owner is not a message" };
  const w = raw as Partial<Record<keyof WireOwner, unknown>>;
  const str = (v: unknown) => (typeof v === "string" ? v : v === undefined ? "" : undefined);
  const [command, commandLine, user, runtime, id, name, pod] = [w.command, w.command_line, w.user, w.container_runtime, w.container_id, w.container_name, w.container_pod].map(str);
  if ([command, commandLine, user, runtime, id, name, pod].some((v) => v === undefined)) return { error: "an owner field is not a string" };
  const pid = Number(w.pid);
  const uid = Number(w.uid ?? 0);
  if (!Number.isInteger(pid) || pid < 1 || pid > MAX_PID) return { error: `owner pid ${String(w.pid).slice(0, 20)} is not a process id` };
  if (!Number.isInteger(uid) || uid < 0 || uid > 0xffffffff) return { error: `owner uid ${String(w.uid).slice(0, 20)} is not a user id` };
  const owner: PortOwner = {
    pid,
    command: boundedText(command!, OWNER_LIMITS.command),
    commandLine: boundedText(commandLine!, OWNER_LIMITS.commandLine),
    user: boundedText(user!, OWNER_LIMITS.user),
    uid,
  };
  if (id) {
    if (!RUNTIMES.includes(runtime as ContainerRuntime)) return { error: "owner container runtime is not one porthole knows" };
    if (!HEX64.test(id!)) return { error: "owner container id is not 64 hex digits" };
    if (pod && !UUID.test(pod)) return { error: "owner container pod is not a uid" };
    owner.container = {
      runtime: runtime as ContainerRuntime,
      id: id!,
      ...(name ? { name: boundedText(name, OWNER_LIMITS.containerName) } : {}),
      ...(pod ? { pod } : {}),
    };
  }
  return { owner };
}

/** The short form for a status column: `node[1234]`, with the container's name or short id. */
export function formatOwner(o: PortOwner | undefined): string {
  if (!o) return "";
  const where = o.container ? ` @${o.container.name ?? o.container.id.slice(0, 12)}` : "";
  return `${o.command}[${o.pid}] ${o.user}${where}`;
}
