// The host agent rides out a restarted guest agent and a busy host port.
import { describe, expect } from "bun:test";
import * as net from "node:net";
import { e2eTest, exchange, freePort, refusedSoon, startPair, useHarness } from "./harness.ts";

useHarness();

describe("recovery", () => {
  e2eTest("killing and restarting the guest agent: forwarding works again and catches up", async () => {
    const { guest, guestAgent, host } = await startPair();
    const [kept, dropped, added] = [await freePort(), await freePort(), await freePort()];
    await guest.startEcho("127.0.0.1", kept);
    const droppedServer = await guest.startEcho("127.0.0.1", dropped);
    await host.waitForForwarding(kept);
    await host.waitForForwarding(dropped);

    await guestAgent.kill("SIGKILL");
    await host.waitForEvent((e) => e.type === "guest-disconnected", "the host to notice");
    // While the agent is down, one guest port closes and another opens.
    await droppedServer.kill();
    await guest.startEcho("127.0.0.1", added);

    await guest.startAgent(); // replaces the stale socket file of the killed agent
    await host.waitForNthEvent(2, (e) => e.type === "guest-connected", "the host to reconnect");
    await host.waitForForwarding(added);
    await host.waitForEvent((e) => e.type === "stopping" && e.hostAddr === `127.0.0.1:${dropped}`, "the dropped port to stop");
    expect((await exchange(kept, Buffer.from("still here"))).toString()).toBe("still here");
    expect((await exchange(added, Buffer.from("new"))).toString()).toBe("new");
    expect(await refusedSoon(dropped)).toBe("ECONNREFUSED");
  });

  e2eTest("a host port that is taken is reported as failed, retried, and forwarded once free", async () => {
    const port = await freePort();
    const squatter = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => squatter.listen(port, "127.0.0.1", r));
    let squatterOpen = true;
    try {
      const { guest, host } = await startPair();
      await guest.startEcho("127.0.0.1", port);
      const failed = await host.waitForEvent((e) => e.type === "failed" && e.hostAddr === `127.0.0.1:${port}`, "failed");
      expect(failed.error).toContain("address already in use");
      expect(host.proc.running).toBe(true);

      await new Promise((r) => squatter.close(r));
      squatterOpen = false;
      await host.waitForForwarding(port, 15_000);
      expect((await exchange(port, Buffer.from("mine now"))).toString()).toBe("mine now");
    } finally {
      if (squatterOpen) squatter.close();
    }
  });
});
