// The shared token that guards a TCP agent channel (anyone on the machine can reach a TCP
// port): the client sends one line before anything else, the server checks it before a
// single byte reaches gRPC.
import { timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import type * as net from "node:net";

const PREFIX = "porthole-token ";
const MAX_LINE = 512;

export function readTokenFile(file: string): string {
  const token = readFileSync(file, "utf8").trim();
  if (token.length < 16) throw new Error(`${file}: the token must be at least 16 characters`);
  return token;
}

export function tokenLine(token: string): string {
  return `${PREFIX}${token}\n`;
}

/**
 * Reads the token line; resolves true (the socket paused, with what followed the line put
 * back) when it matches, false (the socket destroyed) otherwise.
 */
export function verifyToken(socket: net.Socket, token: string, timeoutMs = 5000): Promise<boolean> {
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    const done = (ok: boolean, rest?: Buffer) => {
      clearTimeout(timer);
      socket.off("data", onData);
      if (!ok) {
        socket.destroy();
        return resolve(false);
      }
      socket.pause();
      if (rest?.length) socket.unshift(rest);
      resolve(true);
    };
    const onData = (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      const nl = got.indexOf(10);
      if (nl < 0) return void (got.length > MAX_LINE && done(false));
      const expected = Buffer.from(tokenLine(token).trimEnd());
      const line = got.subarray(0, nl);
      done(line.length === expected.length && timingSafeEqual(line, expected), got.subarray(nl + 1));
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.on("data", onData);
    socket.once("error", () => done(false));
  });
}
