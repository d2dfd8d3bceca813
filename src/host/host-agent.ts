// The host role: follow the guest's ports, apply the rules, forward over gRPC.
import { formatEventJSON, formatEventText, type HostEvent } from "../core/forward-event.ts";
import { rulesInForce, type Rule } from "../core/rules.ts";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { GrpcForwarder } from "./grpc-forwarder.ts";
import { GuestConnection } from "./guest-connection.ts";
import { Reconciler } from "./reconciler.ts";

export type LogFormat = "text" | "json";

export interface HostAgentOptions {
  guest: TransportAddress;
  rules: Rule[];
  logFormat: LogFormat;
  /** Where events go; stderr by default. */
  write?: (line: string) => void;
  /** Called with each event, for embedders such as the demo. */
  onEvent?: (e: HostEvent) => void;
}

export class HostAgent {
  private readonly connection: GuestConnection;
  private readonly reconciler: Reconciler;

  constructor(private readonly options: HostAgentOptions) {
    const guest = formatTransportAddress(options.guest);
    let announcedWaiting = false;
    this.connection = new GuestConnection(options.guest, {
      onConnected: (ports) => {
        announcedWaiting = false;
        this.emit({ type: "guest-connected", guest });
        this.reconciler.reconcile(ports);
      },
      onChange: (ports) => this.reconciler.reconcile(ports),
      onDisconnected: (error, wasConnected) => {
        // Listeners stay up: the next snapshot reconciles them, and clients see their
        // connections refused by the tunnel meanwhile instead of the port vanishing.
        if (wasConnected) this.emit({ type: "guest-disconnected", guest, error });
        else if (!announcedWaiting) this.emit({ type: "guest-unreachable", guest, error });
        announcedWaiting = true;
      },
      onGuestErrors: (errors) => this.log(`guest agent reported: ${errors.join("; ")}`),
    });
    const forwarder = new GrpcForwarder(this.connection.client);
    this.reconciler = new Reconciler(
      rulesInForce(options.rules),
      (socket, hostAddr, guestAddr) => forwarder.forward(socket, hostAddr, guestAddr),
      (e) => this.emit(e),
    );
  }

  start(): void {
    this.connection.start();
  }

  stop(): void {
    this.connection.stop();
    this.reconciler.destroy();
  }

  private emit(e: HostEvent): void {
    this.options.onEvent?.(e);
    this.writeLine(this.options.logFormat === "json" ? formatEventJSON(e) : formatEventText(e));
  }

  private log(message: string): void {
    this.writeLine(this.options.logFormat === "json" ? JSON.stringify({ time: new Date().toISOString(), type: "log", message }) : message);
  }

  private writeLine(line: string): void {
    (this.options.write ?? ((l: string) => process.stderr.write(`${l}\n`)))(line);
  }
}
