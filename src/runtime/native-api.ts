// The native shim's functions, as every runtime adapter presents them (see native/).
// Each returns >= 0 on success and -errno on failure.

/** poll()'s event bits on Linux, as pollNow returns them. */
export const POLL = { IN: 1, OUT: 4, ERR: 8, HUP: 16, NVAL: 32 } as const;
export interface NativeShim {
  vsockSocket(): number;
  vsockBindListen(fd: number, cid: number, port: number, backlog: number): number;
  /** out[0] = cid, out[1] = port */
  vsockGetsockname(fd: number, out: Uint32Array): number;
  /** Non-blocking; peer[0] = cid, peer[1] = port. */
  vsockAccept(fd: number, peer: Uint32Array): number;
  vsockLocalCid(): number;
  close(fd: number): number;
  /** fds[0], fds[1]: a connected pair of unix stream sockets. */
  socketpair(fds: Int32Array): number;
  /** Records of 32 bytes (core/diag-record.ts decodes them); protocols: 1 TCP, 2 UDP, 3 both. */
  diagListeners(buf: Uint8Array, cap: number, protocols: number): number;
  /** As diagListeners, for one local port only (the kernel skips the others); families: 1 IPv4, 2 IPv6, 3 both. */
  diagPort(buf: Uint8Array, cap: number, protocols: number, port: number, families: number): number;
  /** The listener (TCP, protocols bit 0) or unconnected UDP socket a packet to addr:port reaches (one hash lookup, no walk): 1 record or 0; family AF_INET (2) or AF_INET6 (10), addr 16 bytes. */
  diagSocket(buf: Uint8Array, cap: number, protocols: number, family: number, addr: Uint8Array, port: number): number;
  diagSubscribe(): number;
  /** A socket for the destroy events of these protocols only (1 TCP, 2 UDP); | 4: not those of connected sockets (filtered in the kernel). */
  diagSubscribeTo(protocols: number): number;
  diagReadEvents(fd: number, buf: Uint8Array, cap: number): number;
  /** Starts a non-blocking vsock connect; the fd is connected or in progress (see watch). */
  vsockConnectStart(cid: number, port: number): number;
  /** SO_ERROR as -errno, or 0. */
  socketError(fd: number): number;
  /** Copies queued bytes without taking them (MSG_PEEK): the count, 0 at EOF, -EAGAIN when none yet. */
  peek(fd: number, buf: Uint8Array, cap: number): number;
  /** poll()'s events on fd right now (1 in, 4 out, 8 error, 16 hang-up, 32 not open), or -errno. */
  pollNow(fd: number): number;
  /** Clears O_NONBLOCK on fd's open file (its dups share it). 0 or -errno. */
  setBlocking(fd: number): number;
  /** listen() again on a listening socket: its backlog becomes `backlog`. 0 or -errno. */
  listenBacklog(fd: number, backlog: number): number;
  /** Starts the relay thread (once); the fd whose bytes are the relay's records. */
  relayStart(): number;
  /** Dup()s both fds and relays between them; toB/toA go out first. Returns the relay id. */
  relayAdd(fdA: number, fdB: number, toB: Uint8Array, toBLen: number, toA: Uint8Array, toALen: number, flags: number): number;
  /**
   * Connects a socket to host:port (numeric address) or a unix path (NUL-terminated) in the
   * relay thread and relays fd <-> it once connected (and answered: see native/relay.c's
   * ph_relay_dial for hello and the flags); fd is dup()ed. Returns the relay id, or -errno.
   */
  relayDial(fd: number, host: Uint8Array, port: number, pre: Uint8Array, preLen: number, flags: number, timeoutMs: number, keepAliveS: number, hello: Uint8Array, helloLen: number): number;
  /** out[0] = bytes a -> b, out[1] = bytes b -> a; -ENOENT once finished. */
  relayCounters(id: number, out: BigUint64Array): number;
  relayAbort(id: number): number;
  relayAbortAll(): number;
  relayRelease(id: number): number;
  /** out: relays started, bytes spliced, bytes copied. */
  relayTotals(out: BigUint64Array): number;
  /**
   * Accepts on a listening socket in the relay thread as the guest's data endpoint (native/relay.c's
   * ph_data_listen): streams with a well-formed header are dialled there, others handed over.
   */
  dataListen(fd: number, secret: Uint8Array, allowCid: number, flags: number, headerMs: number, dialMs: number): number;
  dataUnlisten(id: number): number;
  /** A forward listener's data-path target: a unix endpoint path (NUL-terminated; empty: none) and its header. */
  /** host: a unix path (the data path, with hello) or a numeric IP (direct, with port); empty: none. */
  forwardTarget(id: number, host: Uint8Array, port: number, hello: Uint8Array, helloLen: number, dialMs: number, keepAliveS: number): number;
  /** out[0]: streams dialled natively; out[1]: streams handed to JavaScript. */
  dataListenerStats(id: number, out: BigUint64Array): number;
  /** A non-blocking unix stream listener at path (NUL-terminated); the fd. */
  unixListen(path: Uint8Array, backlog: number): number;
  /** One ready record (token) when fd is ready for events (1 in, 4 out). */
  watch(fd: number, events: number, token: number): number;
  unwatch(fd: number): number;
  /**
   * Loads and attaches the kernel port-event programs (with `closes` 1, listeners' closes are
   * recorded too); the ring buffer's fd, or -errno with the reason (and any verifier log) in msg as a C string.
   */
  eventsStart(msg: Uint8Array, cap: number, closes: number): number;
  /**
   * out[0] = records consumed, out[1] = protocols seen (1 TCP, 2 UDP; 4/8: scan TCP/UDP whole),
   * out[2..3] = total (low, high), then per record protocol | flags << 8 (1 closing, 2 IPv6) | port << 16.
   */
  eventsDrain(out: Uint32Array, cap: number): number;
  /** Detaches the programs and frees the ring buffer. */
  eventsStop(): number;
  /** A hook's BPF instructions (8 bytes each) as ph_events_start would load them, for tests; the count. */
  eventsProgram(hook: number, ring: number, cookieLo: number, cookieHi: number, pid: number, closes: number, out: Uint8Array, cap: number): number;
  /** A numeric host and port as the 20-byte UDP address (family u16, port u16, address); -EINVAL if not numeric. */
  udpAddress(host: Uint8Array, port: number, out: Uint8Array): number;
  /** A non-blocking UDP socket bound to `local` and/or connected to `peer` (20-byte addresses, family 0: none); the fd. */
  udpOpen(local: Uint8Array, peer: Uint8Array, v6only: number, bufferBytes: number): number;
  /** The socket's bound address (20 bytes). */
  udpLocal(fd: number, out: Uint8Array): number;
  /** SO_RCVBUF and SO_SNDBUF as the kernel reports them (twice what it granted). */
  udpBuffers(fd: number, out: Int32Array): number;
  /** Datagrams the kernel dropped at the socket (SO_MEMINFO), or -errno. */
  udpDrops(fd: number): number;
  /** recvmmsg(): datagrams packed into buf, 6 u32 of meta each (length, sender's address); the count, 0 if none. */
  udpRecv(fd: number, buf: Uint8Array, cap: number, meta: Uint32Array, max: number): number;
  /** sendmmsg(): count datagrams packed in buf (lens), to `to` (family 0: the connected peer); how many were dealt with. */
  udpSend(fd: number, buf: Uint8Array, lens: Uint32Array, count: number, to: Uint8Array): number;
  /** Messages udpSend has handed to the kernel so far, all sockets (31 bits, wrapping): a run of one size goes as one. */
  udpSendMessages(): number;
  /** Starts the UDP pump thread (native/udp_pump.c) once; the eventfd readable when pumps ended. */
  udpPumpStart(): number;
  /** Pumps a connected UDP socket <-> a data stream of datagram frames (both dup()ed); the pump's id. */
  udpPumpAdd(udp: number, stream: number, toStream: Uint8Array, toStreamLen: number, queued: number, fromStream: Uint8Array, fromStreamLen: number, budget: number, group: number): number;
  /** Frames for the pump's stream; `payload` bytes count against its budget. 1 written, 0 dropped over budget. */
  udpPumpWrite(id: number, frames: Uint8Array, len: number, payload: number): number;
  /** out: 10 u64 (see native/udp_pump.c's ST_ names). */
  udpPumpStats(id: number, out: BigUint64Array): number;
  udpPumpClose(id: number): number;
  udpPumpAbort(id: number): number;
  /** Ids of pumps that ended since the last call. */
  udpPumpReap(ids: Int32Array, cap: number): number;
  udpPumpFree(id: number): number;
  /** The budget a pump given `floor` grows to for a far end that delivered `bytes` in `ms` (for tests). */
  udpPumpGrownBudget(floor: number, bytes: number, ms: number): number;
  /** A UDP socket sharing the listening socket's address, connected to `peer` (20-byte form); the fd. */
  udpFlowSocket(listenFd: number, peer: Uint8Array, bufferBytes: number): number;
  /** Loads and attaches the connect() rewrite (native/connect_rewrite.c); 0, or -errno with the reason in msg. */
  rewriteStart(msg: Uint8Array, cap: number): number;
  /** Connections from this namespace to hostIp4:hostPort (4 bytes each, network order) go to guestIp4:guestPort. */
  rewriteSet(hostIp4: Uint8Array, hostPort: number, guestIp4: Uint8Array, guestPort: number): number;
  rewriteClear(hostIp4: Uint8Array, hostPort: number): number;
  /** 1 while rewritten (a connection that failed to connect takes the rewrite away), else 0. */
  rewriteActive(hostIp4: Uint8Array, hostPort: number): number;
  /** out: connections, closed, failed, bytes in, bytes out. */
  rewriteStats(hostIp4: Uint8Array, hostPort: number, out: BigUint64Array): number;
  rewriteForget(hostIp4: Uint8Array, hostPort: number): number;
  rewriteStop(): number;
  errnoName(err: number): string;
  strerror(err: number): string;
}

/** The shim's C signatures, for adapters that declare them (bun:ffi, Deno.dlopen, koffi). */
export const SIGNATURES = {
  ph_vsock_socket: { args: [], returns: "i32" },
  ph_vsock_bind_listen: { args: ["i32", "u32", "u32", "i32"], returns: "i32" },
  ph_vsock_getsockname: { args: ["i32", "ptr"], returns: "i32" },
  ph_vsock_accept: { args: ["i32", "ptr"], returns: "i32" },
  ph_vsock_local_cid: { args: [], returns: "i32" },
  ph_close: { args: ["i32"], returns: "i32" },
  ph_socketpair: { args: ["ptr"], returns: "i32" },
  ph_diag_listeners: { args: ["ptr", "i32", "i32"], returns: "i32" },
  ph_diag_port: { args: ["ptr", "i32", "i32", "i32", "i32"], returns: "i32" },
  ph_diag_socket: { args: ["ptr", "i32", "i32", "i32", "ptr", "i32"], returns: "i32" },
  ph_diag_subscribe: { args: [], returns: "i32" },
  ph_diag_subscribe_to: { args: ["i32"], returns: "i32" },
  ph_diag_read_events: { args: ["i32", "ptr", "i32"], returns: "i32" },
  ph_vsock_connect_start: { args: ["u32", "u32"], returns: "i32" },
  ph_socket_error: { args: ["i32"], returns: "i32" },
  ph_peek: { args: ["i32", "ptr", "i32"], returns: "i32" },
  ph_listen_backlog: { args: ["i32", "i32"], returns: "i32" },
  ph_poll_now: { args: ["i32"], returns: "i32" },
  ph_set_blocking: { args: ["i32"], returns: "i32" },
  ph_relay_start: { args: [], returns: "i32" },
  ph_relay_add: { args: ["i32", "i32", "ptr", "i32", "ptr", "i32", "i32"], returns: "i32" },
  ph_relay_dial: { args: ["i32", "ptr", "i32", "ptr", "i32", "i32", "i32", "i32", "ptr", "i32"], returns: "i32" },
  ph_relay_counters: { args: ["u32", "ptr"], returns: "i32" },
  ph_relay_abort: { args: ["u32"], returns: "i32" },
  ph_relay_abort_all: { args: [], returns: "i32" },
  ph_relay_release: { args: ["u32"], returns: "i32" },
  ph_relay_totals: { args: ["ptr"], returns: "i32" },
  ph_data_listen: { args: ["i32", "ptr", "i32", "i32", "i32", "i32"], returns: "i32" },
  ph_data_unlisten: { args: ["i32"], returns: "i32" },
  ph_forward_target: { args: ["i32", "ptr", "i32", "ptr", "i32", "i32", "i32"], returns: "i32" },
  ph_data_listener_stats: { args: ["i32", "ptr"], returns: "i32" },
  ph_unix_listen: { args: ["ptr", "i32"], returns: "i32" },
  ph_watch: { args: ["i32", "u32", "u32"], returns: "i32" },
  ph_unwatch: { args: ["i32"], returns: "i32" },
  ph_events_start: { args: ["ptr", "i32", "i32"], returns: "i32" },
  ph_events_drain: { args: ["ptr", "i32"], returns: "i32" },
  ph_events_stop: { args: [], returns: "i32" },
  ph_events_program: { args: ["i32", "i32", "u32", "u32", "i32", "i32", "ptr", "i32"], returns: "i32" },
  ph_udp_address: { args: ["ptr", "i32", "ptr"], returns: "i32" },
  ph_udp_open: { args: ["ptr", "ptr", "i32", "i32"], returns: "i32" },
  ph_udp_local: { args: ["i32", "ptr"], returns: "i32" },
  ph_udp_buffers: { args: ["i32", "ptr"], returns: "i32" },
  ph_udp_drops: { args: ["i32"], returns: "i32" },
  ph_udp_recv: { args: ["i32", "ptr", "i32", "ptr", "i32"], returns: "i32" },
  ph_udp_send: { args: ["i32", "ptr", "ptr", "i32", "ptr"], returns: "i32" },
  ph_udp_send_messages: { args: [], returns: "i32" },
  ph_udp_pump_start: { args: [], returns: "i32" },
  ph_udp_pump_add: { args: ["i32", "i32", "ptr", "i32", "i32", "ptr", "i32", "i32", "i32"], returns: "i32" },
  ph_udp_pump_write: { args: ["i32", "ptr", "i32", "i32"], returns: "i32" },
  ph_udp_pump_stats: { args: ["i32", "ptr"], returns: "i32" },
  ph_udp_pump_close: { args: ["i32"], returns: "i32" },
  ph_udp_pump_abort: { args: ["i32"], returns: "i32" },
  ph_udp_pump_reap: { args: ["ptr", "i32"], returns: "i32" },
  ph_udp_pump_free: { args: ["i32"], returns: "i32" },
  ph_udp_pump_grown_budget: { args: ["i32", "i32", "i32"], returns: "i32" },
  ph_udp_flow_socket: { args: ["i32", "ptr", "i32"], returns: "i32" },
  ph_rewrite_start: { args: ["ptr", "i32"], returns: "i32" },
  ph_rewrite_set: { args: ["ptr", "i32", "ptr", "i32"], returns: "i32" },
  ph_rewrite_clear: { args: ["ptr", "i32"], returns: "i32" },
  ph_rewrite_active: { args: ["ptr", "i32"], returns: "i32" },
  ph_rewrite_stats: { args: ["ptr", "i32", "ptr"], returns: "i32" },
  ph_rewrite_forget: { args: ["ptr", "i32"], returns: "i32" },
  ph_rewrite_stop: { args: [], returns: "i32" },
  ph_errno_name: { args: ["i32"], returns: "cstring" },
  ph_strerror: { args: ["i32"], returns: "cstring" },
} as const;

export type ShimSymbol = keyof typeof SIGNATURES;

/** Maps the C symbols onto the interface, given a call function from an adapter. */
export function bindShim(call: (name: ShimSymbol, ...args: unknown[]) => unknown): NativeShim {
  const num = (name: ShimSymbol, ...args: unknown[]) => Number(call(name, ...args));
  return {
    vsockSocket: () => num("ph_vsock_socket"),
    vsockBindListen: (fd, cid, port, backlog) => num("ph_vsock_bind_listen", fd, cid, port, backlog),
    vsockGetsockname: (fd, out) => num("ph_vsock_getsockname", fd, out),
    vsockAccept: (fd, peer) => num("ph_vsock_accept", fd, peer),
    vsockLocalCid: () => num("ph_vsock_local_cid"),
    close: (fd) => num("ph_close", fd),
    socketpair: (fds) => num("ph_socketpair", fds),
    diagListeners: (buf, cap, protocols) => num("ph_diag_listeners", buf, cap, protocols),
    diagPort: (buf, cap, protocols, port, families) => num("ph_diag_port", buf, cap, protocols, port, families),
    diagSocket: (buf, cap, protocols, family, addr, port) => num("ph_diag_socket", buf, cap, protocols, family, addr, port),
    diagSubscribe: () => num("ph_diag_subscribe"),
    diagSubscribeTo: (protocols) => num("ph_diag_subscribe_to", protocols),
    diagReadEvents: (fd, buf, cap) => num("ph_diag_read_events", fd, buf, cap),
    vsockConnectStart: (cid, port) => num("ph_vsock_connect_start", cid, port),
    socketError: (fd) => num("ph_socket_error", fd),
    peek: (fd, buf, cap) => num("ph_peek", fd, buf, cap),
    listenBacklog: (fd, backlog) => num("ph_listen_backlog", fd, backlog),
    pollNow: (fd) => num("ph_poll_now", fd),
    setBlocking: (fd) => num("ph_set_blocking", fd),
    relayStart: () => num("ph_relay_start"),
    relayAdd: (a, b, toB, toBLen, toA, toALen, flags) => num("ph_relay_add", a, b, toB, toBLen, toA, toALen, flags),
    relayDial: (fd, host, port, pre, preLen, flags, timeoutMs, keepAliveS, hello, helloLen) =>
      num("ph_relay_dial", fd, host, port, pre, preLen, flags, timeoutMs, keepAliveS, hello, helloLen),
    relayCounters: (id, out) => num("ph_relay_counters", id, out),
    relayAbort: (id) => num("ph_relay_abort", id),
    relayAbortAll: () => num("ph_relay_abort_all"),
    relayRelease: (id) => num("ph_relay_release", id),
    relayTotals: (out) => num("ph_relay_totals", out),
    dataListen: (fd, secret, allowCid, flags, headerMs, dialMs) => num("ph_data_listen", fd, secret, allowCid, flags, headerMs, dialMs),
    dataUnlisten: (id) => num("ph_data_unlisten", id),
    forwardTarget: (id, host, port, hello, helloLen, dialMs, keepAliveS) => num("ph_forward_target", id, host, port, hello, helloLen, dialMs, keepAliveS),
    dataListenerStats: (id, out) => num("ph_data_listener_stats", id, out),
    unixListen: (path, backlog) => num("ph_unix_listen", path, backlog),
    watch: (fd, events, token) => num("ph_watch", fd, events, token),
    unwatch: (fd) => num("ph_unwatch", fd),
    eventsStart: (msg, cap, closes) => num("ph_events_start", msg, cap, closes),
    eventsDrain: (out, cap) => num("ph_events_drain", out, cap),
    eventsStop: () => num("ph_events_stop"),
    eventsProgram: (hook, ring, lo, hi, pid, closes, out, cap) => num("ph_events_program", hook, ring, lo, hi, pid, closes, out, cap),
    udpAddress: (host, port, out) => num("ph_udp_address", host, port, out),
    udpOpen: (local, peer, v6only, bufferBytes) => num("ph_udp_open", local, peer, v6only, bufferBytes),
    udpLocal: (fd, out) => num("ph_udp_local", fd, out),
    udpBuffers: (fd, out) => num("ph_udp_buffers", fd, out),
    udpDrops: (fd) => num("ph_udp_drops", fd),
    udpRecv: (fd, buf, cap, meta, max) => num("ph_udp_recv", fd, buf, cap, meta, max),
    udpSend: (fd, buf, lens, count, to) => num("ph_udp_send", fd, buf, lens, count, to),
    udpSendMessages: () => num("ph_udp_send_messages"),
    udpPumpStart: () => num("ph_udp_pump_start"),
    udpPumpAdd: (udp, stream, toStream, toStreamLen, queued, fromStream, fromStreamLen, budget, group) =>
      num("ph_udp_pump_add", udp, stream, toStream, toStreamLen, queued, fromStream, fromStreamLen, budget, group),
    udpPumpWrite: (id, frames, len, payload) => num("ph_udp_pump_write", id, frames, len, payload),
    udpPumpStats: (id, out) => num("ph_udp_pump_stats", id, out),
    udpPumpClose: (id) => num("ph_udp_pump_close", id),
    udpPumpAbort: (id) => num("ph_udp_pump_abort", id),
    udpPumpReap: (ids, cap) => num("ph_udp_pump_reap", ids, cap),
    udpPumpFree: (id) => num("ph_udp_pump_free", id),
    udpPumpGrownBudget: (floor, bytes, ms) => num("ph_udp_pump_grown_budget", floor, bytes, ms),
    udpFlowSocket: (listenFd, peer, bufferBytes) => num("ph_udp_flow_socket", listenFd, peer, bufferBytes),
    rewriteStart: (msg, cap) => num("ph_rewrite_start", msg, cap),
    rewriteSet: (hostIp4, hostPort, guestIp4, guestPort) => num("ph_rewrite_set", hostIp4, hostPort, guestIp4, guestPort),
    rewriteClear: (hostIp4, hostPort) => num("ph_rewrite_clear", hostIp4, hostPort),
    rewriteActive: (hostIp4, hostPort) => num("ph_rewrite_active", hostIp4, hostPort),
    rewriteStats: (hostIp4, hostPort, out) => num("ph_rewrite_stats", hostIp4, hostPort, out),
    rewriteForget: (hostIp4, hostPort) => num("ph_rewrite_forget", hostIp4, hostPort),
    rewriteStop: () => num("ph_rewrite_stop"),
    errnoName: (err) => String(call("ph_errno_name", err)),
    strerror: (err) => String(call("ph_strerror", err)),
  };
}

/** A failed native call, with the errno's name (EADDRINUSE, …) as `code`. */
export class NativeError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "NativeError";
  }
}

/** Returns a non-negative result, or throws a NativeError naming the errno and the call. */
export function check(shim: NativeShim, result: number, what: string): number {
  if (result >= 0) return result;
  throw new NativeError(shim.errnoName(result), `${what}: ${shim.errnoName(result)} (${shim.strerror(result)})`);
}
