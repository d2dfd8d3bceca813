// Writes in one turn of the event loop are held (corked) until the turn ends, then leave
// together, in order, with nothing lost.
import { expect, test } from "bun:test";
import * as net from "node:net";
import { batchWrites } from "../../src/transport/write-batching.ts";

test("writes in one turn are corked until it ends, then arrive complete and in order", async () => {
  const received: Buffer[] = [];
  const server = net.createServer((s) => s.on("data", (d: Buffer) => received.push(d)));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
  await new Promise((r) => client.once("connect", r));
  batchWrites(client);
  const pieces = Array.from({ length: 50 }, (_, i) => Buffer.alloc(1000, i));
  for (const p of pieces) client.write(p);
  expect(client.writableCorked).toBe(1);
  await new Promise((r) => process.nextTick(r));
  expect(client.writableCorked).toBe(0);
  client.write(Buffer.from("last"));
  expect(client.writableCorked).toBe(1);
  client.end();
  while (Buffer.concat(received).length < 50_004) await new Promise((r) => setTimeout(r, 5));
  expect(Buffer.concat(received).equals(Buffer.concat([...pieces, Buffer.from("last")]))).toBe(true);
  server.close();
});
