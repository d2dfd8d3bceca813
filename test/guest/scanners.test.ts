// The netlink scanner over a fake shim: what the dump returns, decoded.
import { expect, test } from "bun:test";
import { DIAG_RECORD_BYTES } from "../../src/core/diag-record.ts";
import { netlinkScanner } from "../../src/guest/scanners.ts";
import type { NativeShim } from "../../src/runtime/native-api.ts";

const ENOBUFS = 105;

/** A shim whose TCP dump has `count` listeners on 127.0.0.1:10000.. (and ENOBUFS if they do not fit). */
function fakeShim(count: number, calls: number[]): NativeShim {
  return {
    diagListeners(buf: Uint8Array, cap: number, protocols: number) {
      calls.push(cap);
      if (protocols !== 1) return 0;
      if (count * DIAG_RECORD_BYTES > cap) return -ENOBUFS;
      const view = new DataView(buf.buffer, buf.byteOffset);
      for (let i = 0; i < count; i++) {
        const at = i * DIAG_RECORD_BYTES;
        buf[at] = 2; // AF_INET
        buf[at + 1] = 6; // TCP
        buf[at + 2] = 10; // LISTEN
        view.setUint16(at + 4, 10000 + i, true);
        buf.set([127, 0, 0, 1], at + 8);
      }
      return count;
    },
    errnoName: (n: number) => (Math.abs(n) === ENOBUFS ? "ENOBUFS" : `E${Math.abs(n)}`),
    strerror: () => "",
  } as unknown as NativeShim;
}

for (const count of [104, 105, 106]) {
  test(`a dump of exactly ${count} records is ${count} ports, not an error`, async () => {
    const calls: number[] = [];
    const { ports, errors } = await netlinkScanner(fakeShim(count, calls)).scan();
    expect(errors).toEqual([]);
    expect(ports).toHaveLength(count);
    expect(ports[count - 1]).toEqual({ protocol: "tcp", ip: "127.0.0.1", port: 10000 + count - 1 });
    expect(calls.filter((c) => c > 1024 * DIAG_RECORD_BYTES)).toEqual([]); // the buffer was not grown
  });
}

test("a dump that overflows the buffer grows it and is read whole", async () => {
  const calls: number[] = [];
  const { ports, errors } = await netlinkScanner(fakeShim(5000, calls)).scan();
  expect(errors).toEqual([]);
  expect(ports).toHaveLength(5000);
});

test("a refused destroy-event subscription is said with what happens to closes and what to do (out of fds: the limit; else root and inet_diag)", () => {
  const said: string[] = [];
  const refusing = (errno: string) =>
    ({ diagSubscribeTo: () => -24, errnoName: () => errno, strerror: () => "refused" }) as unknown as NativeShim;
  netlinkScanner(refusing("EMFILE"), undefined, (l) => said.push(l)).watchChanges!(() => {})();
  expect(said.find((l) => l.includes("TCP socket-destroy"))).toMatch(/a closed TCP port is noticed by the next re-scan.*ulimit -n/);
  said.length = 0;
  netlinkScanner(refusing("EPERM"), undefined, (l) => said.push(l), "bpf-closes").watchChanges!(() => {})();
  expect(said.find((l) => l.includes("TCP socket-destroy"))).toMatch(/a closed TCP listener is reported by the BPF program instead; check that the agent runs as root/);
  expect(said.find((l) => l.includes("UDP socket-destroy"))).toMatch(/a closed UDP port is noticed by the next re-scan/);
});
