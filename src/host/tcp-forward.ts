// One host TCP listener for one planned forward. A bind that fails (port busy,
// privileged) is reported and tried again with backoff until it works or the
// forward is no longer wanted; it never takes the agent down.
import * as net from "node:net";
import { formatHostPort } from "../core/address.ts";
import { backoffDelay } from "../core/backoff.ts";
import type { ForwardEvent } from "../core/forward-event.ts";
import type { PlannedForward } from "../core/forward-plan.ts";

export type ConnectionHandler = (socket: net.Socket, hostAddr: string, guestAddr: string) => void;

const RETRY = { minMs: 500, maxMs: 10_000 };

export class TcpForward {
  private server: net.Server | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private attempt = 0;
  private closed = false;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private plan: PlannedForward,
    private readonly onConnection: ConnectionHandler,
    private readonly report: (e: ForwardEvent) => void,
  ) {
    this.bind();
  }

  get hostAddr(): string {
    return formatHostPort(this.plan.hostIP, this.plan.hostPort);
  }

  get guestAddr(): string {
    return formatHostPort(this.plan.guest.ip, this.plan.guest.port);
  }

  /** The guest bind behind this listener changed (e.g. 0.0.0.0 went, :: stayed). */
  retarget(plan: PlannedForward): void {
    this.plan = plan;
  }

  /** Stops listening at once; connections already open may finish. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.server?.listening) {
      this.report({ type: "stopping", ...this.describe() });
      this.server.close();
    }
    this.server = undefined;
  }

  /** Closes the listener and every connection it accepted. */
  destroy(): void {
    this.close();
    for (const s of this.sockets) s.destroy();
  }

  private describe() {
    return { protocol: "tcp", guestAddr: this.guestAddr, hostAddr: this.hostAddr, rule: this.plan.origin };
  }

  private bind(): void {
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
      this.onConnection(socket, this.hostAddr, this.guestAddr);
    });
    server.once("listening", () => {
      if (this.closed) return void server.close();
      this.server = server;
      this.attempt = 0;
      this.report({ type: "forwarding", ...this.describe() });
    });
    server.once("error", (err: NodeJS.ErrnoException) => {
      server.close();
      if (this.closed) return;
      const retryInMs = backoffDelay(this.attempt++, RETRY);
      this.report({ type: "failed", ...this.describe(), error: describeBindError(err, this.plan.hostPort), retryInMs });
      this.retryTimer = setTimeout(() => this.bind(), retryInMs);
    });
    server.listen({ host: this.plan.hostIP, port: this.plan.hostPort, exclusive: true });
  }
}

function describeBindError(err: NodeJS.ErrnoException, port: number): string {
  switch (err.code) {
    case "EADDRINUSE":
      return "address already in use (another program holds this host port)";
    case "EACCES":
      return port < 1024
        ? "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE; map the guest port to a higher host port with a rule)"
        : "permission denied";
    case "EADDRNOTAVAIL":
      return "address not available on this host";
    default:
      return err.message;
  }
}
