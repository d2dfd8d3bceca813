// The guest agent's proof port (see core/direct-proof.ts): answers a host's challenge at
// whatever guest address the host reached it by, and nothing else. Anything may connect
// here, so every connection is bounded in size and time and closed after one answer.
import * as net from "node:net";
import { MAX_PROOF_LINE, parseProofRequest, proofAnswer } from "../core/direct-proof.ts";

const PROOF_TIMEOUT_MS = 5000;
/** Proof connections at once: anything on the guest's networks may connect, and fds are the agent's. */
export const MAX_PROOF_CONNECTIONS = 64;

export interface ProofServer {
  port: number;
  /** Proof connections open now. */
  readonly open: number;
  close(): void;
}

/** Listens on every guest address (dual-stack where the guest has IPv6) on a port of the kernel's choosing. */
export async function serveDirectProof(secret: string, refuse: (why: string) => void): Promise<ProofServer> {
  let open = 0;
  const server = net.createServer((socket) => {
    open++;
    let got = "";
    // A deadline for the whole request, not for each silence (a byte now and then must not hold an fd for minutes).
    const deadline = setTimeout(() => socket.destroy(), PROOF_TIMEOUT_MS);
    socket.once("close", () => (open--, clearTimeout(deadline)));
    socket.on("error", () => socket.destroy());
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      got += chunk;
      const nl = got.indexOf("\n");
      if (nl < 0) {
        if (got.length >= MAX_PROOF_LINE) {
          refuse("direct-path proof: closed a connection that sent no valid request");
          socket.destroy();
        }
        return;
      }
      const request = parseProofRequest(got.slice(0, nl));
      if (!request || !socket.localAddress || (request.peer && !socket.remoteAddress)) {
        refuse("direct-path proof: closed a connection that sent no valid request");
        return void socket.destroy();
      }
      socket.end(`${proofAnswer(secret, request.nonce, socket.localAddress, request.peer ? socket.remoteAddress : undefined)}\n`);
    });
  });
  server.maxConnections = MAX_PROOF_CONNECTIONS; // more are closed at once (a proof takes one, for milliseconds)
  server.on("error", () => {}); // accept errors (EMFILE) must not end the agent
  const listen = (host: string) =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host, port: 0 }, () => {
        server.off("error", reject);
        resolve();
      });
    });
  try {
    await listen("::");
  } catch {
    await listen("0.0.0.0"); // no IPv6 in this guest
  }
  return {
    port: (server.address() as net.AddressInfo).port,
    get open() {
      return open;
    },
    close: () => server.close(),
  };
}
