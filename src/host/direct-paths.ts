// Which guest addresses the direct path may use: those on a network this host shares with
// the guest AND where the guest agent proved, with the session secret, that it answers
// (core/direct-proof.ts). Proofs are made when the guest connects and made again every
// REPROVE_MS and whenever this host's addresses change; an address whose proof fails is
// dropped at once (the tunnels carry its forwards), with an event saying why.
import { randomBytes } from "node:crypto";
import * as net from "node:net";
import { networkInterfaces } from "node:os";
import { MAX_PROOF_LINE, proofHolds, proofRequest, usableGuestAddresses } from "../core/direct-proof.ts";
import { onLocalSubnet, type InterfaceAddress } from "../core/subnet.ts";

const REPROVE_MS = 10_000;
const PROOF_TIMEOUT_MS = 2000;
/** Proof rounds in a row without any answer before an address counts as gone (its open direct connections too). */
const SILENT_ROUNDS = 2;

export interface GuestOffer {
  secret: string;
  addresses: string[];
  proofPort: number;
  /** The guest answers the proof bound to both ends ("direct-proof-peer"): asked for, and checked against this host's own address. */
  peerBound?: boolean;
}

/** Says when an address becomes usable (reason undefined) or stops being usable (why). */
export type ProofReport = (ip: string, proved: boolean, reason: string) => void;

export class DirectPaths {
  private offer: GuestOffer | undefined;
  private readonly proved = new Set<string>();
  /** Why each candidate address is not proved (for events and status), once said. */
  private readonly refused = new Map<string, string>();
  private timer: ReturnType<typeof setInterval> | undefined;
  private interfacesSeen = "";
  private generation = 0;
  /** The proof round under way, and its generation: a round is never started beside another. */
  private proving: { generation: number; round: Promise<void> } | undefined;
  private lastLook = 0;
  /** Proof rounds in a row in which an address gave no answer at all (not even a refusal). */
  private readonly silent = new Map<string, number>();

  constructor(
    private readonly report: ProofReport,
    private readonly interfaces: () => InterfaceAddress[] = readInterfaces,
    private readonly prove: (ip: string, offer: GuestOffer) => Promise<void> = proveAddress,
    /** An address went silent (the guest's network is gone): its open direct connections are dead too. */
    private readonly onSilent: (ip: string) => void = () => {},
  ) {}

  /** A new guest session (or none): forget every proof and start over. */
  setGuest(offer: GuestOffer | undefined): void {
    this.generation++;
    this.proved.clear();
    this.refused.clear();
    this.silent.clear();
    clearInterval(this.timer);
    this.timer = undefined;
    this.offer = offer && offer.secret && offer.proofPort > 0 && offer.proofPort < 65536 ? { ...offer, addresses: usableGuestAddresses(offer.addresses) } : undefined;
    if (!this.offer) return;
    void this.reprove();
    this.timer = setInterval(() => void this.reprove(), REPROVE_MS);
    this.timer.unref?.();
  }

  stop(): void {
    this.setGuest(undefined);
  }

  /** The proved guest addresses, in the guest's order. */
  get addresses(): string[] {
    return this.offer ? this.offer.addresses.filter((a) => this.proved.has(a)) : [];
  }

  /** A direct connection to `ip` failed to connect (not refused): stop using it until proved again. */
  fail(ip: string, reason: string): void {
    if (!this.proved.delete(ip)) return;
    this.refused.set(ip, reason);
    this.report(ip, false, reason);
  }

  /**
   * Proves every candidate address again (also when this host's addresses changed). While a
   * round is under way for this guest, that round is the answer: a guest whose proof port
   * answers slowly must not get a new round of connections every interval beside the last.
   */
  reprove(): Promise<void> {
    if (this.proving?.generation === this.generation) return this.proving.round;
    const generation = this.generation;
    const round = this.proveAll().finally(() => {
      if (this.proving?.round === round) this.proving = undefined;
    });
    this.proving = { generation, round };
    return round;
  }

  private async proveAll(): Promise<void> {
    const offer = this.offer;
    if (!offer) return;
    const generation = this.generation;
    let interfaces: InterfaceAddress[];
    try {
      interfaces = this.interfaces();
    } catch (err) {
      return; // out of fds, say: keep what is proved; the next round tries again
    }
    this.interfacesSeen = JSON.stringify(interfaces.map((i) => [i.address, i.netmask]));
    await Promise.all(
      offer.addresses.map(async (ip) => {
        let reason: string | undefined;
        let noAnswer = false;
        if (!onLocalSubnet(ip, interfaces)) reason = "not on a network this host shares";
        else {
          try {
            await this.prove(ip, offer);
          } catch (err) {
            reason = (err as Error).message;
            noAnswer = (err as NodeJS.ErrnoException).code === "ETIMEDOUT";
          }
        }
        if (generation !== this.generation) return;
        // A refusal means the guest is there (its agent restarting, say); only silence,
        // round after round, means the network to it is gone.
        const rounds = noAnswer ? (this.silent.get(ip) ?? 0) + 1 : 0;
        this.silent.set(ip, rounds);
        if (rounds === SILENT_ROUNDS) this.onSilent(ip);
        if (reason === undefined) {
          const wasRefused = this.refused.delete(ip);
          if (!this.proved.has(ip)) {
            this.proved.add(ip);
            this.report(ip, true, wasRefused ? "the guest agent proved it answers there again" : "the guest agent proved it answers there");
          }
        } else if (this.proved.delete(ip) || this.refused.get(ip) !== reason) {
          const quiet = !this.refused.has(ip) && reason === "not on a network this host shares";
          this.refused.set(ip, reason);
          if (!quiet) this.report(ip, false, reason);
        }
      }),
    );
  }

  /** Whether this host's addresses changed since the last proof round (looked at once a second at most). */
  interfacesChanged(): boolean {
    if (!this.offer) return false;
    const now = Date.now();
    if (now - this.lastLook < 1000) return false;
    this.lastLook = now;
    try {
      return JSON.stringify(this.interfaces().map((i) => [i.address, i.netmask])) !== this.interfacesSeen;
    } catch {
      return false;
    }
  }
}

function readInterfaces(): InterfaceAddress[] {
  return Object.values(networkInterfaces()).flat().filter(Boolean) as InterfaceAddress[];
}

/** Resolves when the agent at ip:proofPort answers the challenge; rejects saying why not. */
export function proveAddress(ip: string, offer: GuestOffer): Promise<void> {
  const nonce = randomBytes(16).toString("hex");
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: ip, port: offer.proofPort });
    let got = "";
    const fail = (why: string) => {
      socket.destroy();
      reject(new Error(why));
    };
    // A deadline for the whole answer, not for each silence: a byte now and then must not hold a proof for minutes.
    const deadline = setTimeout(() => {
      socket.destroy();
      reject(Object.assign(new Error(`no answer to the proof within ${PROOF_TIMEOUT_MS / 1000} s`), { code: "ETIMEDOUT" }));
    }, PROOF_TIMEOUT_MS);
    socket.once("close", () => clearTimeout(deadline));
    socket.once("error", (err: NodeJS.ErrnoException) => {
      socket.destroy();
      // EHOSTUNREACH and the like are silence too: nothing answers at that address.
      const silent = err.code !== "ECONNREFUSED" && err.code !== "ECONNRESET";
      reject(Object.assign(new Error(`the proof could not connect (${err.code ?? err.message})`), silent ? { code: "ETIMEDOUT" } : {}));
    });
    let local = ""; // this host's address on the connection (gone once it closes)
    socket.once("connect", () => {
      local = socket.localAddress ?? "";
      socket.write(proofRequest(nonce, offer.peerBound));
    });
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      got += chunk;
      if (got.length > MAX_PROOF_LINE) fail("something else answers there (a long reply)");
    });
    socket.once("end", () => {
      socket.destroy();
      // Bound to both ends: the answer names this host's address on the connection, as the guest saw it come.
      const peer = offer.peerBound ? local : undefined;
      if (proofHolds(offer.secret, nonce, ip, got, peer)) resolve();
      else reject(new Error("something other than the guest agent answers there (the proof failed)"));
    });
  });
}
