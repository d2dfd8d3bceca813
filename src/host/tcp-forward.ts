// A stream forward: a host TCP port or unix socket whose connections each become a tunnel
// to the guest (to a guest TCP port, or to a guest unix socket).
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import type { HostTarget, PlannedForward } from "../core/forward-plan.ts";
import { acceptNatively, dropConnection, relayedBytes, whenOver, type ForwardTarget, type NativeAccept } from "../transport/fast-relay.ts";
import { LISTEN_BACKLOG, widenBacklog } from "../runtime/listen-backlog.ts";
import { removeStaleSocket } from "../transport/listen.ts";
import { HostForward, type FindOwner, type Listener, type Report, type Traffic, type Trouble } from "./host-forward.ts";
import { KernelDirect, ListenerRewrite, type KernelRouting } from "./kernel-direct.ts";

export type ConnectionHandler = (socket: net.Socket, plan: PlannedForward) => void;

/**
 * Accepting in the relay thread (transport/fast-relay.ts acceptNatively): the router says
 * where this forward's clients go natively (the data path's endpoint and header, the guest's
 * proven address for the direct path, or none), and again whenever its paths change
 * (`subscribe`); the forward asks after each client that came to JavaScript too.
 */
export interface NativeRouting {
  target(plan: PlannedForward): ForwardTarget | undefined;
  subscribe(onChange: () => void): () => void;
  /** A client the relay thread dialled (a stand-in socket for counting) to `target`. */
  dialed(connection: net.Socket, plan: PlannedForward, target: ForwardTarget | undefined): void;
  /** A client whose native dial to `target` failed, as a socket again: the router sends it on. */
  failed(err: NodeJS.ErrnoException, client: net.Socket, plan: PlannedForward, target: ForwardTarget | undefined): void;
  /** How long the relay thread waits for the guest's status byte (a target's own timeoutMs first). */
  timeoutMs: number;
  /** --kernel-direct: this host's own clients of a direct forward connect to the guest themselves. */
  kernel?: KernelRouting;
}

export class TcpForward extends HostForward {
  /** Each listener's "ask the router again" (the relay thread's target, the kernel's rewrite). */
  private readonly refreshers = new Set<() => void>();

  constructor(
    plan: PlannedForward,
    private readonly onConnection: ConnectionHandler,
    report: Report,
    pathOf?: (plan: PlannedForward) => string,
    trouble?: Trouble,
    findOwner?: FindOwner,
    private readonly routing?: NativeRouting,
  ) {
    super(plan, report, pathOf, trouble, findOwner);
  }

  /** A new guest address or rule: the listeners' targets follow at once, not at their next client. */
  override retarget(plan: PlannedForward): void {
    super.retarget(plan);
    for (const refresh of this.refreshers) refresh();
  }

  protected async listenOn(host: HostTarget): Promise<Listener> {
    const sockets = new Set<net.Socket>();
    /** Bytes of connections already closed (open ones are counted live). */
    let closedIn = 0;
    let closedOut = 0;
    /** Counts a client connection until it is over (a stand-in's is over when its relay ended). */
    const track = (socket: net.Socket) => {
      sockets.add(socket);
      // A connection handed to the native relay lives on after its socket object closes.
      whenOver(socket, () => {
        sockets.delete(socket);
        const { read, written } = relayedBytes(socket);
        closedIn += read;
        closedOut += written;
      });
    };
    const route = (socket: net.Socket) => {
      track(socket);
      try {
        this.onConnection(socket, this.plan);
      } catch (err) {
        socket.destroy(); // the client sees its connection closed; the forward goes on
        this.trouble(err, `a connection to ${where}`);
      }
    };
    let native: (NativeAccept & { nudge(): void }) | undefined;
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      route(socket);
      native?.nudge();
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
    const kernel = this.routing?.kernel;
    const rewrite =
      host.kind === "tcp" && kernel && KernelDirect.rewritable(host.ip) ? new ListenerRewrite(kernel, host.ip, host.port, this.plan.key, () => this.plan.guestAddr) : undefined;
    native = host.kind === "tcp" && this.routing ? this.acceptInRelay(server, track, route, where, rewrite) : undefined;
    return {
      close: () => {
        native?.close();
        rewrite?.close();
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

  /** The listener's clients accepted in the relay thread (see NativeRouting); undefined where it cannot. */
  private acceptInRelay(
    server: net.Server,
    track: (s: net.Socket) => void,
    route: (s: net.Socket) => void,
    where: string,
    rewrite: ListenerRewrite | undefined,
  ): (NativeAccept & { nudge(): void }) | undefined {
    const routing = this.routing!;
    let native: NativeAccept | undefined;
    let unsubscribe = () => {};
    let targeted = false;
    const refresh = () => {
      try {
        const target = routing.target(this.plan);
        if (target || targeted) native?.setTarget(target); // none after none: nothing to tell the thread
        targeted = target !== undefined;
        rewrite?.update(target);
      } catch (err) {
        native?.setTarget(undefined);
        targeted = false;
        rewrite?.update(undefined);
        this.trouble(err, `choosing the data path of connections to ${where}`);
      }
    };
    native = acceptNatively(server, routing.timeoutMs, {
      onHandoff: (socket) => {
        route(socket);
        refresh(); // its path may have changed (a backoff ended, say)
      },
      onDialed: (connection, target) => {
        track(connection);
        routing.dialed(connection, this.plan, target);
        rewrite?.connected(target);
      },
      onFailed: (err, client, target) => {
        track(client);
        routing.failed(err, client, this.plan, target);
        refresh();
      },
      onAcceptFailed: (err) => this.trouble(err, `accepting on ${where}`),
    });
    if (!native) return undefined;
    const accept = native;
    unsubscribe = routing.subscribe(refresh);
    this.refreshers.add(refresh);
    refresh();
    return {
      setTarget: (t) => accept.setTarget(t),
      close: () => {
        unsubscribe();
        this.refreshers.delete(refresh);
        accept.close();
      },
      stats: () => accept.stats(),
      // A client the runtime's server took: while no target is set, its path may have come
      // back (a backoff that ended says nothing), so ask again.
      nudge: () => {
        if (!targeted) refresh();
      },
    };
  }
}
