// A connected pair of unix stream sockets as two net.Sockets (the native shim makes it;
// JavaScript runtimes have no socketpair()).
import type * as net from "node:net";
import { check } from "../runtime/native-api.ts";
import { loadNative } from "../runtime/native.ts";
import { socketFromFd } from "../runtime/fd-socket.ts";

/** Undefined where the shim did not load. */
export async function socketPair(): Promise<[net.Socket, net.Socket] | undefined> {
  const { shim } = await loadNative();
  if (!shim) return undefined;
  const fds = new Int32Array(2);
  check(shim, shim.socketpair(fds), "socketpair");
  return [socketFromFd(fds[0]!), socketFromFd(fds[1]!)];
}
