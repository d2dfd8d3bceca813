// The guest agent's proof port (guest/direct-proof.ts): anything on the guest's networks may
// connect to it, so it is bounded in time and in connections; and its answer, bound to both
// ends, holds only for the host that asked, not for a machine that relays the host's nonce.
import { afterEach, expect, test } from "bun:test";
import * as net from "node:net";
import { MAX_PROOF_CONNECTIONS, serveDirectProof } from "../../src/guest/direct-proof.ts";
import { proveAddress } from "../../src/host/direct-paths.ts";

const SECRET = "00112233445566778899aabbccddeeff";
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

async function proofServer() {
  const refused: string[] = [];
  const server = await serveDirectProof(SECRET, (why) => void refused.push(why));
  cleanups.push(() => server.close());
  return { port: server.port, refused, server };
}

function closedWithin(socket: net.Socket, ms: number): Promise<boolean> {
  return Promise.race([new Promise<boolean>((r) => socket.once("close", () => r(true))), Bun.sleep(ms).then(() => false)]);
}

test("a request sent a byte at a time is cut off at its deadline (5 s), not held while bytes trickle in", async () => {
  const { port } = await proofServer();
  const c = net.connect(port, "127.0.0.1");
  c.on("error", () => {});
  const drip = setInterval(() => c.destroyed || c.write("P"), 500); // an idle timer alone would wait ~2 minutes (255 bytes)
  cleanups.push(() => (clearInterval(drip), c.destroy()));
  expect(await closedWithin(c, 9000)).toBe(true);
}, 15_000);

test(`at most ${MAX_PROOF_CONNECTIONS} proof connections at once: the next is closed at once, and a proof still goes through once they are gone`, async () => {
  const { port, server } = await proofServer();
  const idle: net.Socket[] = [];
  for (let i = 0; i < MAX_PROOF_CONNECTIONS; i++) {
    const c = net.connect(port, "127.0.0.1");
    c.on("error", () => {});
    idle.push(c);
  }
  cleanups.push(() => idle.forEach((c) => c.destroy()));
  await Promise.all(idle.map((c) => new Promise((r) => c.once("connect", r))));
  while (server.open < MAX_PROOF_CONNECTIONS) await Bun.sleep(5); // accepted by the server, not only by the kernel
  const extra = net.connect(port, "127.0.0.1");
  extra.on("error", () => {});
  expect(await closedWithin(extra, 2000)).toBe(true);
  for (const c of idle) c.destroy();
  while (server.open > 0) await Bun.sleep(5);
  await proveAddress("127.0.0.1", { secret: SECRET, addresses: ["127.0.0.1"], proofPort: port, peerBound: true });
});

/**
 * A machine that holds the guest's address elsewhere and relays the host's nonce to the real
 * guest from another address (here: a relay that connects from 127.0.0.5 to the guest's 127.0.0.1).
 */
async function relayFrom(source: string, to: number): Promise<number> {
  const relay = net.createServer((client) => {
    client.on("error", () => {});
    const upstream = net.connect({ host: "127.0.0.1", port: to, localAddress: source });
    upstream.on("error", () => client.destroy());
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((r) => relay.listen(0, "127.0.0.1", () => r()));
  cleanups.push(() => relay.close());
  return (relay.address() as net.AddressInfo).port;
}

test("a relayed proof holds with the old answer (PHPROOF1) but not with the answer bound to both ends: the host is not fooled", async () => {
  const { port } = await proofServer();
  const relayed = await relayFrom("127.0.0.5", port);
  const offer = { secret: SECRET, addresses: ["127.0.0.1"], proofPort: relayed };
  // What the relay gets past a host that asks for the old answer:
  await proveAddress("127.0.0.1", offer);
  // A host that asks for the answer bound to both ends sees it names another sender:
  await expect(proveAddress("127.0.0.1", { ...offer, peerBound: true })).rejects.toThrow("the proof failed");
  // Straight from the host, it holds.
  await proveAddress("127.0.0.1", { ...offer, proofPort: port, peerBound: true });
});
