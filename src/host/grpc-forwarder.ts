// Carries one accepted host connection as one gRPC Tunnel stream (Lima's handshake:
// {id, protocol, guest_addr}, then data). The client's half-close ends the request
// stream, so its EOF reaches the guest server while the reply still flows back.
import type * as net from "node:net";
import type { GuestServiceClient } from "../proto/guest-service.ts";
import { relayTunnel, resetSocket } from "../transport/tunnel-relay.ts";

export class GrpcForwarder {
  private nextId = 0;

  constructor(private readonly client: GuestServiceClient) {}

  forward(socket: net.Socket, hostAddr: string, guestAddr: string): void {
    const id = `tcp-${hostAddr}-${this.nextId++}`;
    const call = this.client.Tunnel();
    call.write({ id, protocol: "tcp", guest_addr: guestAddr });
    relayTunnel(socket, call, (data) => ({ id, data }));

    let callDone = false;
    // The guest finished the stream: its server closed (Lima has no guest->host half-close).
    call.once("end", () => {
      callDone = true;
      socket.end();
    });
    // The guest could not dial, or the link to the guest broke: the client sees a reset.
    call.once("error", () => {
      callDone = true;
      resetSocket(socket);
    });
    socket.once("end", () => {
      if (!callDone) call.end();
    });
    socket.once("error", () => {
      if (!callDone) call.cancel();
    });
    socket.once("close", () => {
      if (!callDone) call.cancel();
    });
  }
}
