// A UDP flow over porthole's data stream (transport/datagram-stream.ts) with the face of a
// Tunnel call (host/udp-forward.ts's UdpTunnel), so a flow does not care which path it took.
// The stream is dialed in the background; datagrams written before it is up wait in its batch
// (the flow's credited budget bounds them). A stream that cannot be had ends the flow with an
// error: the next datagram opens a new flow, by the path the router picks then.
import { EventEmitter } from "node:events";
import type * as net from "node:net";
import type { TunnelMessage } from "../proto/guest-service.ts";
import { STREAM_BUDGET_BYTES } from "../transport/datagram-budget.ts";
import { DatagramStream } from "../transport/datagram-stream.ts";
import type { UdpTunnel } from "./udp-forward.ts";

const NO_BYTES = Buffer.alloc(0);

export class UdpDataTunnel extends EventEmitter implements UdpTunnel {
  readonly credited = true;
  readonly budgetBytes = STREAM_BUDGET_BYTES;
  private flow: DatagramStream | undefined;
  private waiting: Buffer[] = [];
  private credit = 0;
  private over = false;

  /** `onBad`: the guest broke the stream's framing (said by the caller; the flow ends). */
  constructor(dial: Promise<{ stream: net.Socket; initial?: Buffer }>, onBad: (reason: string) => void = () => {}) {
    super();
    this.on("error", () => {}); // a listener is always there: an unhandled "error" must not end the agent
    dial.then(
      ({ stream, initial }) => {
        if (this.over) return void stream.destroy();
        this.flow = new DatagramStream(
          stream,
          {
            onDatagrams: (datagrams, delivered) => {
              const message = { id: "", protocol: "", guest_addr: "", data: NO_BYTES, datagrams, udp_delivered: delivered } as unknown as TunnelMessage;
              this.emit("data", message);
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
        for (const d of this.waiting) this.flow.send(d);
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

  write(message: Partial<TunnelMessage>, written?: () => void): boolean {
    if (this.over) return false;
    if (message.udp_delivered) {
      if (this.flow) this.flow.report(message.udp_delivered);
      else this.credit += message.udp_delivered;
    }
    if (message.data) {
      if (this.flow) this.flow.send(message.data);
      else this.waiting.push(message.data);
    }
    written?.();
    return true;
  }

  end(): void {
    if (this.over) return;
    this.over = true;
    this.flow?.end();
  }

  cancel(): void {
    this.over = true;
    this.flow?.destroy();
  }
}
