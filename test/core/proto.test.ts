// The wire format must match Lima's field numbers byte for byte.
import { describe, expect, test } from "bun:test";
import { guestServiceDefinition, limaGuestServiceDefinition, portholeServiceDefinition } from "../../src/proto/guest-service.ts";

const hex = (b: Buffer) => b.toString("hex");

describe("GuestService wire format", () => {
  test("method paths have no package prefix", () => {
    expect(Object.values(guestServiceDefinition).map((m) => m.path).sort()).toEqual([
      "/GuestService/GetEvents",
      "/GuestService/GetInfo",
      "/GuestService/PostInotify",
      "/GuestService/SyncTime",
      "/GuestService/Tunnel",
    ]);
    const t = guestServiceDefinition.Tunnel!;
    expect([t.requestStream, t.responseStream]).toEqual([true, true]);
    expect(guestServiceDefinition.GetEvents!.responseStream).toBe(true);
  });

  test("TunnelMessage fields 1..5", () => {
    const m = guestServiceDefinition.Tunnel!;
    const bytes = m.requestSerialize({ id: "i", protocol: "tcp", data: Buffer.from([0xab]), guest_addr: "g", udp_target_addr: "u" });
    // tag = field << 3 | wire type 2 (length-delimited)
    expect(hex(bytes)).toBe("0a0169" + "1203746370" + "1a01ab" + "220167" + "2a0175");
    expect(m.requestDeserialize(Buffer.from("1a0201020a0178", "hex"))).toMatchObject({ id: "x", data: Buffer.from([1, 2]) });
  });

  test("Info and IPPort", () => {
    const m = guestServiceDefinition.GetInfo!;
    const bytes = m.responseSerialize({ local_ports: [{ protocol: "tcp", ip: "::", port: 8080 }] });
    // Info.local_ports = 1 { IPPort.protocol = 1, ip = 2, port = 3 (varint 8080 = 0x90 0x3f) }
    expect(hex(bytes)).toBe("0a0c" + "0a03746370" + "12023a3a" + "18903f");
    // porthole reads Lima's bytes: no owner (null, as proto-loader gives an absent message).
    expect(m.responseDeserialize(bytes)).toEqual({ local_ports: [{ protocol: "tcp", ip: "::", port: 8080, owner: null }] });
  });

  test("Event fields 1..4", () => {
    const m = guestServiceDefinition.GetEvents!;
    const p = { protocol: "udp", ip: "1.2.3.4", port: 53 };
    const bytes = m.responseSerialize({ time: { seconds: 1, nanos: 5 }, added_local_ports: [p], removed_local_ports: [p], errors: ["e"] });
    const ipport = "0a03756470" + "1207312e322e332e34" + "1835";
    expect(hex(bytes)).toBe("0a0408011005" + "1210" + ipport + "1a10" + ipport + "220165");
    expect(m.responseDeserialize(bytes)).toMatchObject({ added_local_ports: [p], removed_local_ports: [p], errors: ["e"] });
  });
});

describe("porthole's extensions stay compatible", () => {
  test("Tunnel carries Lima's fields 1..5 plus half_close = 100 and eof = 101", () => {
    const ext = guestServiceDefinition.Tunnel!;
    const bytes = ext.requestSerialize({ id: "i", half_close: true, eof: true });
    expect(hex(bytes)).toBe("0a0169" + "a00601" + "a80601");
    // A stock Lima peer decodes the same bytes and skips the fields it does not know.
    expect(limaGuestServiceDefinition.Tunnel!.requestDeserialize(bytes)).toMatchObject({ id: "i", data: Buffer.alloc(0) });
  });

  test("ports without an owner are Lima's bytes exactly; a port's owner is field 100, which Lima's decoder skips", () => {
    const p = { protocol: "tcp", ip: "127.0.0.1", port: 80 };
    const event = { time: { seconds: 1, nanos: 5 }, added_local_ports: [p], removed_local_ports: [p], errors: ["e"] };
    for (const [name, message] of [["GetEvents", event], ["GetInfo", { local_ports: [p] }]] as const) {
      const ours = guestServiceDefinition[name]!;
      const lima = limaGuestServiceDefinition[name]!;
      expect(ours.path).toBe(lima.path);
      expect(ours.requestSerialize).toBe(lima.requestSerialize);
      expect(hex(ours.responseSerialize(message))).toBe(hex(lima.responseSerialize(message)));
    }
    const owner = { pid: 7, command: "node", command_line: "node s.js", user: "root", uid: 0 };
    const bytes = guestServiceDefinition.GetInfo!.responseSerialize({ local_ports: [{ ...p, owner }] });
    // OwnedIPPort: protocol 1, ip 2, port 3, then owner = 100 (tag a2 06) { pid 1, command 2, command_line 3, user 4 }
    expect(hex(bytes)).toContain("1850" + "a206" + "1b" + "0807" + "12046e6f6465");
    expect(limaGuestServiceDefinition.GetInfo!.responseDeserialize(bytes)).toEqual({ local_ports: [p] });
    expect(guestServiceDefinition.GetInfo!.responseDeserialize(bytes)).toMatchObject({ local_ports: [{ ...p, owner: { pid: 7, command: "node", user: "root" } }] });
  });

  test("everything else is Lima's service unchanged", () => {
    for (const name of ["PostInotify", "SyncTime"]) {
      expect(guestServiceDefinition[name]).toBe(limaGuestServiceDefinition[name]!);
    }
    expect(Object.values(portholeServiceDefinition).map((m) => m.path).sort()).toEqual([
      "/porthole.Porthole/Hello",
      "/porthole.Porthole/Reverse",
      "/porthole.Porthole/ReverseTunnel",
    ]);
  });
});
