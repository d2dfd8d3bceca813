// Which container a process runs in, told by its /proc/PID/cgroup: container runtimes name
// the cgroup they place a container in after its id. No I/O.
//
// Shapes recognised (systemd and cgroupfs drivers, cgroup v1 and v2):
//   docker      /system.slice/docker-<id>.scope, /docker/<id>
//   podman      /machine.slice/libpod-<id>.scope[/container], /libpod_parent/libpod-<id>
//   containerd  /system.slice/nerdctl-<id>.scope, cri-containerd-<id>.scope, /<namespace>/<id>
//   cri-o       crio-<id>.scope
//   Kubernetes  any of those under kubepods…pod<uid>…: the pod's uid as well
// An id is 64 hex digits, as every one of these runtimes makes them.

export type ContainerRuntime = "docker" | "podman" | "containerd" | "cri-o";

export interface CgroupContainer {
  runtime: ContainerRuntime;
  /** The full 64-hex-digit container id. */
  id: string;
  /** The Kubernetes pod's uid, when the container is in a pod. */
  pod?: string;
}

const PREFIXES: [RegExp, ContainerRuntime][] = [
  [/^docker-([0-9a-f]{64})\.scope$/, "docker"],
  [/^libpod-(?:payload-)?([0-9a-f]{64})(?:\.scope)?$/, "podman"],
  [/^nerdctl-([0-9a-f]{64})\.scope$/, "containerd"],
  [/^cri-containerd-([0-9a-f]{64})\.scope$/, "containerd"],
  [/^crio-([0-9a-f]{64})\.scope$/, "cri-o"],
];
const BARE_ID = /^[0-9a-f]{64}$/;
/** kubepods-burstable-pod1234abcd_…_.slice (systemd, `_` for `-`) or pod1234abcd-… (cgroupfs). */
const POD = /^(?:kubepods(?:-[a-z]+)*-)?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$/;

/** The container named by one cgroup path, if any. */
export function containerFromCgroupPath(path: string): CgroupContainer | undefined {
  const parts = path.split("/").filter(Boolean);
  let pod: string | undefined;
  let found: CgroupContainer | undefined;
  parts.forEach((part, i) => {
    const podMatch = POD.exec(part);
    if (podMatch) pod = podMatch[1]!.replaceAll("_", "-");
    if (found) return;
    for (const [pattern, runtime] of PREFIXES) {
      const m = pattern.exec(part);
      if (m) return void (found = { runtime, id: m[1]! });
    }
    if (!BARE_ID.test(part)) return;
    // cgroupfs drivers: /docker/<id>, /libpod_parent/<id>, /kubepods/…/pod<uid>/<id>,
    // containerd's /<namespace>/<id>.
    const parent = parts[i - 1] ?? "";
    const runtime: ContainerRuntime = parent === "docker" ? "docker" : parent.startsWith("libpod") ? "podman" : "containerd";
    found = { runtime, id: part };
  });
  if (!found) return undefined;
  return pod ? { ...(found as CgroupContainer), pod } : found;
}

/**
 * The container of a process from its /proc/PID/cgroup text: the cgroup v2 line (`0::`)
 * first, then the v1 hierarchies in order (a hybrid host has both).
 */
export function parseCgroupFile(text: string): CgroupContainer | undefined {
  const lines = text.split("\n").filter(Boolean);
  const paths = lines.map((line) => ({ v2: line.startsWith("0::"), path: line.slice(line.indexOf(":", line.indexOf(":") + 1) + 1) }));
  for (const { path } of [...paths.filter((p) => p.v2), ...paths.filter((p) => !p.v2)]) {
    const container = containerFromCgroupPath(path);
    if (container) return container;
  }
  return undefined;
}
