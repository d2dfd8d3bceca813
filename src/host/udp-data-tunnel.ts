// A UDP flow over porthole's data stream (transport/datagram-stream.ts) with the face of a
// Tunnel call (host/udp-forward.ts's UdpTunnel), so a flow does not care which path it took.
// The stream is dialed in the background; datagrams written before it is up wait in its batch
// (the flow's credited budget bounds them). A stream that cannot be had ends the flow with an
// error: the next datagram opens a new flow, by the path the router picks then.
// Where the shim's pump runs (runtime/native-udp-pump.ts), the flow gets a UDP socket of its
// own on the forward's port, connected to its client, and the pump carries its datagrams and
// credits both ways once the stream is up: no JavaScript between the client and the stream.
import { EventEmitter } from "node:events";
import type * as net from "node:net";
import { creditFrames, datagramFrameSize, writeDatagramFrame } from "../core/datagram-frames.ts";
import type { TunnelMessage } from "../proto/guest-service.ts";
import { MAX_DATAGRAMS_PER_MESSAGE } from "../transport/datagram-batch.ts";
import { STREAM_BUDGET_BYTES } from "../transport/datagram-budget.ts";
import { datagramPumps, pumpableStreamFd, pumpRefusedFlow, UDP_BUFFER_BYTES, type UdpPeer } from "../transport/datagram-socket.ts";
import { DatagramStream } from "../transport/datagram-stream.ts";
import { handedElsewhere, unreadBytes } from "../transport/fast-relay.ts";
import { PUMP_END_BAD, type PumpStats, type UdpPump } from "../runtime/native-udp-pump.ts";
import type { UdpTunnel } from "./udp-forward.ts";

const NO_BYTES = Buffer.alloc(0);

export class UdpDataTunnel extends EventEmitter implements UdpTunnel {
  readonly credited = true;
  readonly budgetBytes = STREAM_BUDGET_BYTES;
  private flow: DatagramStream | undefined;
  /** Datagrams written before the stream is up, and their callbacks (called once they go). */
  private waiting: { data: Buffer; written?: () => void }[] = [];
  private credit = 0;
  private over = false;
  private pump: UdpPump | undefined;
  private pumpAt: { listenFd: number; client: UdpPeer } | undefined;

  /** `onBad`: the guest broke the stream's framing (said by the caller; the flow ends). */
  constructor(dial: Promise<{ stream: net.Socket; initial?: Buffer }>, onBad: (reason: string) => void = () => {}) {
    super();
    this.on("error", () => {}); // a listener is always there: an unhandled "error" must not end the agent
    dial.then(
      ({ stream, initial }) => {
        if (this.over) return void stream.destroy();
        if (this.pumpNatively(stream, initial, onBad)) return;
        this.flow = new DatagramStream(
          stream,
          {
            onDatagrams: (datagrams, delivered) => {
              // One read of the stream may hold more datagrams than a message carries (thousands
              // of tiny ones): in messages of at most that many, the credit with the first.
              for (let at = 0; at === 0 || at < datagrams.length; at += MAX_DATAGRAMS_PER_MESSAGE) {
                const some = datagrams.length > MAX_DATAGRAMS_PER_MESSAGE ? datagrams.slice(at, at + MAX_DATAGRAMS_PER_MESSAGE) : datagrams;
                const message = { id: "", protocol: "", guest_addr: "", data: NO_BYTES, datagrams: some, udp_delivered: at === 0 ? delivered : 0 } as unknown as TunnelMessage;
                this.emit("data", message);
              }
            },
            onEnd: (bad) => {
              this.over = true;
              if (bad) {
                onBad(bad);
                this.emit("error", new Error(`the guest broke the UDP stream's framing (${bad})`));
              }
              this.emit("end");
            },
          },
          initial,
        );
        for (const d of this.waiting) this.flow.send(d.data, d.written);
        this.flow.report(this.credit);
        this.waiting = [];
      },
      (err: Error) => {
        this.over = true;
        this.waiting = [];
        this.emit("error", err);
      },
    );
  }

  /** Where the pump may take the flow: the forward's listening socket (the shim's) and the client. */
  pumpFrom(listenFd: number, client: UdpPeer): void {
    if (client.raw) this.pumpAt = { listenFd, client };
  }

  /** The pump's counters while it carries the flow (undefined: the event loop carries it). */
  pumped(): PumpStats | undefined {
    return this.pump?.stats();
  }

  /** Hands the flow to the pump if it can run here; false: the event loop carries it. */
  private pumpNatively(stream: net.Socket, initial: Buffer | undefined, onBad: (reason: string) => void): boolean {
    const at = this.pumpAt;
    if (!at) return false; // a client the runtime's socket answers (no shim): the event loop's, said at start
    const native = datagramPumps();
    if (!native) return false; // said once there
    const fd = pumpableStreamFd(stream);
    if (fd === undefined) return false;
    let flowFd: number;
    try {
      flowFd = native.pumps.flowSocket(at.listenFd, at.client.raw!, UDP_BUFFER_BYTES);
    } catch (err) {
      pumpRefusedFlow(`its own socket on the forward's port: ${(err as Error).message}`);
      return false; // the event loop carries the flow
    }
    stream.pause();
    const rest = unreadBytes(stream);
    const fromStream = initial?.length ? Buffer.concat([initial, rest]) : rest;
    // The datagrams that waited for the stream, then the credit owed, go first.
    let size = 0;
    let queued = 0;
    for (const { data } of this.waiting) (size += datagramFrameSize(data.length)), (queued += data.length);
    const credit = this.credit ? creditFrames(this.credit) : Buffer.alloc(0);
    const toStream = Buffer.allocUnsafe(size + credit.length);
    let put = 0;
    for (const { data } of this.waiting) put = writeDatagramFrame(toStream, put, data);
    credit.copy(toStream, put);
    let ended: () => void = () => {};
    try {
      this.pump = native.pumps.add(flowFd, fd, { toStream, queued, fromStream, budget: this.budgetBytes, group: at.listenFd }, (stats) => {
        ended();
        this.over = true;
        if (stats.end === PUMP_END_BAD) {
          const reason = `a frame head of ${stats.err >>> 0}`;
          onBad(reason);
          this.emit("error", new Error(`the guest broke the UDP stream's framing (${reason})`));
        }
        this.emit("end");
      });
    } catch (err) {
      pumpRefusedFlow((err as Error).message);
      if (rest.length) stream.unshift(rest); // the unread bytes only: the caller still holds `initial`
      return false;
    } finally {
      native.shim.close(flowFd); // the pump holds its own dup()
    }
    for (const { written } of this.waiting.splice(0)) written?.(); // handed to the pump
    this.credit = 0;
    // The stream's bytes are the pump's now: the path's counters follow the pump's.
    const pump = this.pump;
    ended = handedElsewhere(stream, () => {
      const s = pump.stats();
      return { read: s.toUdpBytes + 4 * s.toUdp, written: s.toStreamBytes + 4 * s.toStream };
    });
    stream.destroy(); // closes only the runtime's fd: the pump holds its own dup()
    return true;
  }

  write(message: Partial<TunnelMessage>, written?: () => void): boolean {
    if (this.over) return false;
    if (this.pump) {
      // A datagram that came to the forward's socket before the flow's own took over.
      if (message.data) {
        const frame = Buffer.allocUnsafe(datagramFrameSize(message.data.length));
        writeDatagramFrame(frame, 0, message.data);
        this.pump.write(frame, message.data.length);
      }
      written?.();
      return true;
    }
    if (message.udp_delivered) {
      if (this.flow) this.flow.report(message.udp_delivered);
      else this.credit += message.udp_delivered;
    }
    if (!message.data) {
      written?.();
      return true;
    }
    // `written` once the bytes are handed to the stream: the flow's budget counts them queued till then.
    if (this.flow) this.flow.send(message.data, written);
    else this.waiting.push({ data: message.data, written });
    return true;
  }

  end(): void {
    if (this.over) return;
    this.over = true;
    this.pump?.close();
    this.flow?.end();
  }

  cancel(): void {
    this.over = true;
    this.pump?.abort();
    this.flow?.destroy();
  }
}
