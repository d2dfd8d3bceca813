// The server's HTTP/2 windows are raised, and Tunnel messages sent in their codec's own frame,
// through grpc-js internals: check they still take.
import { expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import * as http2 from "node:http2";
import { CompressionFilter } from "@grpc/grpc-js/build/src/compression-filter.js";
import { BaseServerInterceptingCall } from "@grpc/grpc-js/build/src/server-interceptors.js";
import { randomBytes } from "node:crypto";
import { createGuestServiceClient, guestServiceDefinition, type TunnelMessage } from "../../src/proto/guest-service.ts";
import { encodeTunnelMessage, framedMessage } from "../../src/proto/tunnel-codec.ts";
import { CLIENT_OPTIONS, createTunedServer, sendFramedAsIs, STREAM_WINDOW_BYTES } from "../../src/transport/grpc-tuning.ts";

test("the tuned server advertises the large stream window", async () => {
  const server = createTunedServer();
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  try {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const settings = await new Promise<http2.Settings>((resolve) => session.once("remoteSettings", resolve));
    session.close();
    expect(settings.initialWindowSize).toBe(STREAM_WINDOW_BYTES);
  } finally {
    server.forceShutdown();
  }
});

test("a Tunnel message goes out in the buffer its codec framed (no copy), anything else through grpc-js's framing", async () => {
  sendFramedAsIs();
  const serialized = encodeTunnelMessage({ id: "t", data: Buffer.alloc(100_000, 7) });
  const frame = framedMessage(serialized)!;
  const filter = new CompressionFilter({}, {});
  const sent = await filter.sendMessage(Promise.resolve({ message: serialized, flags: 0 }));
  expect(sent.message).toBe(frame);
  const plain = Buffer.from("other message");
  const framedByGrpc = await filter.sendMessage(Promise.resolve({ message: plain, flags: 0 }));
  expect(framedByGrpc.message.toString("hex")).toBe("000000000d" + plain.toString("hex"));

  const call = { handler: { serialize: (v: unknown) => v as Buffer } };
  const serializeMessage = (BaseServerInterceptingCall.prototype as unknown as { serializeMessage(this: unknown, v: unknown): Buffer }).serializeMessage;
  expect(serializeMessage.call(call as never, serialized)).toBe(frame);
  expect(serializeMessage.call(call as never, plain).toString("hex")).toBe("000000000d" + plain.toString("hex"));
});

test("Tunnel messages cross a real grpc-js client and server both ways unchanged", async () => {
  const server = createTunedServer();
  server.addService(guestServiceDefinition, {
    Tunnel: (call: grpc.ServerDuplexStream<TunnelMessage, Partial<TunnelMessage>>) => {
      call.on("data", (m: TunnelMessage) => call.write({ id: m.id, data: m.data, eof: m.eof }));
      call.on("end", () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  sendFramedAsIs();
  const client = createGuestServiceClient(`127.0.0.1:${port}`, CLIENT_OPTIONS);
  try {
    const call = client.Tunnel();
    const sent = [randomBytes(1), randomBytes(70_000), randomBytes(1 << 20)];
    const got: TunnelMessage[] = [];
    const done = new Promise<void>((resolve) => call.on("end", resolve));
    call.on("data", (m: TunnelMessage) => got.push(m));
    for (const data of sent) call.write({ id: "echo", data });
    call.write({ id: "echo", eof: true });
    call.end();
    await done;
    expect(got.map((m) => m.data.length)).toEqual([...sent.map((d) => d.length), 0]);
    got.slice(0, 3).forEach((m, i) => expect(m.data.equals(sent[i]!)).toBe(true));
    expect(got[3]).toMatchObject({ id: "echo", eof: true });
  } finally {
    client.close();
    server.forceShutdown();
  }
});
