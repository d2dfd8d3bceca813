// The host's link to the guest agent: GetEvents + GetInfo, kept alive with backoff.
// Each time the link comes up the host gets a full snapshot, so ports that changed
// while it was down are reconciled without restarting anything.
import * as grpc from "@grpc/grpc-js";
import { backoffDelay } from "../core/backoff.ts";
import { applyDiff, toPortSet, type PortDiff, type PortSet } from "../core/ports.ts";
import type { TransportAddress } from "../core/transport-address.ts";
import { clientTarget, type ClientTarget } from "../transport/client-target.ts";
import {
  createGuestServiceClient,
  createPortholeClient,
  type GuestEvent,
  type GuestServiceClient,
  type HelloResponse,
  type Info,
  type PortholeClient,
} from "../proto/guest-service.ts";
import { CLIENT_OPTIONS } from "../transport/grpc-tuning.ts";

export interface GuestConnectionHandlers {
  /** `hello` is undefined for a stock Lima guest agent (no porthole extensions). */
  onConnected(ports: PortSet, hello: HelloResponse | undefined): void;
  onChange(ports: PortSet, diff: PortDiff): void;
  /** `wasConnected` is false while the first connection is still being tried. */
  onDisconnected(error: string, wasConnected: boolean): void;
  onGuestErrors(errors: string[]): void;
}

const GET_INFO_DEADLINE_MS = 3000;
const RETRY = { minMs: 100, maxMs: 2000 };

export class GuestConnection {
  readonly client: GuestServiceClient;
  /** porthole's extension service, on the same connection. */
  readonly porthole: PortholeClient;
  private stopped = false;
  private events: grpc.ClientReadableStream<GuestEvent> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private attempt = 0;

  private readonly target: ClientTarget;

  constructor(
    address: TransportAddress,
    private readonly handlers: GuestConnectionHandlers,
    options: { token?: string } = {},
  ) {
    this.target = clientTarget(address, options);
    this.client = createGuestServiceClient(this.target.target, CLIENT_OPTIONS);
    this.porthole = createPortholeClient(this.client);
  }

  start(): void {
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.events?.cancel();
    this.client.close();
    this.target.close();
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    // Subscribe first and hold the diffs until the snapshot arrives, then replay them on
    // top of it: the result is right whichever way the snapshot and the diffs interleave.
    const pending: PortDiff[] = [];
    let ports: PortSet | undefined;
    let ended = false;
    const events = this.client.GetEvents({});
    this.events = events;
    const fail = (message: string) => {
      if (ended || this.stopped) return;
      ended = true;
      events.cancel();
      this.handlers.onDisconnected(message, ports !== undefined);
      this.scheduleRetry();
    };
    events.on("data", (e: GuestEvent) => {
      if (e.errors.length) this.handlers.onGuestErrors(e.errors);
      const diff = { added: e.added_local_ports, removed: e.removed_local_ports };
      if (!ports) return void pending.push(diff);
      applyDiff(ports, diff);
      this.handlers.onChange(ports, diff);
    });
    events.on("error", (err: grpc.ServiceError) => fail(err.details || err.message));
    events.on("end", () => fail("the guest agent ended the event stream"));

    try {
      const info = await this.getInfo();
      const hello = await this.hello();
      if (ended) return;
      ports = toPortSet(info.local_ports);
      for (const diff of pending) applyDiff(ports, diff);
      this.attempt = 0;
      this.handlers.onConnected(ports, hello);
    } catch (err) {
      fail((err as grpc.ServiceError).details || (err as Error).message);
    }
  }

  private getInfo(): Promise<Info> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + GET_INFO_DEADLINE_MS);
      // Wait for the channel to connect rather than failing at once while it is down.
      const metadata = new grpc.Metadata({ waitForReady: true });
      this.client.GetInfo({}, metadata, { deadline }, (err, info) =>
        err ? reject(err) : resolve(info),
      );
    });
  }

  /** porthole's Hello; undefined when the guest agent does not have it (stock Lima). */
  private hello(): Promise<HelloResponse | undefined> {
    return new Promise((resolve) => {
      const deadline = new Date(Date.now() + GET_INFO_DEADLINE_MS);
      this.porthole.Hello({}, { deadline }, (err, res) => resolve(err ? undefined : res));
    });
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    this.retryTimer = setTimeout(() => void this.connect(), backoffDelay(this.attempt++, RETRY));
  }
}
