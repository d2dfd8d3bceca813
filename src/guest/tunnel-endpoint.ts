// The guest end of a Tunnel: read the handshake, dial guest_addr inside the guest,
// then relay. Host half-close (end of the request stream) half-closes the guest socket;
// the guest server's EOF ends the RPC (Lima's semantics).
import * as grpc from "@grpc/grpc-js";
import * as net from "node:net";
import { parseHostPort } from "../core/address.ts";
import type { TunnelMessage } from "../proto/guest-service.ts";
import { relayTunnel, resetSocket } from "../transport/tunnel-relay.ts";

type TunnelCall = grpc.ServerDuplexStream<TunnelMessage, Partial<TunnelMessage>>;

export function handleTunnel(call: TunnelCall): void {
  call.once("data", (handshake: TunnelMessage) => {
    call.pause();
    let target: { host: string; port: number };
    try {
      if (handshake.protocol !== "tcp") throw new Error(`protocol "${handshake.protocol}" is not supported yet`);
      target = parseHostPort(handshake.guest_addr);
    } catch (err) {
      call.emit("error", { code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message });
      return;
    }
    const socket = net.connect({ host: target.host, port: target.port, noDelay: true });
    const id = handshake.id;
    let finished = false;
    const finish = (status?: { code: grpc.status; details: string }) => {
      if (finished) return;
      finished = true;
      if (status) call.emit("error", status);
      else call.end();
    };

    socket.once("connect", () => {
      relayTunnel(socket, call, (data) => ({ id, data }));
      call.resume();
    });
    socket.once("end", () => finish());
    socket.once("error", (err) => finish({ code: grpc.status.UNAVAILABLE, details: `${handshake.guest_addr}: ${err.message}` }));
    socket.once("close", () => finish());
    call.once("end", () => socket.end());
    call.once("cancelled", () => {
      finished = true;
      resetSocket(socket);
    });
    call.once("error", () => resetSocket(socket));
  });
}
