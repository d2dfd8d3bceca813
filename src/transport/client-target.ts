// The host's side: a target that grpc-js can dial for any transport. grpc-js dials unix and
// TCP itself but cannot take a socket, so vsock (and TCP, which must send its token first)
// go through a private local unix socket whose every connection is relayed to the real one.
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { formatTransportAddress, type TransportAddress } from "../core/transport-address.ts";
import { dialTransport } from "./dial.ts";
import { tokenLine } from "./token.ts";
import { spliceSockets } from "./tunnel-relay.ts";
import { dialVsock } from "./vsock.ts";

const DIAL_TIMEOUT_MS = 5000;

export interface ClientTarget {
  /** For grpc-js: `unix:///…`. */
  target: string;
  close(): void;
  /** Where grpc-js dials a relay: why the relay's own dial last failed, which grpc-js cannot see. */
  dialError?(): string | undefined;
}

export function clientTarget(address: TransportAddress, options: { token?: string } = {}): ClientTarget {
  const name = formatTransportAddress(address);
  switch (address.kind) {
    case "unix":
      return { target: `unix://${address.path}`, close: () => {} };
    case "serial":
      throw new Error(`${name}: the host reaches a serial port through its QEMU chardev socket: use --guest unix:///path/to/chardev.sock`);
    case "tcp": {
      const token = options.token;
      if (!token) throw new Error(`${name}: a TCP agent channel needs --token-file (the same token as the guest's)`);
      return relayThroughUnix(async () => {
        const socket = await dialTransport(address, DIAL_TIMEOUT_MS);
        socket.write(tokenLine(token));
        return socket;
      });
    }
    case "vsock":
      if (address.cid === undefined) throw new Error(`${name}: to connect, give the guest's CID (vsock://CID:${address.port})`);
      return relayThroughUnix(() => dialVsock(address.cid!, address.port, DIAL_TIMEOUT_MS));
  }
}

/**
 * A private unix socket (in a fresh 0700 directory) whose connections are each relayed to a
 * fresh `dial()`. A dial that fails closes that connection (grpc-js reports it and retries);
 * no error here can end the agent; the directory goes with close() or the process.
 */
export function relayThroughUnix(dial: () => Promise<net.Socket>, onError: (message: string) => void = () => {}): ClientTarget {
  return privateUnixListener((local) => {
    local.pause();
    local.on("error", () => {}); // the relay below resets the far side; nothing to add
    dial().then(
      (remote) => {
        if (local.destroyed) return void remote.destroy();
        spliceSockets(local, remote);
        local.resume();
      },
      (err: Error) => {
        onError(err.message);
        local.destroy();
      },
    );
  }, onError);
}

/** A private unix socket (in a fresh 0700 directory) whose connections go to `onConnection`. */
export function privateUnixListener(onConnection: (local: net.Socket) => void, onError: (message: string) => void = () => {}): ClientTarget {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "porthole-relay-"));
  const socketPath = path.join(dir, "agent.sock");
  const remove = () => fs.rmSync(dir, { recursive: true, force: true });
  process.once("exit", remove);
  const server = net.createServer({ allowHalfOpen: true }, onConnection);
  server.on("error", (err) => onError(`the private relay socket ${socketPath} failed: ${err.message}`));
  server.listen(socketPath);
  return {
    target: `unix://${socketPath}`,
    close: () => {
      server.close();
      process.off("exit", remove);
      remove();
    },
  };
}
