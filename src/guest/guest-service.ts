// The GuestService implementation: ports from the watcher, tunnels to the dialer.
import * as grpc from "@grpc/grpc-js";
import { nowTimestamp, type GuestEvent, type Info, type TunnelMessage } from "../proto/guest-service.ts";
import type { PortWatcher } from "./watcher.ts";
import { handleTunnel } from "./tunnel-endpoint.ts";

export function guestServiceHandlers(watcher: PortWatcher): grpc.UntypedServiceImplementation {
  return {
    GetInfo(_call: grpc.ServerUnaryCall<unknown, Info>, callback: grpc.sendUnaryData<Info>) {
      watcher.refresh().then(
        () => callback(null, { local_ports: watcher.ports }),
        (err: Error) => callback({ code: grpc.status.INTERNAL, details: err.message }),
      );
    },

    // Every stream starts with the full list as "added", then carries diffs; a
    // reconnecting host also calls GetInfo, so nothing depends on earlier streams.
    GetEvents(call: grpc.ServerWritableStream<unknown, GuestEvent>) {
      const send = (added: GuestEvent["added_local_ports"], removed: GuestEvent["removed_local_ports"], errors: string[]) =>
        call.write({ time: nowTimestamp(), added_local_ports: added, removed_local_ports: removed, errors });
      const unsubscribe = watcher.subscribe((diff, errors) => send(diff.added, diff.removed, errors));
      const initial = watcher.ports;
      if (initial.length) send(initial, [], []);
      const stop = () => unsubscribe();
      call.once("cancelled", stop);
      call.once("close", stop);
      call.once("error", stop);
    },

    PostInotify(call: grpc.ServerReadableStream<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) {
      // porthole does not propagate file events; drain the stream and accept it as Lima does.
      call.on("data", () => {});
      call.once("end", () => callback(null, {}));
    },

    Tunnel(call: grpc.ServerDuplexStream<TunnelMessage, Partial<TunnelMessage>>) {
      handleTunnel(call);
    },

    SyncTime(_call: unknown, callback: grpc.sendUnaryData<unknown>) {
      callback({ code: grpc.status.UNIMPLEMENTED, details: "porthole does not set the guest clock" });
    },
  };
}
