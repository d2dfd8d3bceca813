// Finding the socket behind a busy host port in /proc/net tables (real kernel lines).
import { expect, test } from "bun:test";
import { inodesOnPort, listeningUnixPaths, socketInode } from "../../src/core/socket-owner.ts";

const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1
   3: 0200007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0000000000000000 100 0 0 10 0
`;

test("the listening socket on the port, on the same address or a wildcard, not connections", () => {
  expect(inodesOnPort(TCP, "tcp", "127.0.0.1", 8080)).toEqual([111]);
  expect(inodesOnPort(TCP, "tcp", "127.0.0.1", 80)).toEqual([222]); // 0.0.0.0:80 blocks 127.0.0.1:80
  expect(inodesOnPort(TCP, "tcp", "127.0.0.3", 8081)).toEqual([]); // 127.0.0.2:8081 does not block 127.0.0.3
  expect(inodesOnPort(TCP, "tcp", "0.0.0.0", 8081)).toEqual([444]);
  expect(inodesOnPort(TCP, "udp", "127.0.0.1", 8080)).toEqual([]);
});

test("fd links and listening unix sockets", () => {
  expect(socketInode("socket:[12345]")).toBe(12345);
  expect(socketInode("/dev/null")).toBeUndefined();
  const unix = `Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 555 /tmp/a/control.sock
0000000000000000: 00000003 00000000 00000000 0001 03 556 /tmp/a/control.sock
0000000000000000: 00000002 00000000 00010000 0001 01 557 @abstract
`;
  expect(listeningUnixPaths(unix, new Set([555, 556, 557]))).toEqual(["/tmp/a/control.sock"]);
});
