// The guest role: watch this namespace's sockets and serve GuestService on each listen address.
import * as grpc from "@grpc/grpc-js";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { guestServiceDefinition, portholeServiceDefinition } from "../proto/guest-service.ts";
import { createTunedServer } from "../transport/grpc-tuning.ts";
import { serveTransport, type Served } from "../transport/serve.ts";
import { guestServiceHandlers } from "./guest-service.ts";
import type * as net from "node:net";
import { socketFromFd } from "../runtime/fd-socket.ts";
import { loadNative } from "../runtime/native.ts";
import { handleDataStream, newDataSecret } from "./data-server.ts";
import { portholeServiceHandlers } from "./porthole-service.ts";
import { bestScanner, type Scanner } from "./scanners.ts";
import { PortWatcher } from "./watcher.ts";

export interface GuestAgentOptions {
  listen: TransportAddress[];
  /** Undefined: 50 ms with netlink (a dump costs ~0.1 ms), 500 ms with /proc/net (which costs more). */
  scanIntervalMs?: number;
  /** Undefined: netlink where the shim loads, else /proc/net. */
  scanner?: Scanner;
  /** The shared token a TCP client must present (required for tcp:// listen addresses). */
  token?: string;
  /** vsock: accept peers other than the host (CID 2). */
  vsockAnyCid?: boolean;
  log: (line: string) => void;
}

export class GuestAgent {
  private watcher: PortWatcher | undefined;
  private readonly grpcServer: grpc.Server;
  private readonly served: Served[] = [];
  /** The secret every raw data stream must start with (see core/data-header.ts). */
  private readonly dataSecret = newDataSecret();

  constructor(private readonly options: GuestAgentOptions) {
    this.grpcServer = createTunedServer();
  }

  async start(): Promise<void> {
    const scanner = this.options.scanner ?? (await bestScanner(this.options.log));
    const interval = this.options.scanIntervalMs ?? (scanner.name.startsWith("netlink") ? 50 : 500);
    this.watcher = new PortWatcher(interval, scanner);
    this.grpcServer.addService(guestServiceDefinition, guestServiceHandlers(this.watcher));
    const dataEndpoints: string[] = [];
    this.grpcServer.addService(
      portholeServiceDefinition,
      portholeServiceHandlers({ dataSecret: this.dataSecret, dataEndpoints: () => dataEndpoints }),
    );
    await this.watcher.start();
    this.options.log(`watching sockets with ${scanner.name} every ${interval} ms`);
    const injector = this.grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    try {
      for (const address of this.options.listen) {
        const served = await serveTransport(
          address,
          (socket) => void checkPreface(socket, address, this.options.log, (s) => injector.injectConnection(s)),
          this.options,
        );
        this.served.push(served);
        this.options.log(`porthole guest agent serving on ${formatTransportAddress(address)}`);
        const data = dataEndpointFor(address);
        if (data) {
          const dataOptions = { ...this.options, halfOpen: true };
          this.served.push(await serveTransport(data, (socket) => handleDataStream(socket, this.dataSecret), dataOptions));
          dataEndpoints.push(formatTransportAddress(data));
        }
      }
    } catch (err) {
      this.stop();
      throw err;
    }
  }

  stop(): void {
    this.watcher?.stop();
    for (const served of this.served.splice(0)) served.close();
    this.grpcServer.forceShutdown();
  }
}

/** Where the raw data path listens beside an agent address (none for TCP and serial). */
function dataEndpointFor(address: TransportAddress): TransportAddress | undefined {
  if (address.kind === "unix") return { kind: "unix", path: `${address.path}.data` };
  if (address.kind === "vsock") return { kind: "vsock", port: address.port + 1 };
  return undefined;
}


const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/**
 * Hands a connection to the gRPC server only once its first bytes are the HTTP/2 preface;
 * anything else (garbage, a port scanner, another protocol) is logged and closed here, as the
 * HTTP/2 layer would keep it open without a word. The bytes already read cannot be put back
 * into a socket the HTTP/2 layer then owns (Bun loses them), so an accepted connection
 * reaches gRPC through a socketpair that replays them; without the shim, it goes unchecked.
 */
async function checkPreface(socket: net.Socket, address: TransportAddress, log: (line: string) => void, serve: (s: net.Socket) => void): Promise<void> {
  const { shim } = await loadNative();
  if (!shim) return serve(socket);
  let seen = Buffer.alloc(0);
  const reject = (why: string) => {
    log(`${formatTransportAddress(address)}: closed a connection that ${why}`);
    socket.destroy();
  };
  const timer = setTimeout(() => reject("sent no HTTP/2 preface within 10 s"), 10_000);
  const onData = (chunk: Buffer) => {
    seen = Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, HTTP2_PREFACE.length);
    if (!seen.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n))) {
      clearTimeout(timer);
      socket.off("data", onData);
      return reject(`is not speaking gRPC (${seen.length} bytes that are not an HTTP/2 preface)`);
    }
    if (seen.length < HTTP2_PREFACE.length) return;
    clearTimeout(timer);
    socket.off("data", onData);
    const fds = new Int32Array(2);
    if (shim.socketpair(fds) < 0) return reject("could not be relayed (socketpair failed)");
    const inner = socketFromFd(fds[0]!);
    const outer = socketFromFd(fds[1]!);
    outer.write(seen);
    socket.pipe(outer);
    outer.pipe(socket);
    const close = () => (socket.destroy(), outer.destroy());
    socket.once("close", close);
    outer.once("close", close);
    socket.once("error", close);
    outer.once("error", close);
    serve(inner);
  };
  socket.on("data", onData);
  socket.resume(); // a transport may hand it over paused (TCP, after reading the token)
  socket.once("end", () => clearTimeout(timer));
  socket.once("error", () => clearTimeout(timer));
}
