// Chooses the data path for each forwarded stream connection, fastest first:
//   direct  - connect to the guest by IP, only at addresses where the guest agent proved it
//             answers (host/direct-paths.ts) and where the guest socket's family fits;
//   fast    - porthole's raw data path: one stream per connection over the agent transport;
//   mux     - a stream of the lean multiplexer, where the agent channel is one stream (host/mux-link.ts);
//   grpc    - Lima's Tunnel stream (works with a stock Lima guest agent too);
//   ssh     - a direct-tcpip channel (when the SSH forwarder is chosen).
// A path that cannot connect hands the connection to the next one, says so in an event, and
// is not tried again until its backoff ends (so a blackholed path costs one timeout, not
// one per connection). A target the guest refuses resets the client: that is its answer.
import { realpathSync } from "node:fs";
import type * as net from "node:net";
import { isIPv4 } from "node:net";
import { backoffDelay } from "../core/backoff.ts";
import { isUnspecified, parseHostPort } from "../core/address.ts";
import { encodeDataHeader, STATUS_CONNECTED } from "../core/data-header.ts";
import type { HostEvent } from "../core/forward-event.ts";
import type { PlannedForward } from "../core/forward-plan.ts";
import { parseTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import type { HelloResponse } from "../proto/guest-service.ts";
import { dialTransport } from "../transport/dial.ts";
import { dialAndJoin, joinFramed, joinSockets, RefusedByPeer, resetConnection, whenOver, type ForwardTarget } from "../transport/fast-relay.ts";
import { resetSocket } from "../transport/tunnel-relay.ts";
import { DirectPaths } from "./direct-paths.ts";
import type { GrpcForwarder } from "./grpc-forwarder.ts";
import type { PathTraffic } from "../core/status.ts";
import { PathCounters } from "./path-counters.ts";
import type { SshForwarder } from "./ssh-forwarder.ts";
import type { MuxLink } from "./mux-link.ts";
import { formatMuxTarget } from "../core/mux-frames.ts";
import { MuxRefused } from "../transport/lean-mux.ts";
import { UdpDataTunnel } from "./udp-data-tunnel.ts";
import type { UdpTunnel } from "./udp-forward.ts";

export type DataPath = "direct" | "fast" | "mux" | "grpc" | "ssh";
export type RouterMode = "auto" | "fast" | "grpc" | "ssh";

const DIAL_TIMEOUT_MS = 2000;
/** The native data path's deadline for the guest's status byte: the guest's own connect decides first (~127 s for TCP). */
export const DATA_ANSWER_TIMEOUT_MS = 140_000;
const RETRY = { minMs: 2000, maxMs: 60_000 };
/** Keepalive on direct connections: a guest network that vanishes is noticed, not waited on forever. */
const KEEPALIVE_MS = 10_000;

interface Failure {
  until: number;
  attempt: number;
}

export class StreamRouter {
  private dataEndpoint: TransportAddress | undefined;
  private secret = "";
  private framed = false;
  /** The guest carries UDP flows on data streams ("udp-data-path"). */
  private udpStreams = false;
  private readonly direct: DirectPaths;
  /** Paths that failed to connect, by "fast" or "direct IP:PORT", until their retry time. */
  private readonly failures = new Map<string, Failure>();
  /** Ends of backoffs: the forwards accepting in the relay thread re-ask their target then. */
  private readonly retryTimers = new Set<ReturnType<typeof setTimeout>>();
  readonly counters = new PathCounters();
  /** The lean multiplexer, where the agent channel is one stream. */
  private mux: MuxLink | undefined;

  /** Who hears that a path changed (forwards accepting in the relay thread re-ask nativeTarget). */
  private readonly watchers = new Set<() => void>();
  private readonly report: (e: HostEvent) => void;

  constructor(
    private readonly mode: RouterMode,
    private readonly agentAddress: TransportAddress,
    private readonly grpc: GrpcForwarder,
    private readonly ssh: SshForwarder | undefined,
    report: (e: HostEvent) => void = () => {},
    direct?: DirectPaths,
    /** How long a data stream may wait for the guest's answer (shorter in tests). */
    private readonly dataAnswerTimeoutMs = DATA_ANSWER_TIMEOUT_MS,
  ) {
    this.report = (e) => {
      report(e);
      if (e.type === "path-changed") this.changed();
    };
    this.direct =
      direct ??
      new DirectPaths(
        (ip, proved, reason) => this.report({ type: "path-changed", address: ip, path: "direct", state: proved ? "usable" : "unusable", reason }),
        undefined,
        undefined,
        (ip) => this.dropDirect(ip),
      );
  }

  /** Open direct connections, by guest IP: reset when that address goes silent. */
  private readonly openDirect = new Map<string, Set<[client: net.Socket, upstream: net.Socket]>>();

  /**
   * The guest address stopped answering: its direct connections are dead, but TCP would
   * notice only after minutes of retransmissions (and a client that gave up would sit in
   * CLOSE-WAIT meanwhile). Reset both ends now, and say so.
   */
  private dropDirect(ip: string): void {
    const sockets = this.openDirect.get(ip);
    this.openDirect.delete(ip);
    if (!sockets?.size) return;
    for (const [client, upstream] of sockets) resetConnection(client, upstream);
    this.report({ type: "path-changed", address: ip, path: "direct", state: "unusable", reason: `the guest address stopped answering; reset its ${sockets.size} open direct connection(s)` });
  }

  /** What the guest agent offers (undefined: a stock Lima agent, or none yet). */
  setGuest(hello: HelloResponse | undefined): void {
    this.secret = typeof hello?.data_secret === "string" ? hello.data_secret : "";
    this.framed = hello?.features?.includes("data-path-ends") ?? false;
    this.udpStreams = hello?.features?.includes("udp-data-path") ?? false;
    this.dataEndpoint = hello ? this.reachableEndpoint(hello.data_endpoints ?? []) : undefined;
    this.failures.clear();
    this.direct.setGuest(
      hello && this.mode === "auto"
        ? { secret: this.secret, addresses: hello.addresses ?? [], proofPort: Number(hello.direct_proof_port ?? 0), peerBound: hello.features?.includes("direct-proof-peer") ?? false }
        : undefined,
    );
    this.changed();
  }

  /** Calls `onChange` whenever the paths changed (a guest, a failure, a proof); returns the stop. */
  onChange(onChange: () => void): () => void {
    this.watchers.add(onChange);
    return () => this.watchers.delete(onChange);
  }

  private changed(): void {
    for (const w of this.watchers) {
      try {
        w();
      } catch {
        // a forward's refresh failing must not keep the others from theirs
      }
    }
  }

  /**
   * Where the relay thread may dial this forward's next clients itself: the guest's proven
   * address while the direct path is chosen (the proof and the choice stay here: a lapsed
   * proof or a failure changes the path, and the forward asks again), or the data path to a
   * unix data endpoint, framed, with its header; undefined when they must come to
   * forwardStream (another path is chosen now, or it is not natively possible).
   */
  nativeTarget(plan: PlannedForward): ForwardTarget | undefined {
    if (plan.protocol !== "tcp") return undefined;
    const path = this.pathFor(plan);
    if (path === "direct") {
      const target = this.directTarget(plan);
      return target && { ...target, timeoutMs: DIAL_TIMEOUT_MS, keepAliveMs: KEEPALIVE_MS };
    }
    const endpoint = this.dataEndpoint;
    if (path !== "fast" || endpoint?.kind !== "unix" || !this.framed) return undefined;
    try {
      return { path: endpoint.path, header: Buffer.from(encodeDataHeader(this.secret, { protocol: "tcp", address: plan.guestAddr }, true)) };
    } catch {
      return undefined; // forwardStream says why
    }
  }

  /**
   * Whether nativeTarget can ever name a target: never with `--forwarder grpc` or `ssh`, whose
   * connections all come to forwardStream. Their forwards then accept in the runtime's own
   * thread: accepting in the relay thread only to hand every client over costs that thread a
   * wake-up, a record and the socket's re-adoption per connection.
   */
  get dialsNatively(): boolean {
    return this.mode === "auto" || this.mode === "fast";
  }

  /** A client the relay thread dialled to `target` (see nativeTarget). */
  nativeDialed(connection: net.Socket, plan: PlannedForward, target: ForwardTarget | undefined): void {
    if (this.direct.interfacesChanged()) void this.direct.reprove(); // as forwardStream does (its result comes as a path change)
    if (target && "host" in target) {
      this.succeeded(`direct ${target.host}:${target.port}`, plan);
      this.counters.took("direct", plan.key, connection);
      this.trackDirect(target.host, connection, connection);
      return;
    }
    this.succeeded("fast", plan);
    this.counters.took("fast", plan.key, connection);
  }

  /** A client whose dial to `target` in the relay thread failed: reset (refused) or on by the next path, as in route(). */
  nativeFailed(err: NodeJS.ErrnoException, client: net.Socket, plan: PlannedForward, target: ForwardTarget | undefined): void {
    if (target && "host" in target) return this.dialFailed(client, plan, "direct", `direct ${target.host}:${target.port}`, err, target.host);
    this.dialFailed(client, plan, "fast", "fast", err instanceof RefusedByPeer ? new RefusedByGuest() : err);
  }

  stop(): void {
    this.direct.stop();
    for (const t of this.retryTimers) clearTimeout(t);
    this.retryTimers.clear();
  }

  useMux(link: MuxLink): void {
    this.mux = link;
  }

  /** The path a new connection of this forward takes now. */
  pathFor(plan: PlannedForward): DataPath {
    if (this.mode === "ssh") return "ssh";
    if (this.mode === "grpc" || plan.protocol === "udp") return "grpc";
    if (this.mode === "auto" && this.directTarget(plan)) return "direct";
    if (this.fastUsable()) return "fast";
    return this.mux?.session && !this.blocked("mux") ? "mux" : "grpc";
  }

  /**
   * A UDP client's flow: a data stream of its own where the guest offers one (a porthole guest
   * with a data endpoint this host can dial), so a flood shares no HTTP/2 session with the TCP
   * tunnels and the control stream; else the Tunnel (Lima's one datagram per message with a
   * stock guest). A data stream that cannot be had ends the flow (its datagrams are lost, as
   * UDP may lose them), is said once, and the next flows take gRPC until the path's retry time.
   */
  openUdpTunnel(plan: PlannedForward, client: string): UdpTunnel {
    if ((this.mode === "auto" || this.mode === "fast") && this.udpStreams && this.fastUsable()) {
      const dial = this.openDataStream(plan).then(
        (opened) => {
          this.succeeded("fast", plan);
          this.counters.took("fast", plan.key, opened.stream, true);
          return opened;
        },
        (err: Error) => {
          if (!(err instanceof RefusedByGuest)) {
            this.failed("fast", plan, "fast", err.message);
            this.counters.fellBack("fast", plan.key);
          }
          throw err;
        },
      );
      return new UdpDataTunnel(dial, (reason) =>
        this.report({ type: "warning", message: `UDP ${plan.guestAddr}: the guest agent broke a flow's data stream (${reason}); that flow ended, the next datagram opens a new one` }),
      );
    }
    return this.grpc.openUdpTunnel(plan, client);
  }

  /** Per path: connections and bytes, for the agent or for one forward (by its key). */
  traffic(forward?: string): Record<string, PathTraffic> {
    return this.counters.snapshot(forward);
  }

  forwardStream(socket: net.Socket, plan: PlannedForward): void {
    if (this.direct.interfacesChanged()) void this.direct.reprove();
    this.route(socket, plan, this.pathFor(plan));
  }

  private route(socket: net.Socket, plan: PlannedForward, path: DataPath): void {
    switch (path) {
      case "ssh":
        this.counters.took("ssh", plan.key, socket);
        return this.ssh!.forwardStream(socket, plan);
      case "grpc":
        this.counters.took("grpc", plan.key, socket);
        return this.grpc.forwardStream(socket, plan);
      case "direct": {
        const target = this.directTarget(plan)!;
        const key = `direct ${target.host}:${target.port}`;
        // Natively where it can: the relay thread connects and relays, no JavaScript between.
        const native = dialAndJoin(
          socket,
          target,
          { timeoutMs: DIAL_TIMEOUT_MS, keepAliveMs: KEEPALIVE_MS },
          () => {
            this.succeeded(key, plan);
            this.counters.took("direct", plan.key, socket);
            this.trackDirect(target.host, socket, socket);
          },
          (err, again) => this.dialFailed(again, plan, "direct", key, err, target.host),
        );
        if (native) return;
        return this.splice(socket, plan, "direct", key, () => this.dialDirect(target), target.host);
      }
      case "fast":
        if (this.fastNatively(socket, plan)) return;
        return this.splice(socket, plan, "fast", "fast", () => this.openDataStream(plan));
      case "mux":
        return this.openMuxStream(socket, plan);
    }
  }

  /** A stream of the lean multiplexer; a target the guest refused resets the client, as on the data path. */
  private openMuxStream(client: net.Socket, plan: PlannedForward): void {
    const session = this.mux!.session!;
    client.pause();
    const target = formatMuxTarget(plan.protocol === "unix" ? { kind: "unix", path: plan.guestAddr } : { kind: "tcp", address: plan.guestAddr });
    session.open(target).then(
      (id) => {
        this.succeeded("mux", plan);
        this.counters.took("mux", plan.key, client);
        session.attach(id, client);
      },
      (err: Error) => this.dialFailed(client, plan, "mux", "mux", err instanceof MuxRefused ? new RefusedByGuest(err.message) : err),
    );
  }

  private async dialDirect(target: { host: string; port: number }): Promise<{ stream: net.Socket }> {
    const stream = await dialTransport({ kind: "tcp", ...target }, DIAL_TIMEOUT_MS, { allowHalfOpen: true });
    stream.setKeepAlive(true, KEEPALIVE_MS);
    return { stream };
  }

  /**
   * The data path with no JavaScript per connection: the relay thread dials the guest's data
   * endpoint (a unix socket), sends the header, reads the status byte and relays the framed
   * stream. False where it cannot (vsock, an unframed guest, no native relay).
   */
  private fastNatively(socket: net.Socket, plan: PlannedForward): boolean {
    const endpoint = this.dataEndpoint;
    if (endpoint?.kind !== "unix" || !this.framed) return false;
    let header: Buffer;
    try {
      header = Buffer.from(encodeDataHeader(this.secret, { protocol: plan.protocol === "unix" ? "unix" : "tcp", address: plan.guestAddr }, true));
    } catch {
      return false; // openDataStream says why
    }
    return dialAndJoin(
      socket,
      { path: endpoint.path },
      { timeoutMs: this.dataAnswerTimeoutMs, keepAliveMs: 0, shape: { framed: "dialed", hello: { bytes: header, to: "dialed" }, awaitStatus: true } },
      () => {
        this.succeeded("fast", plan);
        this.counters.took("fast", plan.key, socket);
      },
      (err, again) => this.dialFailed(again, plan, "fast", "fast", err instanceof RefusedByPeer ? new RefusedByGuest() : err),
    );
  }

  /** A data stream to the guest whose target is connected (rejects with RefusedByGuest if not). */
  private async openDataStream(plan: PlannedForward): Promise<{ stream: net.Socket; framed: boolean; initial?: Buffer }> {
    const framed = this.framed;
    const stream = await dialTransport(this.dataEndpoint!, DIAL_TIMEOUT_MS, { allowHalfOpen: true });
    stream.write(encodeDataHeader(this.secret, { protocol: plan.protocol === "unix" || plan.protocol === "udp" ? plan.protocol : "tcp", address: plan.guestAddr }, framed));
    const first = await new Promise<Buffer | undefined>((resolve) => {
      // A guest that accepts and stays silent must not hold the client and the stream forever.
      const timer = setTimeout(() => stream.destroy(), this.dataAnswerTimeoutMs);
      const onData = (chunk: Buffer) => {
        cleanup();
        stream.pause();
        resolve(chunk);
      };
      const onEnd = () => {
        cleanup();
        resolve(undefined);
      };
      const cleanup = () => {
        clearTimeout(timer);
        stream.off("data", onData);
        stream.off("end", onEnd);
        stream.off("close", onEnd);
        stream.off("error", onEnd);
      };
      stream.on("data", onData);
      stream.once("end", onEnd);
      stream.once("close", onEnd);
      stream.once("error", onEnd);
    });
    if (!first) {
      stream.destroy();
      throw new Error("the guest agent closed the data stream without an answer");
    }
    if (first[0] !== STATUS_CONNECTED) {
      stream.destroy();
      throw new RefusedByGuest();
    }
    return { stream, framed, initial: first.subarray(1) };
  }

  /**
   * Joins the client to a fresh stream, kernel socket to kernel socket. A target the guest
   * refused resets the client; a path that cannot connect is remembered as failing and the
   * connection goes on by the next path.
   */
  private splice(
    client: net.Socket,
    plan: PlannedForward,
    path: DataPath,
    failureKey: string,
    dial: () => Promise<{ stream: net.Socket; framed?: boolean; initial?: Buffer }>,
    directIP?: string,
  ): void {
    client.pause();
    dial().then(
      ({ stream, framed, initial }) => {
        if (client.destroyed) return void stream.destroy();
        this.succeeded(failureKey, plan);
        this.counters.took(path, plan.key, client);
        if (directIP) this.trackDirect(directIP, client, stream);
        if (framed) {
          joinFramed(client, stream, initial);
        } else {
          if (initial?.length) client.write(initial);
          joinSockets(client, stream);
        }
      },
      (err: NodeJS.ErrnoException) => this.dialFailed(client, plan, path, failureKey, err, directIP),
    );
  }

  /** The path could not connect: the client is reset (the far end's answer) or goes on by the next path. */
  private dialFailed(client: net.Socket, plan: PlannedForward, path: DataPath, failureKey: string, err: NodeJS.ErrnoException, directIP?: string): void {
    // The guest refused the target, or (direct) the target accepted and reset at once:
    // either way the far end answered, and its answer is a reset.
    if (err instanceof RefusedByGuest || (path === "direct" && err.code === "ECONNRESET")) {
      if (client.destroyed) return;
      this.counters.took(path, plan.key, client);
      return resetSocket(client);
    }
    // Direct and refused: the guest socket does not accept at that address (a socket
    // bound IPv6-only, say); remember it for this forward and let a tunnel decide.
    const refusedDirect = path === "direct" && err.code === "ECONNREFUSED";
    if (path === "direct" && !refusedDirect && directIP) this.direct.fail(directIP, err.message);
    // Said and backed off even when this client is gone already (reset because what it sent
    // had gone towards the guest): the next connections must not try the failing path blind.
    this.failed(refusedDirect ? failureKey : path === "direct" ? `direct ${directIP}` : failureKey, plan, path, err.message);
    if (client.destroyed) return;
    this.counters.fellBack(path, plan.key);
    const next = this.pathFor(plan) === path ? "grpc" : this.pathFor(plan);
    if (next === "grpc") client.resume(); // the splice paused it; gRPC reads as it goes
    this.route(client, plan, next);
  }

  private trackDirect(ip: string, client: net.Socket, upstream: net.Socket): void {
    let set = this.openDirect.get(ip);
    if (!set) this.openDirect.set(ip, (set = new Set()));
    const open = set;
    const pair: [net.Socket, net.Socket] = [client, upstream];
    open.add(pair);
    // A connection handed to the native relay lives on after its socket objects close.
    whenOver(upstream, () => open.delete(pair));
  }

  private failed(key: string, plan: PlannedForward, path: DataPath, error: string): void {
    // Connections dialed before the first failure was known fail too: said once.
    if (this.blocked(key)) return;
    const previous = this.failures.get(key);
    const attempt = previous ? previous.attempt + 1 : 0;
    const retryInMs = backoffDelay(attempt, RETRY);
    this.failures.set(key, { until: Date.now() + retryInMs, attempt });
    // The path may be tried again then: a forward whose clients the relay thread dials (to
    // the next path meanwhile) must hear it, or it would never go back.
    const timer = setTimeout(() => {
      this.retryTimers.delete(timer);
      this.changed();
    }, retryInMs + 1);
    (timer as { unref?: () => void }).unref?.();
    this.retryTimers.add(timer);
    const next = this.pathFor(plan);
    this.report({ type: "path-changed", address: plan.guestAddr, path, state: "unusable", reason: `${error}; using ${next} meanwhile`, retryInMs });
  }

  private succeeded(key: string, plan: PlannedForward): void {
    if (!this.failures.delete(key)) return;
    this.report({ type: "path-changed", address: plan.guestAddr, path: key.split(" ")[0], state: "usable", reason: "it connects again" });
  }

  private blocked(key: string): boolean {
    const f = this.failures.get(key);
    return f !== undefined && Date.now() < f.until;
  }

  private fastUsable(): boolean {
    return this.dataEndpoint !== undefined && this.secret !== "" && !this.blocked("fast");
  }

  /** guest IP:port to connect to directly, if the guest bind is reachable (and proved) by IP. */
  private directTarget(plan: PlannedForward): { host: string; port: number } | undefined {
    if (plan.protocol !== "tcp") return undefined;
    let bind;
    try {
      bind = parseHostPort(plan.guestAddr);
    } catch {
      return undefined;
    }
    // A socket on 0.0.0.0 accepts IPv4 only; one on :: IPv6 (and IPv4 unless it is
    // IPv6-only: a refused direct connection then moves the forward to a tunnel).
    const proved = this.direct.addresses;
    const candidates = !isUnspecified(bind.host)
      ? proved.filter((a) => a === bind.host)
      : bind.host === "0.0.0.0"
        ? proved.filter((a) => isIPv4(a))
        : [...proved.filter((a) => !isIPv4(a)), ...proved.filter((a) => isIPv4(a))];
    const ip = candidates.find((a) => !this.blocked(`direct ${a}:${bind.port}`) && !this.blocked(`direct ${a}`));
    return ip ? { host: ip, port: bind.port } : undefined;
  }

  /** The guest's data endpoint as this host can dial it, if it can. */
  private reachableEndpoint(endpoints: string[]): TransportAddress | undefined {
    for (const text of endpoints) {
      let endpoint: TransportAddress;
      try {
        endpoint = parseTransportAddress(text);
      } catch {
        continue;
      }
      const agent = this.agentAddress;
      // A unix path means something on this host only when the host reached the agent by
      // a path of the same file system (tests, containers), and only the one beside the
      // agent's socket (never another socket there, Lima's ssh.sock say); a VM's vsock port
      // with its CID.
      if (endpoint.kind === "unix" && agent.kind === "unix" && sameFile(endpoint.path, dataEndpointBeside(agent.path))) {
        return endpoint;
      }
      if (endpoint.kind === "vsock" && agent.kind === "vsock" && agent.cid !== undefined) {
        return { kind: "vsock", cid: agent.cid, port: endpoint.port };
      }
    }
    return undefined;
  }
}

/** Both paths name one existing file (either may go through a symlink). */
function sameFile(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/** Where a porthole guest agent serving on `agentPath` keeps its data endpoint (guest/guest-agent.ts). */
function dataEndpointBeside(agentPath: string): string {
  return `${agentPath}.data`;
}

/** The guest reached the data path but not the target (nothing listens there). */
class RefusedByGuest extends Error {}
