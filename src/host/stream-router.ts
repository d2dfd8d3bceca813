// Chooses the data path for each forwarded stream connection, fastest first:
//   direct  - the guest listens on an address this host can route to: connect to it by IP;
//   fast    - porthole's raw data path: one stream per connection over the agent transport;
//   grpc    - Lima's Tunnel stream (works with a stock Lima guest agent too);
//   ssh     - a direct-tcpip channel (when the SSH forwarder is chosen).
// A path that fails to connect falls back to gRPC for that connection.
import { existsSync } from "node:fs";
import type * as net from "node:net";
import { networkInterfaces } from "node:os";
import { isUnspecified, parseHostPort } from "../core/address.ts";
import { encodeDataHeader, STATUS_CONNECTED } from "../core/data-header.ts";
import type { PlannedForward } from "../core/forward-plan.ts";
import { onLocalSubnet, type InterfaceAddress } from "../core/subnet.ts";
import { parseTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import type { HelloResponse } from "../proto/guest-service.ts";
import { dialTransport } from "../transport/dial.ts";
import { joinSockets } from "../transport/fast-relay.ts";
import { resetSocket } from "../transport/tunnel-relay.ts";
import type { GrpcForwarder } from "./grpc-forwarder.ts";
import type { SshForwarder } from "./ssh-forwarder.ts";

export type DataPath = "direct" | "fast" | "grpc" | "ssh";
export type RouterMode = "auto" | "fast" | "grpc" | "ssh";

const DIAL_TIMEOUT_MS = 2000;

export class StreamRouter {
  private dataEndpoint: TransportAddress | undefined;
  private secret = "";
  private guestAddresses: string[] = [];

  constructor(
    private readonly mode: RouterMode,
    private readonly agentAddress: TransportAddress,
    private readonly grpc: GrpcForwarder,
    private readonly ssh: SshForwarder | undefined,
  ) {}

  /** What the guest agent offers (undefined: a stock Lima agent, or none yet). */
  setGuest(hello: HelloResponse | undefined): void {
    this.secret = hello?.data_secret ?? "";
    this.guestAddresses = hello?.addresses ?? [];
    this.dataEndpoint = hello ? this.reachableEndpoint(hello.data_endpoints) : undefined;
  }

  /** The path a new connection of this forward takes now. */
  pathFor(plan: PlannedForward): DataPath {
    if (this.mode === "ssh") return "ssh";
    if (this.mode === "grpc" || plan.protocol === "udp") return "grpc";
    if (this.mode === "auto" && this.directTarget(plan)) return "direct";
    return this.dataEndpoint && this.secret ? "fast" : "grpc";
  }

  forwardStream(socket: net.Socket, plan: PlannedForward): void {
    switch (this.pathFor(plan)) {
      case "ssh":
        return this.ssh!.forwardStream(socket, plan);
      case "grpc":
        return this.grpc.forwardStream(socket, plan);
      case "direct":
        return this.splice(socket, plan, () => dialTransport({ kind: "tcp", ...this.directTarget(plan)! }, DIAL_TIMEOUT_MS, { allowHalfOpen: true }));
      case "fast":
        return this.splice(socket, plan, () => this.openDataStream(plan));
    }
  }

  /** A data stream to the guest whose target is connected (rejects with "refused" if not). */
  private async openDataStream(plan: PlannedForward): Promise<net.Socket> {
    const stream = await dialTransport(this.dataEndpoint!, DIAL_TIMEOUT_MS, { allowHalfOpen: true });
    stream.write(encodeDataHeader(this.secret, { protocol: plan.protocol === "unix" ? "unix" : "tcp", address: plan.guestAddr }));
    const status = await new Promise<number>((resolve) => {
      stream.once("readable", function read() {
        const first = stream.read(1) as Buffer | null;
        if (first) resolve(first[0]!);
        else if (stream.readableEnded) resolve(-1);
        else stream.once("readable", read);
      });
      stream.once("end", () => resolve(-1));
    });
    if (status !== STATUS_CONNECTED) {
      stream.destroy();
      throw new RefusedByGuest();
    }
    return stream;
  }

  /**
   * Joins the client to a fresh stream, kernel socket to kernel socket. A target the guest
   * refused resets the client; a path that cannot connect at all falls back to gRPC.
   */
  private splice(client: net.Socket, plan: PlannedForward, dial: () => Promise<net.Socket>): void {
    client.pause();
    dial().then(
      (upstream) => {
        if (client.destroyed) return void upstream.destroy();
        joinSockets(client, upstream);
      },
      (err) => {
        if (client.destroyed) return;
        if (err instanceof RefusedByGuest || (err as NodeJS.ErrnoException).code === "ECONNREFUSED") return resetSocket(client);
        client.resume();
        this.grpc.forwardStream(client, plan);
      },
    );
  }

  /** guest IP:port to connect to directly, if the guest bind is reachable by IP from here. */
  private directTarget(plan: PlannedForward): { host: string; port: number } | undefined {
    if (plan.protocol !== "tcp") return undefined;
    const bind = parseHostPort(plan.guestAddr);
    const interfaces = Object.values(networkInterfaces()).flat().filter(Boolean) as InterfaceAddress[];
    const candidates = isUnspecified(bind.host) ? this.guestAddresses : this.guestAddresses.filter((a) => a === bind.host);
    const ip = candidates.find((a) => onLocalSubnet(a, interfaces));
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
      // a path of the same file system (tests, containers); a VM's vsock port with its CID.
      if (endpoint.kind === "unix" && agent.kind === "unix" && sameDirectory(endpoint.path, agent.path) && existsSync(endpoint.path)) {
        return endpoint;
      }
      if (endpoint.kind === "vsock" && agent.kind === "vsock" && agent.cid !== undefined) {
        return { kind: "vsock", cid: agent.cid, port: endpoint.port };
      }
    }
    return undefined;
  }
}

function sameDirectory(a: string, b: string): boolean {
  return a.slice(0, a.lastIndexOf("/")) === b.slice(0, b.lastIndexOf("/"));
}

/** The guest reached the data path but not the target (nothing listens there). */
class RefusedByGuest extends Error {}
