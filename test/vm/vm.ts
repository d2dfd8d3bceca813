// Boots the prepared guest under QEMU (TCG; x86-64, or aarch64 on QEMU's `virt` machine) with
// Lima's virtio-serial port for the agent and user-mode networking that reaches nothing;
// drives its console shell. Every wait has a deadline, and the VM is always killed.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AGENT_PORT_NAME, ARCHES, type VmArch, type VmImage } from "./image.ts";

/**
 * The machine, CPU and console per architecture. aarch64: `virt`, PL011 serial, and `max`
 * without SVE: with SVE, Bun 1.4.5's arm64 build crashes (SIGSEGV/abort) within seconds of
 * the guest agent's periodic FFI calls (netlink scans) under TCG. Measured with four host
 * reconnects per boot: 8 of 8 boots crashed with `max`, 1 of 1 with `max,pauth=off`, none of
 * 2 with `max,sve=off` or `cortex-a72`, and none with `max` when the agent made no FFI calls.
 * Apple silicon, the hosts of Lima's aarch64 guests, has no SVE either.
 */
const MACHINE: Record<VmArch, { args: string[]; cpu: string; console: string }> = {
  x64: { args: [], cpu: "max", console: "ttyS0" },
  arm64: { args: ["-machine", "virt"], cpu: "max,sve=off", console: "ttyAMA0" },
};

export class Vm {
  readonly chardev: string;
  private output = "";
  private waiters: (() => void)[] = [];
  private constructor(
    private readonly qemu: ChildProcess,
    private readonly dir: string,
  ) {
    this.chardev = join(dir, "agent.sock");
    qemu.stdout!.setEncoding("utf8");
    qemu.stdout!.on("data", (chunk: string) => {
      this.output += chunk;
      for (const w of this.waiters.splice(0)) w();
    });
    qemu.stderr!.on("data", (chunk: Buffer) => (this.output += chunk.toString()));
  }

  static async boot(image: VmImage, timeoutMs = 60_000): Promise<Vm> {
    const dir = mkdtempSync(join(tmpdir(), "porthole-vm-"));
    const chardev = join(dir, "agent.sock");
    const machine = MACHINE[image.arch];
    const qemu = spawn(ARCHES[image.arch].qemu, [
      ...machine.args, "-accel", "tcg", "-cpu", machine.cpu, "-m", "1024", "-smp", "1",
      "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
      "-kernel", image.kernel, "-initrd", image.initrd,
      "-append", `console=${machine.console} panic=-1 quiet loglevel=3`,
      "-drive", `file=${image.disk},if=virtio,format=raw,readonly=on`,
      "-device", "virtio-serial-pci,id=vs0",
      "-chardev", `socket,path=${chardev},server=on,wait=off,id=ga0`,
      "-device", `virtserialport,bus=vs0.0,chardev=ga0,name=${AGENT_PORT_NAME}`,
      // The guest's network reaches nothing outside (restrict=on).
      "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
    ], { stdio: ["pipe", "pipe", "pipe"] });
    const vm = new Vm(qemu, dir);
    process.once("exit", () => vm.kill()); // never outlive the test run
    try {
      await vm.waitFor(/PORTHOLE-VM-READY/, timeoutMs);
      if (/PORTHOLE-VM-NO-DISK/.test(vm.output)) throw new Error("the guest could not mount its disk");
    } catch (err) {
      vm.kill();
      throw err;
    }
    return vm;
  }

  /** Waits until the console output matches; returns the match. */
  async waitFor(pattern: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = pattern.exec(this.output);
      if (m) return m;
      if (this.qemu.exitCode !== null) throw new Error(`QEMU exited (${this.qemu.exitCode}) before ${pattern}:\n${this.output.slice(-3000)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${pattern} in the VM console:\n${this.output.slice(-3000)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.waiters.push(() => (clearTimeout(t), r()));
      });
    }
  }

  /** Runs a shell command in the guest and returns its output (between unique markers). */
  async sh(command: string, timeoutMs = 30_000): Promise<string> {
    const id = Math.random().toString(36).slice(2, 10);
    // Markers split in the typed text, so the console's echo of the input never matches. Under
    // load that echo can land anywhere in the output, even right after the BEGIN marker on its
    // line: the output is what lies between the markers, echoed input included.
    this.qemu.stdin!.write(`echo "BEG""IN-${id}"\n${command}\necho "EN""D-${id}"\n`);
    const m = await this.waitFor(new RegExp(`BEGIN-${id}[^\\n]*\\n([\\s\\S]*?)END-${id}`), timeoutMs);
    return m[1]!.replace(/\r/g, "");
  }

  /** The guest kernel's own view of the agent's virtio-serial port (debugfs: host_connected, bytes_discarded, ...). */
  async portStats(): Promise<string> {
    return this.sh("grep -q ' /sys/kernel/debug ' /proc/mounts || mount -t debugfs none /sys/kernel/debug; cat /sys/kernel/debug/virtio-ports/vport*p1");
  }

  /** Waits until the guest's kernel shows no host attached to the agent's port (the last one seen to go). */
  async waitForPortWithoutHost(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let stats = "";
    while (!/host_connected: 0\n/.test((stats = await this.portStats()))) {
      if (Date.now() > deadline) throw new Error(`the guest's port still shows a host after ${timeoutMs} ms:\n${stats}`);
      await Bun.sleep(100);
    }
  }

  /** Starts a fixture server (test/fixtures/servers.ts) in the guest; returns how to stop it. */
  async startFixture(args: string, ready = /listening/, timeoutMs = 60_000): Promise<{ stop(): Promise<void> }> {
    const name = `/tmp/fixture-${Math.random().toString(36).slice(2, 8)}`;
    await this.sh(`BUN_BE_BUN=1 HOME=/tmp /mnt/porthole /mnt/servers.ts ${args} > ${name}.log 2>&1 &\necho $! > ${name}.pid`);
    const deadline = Date.now() + timeoutMs;
    while (!ready.test(await this.sh(`cat ${name}.log`))) {
      if (Date.now() > deadline) throw new Error(`the guest fixture ${args} did not start: ${await this.sh(`cat ${name}.log`)}`);
      await Bun.sleep(300);
    }
    return { stop: async () => void (await this.sh(`kill $(cat ${name}.pid)`)) };
  }

  kill(): void {
    if (this.qemu.exitCode === null) this.qemu.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}
