// A reverse forward (`reverse: true`): a host unix socket appears in the guest. The guest
// agent listens on the guest path (porthole's Reverse RPC) and announces each connection;
// the host dials its socket and joins the two with a ReverseTunnel stream.
import * as net from "node:net";
import { backoffDelay } from "../core/backoff.ts";
import type { PlannedReverse } from "../core/forward-plan.ts";
import { boundedText } from "../core/port-owner.ts";
import type { PortholeClient, ReverseEvent } from "../proto/guest-service.ts";
import { resetSocket } from "../transport/tunnel-relay.ts";
import { bridgeSocket } from "./grpc-forwarder.ts";
import type { ForwardStatus, Report } from "./host-forward.ts";

const RETRY = { minMs: 500, maxMs: 10_000 };
/** Connections the guest may have open at once through one reverse forward (each is a host socket). */
export const MAX_REVERSE_CONNECTIONS = 1024;

export class ReverseForward {
  private stream: ReturnType<PortholeClient["Reverse"]> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private attempt = 0;
  private listening = false;
  private closed = false;
  private readonly sockets = new Set<net.Socket>();
  private lastError: string | undefined;
  private since = new Date();
  /** What was said already (each dial error once, the cap once): the guest may repeat them fast. */
  private readonly said = new Set<string>();

  constructor(
    private readonly plan: PlannedReverse,
    private readonly client: PortholeClient,
    private readonly report: Report,
    private readonly warn: (message: string) => void = () => {},
    private readonly maxConnections = MAX_REVERSE_CONNECTIONS,
  ) {
    this.open();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.listening) this.report({ type: "stopping", ...this.describe() });
    this.stream?.cancel(); // the guest stops listening and removes its socket file
  }

  destroy(): void {
    this.close();
    for (const s of this.sockets) resetSocket(s); // cut off, not ended: the guest's client sees a reset
  }

  status(): ForwardStatus {
    return {
      key: this.plan.key,
      ...this.describe(),
      path: "grpc",
      state: this.listening ? "forwarding" : this.lastError ? "failed" : "waiting",
      ...(this.lastError ? { lastError: this.lastError } : {}),
      since: this.since.toISOString(),
      connections: this.sockets.size,
      bytesIn: 0,
      bytesOut: 0,
    };
  }

  private describe() {
    return { protocol: "unix", guestAddr: this.plan.guestSocket, hostAddr: this.plan.hostSocket, rule: this.plan.origin, reverse: true };
  }

  private open(): void {
    if (this.closed) return;
    const stream = this.client.Reverse({ guest_socket: this.plan.guestSocket });
    this.stream = stream;
    stream.on("data", (e: ReverseEvent) => {
      if (e.listening && !this.listening) {
        // Said once per stream: a guest that says it again (and again) changes nothing.
        this.listening = true;
        this.since = new Date();
        this.attempt = 0;
        this.report({ type: "forwarding", ...this.describe() });
      }
      if (e.connection_id) this.connect(e.connection_id);
    });
    stream.on("error", (err: Error & { details?: string; code?: number }) => {
      if (this.closed) return;
      const unimplemented = err.code === 12; // grpc status UNIMPLEMENTED: a stock Lima guest agent
      const error = unimplemented ? "the guest agent does not support reverse forwards (a porthole extension)" : boundedText(err.details || err.message, 512);
      const retryInMs = backoffDelay(this.attempt++, RETRY);
      if (this.listening) this.report({ type: "stopping", ...this.describe() });
      if (this.listening || !this.lastError) this.since = new Date();
      this.listening = false;
      this.lastError = error;
      this.report({ type: "failed", ...this.describe(), error, retryInMs });
      this.retryTimer = setTimeout(() => this.open(), retryInMs);
    });
  }

  private connect(id: string): void {
    if (this.sockets.size >= this.maxConnections) {
      // Not claimed: the guest agent drops its client after its claim timeout.
      return this.sayOnce("cap", `reverse ${this.plan.guestSocket}: ${this.maxConnections} connections are open, the limit; further ones are refused until some close`);
    }
    const socket = net.connect({ path: this.plan.hostSocket, allowHalfOpen: true });
    let connected = false;
    socket.once("connect", () => (connected = true));
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
    const call = this.client.ReverseTunnel();
    call.write({ id, half_close: true });
    bridgeSocket(socket, call, id);
    socket.once("error", (err: NodeJS.ErrnoException) => {
      resetSocket(socket);
      if (connected) return; // a connection's own end, not the dial
      this.sayOnce(
        `dial ${err.code ?? err.message}`,
        `reverse ${this.plan.guestSocket}: cannot connect to the host socket ${this.plan.hostSocket} (${err.code ?? err.message}); ` +
          "the guest's clients are reset until it accepts. Is the service behind it running?",
      );
    });
  }

  private sayOnce(key: string, message: string): void {
    if (this.said.has(key)) return;
    this.said.add(key);
    this.warn(message);
  }
}
