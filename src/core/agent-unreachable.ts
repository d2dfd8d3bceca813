// Why the host agent cannot reach a guest agent, in words a user can act on: what was tried,
// what the system said (the errno, not grpc-js's "No connection established ... Resolution
// note:" prose), and what to check. Pure text: the caller passes grpc-js's message.
import type { TransportAddress } from "./transport-address.ts";

const ERRNO = /\b(ENOENT|ECONNREFUSED|EACCES|EPERM|ETIMEDOUT|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ENODEV|EAFNOSUPPORT|ENOTSOCK|EADDRNOTAVAIL|EPIPE|ENOTDIR)\b/;

/** What the system call's error means for this kind of address, in plain words. */
function errnoMeaning(errno: string | undefined, address: TransportAddress): string | undefined {
  const where = address.kind === "tcp" ? `${address.host}:${address.port}` : address.kind === "vsock" ? `CID ${address.cid} port ${address.port}` : "that path";
  switch (errno) {
    case "ENOENT":
    case "ENOTDIR":
      return "no socket exists at that path";
    case "ECONNREFUSED":
      return address.kind === "unix" ? "the socket file exists but nothing listens on it (an agent that stopped leaves it behind)" : `nothing listens on ${where}`;
    case "EACCES":
    case "EPERM":
      return "permission denied (the guest agent creates its socket for root only: run the host agent as the same user)";
    case "ETIMEDOUT":
    case "EHOSTUNREACH":
    case "ENETUNREACH":
    case "ENODEV":
      return address.kind === "vsock" ? `no VM answers at CID ${address.cid}` : `${where} cannot be reached`;
    case "EAFNOSUPPORT":
      return "this host has no vsock support (load the vhost_vsock module)";
    case "ECONNRESET":
    case "EPIPE":
      return "the connection was accepted and then dropped at once";
    default:
      return undefined;
  }
}

/** What to check, for this kind of address. */
function checks(address: TransportAddress): string[] {
  const agent = "is the guest agent running in the guest (`porthole guest`; as a service: `porthole guest install`)?";
  const arch =
    "if it exits at once, is it the binary for the guest's architecture (porthole-linux-arm64 on aarch64, e.g. Apple-silicon hosts; porthole-linux-x64 on x86-64)? `porthole --version` in the guest says which it is";
  switch (address.kind) {
    case "unix":
      return [agent, `is ${address.path} the agent's socket (or the VM's chardev / SSH-forwarded socket) on this host?`, arch];
    case "tcp":
      return [agent, `does it listen on tcp://${address.host}:${address.port} with the same --token-file?`, arch];
    case "vsock":
      return [agent, `is ${address.cid} the VM's vsock CID, and does the agent listen on vsock port ${address.port} (its default is 2222)?`, arch];
    case "serial":
      return [agent, arch];
  }
}

/**
 * One message for a failed attempt to reach the guest agent at `address` (the caller's log
 * line names the address). `grpcMessage` is grpc-js's error details; a message that is not a
 * connection failure is returned as it is.
 */
export function explainUnreachable(address: TransportAddress, grpcMessage: string): string {
  const connectFailure = /No connection established|Failed to connect|connect E[A-Z]+|Connection dropped|Deadline exceeded|deadline/i.test(grpcMessage);
  if (!connectFailure) return grpcMessage;
  const errno = ERRNO.exec(grpcMessage)?.[1];
  let what = errnoMeaning(errno, address);
  if (!what && /deadline/i.test(grpcMessage)) {
    what = "the connection did not answer as a gRPC guest agent in time (is something else listening there, or is the guest too slow to start?)";
  }
  what ??= "the connection failed";
  const said = errno ? ` (${errno})` : "";
  const how = address.kind === "unix" ? "connecting to the unix socket" : address.kind === "tcp" ? "connecting over TCP" : address.kind === "vsock" ? "connecting over vsock" : "connecting";
  return `${how} failed: ${what}${said}. Check: ${checks(address).join(" ")}`;
}
