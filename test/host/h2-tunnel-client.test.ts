// The host's Tunnel call made straight on grpc-js's HTTP/2 session (host/h2-tunnel-client.ts),
// against grpc-js's own server (no hand-over there): found once the channel is connected,
// every byte both ways, the end with status OK, an error status with its details, and the
// answer's end closing a request side still open; grpc-js internals that moved are told apart
// and said once, the tunnels going on by grpc-js's own calls. (C-core and grpc-go guests: test/e2e's
// lima-grpc-peer and lima-go-peer tests drive porthole's host, which takes this call.)
import { afterAll, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { randomBytes } from "node:crypto";
import { Duplex } from "node:stream";
import type { PlannedForward } from "../../src/core/forward-plan.ts";
import { GrpcForwarder } from "../../src/host/grpc-forwarder.ts";
import { grpcSession, H2TunnelClientCall } from "../../src/host/h2-tunnel-client.ts";
import { createGuestServiceClient, guestServiceDefinition, type GuestServiceClient, type TunnelMessage } from "../../src/proto/guest-service.ts";
import { CLIENT_OPTIONS } from "../../src/transport/grpc-tuning.ts";

const server = new grpc.Server();
let served = 0;
server.addService(guestServiceDefinition, {
  Tunnel(call: grpc.ServerDuplexStream<TunnelMessage, Partial<TunnelMessage>>) {
    served++;
    call.once("data", (handshake: TunnelMessage) => {
      if (handshake.protocol === "fail") return void call.emit("error", { code: grpc.status.UNAVAILABLE, details: "refused ✗ 100%" });
      // "lima": as Lima's guest, the server's end ends the call while the client still has its side open
      if (handshake.protocol === "lima") return void (call.write({ data: Buffer.from("bye") }), call.end());
      call.on("data", (m: TunnelMessage) => call.write({ id: handshake.id, data: m.data }));
      call.once("end", () => call.end());
    });
  },
} as grpc.UntypedServiceImplementation);
const port = await new Promise<number>((resolve, reject) =>
  server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
);
const client = createGuestServiceClient(`127.0.0.1:${port}`, CLIENT_OPTIONS);
afterAll(() => (client.close(), server.forceShutdown()));

async function connected() {
  expect(grpcSession(client as unknown as grpc.Client)).toBeUndefined(); // not connected yet: the caller takes grpc-js's call
  await new Promise<void>((resolve, reject) => client.waitForReady(Date.now() + 5000, (err) => (err ? reject(err) : resolve())));
  const ready = grpcSession(client as unknown as grpc.Client);
  // "changed" here means the pinned grpc-js moved its internals: the agents would warn and go slower.
  if (ready === undefined || ready === "changed") throw new Error(`grpc-js's connected session not found (${ready})`);
  return ready;
}
const ready = await connected();

function call(protocol: string, chunks: Buffer[], end = true) {
  const c = new H2TunnelClientCall(ready.session, ready.authority, guestServiceDefinition.Tunnel.path);
  return new Promise<{ data: Buffer; how: string }>((resolve) => {
    const got: Buffer[] = [];
    c.on("data", (m: TunnelMessage) => got.push(Buffer.from(m.data)));
    c.on("end", () => resolve({ data: Buffer.concat(got), how: "end" }));
    c.on("error", (err: grpc.ServiceError) => resolve({ data: Buffer.concat(got), how: `${err.code} ${err.details}` }));
    c.write({ id: "t", protocol, guest_addr: "127.0.0.1:1", half_close: true });
    for (const chunk of chunks) c.write({ id: "t", data: chunk });
    if (end) c.end();
  });
}

test("a Tunnel on grpc-js's own session: grpc-js's server echoes every byte, then the call ends with status OK", async () => {
  const chunks = [randomBytes(1), randomBytes(100_000), randomBytes(2 << 20)];
  const before = served;
  const r = await call("tcp", chunks);
  expect(r.how).toBe("end");
  expect(r.data.equals(Buffer.concat(chunks))).toBe(true);
  expect(served - before).toBe(1);
});

test("an error status reaches the caller as an error with its code and its details", async () => {
  expect((await call("fail", [])).how).toBe(`${grpc.status.UNAVAILABLE} refused ✗ 100%`);
});

test("the server's end (as Lima's guest ends a Tunnel) ends the call with OK though the request side was still open", async () => {
  const r = await call("lima", [], false);
  expect(r).toEqual({ data: Buffer.from("bye"), how: "end" });
});

test("a client whose grpc-js internals are not where porthole looks is told apart from one not connected yet", () => {
  const changed = { getChannel: () => ({ internalChannel: {} }) } as unknown as grpc.Client;
  expect(grpcSession(changed)).toBe("changed");
  const throwing = { getChannel: () => { throw new Error("no channel"); } } as unknown as grpc.Client;
  expect(grpcSession(throwing)).toBe("changed");
});

test("the forwarder says once that its tunnels take grpc-js's own calls when the session cannot be found, and still opens them", () => {
  const opened: unknown[] = [];
  const changed = {
    getChannel: () => ({ internalChannel: {} }),
    Tunnel: () => {
      const call = new Duplex({ objectMode: true, read() {}, write(m, _e, done) { opened.push(m); done(); } });
      return Object.assign(call, { cancel() {} });
    },
  } as unknown as GuestServiceClient;
  const warnings: string[] = [];
  const forwarder = new GrpcForwarder(changed, () => false, () => false, (m) => warnings.push(m));
  const plan = { key: "udp 127.0.0.1:53", protocol: "udp", guestAddr: "127.0.0.1:53" } as unknown as PlannedForward;
  forwarder.openUdpTunnel(plan, "127.0.0.1:5000");
  forwarder.openUdpTunnel(plan, "127.0.0.1:5001");
  expect(opened).toHaveLength(2);
  expect(warnings).toHaveLength(1);
  expect(warnings[0]).toContain("grpc-js's own calls");
});
