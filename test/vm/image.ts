// A small real Linux guest for the VM tests, prepared once per architecture and cached:
// Debian's cloud kernel (x86-64: LZ4, fast to boot under TCG; aarch64: the arm64 cloud
// kernel), a busybox initramfs that loads the virtio modules and starts the porthole guest
// agent on the virtio-serial port as a provisioning script would, and a read-only ext4 disk
// with that architecture's porthole binary, the glibc it links, and the test fixtures.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";

const REPO = resolve(import.meta.dir, "../..");
export const AGENT_PORT_NAME = "io.lima-vm.guest_agent.0";
const MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_console", "failover", "net_failover", "virtio_net", "virtio_blk", "inet_diag", "tcp_diag", "udp_diag", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4"];

/** The guest's architecture: x64 boots under qemu-system-x86_64, arm64 under qemu-system-aarch64. */
export type VmArch = "x64" | "arm64";

export interface VmImage {
  arch: VmArch;
  kernel: string;
  initrd: string;
  disk: string;
}

/** What differs per architecture: Debian's name for it, QEMU, and the guest binary. */
export const ARCHES: Record<VmArch, { debArch: string; qemu: string; binary: string; ldList: (binary: string) => string[] }> = {
  x64: { debArch: "amd64", qemu: "qemu-system-x86_64", binary: process.env.PORTHOLE_BIN ?? join(REPO, "dist/porthole"), ldList: (b) => ["ldd", b] },
  // The arm64 binary's libraries, as its own dynamic loader (from libc6:arm64) lists them under qemu-user.
  arm64: {
    debArch: "arm64",
    qemu: "qemu-system-aarch64",
    binary: process.env.PORTHOLE_ARM64_BIN ?? join(REPO, "dist/porthole-linux-arm64"),
    ldList: (b) => ["qemu-aarch64-static", "/lib/ld-linux-aarch64.so.1", "--list", b],
  },
};

function run(argv: string[], options: { cwd?: string; timeoutMs?: number } = {}): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: "utf8", cwd: options.cwd, timeout: options.timeoutMs ?? 300_000, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${argv.join(" ")} failed: ${(r.stderr || r.error?.message || "").trim().slice(0, 2000)}`);
  return r.stdout;
}

const has = (command: string) => spawnSync("sh", ["-c", `command -v ${command}`]).status === 0;

/** Why the VM tests cannot run here for this architecture, if they cannot (QEMU, the binary, root). */
export function vmBlocker(arch: VmArch = "x64"): string | undefined {
  if (process.getuid?.() !== 0) return "the VM tests need root (to install QEMU and fetch the kernel package)";
  const { qemu, binary } = ARCHES[arch];
  if (!has(qemu)) return `${qemu} is missing: apt-get install --no-install-recommends ${arch === "x64" ? "qemu-system-x86" : "qemu-system-arm"} (make test-vm does)`;
  if (!existsSync(binary)) return `${binary} is missing: ${arch === "x64" ? "make build" : "make dist/porthole-linux-arm64"}`;
  if (arch === "arm64" && (!has("qemu-aarch64-static") || !existsSync("/lib/ld-linux-aarch64.so.1"))) {
    return "the arm64 guest's libraries come from libc6:arm64, listed through qemu-aarch64-static: make arm64-deps system-deps";
  }
  return undefined;
}

/** A Debian package of this architecture, downloaded once (apt-get download, no install). */
function fetchDeb(name: string, debArch: string, dir: string): string {
  mkdirSync(dir, { recursive: true });
  const find = () => readdirSync(dir).find((f) => f.startsWith(`${name}_`) && f.endsWith(`_${debArch}.deb`));
  const existing = find();
  if (existing) return join(dir, existing);
  run(["apt-get", "download", `${name}:${debArch}`], { cwd: dir });
  const deb = find();
  if (!deb) throw new Error(`apt-get download ${name}:${debArch} left no .deb`);
  return join(dir, deb);
}

/** The kernel and its virtio modules (the version named by the cloud metapackage). */
function prepareKernel(cache: string, debArch: string): { vmlinuz: string; modules: Record<string, string> } {
  const meta = `linux-image-cloud-${debArch}`;
  const depends = run(["apt-cache", "depends", `${meta}:${debArch}`]);
  const pkg = new RegExp(`Depends: (linux-image-[\\w.-]+-cloud-${debArch})`).exec(depends)?.[1];
  if (!pkg) throw new Error(`cannot tell the cloud kernel package from apt-cache depends ${meta}:${debArch} (for arm64: dpkg --add-architecture arm64 && apt-get update):\n${depends}`);
  const root = join(cache, pkg);
  if (!existsSync(join(root, "boot"))) {
    rmSync(root, { recursive: true, force: true });
    run(["dpkg-deb", "-x", fetchDeb(pkg, debArch, join(cache, "debs")), root]);
  }
  const vmlinuz = readdirSync(join(root, "boot")).find((f) => f.startsWith("vmlinuz-"));
  if (!vmlinuz) throw new Error(`${pkg} has no vmlinuz`);
  const modules: Record<string, string> = {};
  const find = run(["find", join(root, "lib/modules"), "-name", "*.ko*"]).split("\n").filter(Boolean);
  for (const file of find) {
    const name = basename(file).replace(/\.ko(\.xz|\.zst)?$/, "").replace(/-/g, "_");
    if (MODULES.includes(name)) modules[name] = file;
  }
  return { vmlinuz: join(root, "boot", vmlinuz), modules };
}

const INIT = (modules: string[]) => `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /mnt /run /lib
mount -t tmpfs tmp /tmp
for m in ${modules.join(" ")}; do insmod /modules/$m.ko 2>/dev/null; done
ip link set lo up
ip link set eth0 up 2>/dev/null && udhcpc -q -i eth0 -s /bin/true >/dev/null 2>&1
mount -t ext4 -o ro /dev/vda /mnt || echo PORTHOLE-VM-NO-DISK
# glibc where the binary looks for it (x86-64: /lib64 and /lib/x86_64-linux-gnu; aarch64:
# /lib/ld-linux-aarch64.so.1 and /lib/aarch64-linux-gnu).
[ -d /mnt/lib64 ] && ln -s /mnt/lib64 /lib64
for f in /mnt/lib/*; do ln -s $f /lib/; done
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do ln -sf /dev/$(basename $p) /dev/virtio-ports/$(cat $p/name); done
export HOME=/tmp
# As a provisioning script starts it:
/mnt/porthole guest --listen serial:///dev/virtio-ports/${AGENT_PORT_NAME} > /tmp/agent.log 2>&1 &
echo PORTHOLE-VM-READY
exec sh
`;

/** The initramfs: busybox (of the guest's architecture), the modules (decompressed), and /init. */
function prepareInitrd(cache: string, debArch: string, modules: Record<string, string>): string {
  const busybox = join(cache, `busybox-static-${debArch}`);
  if (!existsSync(join(busybox, "bin/busybox"))) run(["dpkg-deb", "-x", fetchDeb("busybox-static", debArch, join(cache, "debs")), busybox]);
  const key = createHash("sha256").update(debArch).update(INIT(MODULES)).update(JSON.stringify(modules)).digest("hex").slice(0, 12);
  const initrd = join(cache, `initrd-${key}.cpio.gz`);
  if (existsSync(initrd)) return initrd;
  const root = join(cache, `initrd-${key}`);
  rmSync(root, { recursive: true, force: true });
  for (const d of ["bin", "modules", "proc", "sys", "dev"]) mkdirSync(join(root, d), { recursive: true });
  copyFileSync(join(busybox, "bin/busybox"), join(root, "bin/busybox"));
  chmodSync(join(root, "bin/busybox"), 0o755);
  const loaded: string[] = [];
  for (const name of MODULES) {
    const file = modules[name];
    if (!file) continue; // built into this kernel
    const out = join(root, "modules", `${name}.ko`);
    if (file.endsWith(".xz")) writeFileSync(out, spawnSync("xz", ["-dc", file], { maxBuffer: 64 << 20 }).stdout);
    else if (file.endsWith(".zst")) run(["zstd", "-dqf", file, "-o", out]);
    else copyFileSync(file, out);
    loaded.push(name);
  }
  writeFileSync(join(root, "init"), INIT(loaded), { mode: 0o755 });
  run(["sh", "-c", `cd ${root} && find . | cpio -o -H newc --quiet | gzip -1 > ${initrd}`]);
  rmSync(root, { recursive: true, force: true });
  return initrd;
}

/** The read-only disk: the binary, its glibc, the fixtures. Rebuilt when the binary changes. */
function prepareDisk(cache: string, arch: VmArch): string {
  const { binary, ldList } = ARCHES[arch];
  const servers = join(REPO, "test/fixtures/servers.ts");
  const key = createHash("sha256").update(readFileSync(binary)).update(readFileSync(servers)).digest("hex").slice(0, 12);
  const disk = join(cache, `disk-${arch}-${key}.img`);
  if (existsSync(disk)) return disk;
  for (const f of readdirSync(cache).filter((f) => f.startsWith(`disk-${arch}-`))) rmSync(join(cache, f), { recursive: true, force: true });
  const root = join(cache, `disk-${arch}-${key}`);
  rmSync(root, { recursive: true, force: true });
  mkdirSync(root, { recursive: true });
  copyFileSync(binary, join(root, "porthole"));
  chmodSync(join(root, "porthole"), 0o755);
  copyFileSync(servers, join(root, "servers.ts"));
  const libs = run(ldList(binary)).split("\n").flatMap((l) => /(\/\S+)/.exec(l)?.[1] ?? []);
  for (const lib of libs) {
    const target = join(root, lib);
    mkdirSync(dirname(target), { recursive: true });
    copyFileSync(lib, target); // follows symlinks: the real file under the link's name
  }
  const size = Math.ceil((statSync(binary).size + 64 * 1024 * 1024) / (1024 * 1024));
  run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d", root, disk, `${size}M`]);
  rmSync(root, { recursive: true, force: true });
  return disk;
}

export function prepareImage(arch: VmArch = "x64", cache = join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "porthole-vm")): VmImage {
  mkdirSync(cache, { recursive: true });
  const { debArch } = ARCHES[arch];
  const { vmlinuz, modules } = prepareKernel(cache, debArch);
  return { arch, kernel: vmlinuz, initrd: prepareInitrd(cache, debArch, modules), disk: prepareDisk(cache, arch) };
}
