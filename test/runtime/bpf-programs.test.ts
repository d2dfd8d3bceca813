// The shim's hand-assembled BPF programs, read back instruction by instruction (the kernel's
// verifier is what accepts them: test/e2e/port-detector.test.ts loads them for real).
import { beforeAll, describe, expect, test } from "bun:test";
import type { NativeShim } from "../../src/runtime/native-api.ts";
import { loadNative } from "../../src/runtime/native.ts";
import { EVENT_WORDS, toBatch } from "../../src/guest/kernel-events.ts";
import { closedListeners } from "../../src/core/diag-record.ts";

let shim: NativeShim;
beforeAll(async () => {
  const loaded = await loadNative();
  if (!loaded.shim) throw new Error(`the native shim did not load: ${loaded.error} (run make shim)`);
  shim = loaded.shim;
});

interface Insn {
  code: number;
  dst: number;
  src: number;
  off: number;
  imm: number;
}

const HOOKS = { listen: 0, bind4: 1, bind6: 2 } as const;
const BPF_JMP = 0x05;
const BPF_CALL = 0x80;
const BPF_EXIT = 0x90;
const FN_GET_NETNS_COOKIE = 122;
const FN_SOCK_OPS_CB_FLAGS_SET = 59;
const FN_RINGBUF_OUTPUT = 130;
const FN_GET_CURRENT_PID_TGID = 14;

function program(hook: number, cookie: bigint, ring = 42, pid = 1, closes = 1): Insn[] {
  const out = new Uint8Array(128 * 8);
  const n = shim.eventsProgram(hook, ring, Number(cookie & 0xffffffffn), Number(cookie >> 32n), pid, closes, out, out.length);
  expect(n).toBeGreaterThan(0);
  const view = new DataView(out.buffer);
  return Array.from({ length: n }, (_, i) => ({
    code: out[i * 8]!,
    dst: out[i * 8 + 1]! & 0xf,
    src: out[i * 8 + 1]! >> 4,
    off: view.getInt16(i * 8 + 2, true),
    imm: view.getInt32(i * 8 + 4, true),
  }));
}

const calls = (p: Insn[]) => p.filter((i) => i.code === (BPF_JMP | BPF_CALL)).map((i) => i.imm);

describe("BPF programs", () => {
  for (const [name, hook] of Object.entries(HOOKS)) {
    test(`${name}: every jump lands inside the program, which ends by returning 1 (with and without closes)`, () => {
      for (const p of [program(hook, 0x1122334455667788n), program(hook, 0x1122334455667788n, 42, 1, 0)]) {
        p.forEach((insn, at) => {
          const cls = insn.code & 0x07;
          const op = insn.code & 0xf0;
          if (cls === BPF_JMP && op !== BPF_CALL && op !== BPF_EXIT) {
            const target = at + 1 + insn.off;
            expect(target).toBeGreaterThan(at); // forward only: the verifier refuses loops
            expect(target).toBeLessThan(p.length);
          }
        });
        expect(p.at(-1)!.code).toBe(BPF_JMP | BPF_EXIT);
        expect(p.at(-2)).toMatchObject({ code: 0xb7, dst: 0, imm: 1 }); // r0 = 1
      }
    });

    test(`${name}: with a cookie it compares this namespace's cookie (both halves) before writing to the ring`, () => {
      const p = program(hook, 0x1122334455667788n);
      expect(calls(p)).toContain(FN_GET_NETNS_COOKIE);
      const wide = p.findIndex((i) => i.code === 0x18 && i.src === 0 && i.imm === 0x55667788);
      expect(wide).toBeGreaterThan(-1);
      expect(p[wide + 1]!.imm).toBe(0x11223344);
      expect(calls(p).indexOf(FN_GET_NETNS_COOKIE)).toBeLessThan(calls(p).indexOf(FN_RINGBUF_OUTPUT));
      // The ring is the map fd given (a pseudo map load).
      expect(p.some((i) => i.code === 0x18 && i.src === 1 && i.imm === 42)).toBe(true);
    });

    test(`${name}: without a cookie (a kernel without SO_NETNS_COOKIE) it has no namespace check`, () => {
      expect(calls(program(hook, 0n))).not.toContain(FN_GET_NETNS_COOKIE);
    });
  }

  test("listen asks for the listener's state changes (its close) only with closes; bind never does", () => {
    expect(calls(program(HOOKS.listen, 0n))).toContain(FN_SOCK_OPS_CB_FLAGS_SET);
    expect(calls(program(HOOKS.listen, 0n, 42, 1, 0))).not.toContain(FN_SOCK_OPS_CB_FLAGS_SET);
    expect(calls(program(HOOKS.bind4, 0n))).not.toContain(FN_SOCK_OPS_CB_FLAGS_SET);
  });

  test("listen: the jump past listen()'s own record lands on the state-change branch (r3 = the old state), with and without closes", () => {
    for (const closes of [1, 0]) {
      const p = program(HOOKS.listen, 0n, 42, 1, closes);
      // `if r2 != BPF_SOCK_OPS_TCP_LISTEN_CB (11)`: the op, read again after the first checks
      const at = p.findIndex((i) => i.code === 0x55 && i.dst === 2 && i.imm === 11);
      expect(at).toBeGreaterThan(-1);
      expect(p[at + 1 + p[at]!.off]).toMatchObject({ code: 0x61, dst: 3, src: 1, off: 4 }); // ldxw r3 = ctx->args[0]
    }
  });

  test("listen and bind name the calling process in the record (its owner, to look at first); without pid they do not ask", () => {
    for (const hook of Object.values(HOOKS)) {
      const with_ = calls(program(hook, 0n));
      expect(with_).toContain(FN_GET_CURRENT_PID_TGID);
      expect(with_.indexOf(FN_GET_CURRENT_PID_TGID)).toBeLessThan(with_.lastIndexOf(FN_RINGBUF_OUTPUT));
      expect(calls(program(hook, 0n, 42, 0))).not.toContain(FN_GET_CURRENT_PID_TGID);
    }
  });

  test("an unknown hook is refused", () => {
    expect(shim.eventsProgram(9, 1, 0, 0, 1, 1, new Uint8Array(512), 512)).toBeLessThan(0);
  });
});

describe("event records", () => {
  /** One drained record: protocol | flags << 8 | port << 16, the process, the address words. */
  const rec = (protocol: number, flags: number, port: number, pid: number, addr: number[] = []) => {
    const words = new Uint32Array(EVENT_WORDS);
    words[0] = protocol | (flags << 8) | (port << 16);
    words[1] = pid;
    new Uint8Array(words.buffer, 8, 16).set(addr);
    return [...words];
  };
  const batch = (records: number[][], flags: number, room = records.length) => {
    const out = new Uint32Array(4 + EVENT_WORDS * room);
    out.set([records.length, flags, records.length, 0]);
    records.slice(0, room).forEach((r, i) => out.set(r, 4 + EVENT_WORDS * i));
    return toBatch(out, records.length);
  };

  test("a drained batch names each port once, with its family and whether it was a close", () => {
    expect(
      batch(
        [
          rec(6, 0, 8080, 1234), // TCP listen, IPv4, by process 1234
          rec(6, 1, 8080, 0), // TCP close, IPv4
          rec(17, 2, 5353, 0), // UDP bind, IPv6, process unknown
          rec(6, 0, 8080, 1234), // the listen again
        ],
        1 | 2,
      ),
    ).toEqual({
      whole: 0,
      ports: [
        { protocol: "tcp", port: 8080, families: 1, pid: 1234 },
        { protocol: "tcp", port: 8080, families: 1, closing: true, closeOnly: true },
        { protocol: "udp", port: 5353, families: 2, bound: true },
      ],
    });
  });

  test("a record with the socket's address (PH_EV_ADDR) names it, so the watcher looks up that one socket; two addresses on one port are two ports", () => {
    const loopback6 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const { ports } = batch(
      [rec(6, 4, 8080, 7, [127, 0, 0, 1]), rec(6, 4, 8080, 7, [10, 0, 0, 2]), rec(6, 4 | 1, 8080, 0, [127, 0, 0, 1]), rec(17, 4 | 2, 5353, 0, loopback6)],
      1 | 2,
    );
    expect(ports.map(({ addr: _, ...p }) => p)).toEqual([
      { protocol: "tcp", port: 8080, families: 1, pid: 7, ip: "127.0.0.1" },
      { protocol: "tcp", port: 8080, families: 1, pid: 7, ip: "10.0.0.2" },
      { protocol: "tcp", port: 8080, families: 1, closing: true, closeOnly: true, ip: "127.0.0.1" },
      { protocol: "udp", port: 5353, families: 2, bound: true, ip: "::1" },
    ]);
    expect([...ports[0]!.addr!]).toEqual([127, 0, 0, 1, ...new Array(12).fill(0)]);
    expect([...ports[3]!.addr!]).toEqual(loopback6);
  });

  test("records past the room, or without a port, make that protocol a whole scan", () => {
    expect(batch([rec(6, 0, 8080, 0), rec(17, 0, 53, 0), rec(17, 0, 0, 0)], 1 | 2 | 8, 1)).toEqual({ whole: 2, ports: [{ protocol: "tcp", port: 8080, families: 1 }] });
  });
});

describe("destroy events", () => {
  /** One sock_diag message: family, then sport and dport (big-endian) as inet_diag_msg has them. */
  function message(family: number, sport: number, dport: number): Uint8Array {
    const m = new Uint8Array(16 + 72);
    const view = new DataView(m.buffer);
    view.setUint32(0, m.length, true);
    view.setUint16(4, 20, true); // SOCK_DIAG_BY_FAMILY
    m[16] = family;
    view.setUint16(16 + 4, sport, false);
    view.setUint16(16 + 6, dport, false);
    return m;
  }
  const join = (...parts: Uint8Array[]) => Uint8Array.from(parts.flatMap((p) => [...p]));

  test("a closed listener names its port and family; connected sockets closing name nothing", () => {
    expect(closedListeners(join(message(2, 8080, 0), message(10, 8080, 0), message(2, 40000, 8080), message(2, 8080, 0)))).toEqual([
      { family: 4, port: 8080 },
      { family: 6, port: 8080 },
    ]);
  });

  test("bytes that do not parse mean: scan everything", () => {
    expect(closedListeners(new Uint8Array([1, 2, 3]))).toBeUndefined();
  });
});
