// One host listener (TCP port or unix socket) for one planned TCP forward. A bind that
// fails (port busy, privileged) is reported and tried again with backoff until it works
// or the forward is no longer wanted; it never takes the agent down.
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { formatHostPort } from "../core/address.ts";
import { backoffDelay } from "../core/backoff.ts";
import type { ForwardEvent } from "../core/forward-event.ts";
import { formatHostTarget, type PlannedForward } from "../core/forward-plan.ts";
import { removeStaleSocket } from "../transport/listen.ts";

export type ConnectionHandler = (socket: net.Socket, hostAddr: string, guestAddr: string) => void;

const RETRY = { minMs: 500, maxMs: 10_000 };
/** Errors that mean "this host has no such address family", not "try again later". */
const NO_ADDRESS = new Set(["EADDRNOTAVAIL", "EAFNOSUPPORT"]);

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
    void this.bind();
  }

  get hostAddr(): string {
    return formatHostTarget(this.plan.host);
  }

  get guestAddr(): string {
    return formatHostPort(this.plan.guest.ip, this.plan.guest.port);
  }

  /** The guest bind or the rule behind this listener changed; the listener stays. */
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
      if (this.plan.host.kind === "unix") fs.rmSync(this.plan.host.path, { force: true });
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

  private async bind(): Promise<void> {
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
    server.once("error", (err: NodeJS.ErrnoException) => this.bindFailed(server, err));
    const host = this.plan.host;
    if (host.kind === "tcp") return void server.listen({ host: host.ip, port: host.port });
    try {
      await removeStaleSocket(host.path);
      fs.mkdirSync(path.dirname(host.path), { recursive: true });
    } catch (err) {
      return this.bindFailed(server, err as NodeJS.ErrnoException);
    }
    if (!this.closed) server.listen(host.path);
  }

  private bindFailed(server: net.Server, err: NodeJS.ErrnoException): void {
    server.close();
    if (this.closed) return;
    const error = describeBindError(err, this.plan);
    if (this.plan.companion && NO_ADDRESS.has(err.code ?? "")) {
      // No IPv6 loopback on this host: the IPv4 listener serves alone.
      this.report({ type: "failed", ...this.describe(), error: `${error}; not retrying` });
      return;
    }
    const retryInMs = backoffDelay(this.attempt++, RETRY);
    this.report({ type: "failed", ...this.describe(), error, retryInMs });
    this.retryTimer = setTimeout(() => void this.bind(), retryInMs);
  }
}

function describeBindError(err: NodeJS.ErrnoException, plan: PlannedForward): string {
  switch (err.code) {
    case "EADDRINUSE":
      return "address already in use (another program holds this host port)";
    case "EACCES":
      return plan.host.kind === "tcp" && plan.host.port < 1024
        ? "permission denied (host ports below 1024 need root or CAP_NET_BIND_SERVICE; map the guest port to a port of 1024 or more with a portForwards rule)"
        : "permission denied";
    case "EADDRNOTAVAIL":
      return "address not available on this host";
    default:
      return err.message;
  }
}
