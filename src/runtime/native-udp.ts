// A UDP socket of the shim (native/udp.c): read with recvmmsg() and written with sendmmsg(),
// many datagrams per call, with large kernel buffers. The runtimes' UDP sockets make one system
// call and one event per datagram; at a gigabit (~90,000 datagrams a second) their receive
// buffer overflowed between two events while the agent was not even busy. Readiness comes
// from the relay thread's watch (one record per wake-up, then the socket is read dry).
import { formatIPv4Bytes, formatIPv6Bytes } from "../core/address.ts";
import { check, type NativeShim } from "./native-api.ts";
import { EPOLLIN, EPOLLOUT, type NativeRelayLoop } from "./native-relay.ts";

/** A datagram's sender (or destination): `raw` is the shim's 20-byte form. */
export interface UdpPeer {
  address: string;
  port: number;
  raw?: Uint8Array;
  /** Free for the socket's user (e.g. a cached formatted key). */
  key?: string;
}

const ADDRESS_BYTES = 20;
const SLOT = 65536;
const BATCH = 64;
const META_WORDS = 6;
/** Reads per wake-up before the loop gets a turn (the watch fires again at once if more wait). */
const READS_PER_WAKE = 8;
/** Datagrams waiting for a full send buffer beyond this are dropped (UDP may lose them). */
const MAX_PENDING_BYTES = 4 << 20;
const ERRNO_TRANSIENT = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EINTR", "ENOBUFS", "ENOMEM"]);

// One receive buffer and one send buffer per process: the event loop runs one read or send at a
// time, and datagrams are copied out of the receive buffer before the next read.
let recvBuf: Buffer | undefined;
const meta = new Uint32Array(BATCH * META_WORDS);
const metaBytes = new Uint8Array(meta.buffer);
let sendBuf = Buffer.allocUnsafe(256 * 1024);
const sendLens = new Uint32Array(4096);
const NO_ADDRESS = new Uint8Array(ADDRESS_BYTES);

export interface UdpOpenOptions {
  local?: { host: string; port: number };
  peer?: { host: string; port: number };
  v6only?: boolean;
  /** SO_RCVBUF and SO_SNDBUF (past the system's maximum where the process may). */
  bufferBytes: number;
}

export class NativeUdpSocket {
  private closed = false;
  private cancelWatch: (() => void) | undefined;
  private watching = 0;
  private pending: { datagrams: Buffer[]; to: Uint8Array }[] = [];
  private pendingBytes = 0;
  private lastPeer: UdpPeer | undefined;
  private readonly lastWords = new Uint32Array(5);
  private onDatagrams: (datagrams: Buffer[], from: UdpPeer[]) => void = () => {};
  /** Datagrams dropped because the send buffer stayed full. */
  dropped = 0;

  private constructor(
    private readonly shim: NativeShim,
    private readonly loop: NativeRelayLoop,
    readonly fd: number,
  ) {}

  /** Opens the socket; throws a NativeError (code: the errno's name, e.g. EADDRINUSE) where it cannot. */
  static open(shim: NativeShim, loop: NativeRelayLoop, options: UdpOpenOptions): NativeUdpSocket {
    const address = (where: { host: string; port: number } | undefined) => {
      const out = new Uint8Array(ADDRESS_BYTES);
      if (where) check(shim, shim.udpAddress(Buffer.from(`${where.host}\0`), where.port, out), `the address ${where.host}`);
      return out;
    };
    const what = options.local ? `bind UDP ${options.local.host}:${options.local.port}` : `UDP socket to ${options.peer?.host}:${options.peer?.port}`;
    const fd = check(shim, shim.udpOpen(address(options.local), address(options.peer), options.v6only ? 1 : 0, options.bufferBytes), what);
    return new NativeUdpSocket(shim, loop, fd);
  }

  /** The bound port. */
  localPort(): number {
    const out = new Uint8Array(ADDRESS_BYTES);
    check(this.shim, this.shim.udpLocal(this.fd, out), "getsockname");
    return out[2]! | (out[3]! << 8);
  }

  /** The receive and send buffers the kernel granted (it reports twice that: its bookkeeping counts in). */
  buffers(): { receive: number; send: number } {
    const out = new Int32Array(2);
    check(this.shim, this.shim.udpBuffers(this.fd, out), "getsockopt SO_RCVBUF");
    return { receive: out[0]! / 2, send: out[1]! / 2 };
  }

  /** Datagrams the kernel dropped at this socket before they were read (0 where it cannot tell). */
  kernelDrops(): number {
    if (this.closed) return 0;
    return Math.max(0, this.shim.udpDrops(this.fd));
  }

  /** Starts reading: `listener` gets the datagrams of each read, each with its sender (one object per sender in a row). */
  receive(listener: (datagrams: Buffer[], from: UdpPeer[]) => void): void {
    this.onDatagrams = listener;
    this.arm();
  }

  /** Sends datagrams to `to` (a peer received on this socket) or the connected peer, with as few calls as the kernel allows. */
  send(datagrams: Buffer[], to?: UdpPeer): void {
    if (this.closed || !datagrams.length) return;
    const raw = to?.raw ?? NO_ADDRESS;
    if (this.pending.length) return this.queue(datagrams, raw);
    const sent = this.sendNow(datagrams, raw);
    if (sent < datagrams.length) this.queue(datagrams.slice(sent), raw);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.cancelWatch?.();
    this.cancelWatch = undefined;
    this.loop.unwatch(this.fd);
    this.shim.close(this.fd);
    this.pending = [];
  }

  /** Returns how many datagrams were dealt with (sent, or refused one by one by the kernel). */
  private sendNow(datagrams: Buffer[], to: Uint8Array): number {
    let done = 0;
    while (done < datagrams.length) {
      // Packed into the send buffer, as many as fit (a datagram is at most 64 KiB).
      let bytes = 0;
      let count = 0;
      for (let i = done; i < datagrams.length && count < sendLens.length; i++) {
        const d = datagrams[i]!;
        if (bytes + d.length > sendBuf.length) {
          if (count) break;
          sendBuf = Buffer.allocUnsafe(Math.max(d.length, sendBuf.length * 2));
        }
        sendBuf.set(d, bytes);
        sendLens[count++] = d.length;
        bytes += d.length;
      }
      const r = this.shim.udpSend(this.fd, sendBuf, sendLens, count, to);
      if (r < 0) {
        // A socket that fails as a whole: what is left is lost (UDP may lose it); the flow goes on.
        return datagrams.length;
      }
      done += r;
      if (r < count) break; // the send buffer is full
    }
    return done;
  }

  private queue(datagrams: Buffer[], to: Uint8Array): void {
    const bytes = datagrams.reduce((n, d) => n + d.length, 0);
    if (this.pendingBytes + bytes > MAX_PENDING_BYTES) {
      this.dropped += datagrams.length;
      return;
    }
    this.pending.push({ datagrams, to });
    this.pendingBytes += bytes;
    this.arm();
  }

  private flushPending(): void {
    while (this.pending.length) {
      const first = this.pending[0]!;
      const sent = this.sendNow(first.datagrams, first.to);
      for (let i = 0; i < sent; i++) this.pendingBytes -= first.datagrams[i]!.length;
      if (sent < first.datagrams.length) {
        first.datagrams = first.datagrams.slice(sent);
        return;
      }
      this.pending.shift();
    }
  }

  /** Watches for what is wanted now: readable always, writable while sends wait. */
  private arm(): void {
    if (this.closed) return;
    const events = EPOLLIN | (this.pending.length ? EPOLLOUT : 0);
    if (this.cancelWatch && this.watching === events) return;
    this.cancelWatch?.();
    this.watching = events;
    this.cancelWatch = this.loop.watchOnce(this.fd, events, (ready) => {
      this.cancelWatch = undefined;
      this.watching = 0;
      if (this.closed) return;
      if (ready & EPOLLOUT || this.pending.length) this.flushPending();
      if (ready & ~EPOLLOUT) this.readSome();
      this.arm();
    });
  }

  private readSome(): void {
    recvBuf ??= Buffer.allocUnsafe(SLOT * BATCH);
    for (let reads = 0; reads < READS_PER_WAKE && !this.closed; reads++) {
      const n = this.shim.udpRecv(this.fd, recvBuf, recvBuf.length, meta, BATCH);
      if (n === 0) return;
      if (n < 0) {
        // A connected socket's ICMP error (the server is not there right now) is reported once; read on.
        if (ERRNO_TRANSIENT.has(this.shim.errnoName(n))) continue;
        return;
      }
      let total = 0;
      for (let i = 0; i < n; i++) total += meta[i * META_WORDS]!;
      const bytes = Buffer.allocUnsafe(total); // a copy: the next read reuses recvBuf
      recvBuf.copy(bytes, 0, 0, total);
      const datagrams: Buffer[] = new Array(n);
      const from: UdpPeer[] = new Array(n);
      let at = 0;
      for (let i = 0; i < n; i++) {
        const length = meta[i * META_WORDS]!;
        datagrams[i] = bytes.subarray(at, at + length);
        at += length;
        from[i] = this.peerAt(i);
      }
      this.onDatagrams(datagrams, from);
      if (n < BATCH) return; // read dry
    }
  }

  /** The sender of the i-th datagram of the last read: the previous object when it is the same sender. */
  private peerAt(i: number): UdpPeer {
    const w = i * META_WORDS + 1;
    const last = this.lastWords;
    if (this.lastPeer && last[0] === meta[w] && last[1] === meta[w + 1] && last[2] === meta[w + 2] && last[3] === meta[w + 3] && last[4] === meta[w + 4]) {
      return this.lastPeer;
    }
    for (let k = 0; k < 5; k++) last[k] = meta[w + k]!;
    const raw = metaBytes.slice(w * 4, w * 4 + ADDRESS_BYTES);
    const family = raw[0]! | (raw[1]! << 8);
    const port = raw[2]! | (raw[3]! << 8);
    const address = family === 4 ? formatIPv4Bytes(raw.subarray(4, 8)) : formatIPv6Bytes(raw.subarray(4, 20));
    this.lastPeer = { address, port, raw };
    return this.lastPeer;
  }
}
