// A UDP forward: one host UDP socket, and one Tunnel stream per client address (a flow),
// so that replies go back to the client that asked and to no other. Datagram boundaries
// are kept: one datagram is one message each way (several, each whole, between porthole agents). Idle flows expire; the number of flows
// is bounded, the least recently used one making room for a new client.
import { formatHostPort } from "../core/address.ts";
import { formatHostTarget, type HostTarget, type PlannedForward } from "../core/forward-plan.ts";
import type { TunnelMessage } from "../proto/guest-service.ts";
import { datagramsOf, MAX_DATAGRAMS_PER_MESSAGE, MAX_UDP_PAYLOAD } from "../transport/datagram-batch.ts";
import { DatagramBudget, DeliveryReport } from "../transport/datagram-budget.ts";
import { bindDatagrams, type DatagramSocket, type UdpPeer } from "../transport/datagram-socket.ts";
import type { PumpStats } from "../runtime/native-udp-pump.ts";
import { HostForward, type FindOwner, type Listener, type Report, type Traffic, type Trouble } from "./host-forward.ts";

/** What a flow needs of a tunnel: the grpc-js client duplex call, handshake already sent. */
export interface UdpTunnel {
  /** Both ends report what they delivered (`udp_delivered`) and count their budget by it. */
  credited?: boolean;
  /** The flow's budget in bytes, where not the default for `credited` (a data stream of its own). */
  budgetBytes?: number;
  write(message: Partial<TunnelMessage>, written?: () => void): boolean;
  /** The flow may be carried natively by a socket of its own on the forward's port (the shim's listening socket `listenFd`). */
  pumpFrom?(listenFd: number, client: UdpPeer): void;
  /** The native pump's counters while it carries the flow (its datagrams never reach JavaScript). */
  pumped?(): PumpStats | undefined;
  end(): void;
  cancel(): void;
  on(event: "data", listener: (message: TunnelMessage) => void): unknown;
  on(event: "drain" | "end", listener: () => void): unknown;
  on(event: "error", listener: (err: Error) => void): unknown;
}

export type OpenUdpTunnel = (plan: PlannedForward, client: string) => UdpTunnel;
export type Warn = (message: string) => void;

interface Flow {
  tunnel: UdpTunnel;
  lastActive: number;
  /** Past it, datagrams are dropped (UDP may lose them) instead of queued on the connection. */
  budget: DatagramBudget;
  toldDropping: boolean;
  /** Its stream ended (or is ending): nothing more is written to it. */
  ended: boolean;
  /** Datagrams the pump had carried at the last sweep (a pumped flow is idle when it stays). */
  pumpedSeen: number;
}

export class UdpForward extends HostForward {
  constructor(
    plan: PlannedForward,
    private readonly openTunnel: OpenUdpTunnel,
    report: Report,
    private readonly warn: Warn,
    trouble?: Trouble,
    findOwner?: FindOwner,
  ) {
    super(plan, report, undefined, trouble, findOwner);
  }

  protected async listenOn(host: HostTarget): Promise<Listener> {
    if (host.kind !== "tcp") throw new Error("a UDP forward needs a host address, not a socket");
    const { ip, port } = host;
    const socket = await bindDatagrams(ip, port);
    const flows = new UdpFlows(socket, formatHostTarget(host), this.plan, this.openTunnel, this.warn);
    socket.receive((datagrams, from) => {
      for (let i = 0; i < datagrams.length; i++) {
        try {
          flows.fromClient(datagrams[i]!, from[i]!);
        } catch (err) {
          this.trouble(err, `a datagram to ${formatHostTarget(host)}`);
        }
      }
    });
    return flows;
  }
}

/** One host UDP socket's flows, one per client address. */
class UdpFlows implements Listener {
  private readonly flows = new Map<string, Flow>();
  private readonly sweeper: ReturnType<typeof setInterval>;
  private bytesIn = 0;
  private bytesOut = 0;
  private dropped = 0;
  private toldUnsendable = false;
  private toldKernelDrops = false;
  private toldPumpDrops = false;
  private open = true;
  /** What pumps of ended flows carried and dropped. */
  private readonly pumpedEnded = { bytesIn: 0, bytesOut: 0, dropped: 0, kernel: 0, datagrams: 0 };

  constructor(
    private readonly socket: DatagramSocket,
    private readonly hostAddr: string,
    private readonly plan: PlannedForward,
    private readonly openTunnel: OpenUdpTunnel,
    private readonly warn: Warn,
  ) {
    const interval = Math.max(50, Math.min(1000, plan.udp.idleTimeoutMs / 4));
    this.sweeper = setInterval(() => {
      try {
        this.expireIdle();
        this.checkKernelDrops();
      } catch {
        // a flow that cannot be ended now is tried again on the next sweep
      }
    }, interval);
    this.sweeper.unref?.();
  }

  /** A UDP socket carries nothing once closed: its flows end with it. */
  close(): void {
    if (!this.open) return;
    this.open = false;
    clearInterval(this.sweeper);
    this.socket.close();
    this.dropAll();
  }

  dropAll(): void {
    for (const key of [...this.flows.keys()]) this.endFlow(key);
  }

  traffic(): Traffic {
    const kernel = this.open ? this.socket.kernelDrops() : 0;
    const p = this.pumpedTotals();
    return {
      connections: this.flows.size,
      bytesIn: this.bytesIn + p.bytesIn,
      bytesOut: this.bytesOut + p.bytesOut,
      datagramsDropped: this.dropped + kernel + p.dropped + p.kernel,
      datagramsPumped: p.datagrams,
    };
  }

  /** What the native pumps of this forward's flows carried and dropped (over budget or unsendable; the kernel's at their sockets). */
  private pumpedTotals(): { bytesIn: number; bytesOut: number; dropped: number; kernel: number; datagrams: number } {
    const t = { ...this.pumpedEnded };
    for (const flow of this.flows.values()) {
      const s = flow.tunnel.pumped?.();
      if (!s || s.end) continue; // an ended pump is in pumpedEnded
      t.bytesIn += s.toStreamBytes;
      t.bytesOut += s.toUdpBytes;
      t.dropped += s.overBudget + s.unsent;
      t.kernel += s.kernelDrops;
      t.datagrams += s.toStream + s.toUdp;
    }
    return t;
  }

  /** Datagrams lost before the agent read them (its socket's buffer full) count as well, and are said once per forward. */
  private checkKernelDrops(): void {
    if (!this.open) return;
    this.checkPumpDrops();
    if (this.toldKernelDrops) return;
    const drops = this.socket.kernelDrops() + this.pumpedTotals().kernel;
    if (drops === 0) return;
    this.toldKernelDrops = true;
    this.warn(
      `UDP ${this.hostAddr}: the kernel dropped ${drops} datagram(s) at the host socket before the host agent read them ` +
        "(they came faster than it read: the agent was busy or waited for a CPU). They count in datagramsDropped; " +
        "lower the sender's rate, or give the host agent more CPU, to lose none.",
    );
  }

  /** A pumped flow's drops over budget are said as the event loop's are: once per forward. */
  private checkPumpDrops(): void {
    if (this.toldPumpDrops) return;
    const dropped = this.pumpedTotals().dropped;
    if (!dropped) return;
    this.toldPumpDrops = true;
    this.warn(
      `UDP ${this.hostAddr}: ${dropped} datagram(s) came faster than the agent channel carries them; ` +
        "the excess is dropped (as UDP may) rather than delaying other connections. Lower the sender's rate to lose none.",
    );
  }

  fromClient(data: Buffer, client: UdpPeer): void {
    // The native socket gives the same object for a run of datagrams from one client: formatted once.
    const key = (client.key ??= formatHostPort(client.address, client.port));
    const flow = this.flows.get(key) ?? this.openFlow(key, client);
    flow.lastActive = Date.now();
    this.bytesIn += data.length;
    if (flow.budget.send(data, (done) => flow.tunnel.write({ data }, done))) return;
    this.dropped++;
    if (flow.toldDropping) return;
    flow.toldDropping = true;
    this.warn(
      `UDP ${this.hostAddr}: datagrams from ${key} come faster than the agent channel carries them; ` +
        "the excess is dropped (as UDP may) rather than delaying other connections. Lower the sender's rate to lose none.",
    );
  }

  private openFlow(key: string, client: UdpPeer): Flow {
    if (this.flows.size >= this.plan.udp.maxFlows) this.evictOldest();
    const tunnel = this.openTunnel(this.plan, key);
    const credited = tunnel.credited === true;
    const flow: Flow = { tunnel, lastActive: Date.now(), budget: new DatagramBudget(credited, tunnel.budgetBytes), toldDropping: false, ended: false, pumpedSeen: 0 };
    this.flows.set(key, flow);
    if (this.socket.fd !== undefined) tunnel.pumpFrom?.(this.socket.fd, client);
    const report = credited ? new DeliveryReport((bytes) => flow.ended || tunnel.write({ udp_delivered: bytes })) : undefined;
    tunnel.on("data", (msg: TunnelMessage) => {
      flow.lastActive = Date.now();
      if (msg.udp_delivered) flow.budget.delivered(msg.udp_delivered);
      const { datagrams, refused, refusedBytes } = datagramsOf(msg);
      if (refused) this.guestSentUnsendable(refused);
      let bytes = 0;
      for (const datagram of datagrams) bytes += datagram.length;
      this.bytesOut += bytes;
      if (this.open) this.socket.send(datagrams, client);
      if (bytes + refusedBytes) report?.add(bytes + refusedBytes); // the refused are gone too: the guest's budget gets them back
    });
    let counted = false;
    const forget = () => {
      flow.ended = true;
      if (this.flows.get(key) === flow) this.flows.delete(key);
      const s = tunnel.pumped?.();
      if (!s || counted) return;
      counted = true;
      this.pumpedEnded.bytesIn += s.toStreamBytes;
      this.pumpedEnded.bytesOut += s.toUdpBytes;
      this.pumpedEnded.dropped += s.overBudget + s.unsent;
      this.pumpedEnded.kernel += s.kernelDrops;
      this.pumpedEnded.datagrams += s.toStream + s.toUdp;
    };
    tunnel.on("end", forget);
    tunnel.on("error", forget);
    return flow;
  }

  /** The guest sent datagrams no UDP socket can send (or too many at once): dropped, said once per forward. */
  private guestSentUnsendable(count: number): void {
    this.dropped += count;
    if (this.toldUnsendable) return;
    this.toldUnsendable = true;
    this.warn(
      `UDP ${this.hostAddr}: the guest agent sent ${count} datagram(s) larger than ${MAX_UDP_PAYLOAD} bytes or more than ` +
        `${MAX_DATAGRAMS_PER_MESSAGE} in one message; they are dropped. A stock or porthole guest agent never does: check what runs as the guest agent.`,
    );
  }

  private evictOldest(): void {
    let oldest: [string, Flow] | undefined;
    for (const entry of this.flows) if (!oldest || entry[1].lastActive < oldest[1].lastActive) oldest = entry;
    if (!oldest) return;
    this.warn(`UDP ${this.hostAddr}: ${this.flows.size} flows (the limit); closing the least recently used one, from ${oldest[0]}`);
    this.endFlow(oldest[0]);
  }

  private expireIdle(): void {
    const now = Date.now();
    const cutoff = now - this.plan.udp.idleTimeoutMs;
    for (const [key, flow] of this.flows) {
      const s = flow.tunnel.pumped?.();
      if (s && s.toStream + s.toUdp !== flow.pumpedSeen) {
        flow.pumpedSeen = s.toStream + s.toUdp;
        flow.lastActive = now;
      }
      if (flow.lastActive < cutoff) this.endFlow(key);
    }
  }

  /** Ends the flow's stream on both ends: the guest closes its socket when it reads the end. */
  private endFlow(key: string): void {
    const flow = this.flows.get(key);
    if (!flow) return;
    this.flows.delete(key);
    flow.ended = true;
    flow.tunnel.end();
    // The guest answers the end with the end of its stream; do not wait on one that hangs.
    setTimeout(() => flow.tunnel.cancel(), 5000).unref?.();
  }
}
