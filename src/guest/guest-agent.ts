// The guest role: watch this namespace's sockets and serve GuestService on each listen address.
import * as grpc from "@grpc/grpc-js";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { guestServiceDefinition, portholeServiceDefinition } from "../proto/guest-service.ts";
import { createTunedServer } from "../transport/grpc-tuning.ts";
import { serveTransport, type Served } from "../transport/serve.ts";
import { prepareRelay } from "../transport/fast-relay.ts";
import { guestServiceHandlers } from "./guest-service.ts";
import { handleDataStream, newDataSecret } from "./data-server.ts";
import { checkPreface } from "./preface-check.ts";
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
    await prepareRelay(this.options.log);
    this.options.log(`watching sockets with ${scanner.name} every ${interval} ms`);
    const injector = this.grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    try {
      for (const address of this.options.listen) {
        const served = await serveTransport(
          address,
          (socket) => checkPreface(socket, formatTransportAddress(address), this.options.log, (s) => injector.injectConnection(s)),
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
