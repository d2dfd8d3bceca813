// The UDP sockets of the forwards (the host's listening socket, the guest's socket per flow).
// Where the native shim runs they are its batched sockets (runtime/native-udp.ts: recvmmsg and
// sendmmsg, large buffers); elsewhere (no shim, PORTHOLE_NATIVE_UDP=0) the runtime's node:dgram
// sockets, one datagram per call and event, as before, and that is said once.
//   PORTHOLE_NATIVE_UDP=0   the runtime's sockets (for tests and the benchmark)
import * as dgram from "node:dgram";
import { isIP, isIPv6, type Socket } from "node:net";
import { loadNative } from "../runtime/native.ts";
import type { NativeShim } from "../runtime/native-api.ts";
import { sharedRelayLoop, socketFd, type NativeRelayLoop } from "../runtime/native-relay.ts";
import { NativeUdpSocket, type UdpPeer } from "../runtime/native-udp.ts";
import { sharedUdpPumps, type UdpPumps } from "../runtime/native-udp-pump.ts";

export type { UdpPeer } from "../runtime/native-udp.ts";

/**
 * Kernel buffers of a native UDP socket. Large enough to ride out a busy turn of the event loop
 * at a gigabit (~8 ms); not larger: what waits in them is a tail that reaches the far server
 * after its client stopped (see transport/datagram-budget.ts).
 */
export const UDP_BUFFER_BYTES = 1 << 20;

export interface DatagramSocket {
  /** Starts reading: the datagrams of one read, each with its sender (the same object for the same sender in a row). */
  receive(listener: (datagrams: Buffer[], from: UdpPeer[]) => void): void;
  /** To `to` (a sender this socket received from) or, on a connected socket, to its peer. Undeliverable ones are lost. */
  send(datagrams: Buffer[], to?: UdpPeer): void;
  /** Datagrams the kernel dropped at this socket before they were read (the runtime's sockets cannot tell: 0). */
  kernelDrops(): number;
  close(): void;
  /** The shim's socket under it (a pumped flow's socket shares its port); undefined for the runtime's. */
  fd?: number;
}

let native: { shim: NativeShim; loop: NativeRelayLoop } | undefined;
let fallbackReason: string | undefined = "UDP sockets were not prepared";
let notice: (message: string) => void = () => {};
let noticed = false;
let toldBuffers = false;
let pumpReason: string | undefined = "UDP sockets were not prepared";
let toldPump = false;

/** Decides once which sockets carry UDP forwards, and says so through `say` (and later if the native ones give way). */
export async function prepareDatagrams(say: (message: string) => void, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  notice = say;
  noticed = false;
  toldFlowRefused = false;
  toldBuffers = false;
  const setting = env.PORTHOLE_NATIVE_UDP ?? "";
  if (setting === "0" || setting === "false") fallbackReason = `PORTHOLE_NATIVE_UDP=${setting}`;
  else {
    const { shim, error } = await loadNative();
    try {
      if (!shim) throw new Error(`the native shim did not load (${error})`);
      native = { shim, loop: sharedRelayLoop(shim) };
      fallbackReason = undefined;
    } catch (err) {
      fallbackReason = (err as Error).message;
    }
  }
  if (fallbackReason) sayFallback(fallbackReason);
  toldPump = false;
  const pumpSetting = env.PORTHOLE_NATIVE_UDP_PUMP ?? "";
  pumpReason = fallbackReason ?? (pumpSetting === "0" || pumpSetting === "false" ? `PORTHOLE_NATIVE_UDP_PUMP=${pumpSetting}` : undefined);
}

/**
 * The shim's pump thread for UDP flows on data streams (runtime/native-udp-pump.ts), or
 * undefined where it cannot run: the flows then go through the event loop, said once.
 */
export function datagramPumps(): { pumps: UdpPumps; shim: NativeShim } | undefined {
  const n = usable();
  if (n && !pumpReason) {
    try {
      return { pumps: sharedUdpPumps(n.shim, n.loop), shim: n.shim };
    } catch (err) {
      pumpReason = (err as Error).message;
    }
  }
  if (!toldPump && !fallbackReason) {
    toldPump = true;
    notice(
      `UDP flows on data streams go through the agents' event loops, which lose datagrams of a flood whenever an agent waits for a CPU: ${pumpReason ?? fallbackReason}. ` +
        "The native UDP pump needs the porthole shim (built by make); unset PORTHOLE_NATIVE_UDP_PUMP to use it.",
    );
  }
  return undefined;
}

let toldFlowRefused = false;
/**
 * A flow the pump could not take (its port could not be shared, the pump is full): the event
 * loops carry it, said once (the first reason) since floods lose more datagrams that way.
 */
export function pumpRefusedFlow(why: string): void {
  if (toldFlowRefused) return;
  toldFlowRefused = true;
  notice(
    `a UDP flow goes through the agents' event loops instead of the native pump (${why}); such flows lose more of a flood. ` +
      "Said once; other flows still take the pump where they can.",
  );
}

/**
 * The fd a pump can take over from this stream, or undefined (said once, as pumpRefusedFlow):
 * the runtime must show it, and nothing may wait in the runtime's own write queue.
 */
export function pumpableStreamFd(stream: Socket): number | undefined {
  const fd = socketFd(stream);
  if (fd !== undefined && stream.writableLength === 0) return fd;
  pumpRefusedFlow(fd === undefined ? "the runtime does not show the stream's fd" : "the stream had writes queued");
  return undefined;
}

/** A shim UDP socket connected to ip:port, as a bare fd for a pump (the caller closes it); undefined without the shim. */
export function connectedDatagramFd(ip: string, port: number): number | undefined {
  const n = isIP(ip) ? usable() : undefined;
  if (!n) return undefined;
  const socket = NativeUdpSocket.open(n.shim, n.loop, { peer: { host: ip, port }, bufferBytes: UDP_BUFFER_BYTES });
  checkBuffers(socket);
  return socket.fd;
}

/** Which sockets carry UDP now: "native", or the reason for the runtime's. */
export function datagramMode(): { native: boolean; reason?: string } {
  return usable() ? { native: true } : { native: false, reason: fallbackReason };
}

function sayFallback(reason: string): void {
  if (noticed) return;
  noticed = true;
  notice(
    `UDP forwards use the runtime's sockets, one datagram per call, which loses datagrams above a few hundred Mbit/s: ${reason}. ` +
      "Batched UDP needs the porthole shim (built by make); unset PORTHOLE_NATIVE_UDP to use it.",
  );
}

function usable(): { shim: NativeShim; loop: NativeRelayLoop } | undefined {
  if (native?.loop.broken && !fallbackReason) {
    fallbackReason = `the native relay thread stopped: ${native.loop.broken}`;
    sayFallback(fallbackReason);
  }
  return fallbackReason ? undefined : native;
}

/** A socket bound to ip:port (an IPv6 one takes IPv6 only); rejects with the errno's name as `code` (EADDRINUSE, …). */
export async function bindDatagrams(ip: string, port: number): Promise<DatagramSocket> {
  const n = isIP(ip) ? usable() : undefined; // the shim takes numeric addresses only
  if (n) return nativeSocket(NativeUdpSocket.open(n.shim, n.loop, { local: { host: ip, port }, v6only: isIPv6(ip), bufferBytes: UDP_BUFFER_BYTES }));
  const socket = dgram.createSocket({ type: isIPv6(ip) ? "udp6" : "udp4", ipv6Only: isIPv6(ip) });
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(port, ip, () => {
      socket.off("error", reject);
      resolve();
    });
  });
  return runtimeSocket(socket, false);
}

/** A socket connected to ip:port (replies come only from there). */
export async function connectDatagrams(ip: string, port: number): Promise<DatagramSocket> {
  const n = isIP(ip) ? usable() : undefined; // the shim takes numeric addresses only
  if (n) return nativeSocket(NativeUdpSocket.open(n.shim, n.loop, { peer: { host: ip, port }, bufferBytes: UDP_BUFFER_BYTES }));
  const socket = dgram.createSocket(isIPv6(ip) ? "udp6" : "udp4");
  socket.on("error", () => {}); // e.g. ECONNREFUSED: the server is not there right now
  await new Promise<void>((resolve) => socket.connect(port, ip, resolve));
  return runtimeSocket(socket, true);
}

/**
 * Says once when the kernel granted a socket less buffer than asked: a process that may not pass
 * the system's maximum (not root) gets net.core.rmem_max / wmem_max, often 208 KiB, ~2 ms of a
 * gigabit flood, which then overflows in the kernel whenever the agent is busy for longer.
 */
function checkBuffers(socket: NativeUdpSocket): void {
  if (toldBuffers) return;
  let got: { receive: number; send: number };
  try {
    got = socket.buffers();
  } catch {
    return; // the sizes are advice; a socket that cannot tell still carries datagrams
  }
  if (got.receive >= UDP_BUFFER_BYTES && got.send >= UDP_BUFFER_BYTES) return;
  toldBuffers = true;
  const kib = (n: number) => `${Math.round(n / 1024)} KiB`;
  notice(
    `UDP sockets got ${kib(got.receive)} receive and ${kib(got.send)} send buffers, not the ${kib(UDP_BUFFER_BYTES)} asked ` +
      "(the system's maximum; only root may pass it): a flood above a few hundred Mbit/s loses datagrams in the kernel whenever the agent is busy. " +
      `Raise net.core.rmem_max and net.core.wmem_max to ${UDP_BUFFER_BYTES} or more (sysctl), or run the agent as root.`,
  );
}

function nativeSocket(socket: NativeUdpSocket): DatagramSocket {
  checkBuffers(socket);
  return {
    receive: (listener) => socket.receive(listener),
    send: (datagrams, to) => socket.send(datagrams, to),
    kernelDrops: () => socket.kernelDrops(),
    close: () => socket.close(),
    fd: socket.fd,
  };
}

function runtimeSocket(socket: dgram.Socket, connected: boolean): DatagramSocket {
  let open = true;
  // After binding, a send error (e.g. a client that went away) concerns one datagram only.
  socket.on("error", () => {});
  return {
    receive: (listener) => {
      socket.on("message", (data, info) => listener([data], [{ address: info.address, port: info.port }]));
    },
    send: (datagrams, to) => {
      if (!open) return;
      for (const d of datagrams) {
        if (connected) socket.send(d);
        else if (to) socket.send(d, to.port, to.address);
      }
    },
    kernelDrops: () => 0,
    close: () => {
      if (!open) return;
      open = false;
      socket.close();
    },
  };
}
