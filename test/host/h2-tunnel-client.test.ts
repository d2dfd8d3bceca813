// The host's Tunnel call made straight on grpc-js's HTTP/2 session (host/h2-tunnel-client.ts),
// against grpc-js's own server (no hand-over there): found once the channel is connected,
// every byte both ways, the end with status OK, an error status with its details, and the
// answer's end closing a request side still open. (C-core and grpc-go guests: test/e2e's
// lima-grpc-peer and lima-go-peer tests drive porthole's host, which takes this call.)
import { afterAll, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { randomBytes } from "node:crypto";
import { grpcSession, H2TunnelClientCall } from "../../src/host/h2-tunnel-client.ts";
import { createGuestServiceClient, guestServiceDefinition, type TunnelMessage } from "../../src/proto/guest-service.ts";
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
  expect(ready).toBeDefined();
  return ready!;
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
