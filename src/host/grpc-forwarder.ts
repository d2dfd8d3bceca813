// The gRPC data path: each accepted host connection becomes one Tunnel stream (Lima's
// handshake {id, protocol, guest_addr}, then data), and each UDP client one stream too.
import type * as net from "node:net";
import type { PlannedForward } from "../core/forward-plan.ts";
import type * as grpc from "@grpc/grpc-js";
import { guestServiceDefinition, type GuestServiceClient, type TunnelMessage } from "../proto/guest-service.ts";
import { grpcSession, H2TunnelClientCall } from "./h2-tunnel-client.ts";
import { relayTunnel, resetAfterFlush, resetSocket, type TunnelStream } from "../transport/tunnel-relay.ts";
import { DatagramBatcher } from "../transport/datagram-batch.ts";
import type { UdpTunnel } from "./udp-forward.ts";

/** The host end of a stream call, as grpc-js's client duplex has it. */
export interface HostTunnelCall extends TunnelStream {
  end(): void;
  cancel(): void;
  once(event: "end", listener: () => void): unknown;
  once(event: "error", listener: (err: Error) => void): unknown;
}

export class GrpcForwarder {
  private nextId = 0;
  private saidChanged = false;

  /**
   * `batchUdp`: the guest reads several datagrams per message (its Hello lists "udp-batch");
   * `creditUdp`: it reports what it delivered ("udp-credit").
   */
  constructor(
    private readonly client: GuestServiceClient,
    private readonly batchUdp: () => boolean = () => false,
    private readonly creditUdp: () => boolean = () => false,
    private readonly warn: (message: string) => void = () => {},
  ) {}

  /**
   * A Tunnel call: straight on grpc-js's connected HTTP/2 session where it has one (one stream,
   * no call machinery: h2-tunnel-client.ts), else grpc-js's own call (it waits for the
   * connection, and reports a guest that cannot be reached).
   */
  private tunnel(): HostTunnelCall & UdpTunnel {
    const ready = grpcSession(this.client as unknown as grpc.Client);
    if (ready === "changed" && !this.saidChanged) {
      this.saidChanged = true;
      this.warn(
        "gRPC tunnels go through grpc-js's own calls: its HTTP/2 session is not where porthole looks for it (a grpc-js other than " +
          "the version porthole pins?). They work, at about twice the CPU per connection; use the porthole binary as released.",
      );
    }
    if (ready && ready !== "changed") {
      try {
        return new H2TunnelClientCall(ready.session, ready.authority, guestServiceDefinition.Tunnel.path);
      } catch {
        // the session is closing (GOAWAY) or gone: grpc-js's call finds the next one
      }
    }
    return this.client.Tunnel();
  }

  /** A TCP connection (or a unix socket connection) to a guest port or guest socket. */
  forwardStream(socket: net.Socket, plan: PlannedForward): void {
    const protocol = plan.protocol === "unix" ? "unix" : "tcp";
    const id = `${protocol}-${plan.key.split(" ")[1]}-${this.nextId++}`;
    const call = this.tunnel();
    call.write({ id, protocol, guest_addr: plan.guestAddr, half_close: true });
    bridgeSocket(socket, call, id);
  }

  /**
   * One UDP client's flow: the handshake is sent, then the datagrams, batched for a porthole
   * guest (which is told that it may batch its replies) and one per message for a stock one.
   */
  openUdpTunnel(plan: PlannedForward, client: string): UdpTunnel {
    const id = `udp-${plan.key.split(" ")[1]}-${client}`;
    const call = this.tunnel();
    const batch = this.batchUdp();
    const credited = batch && this.creditUdp();
    call.write({ id, protocol: "udp", guest_addr: plan.guestAddr, ...(batch ? { udp_batch: true } : {}), ...(credited ? { udp_credit: true } : {}) });
    call.on("error", () => {}); // the flow's owner listens too; an error must not be unhandled
    if (!batch) return call;
    const batcher = new DatagramBatcher((message, done) => call.write(message, done));
    return {
      credited,
      write: (message, written = () => {}) => {
        if (!message.data) return call.write(message, written);
        batcher.add(message.data, written);
        return true;
      },
      end: () => call.end(),
      cancel: () => call.cancel(),
      on: ((event: "data", listener: (message: TunnelMessage) => void) => call.on(event, listener)) as UdpTunnel["on"],
    };
  }
}

/**
 * Relays a host socket over a stream call that asked for half-close. The client's EOF ends
 * the request stream; the guest's EOF arrives as an `eof` message (porthole guest) or as the
 * end of the stream (stock Lima guest); either way the client reads EOF, and with a porthole
 * guest it can still send.
 */
export function bridgeSocket(socket: net.Socket, call: HostTunnelCall, id: string): void {
  relayTunnel(socket, call, (data) => ({ id, data }));
  let callDone = false;
  let guestEOF = false;
  let clientEOF = false;
  call.on("data", (msg: TunnelMessage) => {
    if (msg.eof && !guestEOF) {
      guestEOF = true;
      socket.end();
    }
  });
  call.once("end", () => {
    callDone = true;
    if (!guestEOF) socket.end();
  });
  // The guest could not dial, or the link to the guest broke: the client sees a reset.
  call.once("error", () => {
    callDone = true;
    resetAfterFlush(socket); // what the guest sent before the reset is delivered first
  });
  socket.once("end", () => {
    clientEOF = true;
    if (!callDone) call.end();
  });
  // Data after the tunnel is gone cannot be delivered: say so with a reset.
  socket.on("data", () => {
    if (callDone) resetSocket(socket);
  });
  // Closed without both EOFs (an error, or the client went away): drop the stream. After
  // both EOFs the guest ends the stream itself, once its last bytes are flushed.
  socket.once("close", () => {
    if (!callDone && !(clientEOF && guestEOF)) call.cancel();
  });
  socket.once("error", () => {});
}
