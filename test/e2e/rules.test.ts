// Lima's rules end to end: a subset of the test matrix, with real binds in a guest namespace.
import { describe, expect } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { useHarness, e2eTest, exchange, freePortBase, Guest, startHostAgent, tcpListenersOf } from "./harness.ts";

useHarness();

const LAN = "192.168.5.15"; // the guest's "LAN" address, on a veth inside the namespace

describe("Lima's rule matrix, end to end", () => {
  e2eTest("the host sees exactly the expected forwards and not-forwarding events, and nothing else", async () => {
    const hostPorts = [2001, 2002, 2020, 2023, 2024, 300, 4010, 4040];
    const B = await freePortBase(hostPorts);
    const guest = Guest.create();
    guest.addVethAddress(`${LAN}/24`);
    await guest.startAgent();
    const stateDir = join(guest.dir, "state");
    // Matrix rules 1, 2, 3, 6, 11 (host ::1 instead of ::), 14, 15 and 17, all ports shifted by B.
    const config = guest.writeFile("lima.yaml", `
portForwards:
- {guestIP: 127.0.0.2, guestPortRange: [${B + 3000}, ${B + 3009}], hostPortRange: [${B + 2000}, ${B + 2009}], ignore: true}
- {guestIP: 0.0.0.0, guestIPMustBeZero: false, guestPortRange: [${B + 3010}, ${B + 3019}], hostPortRange: [${B + 2010}, ${B + 2019}], ignore: true}
- {guestIP: 0.0.0.0, guestIPMustBeZero: false, guestPortRange: [${B + 3000}, ${B + 3029}], hostPortRange: [${B + 2000}, ${B + 2029}]}
- {guestPortRange: [${B + 300}, ${B + 304}]}
- {guestIP: "::1", guestPortRange: [${B + 4010}, ${B + 4019}], hostIP: "::1"}
- {guestIPMustBeZero: true, guestPortRange: [${B + 4040}, ${B + 4049}]}
- {guestIP: 0.0.0.0, guestIPMustBeZero: false, guestPortRange: [${B + 4040}, ${B + 4049}], ignore: true}
- {guestPort: ${B + 5000}, hostSocket: port5000.sock}
`);
    const host = startHostAgent(guest, ["--config", config, "--state-dir", stateDir]);
    await host.waitForEvent((e) => e.type === "guest-connected", "connect");

    const binds: [string, number][] = [
      ["127.0.0.2", 3000], ["0.0.0.0", 3010], ["127.0.0.3", 3001], ["0.0.0.0", 3002], ["127.0.0.2", 3020],
      ["::", 3023], ["::1", 3024], ["127.0.0.1", 300], [LAN, 304], ["::1", 4010], ["0.0.0.0", 4040],
      ["127.0.0.1", 4043], [LAN, 4044], ["127.0.0.1", 5000],
    ];
    await guest.startServer("echo", binds.map(([h, p]) => [h, p + B]));

    const both = (p: number) => [`127.0.0.1:${p + B}`, `[::1]:${p + B}`];
    const expectedTcp = [...[2001, 2002, 2020, 2023, 2024, 300, 4040].flatMap(both), `[::1]:${4010 + B}`].sort();
    const socket = join(stateDir, "port5000.sock");
    await host.proc.waitFor(
      () => host.events.filter((e) => e.type === "forwarding").length === expectedTcp.length + 1,
      "all forwards",
    );
    const forwarded = host.events.filter((e) => e.type === "forwarding").map((e) => e.hostAddr!).sort();
    expect(forwarded).toEqual([...expectedTcp, socket].sort());
    expect(tcpListenersOf(host.proc.child.pid!)).toEqual(expectedTcp);
    expect(existsSync(socket)).toBe(true);

    const notForwarded = (addr: string) =>
      host.waitForEvent((e) => e.type === "not-forwarding" && e.guestAddr === addr, `not-forwarding ${addr}`);
    expect((await notForwarded(`127.0.0.2:${B + 3000}`)).rule).toBe(0);
    expect((await notForwarded(`0.0.0.0:${B + 3010}`)).rule).toBe(1);
    expect((await notForwarded(`${LAN}:${B + 304}`)).error).toBe("no rule matches");
    expect((await notForwarded(`127.0.0.1:${B + 4043}`)).rule).toBe(6);
    expect((await notForwarded(`${LAN}:${B + 4044}`)).rule).toBe(6);
    expect(host.events.filter((e) => e.type === "not-forwarding")).toHaveLength(5);
    expect(host.events.filter((e) => e.type === "failed")).toEqual([]);

    // Traffic through a sample: IPv4 and IPv6 host sides, a guest IPv6 bind, and the socket.
    for (const [port, hostIP] of [[2001, "127.0.0.1"], [2001, "::1"], [2023, "127.0.0.1"], [4010, "::1"]] as const) {
      expect((await exchange(port + B, Buffer.from(`via ${hostIP}`), hostIP)).toString()).toBe(`via ${hostIP}`);
    }
    expect((await exchange(0, Buffer.from("via socket"), socket)).toString()).toBe("via socket");
  });
});
