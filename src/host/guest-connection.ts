// The host's link to the guest agent: GetEvents + GetInfo, kept alive with backoff.
// Each time the link comes up the host gets a full snapshot, so ports that changed
// while it was down are reconciled without restarting anything.
import * as grpc from "@grpc/grpc-js";
import { explainUnreachable } from "../core/agent-unreachable.ts";
import { backoffDelay } from "../core/backoff.ts";
import { applyDiff, invalidGuestPort, type GuestPort, MAX_GUEST_PORTS, portKey, type PortDiff, type PortSet } from "../core/ports.ts";
import type { TransportAddress } from "../core/transport-address.ts";
import { formatHostPort } from "../core/address.ts";
import { checkedHello } from "../core/guest-hello.ts";
import { checkedOwner } from "../core/port-owner.ts";
import { clientTarget, type ClientTarget } from "../transport/client-target.ts";
import {
  OWNERS_HEADER,
  createGuestServiceClient,
  createPortholeClient,
  type GuestEvent,
  type GuestServiceClient,
  type HelloResponse,
  type Info,
  type OwnedIPPort,
  type PortholeClient,
} from "../proto/guest-service.ts";
import { CLIENT_OPTIONS, sendFramedAsIs } from "../transport/grpc-tuning.ts";

export interface GuestConnectionHandlers {
  /** `hello` is undefined for a stock Lima guest agent (no porthole extensions). */
  onConnected(ports: PortSet, hello: HelloResponse | undefined): void;
  onChange(ports: PortSet, diff: PortDiff): void;
  /** `wasConnected` is false while the first connection is still being tried. */
  onDisconnected(error: string, wasConnected: boolean): void;
  /** What the guest agent reported as failing, and what it sent that the host refused. */
  onGuestErrors(errors: string[]): void;
}

const GET_INFO_DEADLINE_MS = 3000;

/** Asks a porthole guest for each port's owner (a stock Lima guest ignores the header). */
function ownersWanted(options?: grpc.MetadataOptions): grpc.Metadata {
  const metadata = new grpc.Metadata(options);
  metadata.set(OWNERS_HEADER, "1");
  return metadata;
}
/**
 * Liveness: while connected, an RPC every PROBE_EVERY_MS that must answer within
 * PROBE_DEADLINE_MS (Hello for a porthole guest, GetInfo for a stock one). An RPC is not an
 * HTTP/2 ping, so grpc-go's ping policy never counts it; a dead guest is noticed within 15 s.
 */
const PROBE_EVERY_MS = 10_000;
const PROBE_DEADLINE_MS = 5_000;
const RETRY = { minMs: 100, maxMs: 2000 };

export class GuestConnection {
  readonly client: GuestServiceClient;
  /** porthole's extension service, on the same connection. */
  readonly porthole: PortholeClient;
  private stopped = false;
  private events: grpc.ClientReadableStream<GuestEvent> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private attempt = 0;
  private probeTimer: ReturnType<typeof setInterval> | undefined;

  private readonly target: ClientTarget;

  constructor(
    private readonly address: TransportAddress,
    private readonly handlers: GuestConnectionHandlers,
    options: { token?: string; target?: ClientTarget } = {},
  ) {
    this.target = options.target ?? clientTarget(address, options);
    sendFramedAsIs();
    this.client = createGuestServiceClient(this.target.target, CLIENT_OPTIONS);
    this.porthole = createPortholeClient(this.client);
  }

  start(): void {
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.probeTimer);
    this.events?.cancel();
    this.client.close();
    this.target.close();
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    // Subscribe first and hold the diffs until the snapshot arrives, then replay them on
    // top of it: the result is right whichever way the snapshot and the diffs interleave.
    const pending: PortDiff[] = [];
    let pendingCount = 0;
    let ports: PortSet | undefined;
    let ended = false;
    const events = this.client.GetEvents({}, ownersWanted());
    this.events = events;
    const fail = (message: string) => {
      if (ended || this.stopped) return;
      ended = true;
      clearInterval(this.probeTimer);
      events.cancel();
      this.handlers.onDisconnected(explainUnreachable(this.address, this.target.dialError?.() ?? message), ports !== undefined);
      this.scheduleRetry();
    };
    events.on("data", (e: GuestEvent) => {
      if (e.errors.length) this.handlers.onGuestErrors(e.errors.slice(0, 10).map((m) => m.slice(0, 500)));
      const diff = { added: this.checked(e.added_local_ports), removed: this.checked(e.removed_local_ports, false) };
      if (!ports) {
        // Before the port list: kept, but no more than a guest could have ports (a guest that
        // floods changes and holds back its list must not fill the host's memory).
        pendingCount += diff.added.length + diff.removed.length;
        if (pendingCount > 2 * MAX_GUEST_PORTS) return fail(`the guest agent sent more than ${2 * MAX_GUEST_PORTS} port changes before its port list; reconnecting`);
        return void pending.push(diff);
      }
      this.applyBounded(ports, diff);
      this.handlers.onChange(ports, diff);
    });
    events.on("error", (err: grpc.ServiceError) => fail(err.details || err.message));
    events.on("end", () => fail("the guest agent ended the event stream"));

    try {
      const info = await this.getInfo();
      const hello = await this.hello();
      if (ended) return;
      ports = new Map();
      this.applyBounded(ports, { added: this.checked(info.local_ports), removed: [] });
      for (const diff of pending) this.applyBounded(ports, diff);
      this.attempt = 0;
      this.handlers.onConnected(ports, hello);
      clearInterval(this.probeTimer);
      this.probeTimer = setInterval(() => {
        this.probe(hello !== undefined).catch((err: grpc.ServiceError) =>
          fail(`the guest agent did not answer a liveness check within ${PROBE_DEADLINE_MS / 1000} s (${err.details || err.message})`),
        );
      }, PROBE_EVERY_MS);
    } catch (err) {
      fail((err as grpc.ServiceError).details || (err as Error).message);
    }
  }

  private getInfo(): Promise<Info> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + GET_INFO_DEADLINE_MS);
      // Wait for the channel to connect rather than failing at once while it is down.
      const metadata = ownersWanted({ waitForReady: true });
      this.client.GetInfo({}, metadata, { deadline }, (err, info) =>
        err ? reject(err) : resolve(info),
      );
    });
  }

  /** The ports that make sense; the others are reported (a few, not a flood) and dropped. */
  private checked(ports: GuestEvent["added_local_ports"], withOwners = true): GuestPort[] {
    const bad: string[] = [];
    const good = ports.flatMap((p) => {
      const why = invalidGuestPort(p);
      if (why) bad.push(`ignored a port the guest reported (${why})`);
      if (why) return [];
      // Only the fields porthole knows, and the owner only once checked.
      const { owner, error } = withOwners ? checkedOwner((p as OwnedIPPort).owner) : {};
      if (error) bad.push(`ignored the owner of ${p.protocol} ${formatHostPort(p.ip, p.port)} (${error})`);
      return [{ protocol: p.protocol, ip: p.ip, port: p.port, ...(owner ? { owner } : {}) }];
    });
    if (bad.length) this.handlers.onGuestErrors(bad.length > 3 ? [...bad.slice(0, 3), `and ${bad.length - 3} more`] : bad);
    return good;
  }

  /** Applies a diff, but never tracks more than MAX_GUEST_PORTS ports (memory stays bounded). */
  private applyBounded(ports: PortSet, diff: PortDiff): void {
    applyDiff(ports, { added: [], removed: diff.removed });
    let dropped = 0;
    for (const p of diff.added) {
      if (ports.size >= MAX_GUEST_PORTS && !ports.has(portKey(p))) dropped++;
      else ports.set(portKey(p), p);
    }
    if (dropped) this.handlers.onGuestErrors([`the guest reports more than ${MAX_GUEST_PORTS} ports; ignored ${dropped}`]);
  }

  /** One liveness check: Hello costs a porthole guest nothing; a stock guest gets GetInfo. */
  private probe(porthole: boolean): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + PROBE_DEADLINE_MS);
      const done = (err: grpc.ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res));
      if (porthole) this.porthole.Hello({}, { deadline }, done);
      else this.client.GetInfo({}, new grpc.Metadata(), { deadline }, done);
    });
  }

  /**
   * porthole's Hello; undefined when the guest agent does not have it (stock Lima answers
   * UNIMPLEMENTED). Any other failure (a deadline, a reset) fails the attempt, which is retried:
   * taken for a stock guest, a busy porthole guest would lose its extensions for the session.
   */
  private hello(): Promise<HelloResponse | undefined> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + GET_INFO_DEADLINE_MS);
      this.porthole.Hello({}, { deadline }, (err, res) => {
        if (!err) resolve(res && checkedHello(res));
        else if (err.code === grpc.status.UNIMPLEMENTED) resolve(undefined);
        else reject(Object.assign(err, { details: `Hello: ${err.details || err.message}` }));
      });
    });
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    this.retryTimer = setTimeout(() => void this.connect(), backoffDelay(this.attempt++, RETRY));
  }
}
