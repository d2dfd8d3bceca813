// The server's HTTP/2 windows are raised through grpc-js internals: check they still take.
import { expect, test } from "bun:test";
import * as grpc from "@grpc/grpc-js";
import * as http2 from "node:http2";
import { createTunedServer, STREAM_WINDOW_BYTES } from "../../src/transport/grpc-tuning.ts";

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
