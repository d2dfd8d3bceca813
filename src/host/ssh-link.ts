// The SSH forwarder's one connection to the guest's sshd (ssh2, in-process), kept up with
// backoff. Candidates are tried in order (SSH over vsock first, then the network path); the
// listeners never depend on it: a connection accepted while the link is down waits a bounded
// time for it.
import { Client, type CipherAlgorithm, type ConnectConfig } from "ssh2";
import { backoffDelay } from "../core/backoff.ts";
import type { AgentEvent } from "../core/forward-event.ts";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { supportedSshCiphers } from "../runtime/ssh-ciphers.ts";
import { dialTransport } from "../transport/dial.ts";
import { batchWrites } from "../transport/write-batching.ts";
import { checkHostKey } from "./known-hosts.ts";
import { sendChannelDataInPlace } from "./ssh-gcm-send.ts";

export interface SshCandidate {
  address: TransportAddress;
  /** For the log: "vsock", "tcp", … */
  label: string;
}

export interface SshLinkOptions {
  candidates: SshCandidate[];
  user: string;
  privateKey: Buffer;
  /** Trust-on-first-use file; undefined skips host key checking (throwaway VMs). */
  knownHostsFile: string | undefined;
  emit: (e: AgentEvent) => void;
}

const RETRY = { minMs: 200, maxMs: 5000 };
const DIAL_TIMEOUT_MS = 5000;

export class SshLink {
  private client: Client | undefined;
  private waiters: ((c: Client) => void)[] = [];
  private stopped = false;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private reportedDown = false;

  constructor(private readonly options: SshLinkOptions) {}

  start(): void {
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.client?.end();
  }

  /** The ready connection, waiting up to `timeoutMs` for one. */
  ready(timeoutMs: number): Promise<Client> {
    if (this.client) return Promise.resolve(this.client);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no SSH connection to the guest within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (c: Client) => {
        clearTimeout(timer);
        resolve(c);
      };
      this.waiters.push(waiter);
    });
  }

  private async connect(): Promise<void> {
    const errors: string[] = [];
    for (const candidate of this.options.candidates) {
      if (this.stopped) return;
      try {
        const client = await this.open(candidate);
        if (this.stopped) return void client.end(); // stopped while it opened: not left up, keepalives and all
        return this.up(client, candidate);
      } catch (err) {
        errors.push(`${candidate.label} ${formatTransportAddress(candidate.address)}: ${(err as Error).message}`);
      }
    }
    if (this.stopped) return;
    if (!this.reportedDown) this.options.emit({ type: "ssh-unreachable", error: errors.join("; ") });
    this.reportedDown = true;
    this.retryTimer = setTimeout(() => void this.connect(), backoffDelay(this.attempt++, RETRY));
  }

  private up(client: Client, candidate: SshCandidate): void {
    this.client = client;
    this.attempt = 0;
    this.reportedDown = false;
    this.options.emit({ type: "ssh-connected", via: `${candidate.label} ${formatTransportAddress(candidate.address)}` });
    for (const w of this.waiters.splice(0)) w(client);
    // Why it closes, for the event: ssh2's error (a keepalive timeout, a reset), or sshd's end.
    let why: string | undefined;
    client.on("error", (err: Error) => void (why ??= `the SSH connection failed: ${err.message}`));
    client.once("end", () => void (why ??= "sshd closed the SSH connection (restarted, or the guest is shutting down)"));
    client.once("close", () => {
      if (this.client !== client) return;
      this.client = undefined;
      if (this.stopped) return;
      this.options.emit({ type: "ssh-disconnected", error: `${why ?? "the SSH connection closed"}; reconnecting` });
      this.reportedDown = true;
      this.retryTimer = setTimeout(() => void this.connect(), backoffDelay(this.attempt++, RETRY));
    });
  }

  private async open(candidate: SshCandidate): Promise<Client> {
    const sock = await dialTransport(candidate.address, DIAL_TIMEOUT_MS);
    batchWrites(sock); // ssh2 writes packet by packet
    const hostId = hostIdentity(candidate.address);
    let mismatch: Error | undefined;
    const config: ConnectConfig = {
      sock,
      username: this.options.user,
      privateKey: this.options.privateKey,
      readyTimeout: 10_000,
      keepaliveInterval: 5000,
      keepaliveCountMax: 3,
      algorithms: { cipher: supportedSshCiphers() as CipherAlgorithm[] },
      hostVerifier: (key: Buffer) => {
        if (!this.options.knownHostsFile) return true;
        try {
          checkHostKey(this.options.knownHostsFile, hostId, key);
          return true;
        } catch (err) {
          mismatch = err as Error; // a changed key, or a known_hosts file that cannot be read: refused, and said
          return false;
        }
      },
    };
    return new Promise((resolve, reject) => {
      const client = new Client();
      let settled = false;
      const fail = (err: Error) => {
        sock.destroy();
        if (settled) return;
        settled = true;
        reject(mismatch ?? err);
      };
      client.once("ready", () => {
        settled = true;
        client.off("error", fail);
        client.off("close", closedEarly);
        client.on("error", () => {}); // reported through "close"
        resolve(client);
      });
      // ssh2 may report more than one error for one failed handshake: each is taken (a second
      // one without a listener would be thrown), the first one counts.
      client.on("error", fail);
      // A connection that closes after sshd's banner and before "ready" gets no "error" from
      // ssh2 (and its handshake timer is cleared): without this the attempt would never end.
      const closedEarly = () => fail(new Error("sshd closed the connection during the SSH handshake"));
      client.once("close", closedEarly);
      client.connect(config);
      sendChannelDataInPlace(client); // ssh2 is pinned; its own path stays behind as the fallback
    });
  }
}

/** How a guest is named in known_hosts: OpenSSH's `[host]:port`, or the transport address. */
function hostIdentity(address: TransportAddress): string {
  return address.kind === "tcp" ? `[${address.host}]:${address.port}` : formatTransportAddress(address);
}
