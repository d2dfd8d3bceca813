// A connection handed over before anything read from it: its first bytes are still queued in
// the kernel, so they can be looked at (MSG_PEEK) and the connection then given, untouched, to
// whatever serves it (the guest's HTTP/2 server, without a relay in front).
import type * as net from "node:net";

export interface UnreadConnection {
  /** The connected socket's fd, for peeking; owned by the connection until adopt(). */
  readonly fd: number;
  /** The connection as a socket that reads from its first byte (once; throws if it cannot). */
  adopt(): net.Socket;
}
