// TCP half-close both ways, refused connections, resource release, and the plain Lima
// protocol still working against the porthole guest agent.
import { describe, expect } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { createHash, randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import { limaGuestServiceDefinition, type GuestEvent, type Info } from "../../src/proto/guest-service.ts";
import { useHarness, e2eTest, exchange, freePort, Guest, startHostAgent, startPair, answerAfterEOF } from "./harness.ts";

useHarness();

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

describe.each(["grpc", "fast"])("half-close over %s", (forwarder) => {
  e2eTest("host client shuts down its write side: the guest server reads EOF and its reply still arrives", async () => {
    const { guest, host } = await startPair(forwarder);
    const port = await freePort();
    await guest.startServer("digest", [["127.0.0.1", port]]);
    await host.waitForForwarding(port);
    const request = randomBytes(1 << 20);
    // exchange() writes, calls shutdown(SHUT_WR) (end), then reads until the server closes.
    expect((await exchange(port, request)).toString()).toBe(sha256(request));
  });

  e2eTest("guest server half-closes: the host client reads EOF and can still send", async () => {
    const { guest, host } = await startPair(forwarder);
    const port = await freePort();
    const server = await guest.startFixture(["send-then-digest", "127.0.0.1", String(port), String(256 << 10)]);
    await host.waitForForwarding(port);

    const reply = randomBytes(512 << 10);
    // The server's EOF first; only then does the client answer and close its side.
    const fromServer = await answerAfterEOF(port, reply);
    expect(fromServer.length).toBe(256 << 10);
    const line = await server.waitForLine(/^got /);
    expect(line).toBe(`got ${sha256(reply)}`);
  });
});

describe.each(["grpc", "fast"])("errors and cleanup over %s", (forwarder) => {
  e2eTest("a guest address that refuses the connection resets the host client at once", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const [guestPort, hostPort] = [await freePort(), await freePort()];
    const config = guest.writeFile("c.yaml", `portForwards:\n- {guestPort: ${guestPort}, hostPort: ${hostPort}, static: true}\n`);
    const host = startHostAgent(guest, ["--config", config, "--forwarder", forwarder]);
    await host.waitForForwarding(hostPort);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");
    await expect(exchange(hostPort, Buffer.from("x"), "127.0.0.1", 5000)).rejects.toThrow("ECONNRESET");
  });

  e2eTest("1,000 short connections leave both agents' file descriptors at their baseline", async () => {
    const { guest, guestAgent, host } = await startPair(forwarder);
    const port = await freePort();
    await guest.startEcho("127.0.0.1", port);
    await host.waitForForwarding(port);
    await exchange(port, Buffer.from("warm up"));
    const [hostPid, guestPid] = [host.proc.child.pid!, guestAgent.child.pid!];
    const baseline = [fdCount(hostPid), fdCount(guestPid)];

    for (let batch = 0; batch < 20; batch++) {
      await Promise.all(Array.from({ length: 50 }, (_, i) => exchange(port, Buffer.from(`c${batch}-${i}`))));
    }
    // Closing is asynchronous on both sides: wait (bounded) for the counts to settle.
    await host.proc.waitFor(
      () => fdCount(hostPid) <= baseline[0]! && fdCount(guestPid) <= baseline[1]! || undefined,
      `fd counts back to ${baseline} (now ${fdCount(hostPid)}, ${fdCount(guestPid)})`,
    );
  });
});

describe("Lima compatibility", () => {
  e2eTest("a plain Lima client (no porthole extension) gets Lima's behaviour from the porthole guest agent", async () => {
    const guest = Guest.create();
    await guest.startAgent();
    const port = await freePort();
    await guest.startServer("digest", [["127.0.0.1", port]]);
    const Lima = grpc.makeGenericClientConstructor(limaGuestServiceDefinition, "GuestService");
    const client = new Lima(`unix://${guest.socket}`, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
    try {
      const info = await new Promise<Info>((resolve, reject) => client.GetInfo({}, (err: Error | null, res: Info) => (err ? reject(err) : resolve(res))));
      expect(info.local_ports).toContainEqual({ protocol: "tcp", ip: "127.0.0.1", port });

      const events = client.GetEvents({}) as grpc.ClientReadableStream<GuestEvent>;
      const first = await new Promise<GuestEvent>((resolve) => events.once("data", resolve));
      expect(first.added_local_ports).toContainEqual({ protocol: "tcp", ip: "127.0.0.1", port });
      events.cancel();
      events.on("error", () => {});

      // Tunnel as Lima's host does it: handshake, data, then half-close the request stream.
      const call = client.Tunnel() as grpc.ClientDuplexStream<object, { id: string; data: Buffer }>;
      const request = randomBytes(100_000);
      const reply: Buffer[] = [];
      const ended = new Promise<void>((resolve, reject) => {
        call.on("data", (m) => reply.push(m.data));
        call.on("end", resolve);
        call.on("error", reject);
      });
      call.write({ id: "tcp-lima-1", protocol: "tcp", guest_addr: `127.0.0.1:${port}` });
      call.write({ id: "tcp-lima-1", data: request });
      call.end();
      // The server's EOF ends the stream (Lima has no eof message): the reply is all there.
      await ended;
      expect(Buffer.concat(reply).toString()).toBe(sha256(request));

      // A guest server that half-closes first ends a Lima client's stream at once, even
      // though the client has not ended its side: Lima cannot express a guest EOF otherwise.
      const early = await freePort();
      await guest.startFixture(["send-then-digest", "127.0.0.1", String(early), "1000"]);
      const lima = client.Tunnel() as grpc.ClientDuplexStream<object, { data: Buffer }>;
      let bytes = 0;
      const limaEnded = new Promise<void>((resolve, reject) => {
        lima.on("data", (m) => (bytes += m.data.length));
        lima.on("end", resolve);
        lima.on("error", reject);
      });
      lima.write({ id: "tcp-lima-2", protocol: "tcp", guest_addr: `127.0.0.1:${early}` });
      await limaEnded;
      expect(bytes).toBe(1000);
    } finally {
      client.close();
    }
  });
});
