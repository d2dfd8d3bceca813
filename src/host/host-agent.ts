// The host role: follow the guest's ports, apply the rules, forward over gRPC.
import type { FSWatcher } from "node:fs";
import { join } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import type { AgentStatus } from "../core/status.ts";
import { prepareRelay, relayStatus, resetAllRelays } from "../transport/fast-relay.ts";
import { prepareDatagrams } from "../transport/datagram-socket.ts";
import { ControlServer } from "./control-server.ts";
import { DEFAULT_CONFIG, type Config } from "../core/config.ts";
import { logText, rateLimitedLog } from "../core/log-text.ts";
import { formatEventJSON, formatEventText, type HostEvent } from "../core/forward-event.ts";
import type { PlanOptions } from "../core/forward-plan.ts";
import { chooseForwarder, type Choice, type ForwarderKind } from "../core/forwarder-choice.ts";
import { ownerRulesUnmatchable, rulesInForce, type ConflictPolicy, type RuleEntry } from "../core/rules.ts";
import { OnForward } from "./on-forward.ts";
import { RuntimeForwards } from "./runtime-forwards.ts";
import { portOwner } from "./port-owner.ts";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { loadConfigFile, watchConfigFile } from "./config-file.ts";
import { GrpcForwarder } from "./grpc-forwarder.ts";
import { GuestConnection } from "./guest-connection.ts";
import { MuxLink, singleStream } from "./mux-link.ts";
import { existsSync } from "node:fs";
import { Reconciler } from "./reconciler.ts";
import { ReverseForward } from "./reverse-forward.ts";
import { SshForwarder } from "./ssh-forwarder.ts";
import { SshLink } from "./ssh-link.ts";
import { KernelDirect, type KernelRouting } from "./kernel-direct.ts";
import { DATA_ANSWER_TIMEOUT_MS, StreamRouter } from "./stream-router.ts";
import { resolveSshSettings, type SshFlags } from "./ssh-settings.ts";
import { TcpForward } from "./tcp-forward.ts";
import { TimeSync } from "./time-sync.ts";
import { UdpForward } from "./udp-forward.ts";
import { SocketInUseError } from "../transport/listen.ts";
import type { Socket } from "node:net";
import type { PlannedForward } from "../core/forward-plan.ts";
import { FdPressure, fdLimit, isFdExhaustion, nearFdLimit } from "../runtime/fd-limit.ts";

export type LogFormat = "text" | "json";

/** What a user loses with a stock Lima guest agent, and what to do about it. */
export const STOCK_GUEST_LOSSES =
  "it has no porthole extensions, so every connection goes through gRPC tunnels (no data path, no direct path), " +
  "a guest server's half-close (EOF) ends the whole connection as in Lima, and reverse (host-to-guest) sockets are refused; " +
  "run `porthole guest` in the guest instead to get them";

export interface HostAgentOptions {
  guest: TransportAddress;
  /** The shared token for a TCP agent channel. */
  token?: string;
  /** The config file the rules came from, re-read by reload(). */
  configFile?: string;
  /** The rules in force at start (loaded from configFile by the caller, so errors stop start-up). */
  config?: Config;
  /** Where relative host sockets live. */
  stateDir: string;
  /** `false` turns the ::1 listeners off whatever the config says. */
  ipv6Loopback?: boolean;
  /** --forwarder: wins over LIMA_SSH_PORT_FORWARDER and the config. */
  forwarder?: ForwarderKind;
  /** The SSH forwarder's flags (--ssh, --ssh-user, …). */
  ssh?: SshFlags;
  /** Where Lima's variables are read from (process.env by default). */
  env?: Record<string, string | undefined>;
  /** --on-conflict: wins over the config's onConflict. */
  onConflict?: ConflictPolicy;
  /** Command-line UDP settings: they win over the config file's. */
  udpIdleTimeoutMs?: number;
  udpMaxFlows?: number;
  /** Re-apply the config file whenever it changes. */
  watchConfig?: boolean;
  logFormat: LogFormat;
  /** The control socket for `porthole status` (default STATE_DIR/control.sock; "" for none). */
  control?: string;
  /** Where events go; stderr by default. */
  write?: (line: string) => void;
  /** --sync-time: keep the guest's clock on the host's (SyncTime every 10 s, as Lima does). */
  syncTime?: boolean;
  /** Called with each event, for embedders such as the demo. */
  onEvent?: (e: HostEvent) => void;
  /** --host-ip: where this guest's forwards listen when their rule names no hostIP (default 127.0.0.1). */
  hostIP?: string;
  /** --on-forward: a command run (sh -c) for each new forward, and how long it may take. */
  onForward?: { command: string; timeoutMs: number };
  /** --kernel-direct: this host's own clients of direct forwards connect to the guest themselves (connect() rewritten by cgroup BPF). */
  kernelDirect?: boolean;
}

const PAUSED_REASON = "auto-forwarding is paused; porthole forward resume turns it back on";

export class HostAgent {
  private readonly connection: GuestConnection;
  private readonly reconciler: Reconciler;
  private configWatcher: FSWatcher | undefined;
  private config: Config;
  private readonly forwarder: Choice<ForwarderKind>;
  private readonly sshLink: SshLink | undefined;
  private readonly router: StreamRouter;
  private agentUp = false;
  private hello: { version?: string; lima?: boolean; addresses: string[]; portDetector?: string } = { addresses: [] };
  private control: ControlServer | undefined;
  private readonly eventCounts: Record<string, number> = {};
  private readonly startedAt = new Date();
  private timeSync: TimeSync | undefined;
  /** What the connected guest agent offers beyond Lima's protocol (none for a stock guest). */
  private guestFeatures: string[] = [];
  /** A stock Lima guest agent is explained once per agent, not on every reconnect. */
  private toldStockGuest = false;
  private readonly fdPressure: FdPressure;
  private fdCheckedAt = 0;
  private connectionsSinceFdCheck = 0;
  /** The guest agent reports port owners (a porthole one that has the feature). */
  private guestReportsOwners = false;
  private toldNoOwners = false;
  /** Internal errors already logged (each said once). */
  private readonly troubleSaid = new Set<string>();
  /** What the guest reports as wrong, at most 5 lines per 5 s (a hostile guest must not fill the log). */
  private readonly guestReports = rateLimitedLog((line) => this.log(line), 5000, (n) => `and ${n} more reports of the guest agent's since the last such line`, 5);
  /** `porthole forward add/remove/pause/resume`. */
  private readonly runtime: RuntimeForwards;
  private readonly onForward: OnForward | undefined;
  /** The lean multiplexer, where the agent channel is one stream and the forwarder may use it. */
  private readonly muxLink: MuxLink | undefined;
  /** --kernel-direct, once its programs are loaded. */
  private kernel: KernelRouting | undefined;

  constructor(private readonly options: HostAgentOptions) {
    const guest = formatTransportAddress(options.guest);
    this.config = options.config ?? DEFAULT_CONFIG;
    const env = options.env ?? process.env;
    this.forwarder = chooseForwarder(options.forwarder, env.LIMA_SSH_PORT_FORWARDER, this.config.forwarder);
    // One-stream channels (a serial port's chardev, tcp://): between porthole agents forwarded
    // connections share the stream through the lean multiplexer; --forwarder grpc keeps gRPC.
    const address = options.guest;
    if ((this.forwarder.value === "auto" || this.forwarder.value === "fast") && (address.kind === "unix" || address.kind === "tcp") && singleStream(address, existsSync)) {
      this.muxLink = new MuxLink(address, {
        changed: (usable, reason) => this.emit({ type: "path-changed", address: guest, path: "mux", state: usable ? "usable" : "unusable", reason }),
        failed: (message) => this.emit({ type: "warning", message: `agent channel: ${message}` }),
      }, options.token);
    }
    let announcedWaiting = false;
    this.connection = new GuestConnection(options.guest, {
      onConnected: (ports, hello) => {
        announcedWaiting = false;
        this.emit({ type: "guest-connected", guest, ...(hello ? { version: hello.version, features: hello.features } : { lima: true }) });
        this.guestFeatures = hello?.features ?? [];
        this.router.setGuest(hello);
        this.guestReportsOwners = hello?.features.includes("port-owners") ?? false;
        this.hello = hello
          ? { version: hello.version, addresses: hello.addresses, ...(hello.port_detector ? { portDetector: hello.port_detector } : {}) }
          : { lima: true, addresses: [] };
        this.agentUp = true;
        if (!hello && !this.toldStockGuest) {
          this.toldStockGuest = true;
          this.emit({ type: "stock-guest", guest, message: STOCK_GUEST_LOSSES });
        }
        this.timeSync?.start();
        this.apply(ports);
      },
      onChange: (ports) => this.reconciler.reconcileSoon(ports),
      onDisconnected: (error, wasConnected) => {
        // Listeners stay up: the next snapshot reconciles them, and clients see their
        // connections refused by the tunnel meanwhile instead of the port vanishing.
        if (wasConnected) this.emit({ type: "guest-disconnected", guest, error });
        else if (!announcedWaiting) this.emit({ type: "guest-unreachable", guest, error });
        announcedWaiting = true;
        this.timeSync?.stop();
        const wasUp = this.agentUp;
        this.agentUp = false;
        if (wasUp && this.forwarder.value === "ssh") this.apply(); // UDP has no path now
      },
      onGuestErrors: (errors) => this.guestReports(`guest agent reported: ${errors.map(logText).join("; ")}`),
    }, { token: options.token, target: this.muxLink });
    const grpc = new GrpcForwarder(
      this.connection.client,
      () => this.guestFeatures.includes("udp-batch"),
      () => this.guestFeatures.includes("udp-credit"),
      (message) => this.emit({ type: "warning", message }),
    );
    if (options.syncTime) {
      this.timeSync = new TimeSync(this.connection.client, (m) => this.log(m), (message) => this.emit({ type: "warning", message }));
    }
    const report = (e: HostEvent) => this.emit(e);
    const warn = (message: string) => this.emit({ type: "warning", message });
    this.fdPressure = new FdPressure(warn);
    const trouble = (err: unknown, where: string) => this.trouble(err, where);
    if (this.forwarder.value === "ssh") {
      const settings = resolveSshSettings(options.ssh ?? {}, this.config.ssh, this.config.sshLocalPort, env, options.stateDir);
      this.sshLink = new SshLink({ ...settings.link, emit: report });
      if (settings.overVsock.warning) warn(settings.overVsock.warning);
    }
    this.router = new StreamRouter(this.forwarder.value, options.guest, grpc, this.sshLink ? new SshForwarder(this.sshLink, warn) : undefined, report);
    if (this.muxLink) this.router.useMux(this.muxLink);
    const router = this.router;
    if (options.onForward) {
      this.onForward = new OnForward({
        ...options.onForward,
        maxRunning: 4,
        maxQueued: 64,
        guest,
        log: (line) => this.log(line),
        failed: (message) => this.emit({ type: "on-forward-failed", message }),
      });
    }
    this.runtime = new RuntimeForwards({
      hostIP: options.hostIP,
      configFile: options.configFile,
      snapshot: () => this.reconciler.snapshot(),
      emit: (e) => this.emit(e),
      apply: () => this.apply(),
      reload: () => this.reload(),
    });
    this.reconciler = new Reconciler(
      this.rules(),
      this.planOptions(this.config),
      {
        forward: (plan) =>
          plan.protocol === "udp"
            ? new UdpForward(plan, (p, client) => router.openUdpTunnel(p, client), report, warn, trouble, portOwner)
            : new TcpForward(plan, (socket, p) => this.forwardStream(socket, p, grpc), report, (p) => router.pathFor(p), trouble, portOwner, router.dialsNatively ? {
                target: (p) => router.nativeTarget(p),
                subscribe: (onChange) => router.onChange(onChange),
                dialed: (connection, p, target) => router.nativeDialed(connection, p, target),
                failed: (err, client, p, target) => router.nativeFailed(err, client, p, target),
                timeoutMs: DATA_ANSWER_TIMEOUT_MS,
                ...(this.kernel ? { kernel: this.kernel } : {}),
              } : undefined),
        reverse: (plan) => new ReverseForward(plan, this.connection.porthole, report, warn),
      },
      report,
    );
  }

  private async startKernelDirect(): Promise<void> {
    if (this.forwarder.value !== "auto") {
      this.emit({ type: "warning", message: `--kernel-direct rewrites connections of direct forwards, which only --forwarder auto makes (this agent uses ${this.forwarder.value}); it is off` });
      return;
    }
    const direct = await KernelDirect.start((problem) => this.emit({ type: "warning", message: problem }));
    if (!direct) return;
    this.kernel = {
      direct,
      count: (forward, read) => this.router.counters.addSource("direct-kernel", forward, read),
      say: (address, usable, reason) => this.emit({ type: "path-changed", address, path: "direct-kernel", state: usable ? "usable" : "unusable", reason }),
    };
    this.emit({
      type: "relay-selected",
      message: "--kernel-direct: once the relay has connected a client of a direct forward to the guest, this host's next clients of that forward (IPv4, from this network namespace) connect to the guest's address themselves (connect() rewritten by a cgroup BPF program), with no relay between",
    });
  }

  async start(): Promise<void> {
    await prepareRelay((message) => this.emit({ type: "relay-selected", message }));
    if (this.options.kernelDirect) await this.startKernelDirect();
    await prepareDatagrams((message) => this.emit({ type: "warning", message }));
    const controlPath = this.options.control ?? join(this.options.stateDir, "control.sock");
    if (controlPath) {
      const control = new ControlServer(controlPath, () => this.status(), (message) => this.log(message), {
        addForward: (body) => this.runtime.add(body),
        removeForward: (body) => this.runtime.remove(body),
        setPaused: (paused) => this.runtime.setPaused(paused),
      });
      try {
        await control.start();
        this.control = control;
      } catch (err) {
        // Another agent answers there: two agents would fight over the same host ports.
        if (err instanceof SocketInUseError) throw new Error(`${err.message} (is another host agent running? stop it, or give this one its own --control or --state-dir)`, { cause: err });
        this.emit({ type: "warning", message: `no control socket for porthole status: ${(err as Error).message}` });
      }
    }
    if (this.options.configFile && this.options.config) {
      this.emit({ type: "config-loaded", file: this.options.configFile, rules: this.options.config.rules.length });
    }
    if (this.forwarder.warning) this.emit({ type: "warning", message: this.forwarder.warning });
    this.emit({
      type: "forwarder-selected",
      forwarder: this.forwarder.value,
      reason: this.forwarder.reason,
      ...(this.sshLink ? { message: "UDP goes over the agent channel's gRPC tunnel, as SSH has no datagram channel" } : {}),
    });
    this.reconciler.reconcile(new Map()); // static forwards start before the guest answers
    this.sshLink?.start();
    this.connection.start();
    if (this.options.watchConfig && this.options.configFile) {
      this.configWatcher = watchConfigFile(this.options.configFile, () => this.reload());
      // e.g. the directory was removed: the rules in force stay; SIGHUP still reloads.
      this.configWatcher.on("error", (err) => this.emit({ type: "warning", message: `no longer watching ${this.options.configFile}: ${err.message}` }));
    }
  }

  /** Stops everything; resolves once the connections it cut off were reset (at most 1 s). */
  stop(): Promise<void> {
    this.onForward?.stop();
    this.fdPressure.stop();
    this.control?.close();
    this.configWatcher?.close();
    this.sshLink?.stop();
    this.connection.stop(); // closes the mux link too (its target)
    this.router.stop();
    this.reconciler.destroy();
    this.kernel?.direct.stop(); // after the listeners closed (each forgot its rewrite)
    return resetAllRelays(1000);
  }

  /** Re-reads the config file; a bad file is reported and the rules in force stay. */
  reload(): void {
    const file = this.options.configFile;
    if (!file) return;
    let config: Config;
    try {
      config = loadConfigFile(file, this.options.stateDir, { hostIP: this.options.hostIP });
    } catch (err) {
      // Any error (a ConfigError lists the problems): the rules in force stay, the agent runs on.
      this.emit({ type: "config-rejected", file, error: (err as Error).message });
      return;
    }
    this.emit({ type: "config-loaded", file, rules: config.rules.length });
    if (config.forwarder !== this.config.forwarder) {
      this.emit({ type: "warning", message: "a changed forwarder takes effect when the host agent restarts" });
    }
    if (JSON.stringify(config.ssh) !== JSON.stringify(this.config.ssh)) {
      this.emit({ type: "warning", message: "changed ssh settings (address, user, identity, overVsock) take effect when the host agent restarts; the SSH connection in use stays as it is" });
    }
    this.config = config;
    this.apply();
  }

  /** Re-plans with the current config and state (and a new port snapshot, if given). */
  private apply(ports?: Parameters<Reconciler["setRules"]>[2]): void {
    this.tellIfOwnersUnknown();
    this.reconciler.setRules(this.rules(), this.planOptions(this.config), ports);
  }

  /**
   * The rules in force: forwards added at run time (static rules), then Lima's list, whose
   * built-in fallback listens on --host-ip when given.
   */
  private rules(): RuleEntry[] {
    const hostIP = this.options.hostIP;
    const lima = rulesInForce(this.config.rules, this.config.sshLocalPort).map((e) =>
      hostIP && e.origin === "built-in" && !e.rule.ignore ? { ...e, rule: { ...e.rule, hostIP } } : e,
    );
    return [...this.runtime.rules(), ...lima];
  }

  /** Rules on the owner match nothing on a guest agent that reports no owners: said once. */
  private tellIfOwnersUnknown(): void {
    if (!this.agentUp || this.guestReportsOwners || this.toldNoOwners) return;
    const message = ownerRulesUnmatchable(this.config.rules);
    if (message) (this.toldNoOwners = true), this.emit({ type: "warning", message });
  }

  /** A connection to its data path; where choosing the path fails, over gRPC (which needs no fd). */
  private forwardStream(socket: Socket, plan: PlannedForward, grpc: GrpcForwarder): void {
    // At the fd limit the runtime stops accepting (Bun) or fails accepts (Node), so the last
    // connections that do arrive must notice: count fds every 32 connections (or after a
    // second), with a margin wider than 32, and say it once per episode.
    const now = Date.now();
    if ((++this.connectionsSinceFdCheck >= 32 || now - this.fdCheckedAt >= 1000) && !this.fdPressure.inEpisode) {
      this.fdCheckedAt = now;
      this.connectionsSinceFdCheck = 0;
      if (nearFdLimit(64)) this.fdPressure.exhausted("new connections wait in the backlog or are refused");
    }
    try {
      this.router.forwardStream(socket, plan);
    } catch (err) {
      this.trouble(err, `choosing the data path of a connection to ${plan.guestAddr}`);
      grpc.forwardStream(socket, plan);
    }
  }

  /** An error in a forward's callback: lack of fds is an episode, said once; others once each. */
  private trouble(err: unknown, where: string): void {
    if (isFdExhaustion(err)) return this.fdPressure.exhausted(`${where} failed`);
    const message = `${where}: ${(err as Error)?.message ?? String(err)}`;
    if (this.troubleSaid.has(message)) return;
    if (this.troubleSaid.size > 1000) this.troubleSaid.clear();
    this.troubleSaid.add(message);
    this.emit({ type: "warning", message });
  }

  private planOptions(config: Config): PlanOptions {
    const limit = fdLimit();
    // Each forward holds two listening sockets (127.0.0.1 and ::1); half the limit is kept for
    // connections (two fds each) and the agent's own sockets.
    const maxForwards = limit === undefined ? undefined : Math.max(1, Math.floor(limit / 4));
    return {
      ...(maxForwards
        ? { maxForwards: { count: maxForwards, reason: `over the ${maxForwards} forwards that this agent's limit of ${limit} open files allows (each forward takes 2 listening sockets and each connection 2 more); raise it with \`ulimit -n\` before starting porthole host` } }
        : {}),
      ipv6Loopback: this.options.ipv6Loopback !== false && config.ipv6Loopback,
      udp: {
        idleTimeoutMs: this.options.udpIdleTimeoutMs ?? config.udp.idleTimeoutMs,
        maxFlows: this.options.udpMaxFlows ?? config.udp.maxFlows,
      },
      onConflict: this.options.onConflict ?? config.onConflict,
      ...(this.runtime.paused ? { paused: PAUSED_REASON } : {}),
      ...(this.forwarder?.value === "ssh" && !this.agentUp
        ? { udpUnavailable: "SSH has no datagram channel and the agent channel is down" }
        : {}),
    };
  }

  /** Everything `porthole status` shows. */
  status(): AgentStatus {
    const { forwards, notForwarded } = this.reconciler.snapshot();
    return {
      agent: {
        version: pkg.version,
        pid: process.pid,
        guest: formatTransportAddress(this.options.guest),
        guestConnected: this.agentUp,
        forwarder: this.forwarder.value,
        forwarderReason: this.forwarder.reason,
        startedAt: this.startedAt.toISOString(),
        autoForwarding: this.runtime.paused ? "paused" : "on",
        ...(this.options.hostIP ? { hostIP: this.options.hostIP } : {}),
        ...(this.options.configFile ? { configFile: this.options.configFile } : {}),
      },
      guest: this.hello,
      paths: this.router.traffic(),
      forwards: forwards.map((f) => ({ ...f, paths: this.router.traffic(f.key) })),
      notForwarded,
      events: this.eventCounts,
      relay: relayStatus(),
    };
  }

  private emit(e: HostEvent): void {
    this.eventCounts[e.type] = (this.eventCounts[e.type] ?? 0) + 1;
    this.control?.broadcast({ time: new Date().toISOString(), ...e });
    this.options.onEvent?.(e);
    if (this.onForward && "protocol" in e) this.onForward.onEvent(e);
    this.runtime.heard(e);
    this.writeLine(this.options.logFormat === "json" ? formatEventJSON(e) : formatEventText(e));
  }

  /** One line in the agent's log format. */
  log(message: string): void {
    this.writeLine(this.options.logFormat === "json" ? JSON.stringify({ time: new Date().toISOString(), type: "log", message }) : message);
  }

  private writeLine(line: string): void {
    (this.options.write ?? ((l: string) => process.stderr.write(`${l}\n`)))(line);
  }
}
