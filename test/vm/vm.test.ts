// porthole inside a real Linux VM (QEMU, TCG), over virtio-serial as Lima uses it: the guest
// agent on /dev/virtio-ports/io.lima-vm.guest_agent.0, the host agent on QEMU's chardev socket.
// The same tests run in an x86-64 guest (dist/porthole) and in an aarch64 guest (Debian's
// arm64 cloud kernel on QEMU's `virt` machine, -cpu max, with dist/porthole-linux-arm64), the
// guests of Lima on Apple silicon. One boot per architecture serves its tests.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as dgram from "node:dgram";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { defer, echoRoundTrip, exchange, freePort, Guest, limaGoHostRun, limaGoPeer, pathsOf, Proc, runCleanups, startHostAgent, refusedSoon, type HostAgentProc } from "../lab.ts";
import { prepareImage, vmBlocker, type VmArch } from "./image.ts";
import { Vm } from "./vm.ts";

setDefaultTimeout(240_000);

const GUESTS: { arch: VmArch; name: string; slow: number }[] = [
  { arch: "x64", name: "x86-64", slow: 1 },
  // aarch64 under TCG runs Bun some 3 times slower: every wait is stretched by that much.
  { arch: "arm64", name: "aarch64", slow: 3 },
];

for (const { arch, name, slow } of GUESTS) {
  const blocker = vmBlocker(arch);
  if (blocker && process.env.CI) throw new Error(`${blocker}; CI=true forbids skipping the VM tests`);
  const vmTest = (blocker ? test.skip : test) as typeof test;

  describe(`in a real ${name} VM over virtio-serial`, () => {
    let vm: Vm | undefined;
    let host: HostAgentProc | undefined;
    /** Only for its scratch directory and the host agent's state: the guest here is the VM. */
    let scratch: Guest;

    beforeAll(async () => {
      if (blocker) return;
      const image = prepareImage(arch);
      vm = await Vm.boot(image, 60_000 * slow);
      scratch = Guest.create();
      host = startHostAgent(scratch, ["--guest", `unix://${vm.chardev}`, "--forwarder", "grpc"]);
      await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to reach the VM's agent", 60_000 * slow);
    });

    afterAll(async () => {
      vm?.kill();
      await runCleanups();
    });

    vmTest(`the ${name} guest agent finds ports through its own shim's netlink sock_diag, told by kernel events (the ebpf detector), and says closes come by socket-destroy events`, async () => {
      const log = await vm!.sh("cat /tmp/agent.log; uname -m");
      expect(log).toContain("watching sockets with netlink sock_diag on kernel events");
      expect(log).toContain("port detector: ebpf (kernel events");
      expect(log).toContain("closes through socket-destroy events");
      expect(log).not.toContain("degraded:");
      expect(log).toContain(arch === "x64" ? "x86_64" : "aarch64");
    });

    vmTest("a TCP server started in the guest appears on host localhost and carries 4 MiB intact both ways", async () => {
      const port = await freePort();
      await vm!.startFixture(`echo 127.0.0.1 ${port}`, undefined, 60_000 * slow);
      const forwarded = await host!.waitForForwarding(port, 30_000 * slow);
      // Its owner, found by the guest agent through the shim's sock_diag inode and the VM's /proc.
      expect(forwarded.owner).toMatchObject({ command: "porthole", commandLine: `/mnt/porthole /mnt/servers.ts echo 127.0.0.1 ${port}`, uid: 0 });
      const { sent, received, receivedBytes } = await echoRoundTrip(port, 4 << 20);
      expect([receivedBytes, received]).toEqual([4 << 20, sent]);
    });

    vmTest("a UDP echo through the forward", async () => {
      const port = await freePort();
      await vm!.startFixture(`udp-echo 127.0.0.1 ${port}`, undefined, 60_000 * slow);
      await host!.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward", 30_000 * slow);
      const client = dgram.createSocket("udp4");
      try {
        const reply = new Promise<string>((resolve) => client.on("message", (m) => resolve(m.toString())));
        const timer = setInterval(() => client.send("ping from the host", port, "127.0.0.1"), 500);
        const got = await reply;
        clearInterval(timer);
        expect(got).toBe("ping from the host");
      } finally {
        client.close();
      }
    });

    vmTest("the guest program closing its port releases the host port", async () => {
      const port = await freePort();
      const server = await vm!.startFixture(`echo 127.0.0.1 ${port}`, undefined, 60_000 * slow);
      await host!.waitForForwarding(port, 30_000 * slow);
      await server.stop();
      await host!.waitForEvent((e) => e.type === "stopping" && e.hostAddr === `127.0.0.1:${port}`, "the forward to stop", 30_000 * slow);
      expect(await refusedSoon(port)).toBe("ECONNREFUSED");
    });

    vmTest("the host agent restarted three times in a row, each at once (the chardev socket dropped and reconnected): the guest agent keeps its port open and answers each", async () => {
      const port = await freePort();
      await vm!.startFixture(`echo 127.0.0.1 ${port}`, undefined, 60_000 * slow);
      await host!.waitForForwarding(port, 30_000 * slow);
      for (const round of [1, 2, 3]) {
        await host!.proc.kill();
        host = startHostAgent(scratch, ["--guest", `unix://${vm!.chardev}`, "--forwarder", "grpc", "--state-dir", join(scratch.dir, `restart${round}`)]);
        await host.waitForForwarding(port, 60_000 * slow).catch(async (err: Error) => {
          throw new Error(`round ${round}: ${err.message}\n--- the guest agent's log\n${await vm!.sh("cat /tmp/agent.log")}`);
        });
        expect((await exchange(port, Buffer.from(`after restart ${round}`))).toString()).toBe(`after restart ${round}`);
      }
      // Closing the port would have thrown away what a new host sent before the guest read it
      // (the kernel counts it: bytes_discarded).
      const log = await vm!.sh("cat /tmp/agent.log; pgrep -f 'porthole guest' >/dev/null && echo agent-alive");
      expect(log).not.toContain("opening it again");
      expect(log).toContain("agent-alive");
      expect(await vm!.portStats()).toMatch(/bytes_discarded: 0\n/);
    });

    vmTest("Lima's own host stack (grpc-go) after a porthole host, twice: GetInfo, GetEvents and a TCP and a UDP Tunnel to the end over the real port", async () => {
      const peerBin = limaGoPeer();
      const [tcp, udp] = [await freePort(), await freePort()];
      await vm!.startFixture(`echo 127.0.0.1 ${tcp}`, undefined, 60_000 * slow);
      await vm!.startFixture(`udp-echo 127.0.0.1 ${udp}`, undefined, 60_000 * slow);
      await host!.waitForForwarding(tcp, 30_000 * slow);
      await host!.proc.kill();
      for (const round of [1, 2]) {
        // Lima's host agent comes back seconds after the last one left (it retries every 10 s),
        // not within milliseconds: each grpc-go host (the first after the porthole host, the
        // second after the first) waits until the guest's kernel has seen the last one go. A
        // host that attaches sooner can read the last host's final frames first (README, "What
        // a host that attaches within milliseconds can see"; in CI the first round once got
        // "connection closed" for its GetInfo when it did not wait).
        await vm!.waitForPortWithoutHost(30_000 * slow);
        const peer = new Proc(spawn(peerBin, ["host", vm!.chardev, `127.0.0.1:${tcp}`, `127.0.0.1:${udp}`], { stdio: ["ignore", "pipe", "pipe"] }), `grpc-go host ${round}`);
        defer(() => peer.kill("SIGKILL"));
        const steps = await limaGoHostRun(peer, 60_000 * slow);
        expect(steps.find((s) => s.error)).toBeUndefined();
        expect(steps.find((s) => s.step === "Tunnel tcp")?.echo).toBe("hello from grpc-go");
        expect(steps.find((s) => s.step === "Tunnel udp")?.echo).toBe("one datagram");
        expect(await peer.exited).toBe(0);
      }
      host = undefined; // killed above; the next test starts its own
    });

    vmTest("with the default forwarder the two agents share QEMU's virtio-serial port through the lean multiplexer: 4 MiB both ways, counted on the mux path", async () => {
      const port = await freePort();
      await vm!.startFixture(`echo 127.0.0.1 ${port}`, undefined, 60_000 * slow);
      await host?.proc.kill();
      const state = join(scratch.dir, "state3");
      host = startHostAgent(scratch, ["--guest", `unix://${vm!.chardev}`, "--state-dir", state]);
      const mux = await host.waitForEvent((e) => e.type === "path-changed" && e.path === "mux", "the mux event", 60_000 * slow);
      expect(mux.state).toBe("usable");
      expect((await host.waitForForwarding(port, 60_000 * slow)).path).toBe("mux");
      const { sent, received, receivedBytes } = await echoRoundTrip(port, 4 << 20);
      expect([receivedBytes, received]).toEqual([4 << 20, sent]);
      expect(pathsOf(join(state, "control.sock"), port)).toEqual({ mux: 1 });
    });
  });
}
