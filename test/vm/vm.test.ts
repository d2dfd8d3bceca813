// porthole inside a real Linux VM (QEMU, TCG), over virtio-serial as Lima uses it: the guest
// agent on /dev/virtio-ports/io.lima-vm.guest_agent.0, the host agent on QEMU's chardev socket.
// One boot serves every test here.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as dgram from "node:dgram";
import { join } from "node:path";
import { echoRoundTrip, exchange, freePort, Guest, runCleanups, startHostAgent, refusedSoon, type HostAgentProc } from "../lab.ts";
import { prepareImage, vmBlocker } from "./image.ts";
import { Vm } from "./vm.ts";

setDefaultTimeout(120_000);
const blocker = vmBlocker();
if (blocker && process.env.CI) throw new Error(`${blocker}; CI=true forbids skipping the VM tests`);
const vmTest = (blocker ? test.skip : test) as typeof test;

let vm: Vm | undefined;
let host: HostAgentProc | undefined;
/** Only for its scratch directory and the host agent's state: the guest here is the VM. */
let scratch: Guest;

beforeAll(async () => {
  if (blocker) return;
  const image = prepareImage();
  vm = await Vm.boot(image);
  scratch = Guest.create();
  host = startHostAgent(scratch, ["--guest", `unix://${vm.chardev}`, "--forwarder", "grpc"]);
  await host.waitForEvent((e) => e.type === "guest-connected", "the host agent to reach the VM's agent", 60_000);
});

afterAll(async () => {
  vm?.kill();
  await runCleanups();
});

describe("in a real VM over virtio-serial", () => {
  vmTest("a TCP server started in the guest appears on host localhost and carries 4 MiB intact both ways", async () => {
    const port = await freePort();
    await vm!.startFixture(`echo 127.0.0.1 ${port}`);
    await host!.waitForForwarding(port, 30_000);
    const { sent, received, receivedBytes } = await echoRoundTrip(port, 4 << 20);
    expect([receivedBytes, received]).toEqual([4 << 20, sent]);
  });

  vmTest("a UDP echo through the forward", async () => {
    const port = await freePort();
    await vm!.startFixture(`udp-echo 127.0.0.1 ${port}`);
    await host!.waitForEvent((e) => e.type === "forwarding" && e.protocol === "udp" && e.hostAddr === `127.0.0.1:${port}`, "the UDP forward", 30_000);
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
    const server = await vm!.startFixture(`echo 127.0.0.1 ${port}`);
    await host!.waitForForwarding(port, 30_000);
    await server.stop();
    await host!.waitForEvent((e) => e.type === "stopping" && e.hostAddr === `127.0.0.1:${port}`, "the forward to stop", 30_000);
    expect(await refusedSoon(port)).toBe("ECONNREFUSED");
  });

  vmTest("the host agent restarted (the chardev socket dropped and reconnected): the guest agent keeps serving", async () => {
    const port = await freePort();
    await vm!.startFixture(`echo 127.0.0.1 ${port}`);
    await host!.waitForForwarding(port, 30_000);
    await host!.proc.kill();
    host = startHostAgent(scratch, ["--guest", `unix://${vm!.chardev}`, "--forwarder", "grpc", "--state-dir", join(scratch.dir, "state2")]);
    await host.waitForForwarding(port, 60_000);
    expect((await exchange(port, Buffer.from("after the reconnect"))).toString()).toBe("after the reconnect");
    expect(await vm!.sh("pgrep -f 'porthole guest' >/dev/null && echo agent-alive")).toContain("agent-alive");
  });
});
