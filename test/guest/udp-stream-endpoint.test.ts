// The guest end of a UDP flow on a data stream (guest/udp-stream-endpoint.ts): the test plays the
// host agent over a real socket pair (framing by hand, no credits sent back) and a node:dgram
// socket is the guest's server. Past the flow's 1 MiB budget datagrams are dropped: said once at
// the first, and every one counted in the line that ends the flow. Not timed: the test waits for
// the guest socket's receive queue to be read (ss) before it looks at the counts.
import { afterEach, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import * as dgram from "node:dgram";
import type * as net from "node:net";
import { DatagramFrameDecoder, writeDatagramFrame } from "../../src/core/datagram-frames.ts";
import { STATUS_CONNECTED } from "../../src/core/data-header.ts";
import { handleUdpDataStream } from "../../src/guest/udp-stream-endpoint.ts";
import { prepareDatagrams } from "../../src/transport/datagram-socket.ts";
import { socketPair } from "../../src/transport/socketpair.ts";
import { waitUntil } from "../wait.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

/** Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:port (ss's Recv-Q). */
function recvQueue(port: number): number {
  const out = spawnSync("ss", ["-Hun", `sport = :${port}`], { encoding: "utf8" }).stdout.trim();
  return Number(out.split(/\s+/)[1] ?? -1);
}

// Both ways the guest agent carries a flow: the shim's pump (native/udp_pump.c), and its event
// loop where the pump cannot run (PORTHOLE_NATIVE_UDP_PUMP=0 stands in for that).
describe.each([
  ["the native pump", {}],
  ["the event loop", { PORTHOLE_NATIVE_UDP_PUMP: "0" }],
] as const)("UDP data stream, guest end, through %s", (_name, env) => {
  test("datagrams over the 1 MiB budget are dropped, said once, and all counted when the flow ends", async () => {
    await prepareDatagrams(() => {}, env as NodeJS.ProcessEnv); // the shim's sockets, as the agent has them
    const pair = await socketPair();
    if (!pair) throw new Error("the native shim did not load (make builds it)");
    const [guestSide, hostSide] = pair;
    cleanups.push(() => (guestSide.destroy(), hostSide.destroy()));
    const server = dgram.createSocket("udp4");
    cleanups.push(() => server.close());
    await new Promise<void>((resolve) => server.bind(0, "127.0.0.1", resolve));
    let flowSocket: { port: number } | undefined;
    server.on("message", (_m, from) => (flowSocket = { port: from.port }));

    const said: string[] = [];
    handleUdpDataStream(guestSide as net.Socket, `127.0.0.1:${server.address().port}`, Buffer.alloc(0), () => {}, (line) => said.push(line));
    // The host end: reads the status byte, then frames; never reports a datagram delivered.
    const decoder = new DatagramFrameDecoder();
    const arrived: Buffer[] = [];
    let status: number | undefined;
    hostSide.on("data", (chunk: Buffer) => {
      if (status === undefined) {
        status = chunk[0];
        chunk = chunk.subarray(1);
      }
      arrived.push(...decoder.push(chunk).datagrams);
    });
    await waitUntil("the status byte", () => status !== undefined, 5000);
    expect(status).toBe(STATUS_CONNECTED);
    // The pump holds its own dup of the stream: the runtime's socket object is let go.
    expect(guestSide.destroyed).toBe(!("PORTHOLE_NATIVE_UDP_PUMP" in env));
    const hello = Buffer.allocUnsafe(4 + 5);
    writeDatagramFrame(hello, 0, Buffer.from("hello"));
    hostSide.write(hello);
    await waitUntil("the server to hear the flow's socket", () => flowSocket !== undefined, 5000);

    // Rounds of 10 datagrams of 50,000 bytes, each waited for until the flow's socket was read:
    // 20 fit in 1 MiB (1,000,000 bytes), the third round's 10 do not.
    for (let round = 1; round <= 3; round++) {
      let sent = 0;
      for (let i = 0; i < 10; i++) server.send(Buffer.alloc(50_000, round), flowSocket!.port, "127.0.0.1", () => sent++);
      await waitUntil(`round ${round} sent`, () => sent === 10, 5000);
      await waitUntil(`round ${round} read by the flow`, () => recvQueue(flowSocket!.port) === 0, 5000);
      if (round < 3) await waitUntil(`round ${round} at the host end`, () => arrived.length === 10 * round, 5000);
    }
    expect(arrived.length).toBe(20);
    expect(arrived.every((d) => d.length === 50_000)).toBe(true);
    expect(said.length).toBe(1); // once, for ten drops
    expect(said[0]).toContain("dropped");

    hostSide.end(); // the host ends the flow: the count is said
    await waitUntil("the flow's last line", () => said.length === 2, 5000);
    expect(said[1]).toContain("10 datagram(s)");
  });
});
