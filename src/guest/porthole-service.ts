// porthole's extension service on the guest: what this agent offers, and reverse forwards
// (a unix socket in the guest whose connections are carried back to a host socket).
import * as grpc from "@grpc/grpc-js";
import { randomUUID } from "node:crypto";
import { readFileSync, rmSync } from "node:fs";
import { networkInterfaces } from "node:os";
import type * as net from "node:net";
import { isAbsolute } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import type { HelloResponse, ReverseEvent, TunnelMessage } from "../proto/guest-service.ts";
import { listenTransport } from "../transport/listen.ts";
import { relayStream, type TunnelCall } from "./tunnel-endpoint.ts";

export const FEATURES = ["half-close", "udp-flows", "udp-batch", "udp-credit", "udp-data-path", "reverse-unix", "data-path", "data-path-ends", "direct", "direct-proof", "direct-proof-peer", "port-owners", "lean-mux"];
/** A guest connection waits this long for the host to pick it up, then is closed. */
const CLAIM_TIMEOUT_MS = 10_000;

/** The kernel's ephemeral port range (where UDP client sockets bind). */
export function ephemeralPortRange(file = "/proc/sys/net/ipv4/ip_local_port_range"): [number, number] {
  try {
    const [lo, hi] = readFileSync(file, "utf8").trim().split(/\s+/).map(Number);
    if (lo && hi) return [lo, hi];
  } catch {
    // not Linux, or /proc not mounted: fall through to Linux's default
  }
  return [32768, 60999];
}

/** This guest's own non-loopback addresses (what the direct path can connect to). */
function ownAddresses(): string[] {
  let interfaces: ReturnType<typeof networkInterfaces>;
  try {
    interfaces = networkInterfaces();
  } catch {
    return []; // e.g. out of fds (getifaddrs needs one): no direct path this time
  }
  return Object.values(interfaces)
    .flat()
    .filter((i) => i && !i.internal && !i.address.startsWith("fe80:"))
    .map((i) => i!.address);
}

export function portholeServiceHandlers(data: {
  dataSecret: string;
  dataEndpoints: () => string[];
  directProofPort?: () => number;
  /** How the agent notices ports (kernel events or polling), in words. */
  portDetector?: () => string;
}): grpc.UntypedServiceImplementation {
  const pending = new Map<string, net.Socket>();

  return {
    Hello(_call: unknown, callback: grpc.sendUnaryData<HelloResponse>) {
      const [lo, hi] = ephemeralPortRange();
      callback(null, {
        version: pkg.version,
        features: FEATURES,
        ephemeral_port_low: lo,
        ephemeral_port_high: hi,
        data_endpoints: data.dataEndpoints(),
        data_secret: data.dataSecret,
        addresses: ownAddresses(),
        direct_proof_port: data.directProofPort?.() ?? 0,
        port_detector: data.portDetector?.() ?? "",
      });
    },

    async Reverse(call: grpc.ServerWritableStream<{ guest_socket: string }, ReverseEvent>) {
      const path = call.request.guest_socket;
      if (!isAbsolute(path)) {
        return void call.emit("error", { code: grpc.status.INVALID_ARGUMENT, details: `"${path}" is not an absolute path` });
      }
      let server: net.Server;
      try {
        server = await listenTransport({ kind: "unix", path }, true);
      } catch (err) {
        return void call.emit("error", { code: grpc.status.FAILED_PRECONDITION, details: (err as Error).message });
      }
      const mine = new Set<string>();
      server.on("connection", (socket) => {
        const id = randomUUID();
        socket.pause();
        socket.on("error", () => socket.destroy()); // a client gone before the host claimed it
        pending.set(id, socket);
        mine.add(id);
        setTimeout(() => pending.get(id) === socket && (pending.delete(id), socket.destroy()), CLAIM_TIMEOUT_MS).unref?.();
        call.write({ listening: false, connection_id: id });
      });
      call.write({ listening: true, connection_id: "" });
      // The host ending the call ends the forward: stop listening and remove the socket file.
      const stop = () => {
        server.close();
        rmSync(path, { force: true });
        for (const id of mine) pending.get(id)?.destroy();
      };
      call.once("cancelled", stop);
      call.once("close", stop);
    },

    ReverseTunnel(call: TunnelCall) {
      call.once("data", (handshake: TunnelMessage) => {
        call.pause();
        const socket = pending.get(handshake.id);
        pending.delete(handshake.id);
        if (!socket) {
          return void call.emit("error", { code: grpc.status.NOT_FOUND, details: `no waiting connection ${handshake.id}` });
        }
        relayStream(call, socket, handshake.id, "reverse", handshake.half_close);
        socket.resume();
      });
    },
  };
}
