// The guest end of a Tunnel: read the handshake, dial guest_addr inside the guest, relay.
//
// Closing: the host's EOF (end of the request stream) half-closes the guest socket. The guest
// server's EOF is sent as an `eof` message when the host said it understands one (porthole's
// extension), so the host client can still send; the RPC ends once both sides reached EOF.
// With a stock Lima host the guest server's EOF ends the RPC, as Lima does.
import * as grpc from "@grpc/grpc-js";
import type { EventEmitter } from "node:events";
import * as net from "node:net";
import { parseHostPort } from "../core/address.ts";
import type { TunnelMessage } from "../proto/guest-service.ts";
import { connectClient, type ClientTarget } from "../runtime/client-socket.ts";
import { relayTunnel, resetSocket } from "../transport/tunnel-relay.ts";
import { noteDialError } from "./fd-pressure.ts";
import { handleUdpTunnel } from "./udp-endpoint.ts";

/** What a Tunnel handler uses of its call: grpc-js's server duplex, or guest/h2-tunnel-call.ts's. */
export interface TunnelCall extends EventEmitter {
  write(message: Partial<TunnelMessage>, written?: (err?: Error | null) => void): boolean;
  end(): void;
  pause(): unknown;
  resume(): unknown;
  readonly writableEnded: boolean;
  readonly destroyed: boolean;
}

export function handleTunnel(call: TunnelCall): void {
  call.once("data", (handshake: TunnelMessage) => {
    call.pause();
    let dial: ClientTarget;
    try {
      dial = dialOptions(handshake);
    } catch (err) {
      call.emit("error", { code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message });
      return;
    }
    try {
      if (handshake.protocol === "udp") return handleUdpTunnel(call, handshake);
      // (a ClientSocket has all of net.Socket that relayStream uses)
      relayStream(call, connectClient(dial) as unknown as net.Socket, handshake.id, handshake.guest_addr, handshake.half_close);
    } catch (err) {
      // e.g. no fd for a socket: this tunnel fails, the agent goes on
      noteDialError(err, handshake.guest_addr);
      call.emit("error", { code: grpc.status.UNAVAILABLE, details: `${handshake.guest_addr}: ${(err as Error).message}` });
    }
  });
}

/** Where to dial (half-close allowed, TCP_NODELAY: runtime/client-socket.ts). */
function dialOptions(handshake: TunnelMessage): ClientTarget {
  switch (handshake.protocol) {
    case "tcp":
    case "udp":
      return parseHostPort(handshake.guest_addr);
    case "unix":
      if (!handshake.guest_addr.startsWith("/")) throw new Error(`"${handshake.guest_addr}" is not an absolute socket path`);
      return { path: handshake.guest_addr };
    default:
      throw new Error(`protocol "${handshake.protocol}" is not supported (tcp, udp, unix)`);
  }
}

/**
 * Relays a connected (or connecting) guest socket over a tunnel call, with the closing
 * rules above. Used for Tunnel and for reverse forwards alike.
 */
export function relayStream(call: TunnelCall, socket: net.Socket, id: string, target: string, halfClose: boolean): void {
  let finished = false;
  let guestEOF = false;
  let hostEOF = false;
  const finish = (status?: { code: grpc.status; details: string }) => {
    if (finished) return;
    finished = true;
    if (status) return void call.emit("error", status);
    call.end();
    if (!halfClose) socket.end(); // Lima: nothing more can come from the host
  };

  const start = () => {
    relayTunnel(socket, call, (data) => ({ id, data }));
    call.resume();
  };
  if (socket.connecting) socket.once("connect", start);
  else start();

  socket.once("end", () => {
    guestEOF = true;
    if (!halfClose) return finish();
    call.write({ id, eof: true });
    if (hostEOF) finish();
  });
  call.once("end", () => {
    hostEOF = true;
    socket.end();
    if (guestEOF) finish();
  });
  socket.once("error", (err) => {
    if (!guestEOF && !hostEOF) noteDialError(err, target);
    finish({ code: grpc.status.UNAVAILABLE, details: `${target}: ${err.message}` });
  });
  socket.once("close", () => finish());
  // A call cancelled before it finished: the host went away, so reset the guest side. Once
  // finished, grpc-js may still report "cancelled" as the stream closes (seen under Bun);
  // the socket then must keep flushing its last bytes and FIN, not be reset.
  const abort = () => {
    if (finished) return;
    finished = true;
    resetSocket(socket);
  };
  call.once("cancelled", abort);
  call.once("error", abort);
}
