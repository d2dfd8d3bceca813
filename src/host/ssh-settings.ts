// Turns flags, config and Lima's LIMA_SSH_OVER_VSOCK into the SSH link's settings: where
// to connect (vsock first when offered and allowed, then the network path), as whom, with
// which key, and whether to check host keys.
import { readFileSync } from "node:fs";
import { homedir, userInfo } from "node:os";
import { join } from "node:path";
import type { SshSettings } from "../core/config.ts";
import { chooseSshOverVsock, type Choice } from "../core/forwarder-choice.ts";
import { parseTransportAddress } from "../core/transport-address.ts";
import type { SshCandidate, SshLinkOptions } from "./ssh-link.ts";

export interface SshFlags {
  address?: string;
  vsockAddress?: string;
  user?: string;
  identity?: string;
  skipHostKeyCheck?: boolean;
}

const DEFAULT_IDENTITIES = ["id_ed25519", "id_ecdsa", "id_rsa"].map((f) => join(homedir(), ".ssh", f));

export function resolveSshSettings(
  flags: SshFlags,
  config: SshSettings,
  sshLocalPort: number | undefined,
  env: Record<string, string | undefined>,
  stateDir: string,
): { link: Omit<SshLinkOptions, "emit">; overVsock: Choice<boolean> } {
  const address = flags.address ?? config.address ?? (sshLocalPort ? `tcp://127.0.0.1:${sshLocalPort}` : undefined);
  if (!address) {
    throw new Error("the SSH forwarder needs the guest's sshd: give --ssh ADDR (e.g. tcp://127.0.0.1:60022), ssh.address, or Lima's ssh.localPort");
  }
  const overVsock = chooseSshOverVsock(env.LIMA_SSH_OVER_VSOCK, config.overVsock);
  const vsockAddress = flags.vsockAddress ?? config.vsockAddress;
  const candidates: SshCandidate[] = [];
  if (vsockAddress && overVsock.value) candidates.push({ address: parseTransportAddress(vsockAddress), label: "vsock" });
  const primary = parseTransportAddress(address);
  candidates.push({ address: primary, label: primary.kind });

  const identity = flags.identity ?? config.identity ?? DEFAULT_IDENTITIES.find((f) => readable(f));
  if (!identity) throw new Error(`no SSH key: give --ssh-identity FILE (looked for ${DEFAULT_IDENTITIES.join(", ")})`);
  let privateKey: Buffer;
  try {
    privateKey = readFileSync(identity);
  } catch (err) {
    throw new Error(`cannot read the SSH key ${identity}: ${(err as Error).message}`, { cause: err });
  }
  return {
    link: {
      candidates,
      user: flags.user ?? config.user ?? userInfo().username,
      privateKey,
      knownHostsFile: flags.skipHostKeyCheck ? undefined : join(stateDir, "known_hosts"),
    },
    overVsock,
  };
}

function readable(file: string): boolean {
  try {
    readFileSync(file);
    return true;
  } catch {
    return false;
  }
}
