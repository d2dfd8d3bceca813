// The guest role: watch this namespace's sockets and serve GuestService on each listen address.
import * as grpc from "@grpc/grpc-js";
import { chownSync, mkdirSync } from "node:fs";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { guestServiceDefinition, portholeServiceDefinition } from "../proto/guest-service.ts";
import { createTunedServer, serveOnHttp2 } from "../transport/grpc-tuning.ts";
import { H2TunnelCall } from "./h2-tunnel-call.ts";
import { handleTunnel } from "./tunnel-endpoint.ts";
import { loadNative } from "../runtime/native.ts";
import { serveTransport, type Served } from "../transport/serve.ts";
import type { UnreadConnection } from "../transport/unread.ts";
import { prepareRelay } from "../transport/fast-relay.ts";
import { prepareDatagrams } from "../transport/datagram-socket.ts";
import { guestServiceHandlers } from "./guest-service.ts";
import { newDataSecret, serveDataEndpoint } from "./data-server.ts";
import { rateLimitedRefusals } from "../core/log-text.ts";
import { serveDirectProof, type ProofServer } from "./direct-proof.ts";
import { EventState } from "./event-state.ts";
import { checkPreface, checkUnread } from "./preface-check.ts";
import { serveMux } from "./mux-server.ts";
import { watchFdPressure } from "./fd-pressure.ts";
import { ephemeralPortRange, portholeServiceHandlers } from "./porthole-service.ts";
import { bestScanner, type Detector, type DetectorChoice, type Scanner } from "./scanners.ts";
import { PortWatcher, type ScanResult } from "./watcher.ts";
import { OwnerResolver } from "./port-owners.ts";
import { UdpSettler, UDP_SERVER_AFTER_MS } from "../core/udp-settle.ts";

export interface GuestAgentOptions {
  listen: TransportAddress[];
  /** Undefined: the detector's (a 5 s safety re-scan beside kernel events; a 50 ms poll with netlink, 500 ms with /proc/net). */
  scanIntervalMs?: number;
  /** Undefined: netlink where the shim loads, else /proc/net. */
  scanner?: Scanner;
  /** What tells the watcher to look: kernel events (ebpf), polling, or the best that runs here (auto, the default). */
  detector?: DetectorChoice;
  /** The shared token a TCP client must present (required for tcp:// listen addresses). */
  token?: string;
  /** vsock: accept peers other than the host (CID 2). */
  vsockAnyCid?: boolean;
  /** Unix sockets are handed to this UID (Lima's --socket-owner: the host reaches them over SSH as that user). */
  socketOwner?: number;
  /** Where the last port state sent is kept across restarts (Lima's --runtime-dir). */
  runtimeDir?: string;
  log: (line: string) => void;
}

export class GuestAgent {
  private watcher: PortWatcher | undefined;
  private readonly grpcServer: grpc.Server;
  private readonly served: Served[] = [];
  /** The secret every raw data stream must start with (see core/data-header.ts). */
  private readonly dataSecret = newDataSecret();
  private stopFdWatch: (() => void) | undefined;
  private proof: ProofServer | undefined;
  /** The port detector in use (said in Hello, shown by the host's status). */
  detector: Detector | undefined;

  constructor(private readonly options: GuestAgentOptions) {
    this.grpcServer = createTunedServer();
  }

  async start(): Promise<void> {
    this.stopFdWatch = watchFdPressure(this.options.log);
    if (this.options.runtimeDir) mkdirSync(this.options.runtimeDir, { recursive: true, mode: 0o755 });
    const chosen = this.options.scanner
      ? { scanner: this.options.scanner, detector: { name: "poll" as const, intervalMs: 50, description: `port detector: poll (${this.options.scanner.name})` } }
      : await bestScanner(this.options.log, this.options.detector);
    const { scanner } = chosen;
    this.detector = chosen.detector;
    const interval = this.options.scanIntervalMs ?? chosen.detector.intervalMs;
    const refusals = rateLimitedRefusals(this.options.log);
    try {
      this.proof = await serveDirectProof(this.dataSecret, rateLimitedRefusals(this.options.log)); // its own: network noise there must not hide a data-path refusal
    } catch (err) {
      this.options.log(`no direct path: cannot listen for its proof (${(err as Error).message}); the host will use the tunnels`);
    }
    this.watcher = new PortWatcher(interval, hidePort(scanner, this.proof?.port), new UdpSettler(UDP_SERVER_AFTER_MS, ephemeralPortRange()), new OwnerResolver());
    this.grpcServer.addService(guestServiceDefinition, guestServiceHandlers({
      watcher: this.watcher,
      eventState: new EventState(this.options.runtimeDir, this.options.log),
      log: this.options.log,
    }));
    // Tunnel streams skip grpc-js's call machinery (one per forwarded connection, every byte).
    serveOnHttp2(this.grpcServer, guestServiceDefinition.Tunnel.path, (stream) => handleTunnel(new H2TunnelCall(stream)));
    const dataEndpoints: string[] = [];
    this.grpcServer.addService(
      portholeServiceDefinition,
      portholeServiceHandlers({
        dataSecret: this.dataSecret,
        dataEndpoints: () => dataEndpoints,
        directProofPort: () => this.proof?.port ?? 0,
        portDetector: () => this.detector?.description ?? "",
      }),
    );
    await this.watcher.start();
    await prepareRelay(this.options.log);
    await prepareDatagrams(this.options.log);
    this.options.log(chosen.detector.description);
    this.options.log(`watching sockets with ${scanner.name}, a full scan every ${interval} ms`);
    const injector = this.grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    const { shim: native } = await loadNative();
    try {
      for (const address of this.options.listen) {
        const name = formatTransportAddress(address);
        const serveGrpc = (s: Duplex) => injector.injectConnection(s);
        // A host that probes for the lean multiplexer (one-stream channels) gets it: its gRPC
        // connection and every forwarded connection then share this one stream.
        const onMux = (raw: Socket, rest: Buffer) => void serveMux(raw, rest, (s) => checkPreface(s, `${name} (multiplexed)`, this.options.log, serveGrpc), this.options.log, name);
        const served = await serveTransport(address, (socket) => checkPreface(socket, name, this.options.log, serveGrpc, onMux), {
          ...this.options,
          // With the shim, unix and vsock connections are checked in place (MSG_PEEK): no relay
          // in front of porthole's host (which probes for the mux only on one-stream channels).
          ...(native ? { onUnread: (c: UnreadConnection) => checkUnread(c, native, name, this.options.log, serveGrpc) } : {}),
        });
        this.served.push(served);
        this.giveSocket(address);
        const data = dataEndpointFor(address);
        if (data) {
          this.served.push(await serveDataEndpoint(data, this.dataSecret, refusals, this.options));
          this.giveSocket(data);
          dataEndpoints.push(formatTransportAddress(data));
        }
        // Said once the data endpoint is up too: "serving" means every endpoint answers.
        this.options.log(`porthole guest agent serving on ${formatTransportAddress(address)}`);
      }
    } catch (err) {
      this.stop();
      throw err;
    }
  }

  private giveSocket(address: TransportAddress): void {
    if (address.kind === "unix" && this.options.socketOwner !== undefined) chownSync(address.path, this.options.socketOwner, -1);
  }

  stop(): void {
    this.stopFdWatch?.();
    this.watcher?.stop();
    this.proof?.close();
    for (const served of this.served.splice(0)) served.close();
    this.grpcServer.forceShutdown();
  }
}

/** The agent's own proof port is not a guest service: it is never reported for forwarding. */
function hidePort(scanner: Scanner, port: number | undefined): Scanner {
  if (!port) return scanner;
  const hide = (result: ScanResult): ScanResult => ({ ...result, ports: result.ports.filter((p) => !(p.protocol === "tcp" && p.port === port)) });
  return {
    ...scanner,
    scan: async () => hide(await scanner.scan()),
    ...(scanner.scanPort ? { scanPort: (protocol: "tcp" | "udp", p: number, families: number) => hide(scanner.scanPort!(protocol, p, families)) } : {}),
  };
}

/** Where the raw data path listens beside an agent address (none for TCP and serial). */
function dataEndpointFor(address: TransportAddress): TransportAddress | undefined {
  if (address.kind === "unix") return { kind: "unix", path: `${address.path}.data` };
  if (address.kind === "vsock") return { kind: "vsock", port: address.port + 1 };
  return undefined;
}
