// The SSH data path: each accepted host connection becomes one `direct-tcpip` channel (or
// `direct-streamlocal` for a guest unix socket) of the one SSH connection. SSH channels have
// EOF of their own, so half-close works both ways. Backpressure both ways: pipe() host to
// guest, the SSH window held by a full socket guest to host (deliverStraight below).
import type * as net from "node:net";
import type { ClientChannel } from "ssh2";
import { parseHostPort } from "../core/address.ts";
import type { PlannedForward } from "../core/forward-plan.ts";
import { resetAfterFlush, resetSocket } from "../transport/tunnel-relay.ts";
import { batchWrites } from "../transport/write-batching.ts";
import type { SshLink } from "./ssh-link.ts";

/** How long a connection accepted while the SSH link is down waits for it. */
export const SSH_WAIT_MS = 10_000;

/** SSH_MSG_CHANNEL_OPEN_FAILURE reason codes (RFC 4254 5.1) other than a refused target, in words. */
const REFUSALS: Record<number, string> = {
  1: "administratively prohibited: the guest's sshd forbids forwarding (AllowTcpForwarding / AllowStreamLocalForwarding in its sshd_config, or the key's restrictions)",
  3: "unknown channel type: the guest's sshd does not offer this kind of forwarding",
  4: "resource shortage: the guest's sshd has too many channels open (MaxSessions, memory)",
};

export class SshForwarder {
  /** Refusals said already, by reason code: every connection would repeat them. */
  private readonly told = new Set<number>();

  constructor(
    private readonly link: SshLink,
    private readonly warn: (message: string) => void = () => {},
  ) {}

  forwardStream(socket: net.Socket, plan: PlannedForward): void {
    socket.pause();
    let gone = false;
    socket.once("close", () => (gone = true));
    this.link.ready(SSH_WAIT_MS).then(
      (client) => {
        if (gone) return;
        const opened = (err: (Error & { reason?: number }) | undefined, channel: ClientChannel) => {
          if (err) {
            this.refused(err, plan);
            return resetSocket(socket);
          }
          if (gone) return void channel.close();
          bridgeChannel(socket, channel);
        };
        try {
          if (plan.protocol === "unix") client.openssh_forwardOutStreamLocal(plan.guestAddr, opened);
          else {
            const { host, port } = parseHostPort(plan.guestAddr);
            client.forwardOut(socket.remoteAddress ?? "127.0.0.1", socket.remotePort ?? 0, host, port, opened);
          }
        } catch {
          resetSocket(socket); // the connection closed between ready() and now
        }
      },
      () => resetSocket(socket),
    );
  }

  /** A channel the guest's sshd would not open: a refused target is the client's to see (a reset); anything else is said once. */
  private refused(err: Error & { reason?: number }, plan: PlannedForward): void {
    const reason = err.reason ?? 0;
    if (reason === 2 || this.told.has(reason)) return; // 2: the target refused the connection
    this.told.add(reason);
    this.warn(
      `SSH forwarder: the guest's sshd refused a channel to ${plan.guestAddr} (${REFUSALS[reason] ?? err.message}); ` +
        "connections through it are reset until that changes, or use --forwarder auto or grpc",
    );
  }
}

function bridgeChannel(socket: net.Socket, channel: ClientChannel): void {
  batchWrites(socket); // the channel delivers packet by packet
  socket.pipe(channel);
  deliverStraight(channel, socket);
  socket.resume();
  channel.on("error", () => resetSocket(socket));
  socket.once("error", () => channel.close());
  socket.once("close", () => channel.close());
  // The channel closed without the guest's EOF (sshd or the link died): a reset tells the
  // client the truth. After the guest's EOF, data the client still sends has nowhere to go.
  channel.once("close", () => {
    if (!socket.writableEnded) return resetSocket(socket);
    socket.unpipe(channel);
    socket.on("data", () => resetSocket(socket));
  });
}

/** ssh2's channel, as far as its receive hook is used here. */
interface ChannelInternals {
  push(chunk: Buffer | null): boolean;
  _read(n: number): void;
  /** "eof" once the guest's CHANNEL_EOF came; "closed" on CHANNEL_CLOSE or a dead connection. */
  incoming?: { state?: string };
}

// Guest to client without the channel's Readable stream: ssh2 hands every CHANNEL_DATA payload
// to channel.push(), which here writes it to the socket. A full socket answers false, and ssh2
// then holds the guest's window until its _read() hook runs, on the socket's drain: the same
// backpressure as pipe(), without a stream buffer, 'data' events and pause/resume between.
// EOF (push(null)) still goes through the stream, so 'end' follows the last byte. ssh2 also
// ends the stream when the channel closes without EOF or the connection dies: the client then
// gets a reset, not an EOF that would make a cut-off transfer look complete.
function deliverStraight(channel: ClientChannel, socket: net.Socket): void {
  const inner = channel as unknown as ChannelInternals;
  const push = inner.push.bind(channel);
  let guestEOF: boolean | undefined;
  inner.push = (chunk) => {
    if (chunk === null) {
      guestEOF ??= inner.incoming?.state === "eof"; // read now: CHANNEL_CLOSE turns "eof" into "closed"
      return push(null);
    }
    if (socket.destroyed || socket.writableEnded) return true;
    return socket.write(chunk);
  };
  socket.on("drain", () => inner._read(0));
  channel.once("end", () => (guestEOF === false ? resetAfterFlush(socket) : socket.end()));
  channel.resume(); // flowing, so that 'end' comes once EOF is pushed
}
