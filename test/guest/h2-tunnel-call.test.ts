// Tunnel streams handed over from grpc-js (transport/grpc-tuning.ts's serveOnHttp2) and served
// by guest/h2-tunnel-call.ts, against the stock grpc-js client: messages, the end, an error
// status, and a compressed call, which stays with grpc-js. (C-core and grpc-go clients drive the
// same path in test/e2e/lima-grpc-peer.test.ts and lima-go-peer.test.ts.)
import { afterAll, expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import { randomBytes } from "node:crypto";
import { H2TunnelCall } from "../../src/guest/h2-tunnel-call.ts";
import { createGuestServiceClient, guestServiceDefinition, type TunnelMessage } from "../../src/proto/guest-service.ts";
import { CLIENT_OPTIONS, createTunedServer, serveOnHttp2 } from "../../src/transport/grpc-tuning.ts";

const server = createTunedServer();
const taken = { handedOver: 0, grpcJs: 0 };
/** An echo: the handshake names what to do ("echo", or "fail" with a status). */
function echo(call: { on: Function; once: Function; write: Function; end: Function; emit: Function }) {
  call.once("data", (handshake: TunnelMessage) => {
    if (handshake.protocol === "fail") return void call.emit("error", { code: grpc.status.UNAVAILABLE, details: "no route ✗ 100%" });
    call.on("data", (m: TunnelMessage) => call.write({ id: handshake.id, data: m.data }));
    call.once("end", () => (call.write({ id: handshake.id, eof: true }), call.end()));
  });
}
server.addService(guestServiceDefinition, {
  Tunnel(call: grpc.ServerDuplexStream<TunnelMessage, TunnelMessage>) {
    taken.grpcJs++;
    echo(call);
  },
} as grpc.UntypedServiceImplementation);
serveOnHttp2(server, guestServiceDefinition.Tunnel.path, (stream) => {
  taken.handedOver++;
  echo(new H2TunnelCall(stream));
});
const port = await new Promise<number>((resolve, reject) =>
  server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
);
afterAll(() => server.forceShutdown());

function run(client: ReturnType<typeof createGuestServiceClient>, protocol: string, chunks: Buffer[]) {
  return new Promise<{ data: Buffer; eof: boolean; status: grpc.StatusObject | grpc.ServiceError }>((resolve) => {
    const call = client.Tunnel();
    const got: Buffer[] = [];
    let eof = false;
    call.on("data", (m: TunnelMessage) => (m.eof ? (eof = true) : got.push(Buffer.from(m.data))));
    call.on("error", (err: grpc.ServiceError) => resolve({ data: Buffer.concat(got), eof, status: err }));
    call.on("status", (status: grpc.StatusObject) => status.code === 0 && resolve({ data: Buffer.concat(got), eof, status }));
    call.write({ id: "t", protocol, guest_addr: "127.0.0.1:1", half_close: true });
    for (const c of chunks) call.write({ id: "t", data: c });
    call.end();
  });
}

test("a plain Tunnel call is served on its HTTP/2 stream: every byte back in order, the eof, then status OK", async () => {
  const client = createGuestServiceClient(`127.0.0.1:${port}`, CLIENT_OPTIONS);
  const chunks = [randomBytes(1), randomBytes(70_000), randomBytes(3 << 20), randomBytes(17)];
  const before = { ...taken };
  const r = await run(client, "tcp", chunks);
  client.close();
  expect(r.status.code).toBe(grpc.status.OK);
  expect(r.eof).toBe(true);
  expect(r.data.equals(Buffer.concat(chunks))).toBe(true);
  expect(taken.handedOver - before.handedOver).toBe(1);
  expect(taken.grpcJs - before.grpcJs).toBe(0);
});

test("a Tunnel carries three times the HTTP/2 windows each way without stalling (the connection window is raised, in step with the streams')", async () => {
  const client = createGuestServiceClient(`127.0.0.1:${port}`, CLIENT_OPTIONS);
  const chunks = Array.from({ length: 48 }, () => randomBytes(1 << 20));
  const r = await run(client, "tcp", chunks);
  client.close();
  expect(r.status.code).toBe(grpc.status.OK);
  expect(r.data.length).toBe(48 << 20);
  expect(r.data.equals(Buffer.concat(chunks))).toBe(true);
}, 30_000);

test("a status emitted as an error reaches the client with its code and its details (percent-encoded on the wire)", async () => {
  const client = createGuestServiceClient(`127.0.0.1:${port}`, CLIENT_OPTIONS);
  const r = await run(client, "fail", []);
  client.close();
  expect(r.status.code).toBe(grpc.status.UNAVAILABLE);
  expect(r.status.details).toBe("no route ✗ 100%");
});

test("a compressed call is left to grpc-js, which serves it as before", async () => {
  const client = createGuestServiceClient(`127.0.0.1:${port}`, { ...CLIENT_OPTIONS, "grpc.default_compression_algorithm": 2 });
  const before = { ...taken };
  const chunks = [Buffer.alloc(50_000, 1)];
  const r = await run(client, "tcp", chunks);
  client.close();
  expect(r.status.code).toBe(grpc.status.OK);
  expect(r.data.equals(Buffer.concat(chunks))).toBe(true);
  expect(taken.grpcJs - before.grpcJs).toBe(1);
  expect(taken.handedOver - before.handedOver).toBe(0);
});
