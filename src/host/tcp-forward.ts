// A stream forward: a host TCP port or unix socket whose connections each become a tunnel
// to the guest (to a guest TCP port, or to a guest unix socket).
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import type { PlannedForward } from "../core/forward-plan.ts";
import { afterRelay, dropConnection, relayedBytes } from "../transport/fast-relay.ts";
import { removeStaleSocket } from "../transport/listen.ts";
import { HostForward, type Report, type Traffic } from "./host-forward.ts";

export type ConnectionHandler = (socket: net.Socket, plan: PlannedForward) => void;

export class TcpForward extends HostForward {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  /** Bytes of connections already closed (open ones are counted live). */
  private closedIn = 0;
  private closedOut = 0;

  constructor(
    plan: PlannedForward,
    private readonly onConnection: ConnectionHandler,
    report: Report,
    pathOf?: (plan: PlannedForward) => string,
  ) {
    super(plan, report, pathOf);
  }

  protected async listen(): Promise<void> {
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      this.sockets.add(socket);
      // A connection handed to the native relay lives on after its socket object closes.
      socket.once("close", () =>
        afterRelay(socket, () => {
          this.sockets.delete(socket);
          const { read, written } = relayedBytes(socket);
          this.closedIn += read;
          this.closedOut += written;
        }),
      );
      this.onConnection(socket, this.plan);
    });
    const host = this.hostTarget;
    if (host.kind === "unix") {
      await removeStaleSocket(host.path);
      fs.mkdirSync(path.dirname(host.path), { recursive: true });
    }
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.once("listening", () => {
        server.off("error", reject);
        resolve();
      });
      if (host.kind === "tcp") server.listen({ host: host.ip, port: host.port });
      else server.listen(host.path);
    });
    this.server = server;
  }

  protected isListening(): boolean {
    return this.server?.listening ?? false;
  }

  protected stopListening(): void {
    this.server?.close();
    this.server = undefined;
    if (this.plan.host.kind === "unix") fs.rmSync(this.plan.host.path, { force: true });
  }

  protected dropAll(): void {
    for (const s of this.sockets) dropConnection(s);
  }

  protected traffic(): Traffic {
    let bytesIn = this.closedIn;
    let bytesOut = this.closedOut;
    for (const s of this.sockets) {
      const { read, written } = relayedBytes(s);
      bytesIn += read;
      bytesOut += written;
    }
    return { connections: this.sockets.size, bytesIn, bytesOut };
  }
}
