// The GuestService implementation: ports from the watcher, tunnels to the dialer, the guest
// clock and file times as Lima's guest agent handles them.
import * as grpc from "@grpc/grpc-js";
import { utimes } from "node:fs/promises";
import { toWireOwner } from "../core/port-owner.ts";
import { nowTimestamp, OWNERS_HEADER, type GuestEvent, type Info, type IPPort, type OwnedIPPort, type Timestamp, type WireOwner, type TunnelMessage } from "../proto/guest-service.ts";
import { setSystemClock } from "../runtime/set-clock.ts";
import type { EventState } from "./event-state.ts";
import type { PortWatcher } from "./watcher.ts";
import { handleTunnel } from "./tunnel-endpoint.ts";

/** Lima's threshold: a guest clock closer than this to the host's is left alone. */
const DRIFT_THRESHOLD_MS = 100;
/** Missing inotify paths are said once each; at most this many are remembered. */
const MAX_TOLD_PATHS = 100;

export interface GuestServiceContext {
  watcher: PortWatcher;
  eventState: EventState;
  log: (line: string) => void;
  /** Sets the clock (tests of the handler may replace it); the default calls clock_settime. */
  setClock?: (epochNanos: bigint) => void;
}

interface TimeSyncRequest {
  host_time?: Timestamp | null;
}

interface Inotify {
  mount_path: string;
  time?: Timestamp | null;
}

function toNanos(t: Timestamp): bigint {
  return BigInt(t.seconds) * 1_000_000_000n + BigInt(t.nanos ?? 0);
}

export function guestServiceHandlers(context: GuestServiceContext): grpc.UntypedServiceImplementation {
  const { watcher, eventState, log } = context;
  const setClock = context.setClock ?? setSystemClock;
  const toldMissing = new Set<string>();
  // Owners go only to a host that asked (porthole's); a stock Lima host gets Lima's bytes.
  const withOwners = (call: { metadata: grpc.Metadata }) => {
    if (call.metadata.get(OWNERS_HEADER)[0] !== "1") return (ports: IPPort[]) => ports;
    return (ports: IPPort[]) =>
      ports.map((p) => {
        const owner = watcher.ownerOf(p);
        const owned: OwnedIPPort = owner ? { ...p, owner: toWireOwner(owner) as WireOwner } : p;
        return owned as IPPort; // serialized as porthole.OwnedIPPort
      });
  };
  return {
    GetInfo(call: grpc.ServerUnaryCall<unknown, Info>, callback: grpc.sendUnaryData<Info>) {
      const owned = withOwners(call);
      watcher.refresh().then(
        () => callback(null, { local_ports: owned(watcher.toldPorts) }),
        (err: Error) => callback({ code: grpc.status.INTERNAL, details: err.message }),
      );
    },

    // Every stream starts with the full list as "added" (a host that starts afresh needs it)
    // and the ports sent on an earlier stream that are gone now as "removed" (a Lima host
    // that kept its forwards across the reconnect needs those), then carries diffs.
    GetEvents(call: grpc.ServerWritableStream<unknown, GuestEvent>) {
      const owned = withOwners(call);
      const send = (added: GuestEvent["added_local_ports"], removed: GuestEvent["removed_local_ports"], errors: string[]) =>
        call.write({ time: nowTimestamp(), added_local_ports: owned(added), removed_local_ports: removed, errors });
      const unsubscribe = watcher.subscribe((diff, errors) => {
        send(diff.added, diff.removed, errors);
        eventState.sentChange(diff.added, diff.removed);
      });
      // From what subscribers were told, not the newest scan: a change still on its way (its
      // batch, its owners) comes to this stream once, with the others.
      const now = watcher.toldPorts;
      const first = eventState.firstEvent(now);
      if (first.added.length || first.removed.length) send(first.added, first.removed, []);
      eventState.sent(now);
      const stop = () => unsubscribe();
      call.once("cancelled", stop);
      call.once("close", stop);
      call.once("error", stop);
    },

    // Lima's host sends file changes it saw on a shared mount; the guest sets the file's
    // atime and mtime to the event's time, so guest programs watching the file notice.
    PostInotify(call: grpc.ServerReadableStream<Inotify, unknown>, callback: grpc.sendUnaryData<unknown>) {
      call.on("data", (event: Inotify) => {
        if (!event.mount_path || !event.time) return;
        const seconds = Number(toNanos(event.time)) / 1e9;
        utimes(event.mount_path, seconds, seconds).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== "ENOENT") return log(`PostInotify: could not set the times of ${event.mount_path}: ${err.message}`);
          if (toldMissing.has(event.mount_path) || toldMissing.size >= MAX_TOLD_PATHS) return;
          toldMissing.add(event.mount_path);
          log(`PostInotify: ${event.mount_path} does not exist in the guest (is the mount there?); its changes are skipped`);
        });
      });
      call.once("end", () => callback(null, {}));
      call.once("error", () => {});
    },

    // Served by grpc-js only where guest-agent.ts's HTTP/2 hand-over does not take the stream.
    Tunnel(call: grpc.ServerDuplexStream<TunnelMessage, Partial<TunnelMessage>>) {
      handleTunnel(call);
    },

    // As Lima's guest: drift = guest now - host time; beyond +-100 ms the clock is set to
    // the host's time (whatever the RPC's latency), and the answer says what happened.
    SyncTime(call: grpc.ServerUnaryCall<TimeSyncRequest, unknown>, callback: grpc.sendUnaryData<unknown>) {
      const hostTime = call.request.host_time;
      if (!hostTime) return callback(null, { adjusted: false, drift_ms: 0, error: "no host_time in the request" });
      const hostNanos = toNanos(hostTime);
      const driftNanos = BigInt(Date.now()) * 1_000_000n - hostNanos;
      const driftMs = driftNanos / 1_000_000n; // truncated toward zero, as Go's Duration.Milliseconds()
      const response = { adjusted: false, drift_ms: driftMs.toString(), error: "" };
      if (driftNanos > BigInt(DRIFT_THRESHOLD_MS) * 1_000_000n || driftNanos < -BigInt(DRIFT_THRESHOLD_MS) * 1_000_000n) {
        try {
          setClock(hostNanos);
          response.adjusted = true;
          log(`SyncTime: system time synchronized with host (drift was ${driftMs} ms)`);
        } catch (err) {
          response.error = (err as Error).message;
          log(`SyncTime: failed to set system time: ${response.error}`);
        }
      }
      callback(null, response);
    },
  };
}
