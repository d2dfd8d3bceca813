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

/** A private unix socket whose connections are each relayed to a fresh `dial()`. */
export function relayThroughUnix(dial: () => Promise<net.Socket>): ClientTarget {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "porthole-relay-"));
  const socketPath = path.join(dir, "agent.sock");
  const server = net.createServer({ allowHalfOpen: true }, (local) => {
    local.pause();
    dial().then(
      (remote) => {
        spliceSockets(local, remote);
        local.resume();
      },
      () => local.destroy(),
    );
  });
  server.listen(socketPath);
  return {
    target: `unix://${socketPath}`,
    close: () => {
      server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
