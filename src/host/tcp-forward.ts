// A stream forward: a host TCP port or unix socket whose connections each become a tunnel
// to the guest (to a guest TCP port, or to a guest unix socket).
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import type { HostTarget, PlannedForward } from "../core/forward-plan.ts";
import { afterRelay, dropConnection, relayedBytes } from "../transport/fast-relay.ts";
import { LISTEN_BACKLOG, widenBacklog } from "../runtime/listen-backlog.ts";
import { removeStaleSocket } from "../transport/listen.ts";
import { HostForward, type FindOwner, type Listener, type Report, type Traffic, type Trouble } from "./host-forward.ts";

export type ConnectionHandler = (socket: net.Socket, plan: PlannedForward) => void;

export class TcpForward extends HostForward {
  constructor(
    plan: PlannedForward,
    private readonly onConnection: ConnectionHandler,
    report: Report,
    pathOf?: (plan: PlannedForward) => string,
    trouble?: Trouble,
    findOwner?: FindOwner,
  ) {
    super(plan, report, pathOf, trouble, findOwner);
  }

  protected async listenOn(host: HostTarget): Promise<Listener> {
    const sockets = new Set<net.Socket>();
    /** Bytes of connections already closed (open ones are counted live). */
    let closedIn = 0;
    let closedOut = 0;
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      sockets.add(socket);
      // A connection handed to the native relay lives on after its socket object closes.
      socket.once("close", () =>
        afterRelay(socket, () => {
          sockets.delete(socket);
          const { read, written } = relayedBytes(socket);
          closedIn += read;
          closedOut += written;
        }),
      );
      try {
        this.onConnection(socket, this.plan);
      } catch (err) {
        socket.destroy(); // the client sees its connection closed; the forward goes on
        this.trouble(err, `a connection to ${where}`);
      }
    });
    const where = host.kind === "tcp" ? `${host.ip.includes(":") ? `[${host.ip}]` : host.ip}:${host.port}` : host.path;
    if (host.kind === "unix") {
      await removeStaleSocket(host.path);
      fs.mkdirSync(path.dirname(host.path), { recursive: true });
    }
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.once("listening", () => {
        server.off("error", reject);
        // After listening, an error is one refused connection (Node reports EMFILE on accept so).
        server.on("error", (err) => this.trouble(err, `accepting on ${where}`));
        void widenBacklog(server, (message) => this.trouble(new Error(message), `listening on ${where}`)).then(() => resolve());
      });
      if (host.kind === "tcp") server.listen({ host: host.ip, port: host.port, backlog: LISTEN_BACKLOG });
      else server.listen({ path: host.path, backlog: LISTEN_BACKLOG });
    });
    return {
      close: () => {
        server.close();
        if (host.kind === "unix") fs.rmSync(host.path, { force: true });
      },
      dropAll: () => {
        for (const s of sockets) dropConnection(s);
      },
      traffic: (): Traffic => {
        let bytesIn = closedIn;
        let bytesOut = closedOut;
        for (const s of sockets) {
          const { read, written } = relayedBytes(s);
          bytesIn += read;
          bytesOut += written;
        }
        return { connections: sockets.size, bytesIn, bytesOut };
      },
    };
  }
}
