// Profiling aid (not part of make bench): a guest in a namespace with a native echo server
// (argv[2]: the path of bench/rr.c compiled) and porthole forwards (fast, direct) plus ssh -L,
// up until Ctrl-C. Prints the host ports. `--grpc`: also gRPC forwards (`--forwarder grpc`) to
// the echo and to an iperf3 server in the guest (ssh -L gets one to it too).
import { spawn } from "node:child_process";
import { freePort, Guest, Proc, runCleanups, startHostAgent, tryConnect } from "../test/lab.ts";

const rr = process.argv[2]!;
const guest = Guest.create();
const { guestIP } = guest.linkToHost();
const sshd = await guest.startSshd();
const guestAgent = await guest.startAgent();
const echoPort = await freePort();
guest.spawn([rr, "serve", String(echoPort)], "rr echo");
await Bun.sleep(300);
const GRPC = process.argv.includes("--grpc");
const iperfPort = await freePort();
if (GRPC) guest.spawn(["iperf3", "-s", "-p", String(iperfPort)], "iperf3 server");
const fwd = async (forwarder: string, path: string, guestPort = echoPort) => {
  const hostPort = await freePort();
  const config = guest.writeFile(`lab-${path}.yaml`, `portForwards:\n- {guestPort: ${guestPort}, hostPort: ${hostPort}, static: ${path !== "direct"}}\n- {guestIP: 0.0.0.0, guestIPMustBeZero: false, ignore: true}\n`);
  const host = startHostAgent(guest, ["--config", config, "--forwarder", forwarder, "--state-dir", `${guest.dir}/state-${path}`]);
  await host.waitForEvent((e) => e.type === "forwarding" && e.hostAddr === `127.0.0.1:${hostPort}`, "the forward", 20_000);
  if (path === "direct") await host.waitForEvent((e) => e.type === "path-changed" && e.state === "usable", "direct proof", 20_000);
  console.log(`${path} 127.0.0.1 ${hostPort} host-agent-pid ${host.proc.child.pid}`);
};
await fwd("fast", "fast");
await fwd("auto", "direct");
if (GRPC) {
  await fwd("grpc", "grpc");
  await fwd("grpc", "grpc-iperf", iperfPort);
}
const sshPort = await freePort();
new Proc(spawn("ssh", ["-N", "-F", "/dev/null", "-i", sshd.clientKey, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
  "-o", "BatchMode=yes", "-o", "Ciphers=aes128-gcm@openssh.com", "-o", "Compression=no",
  "-L", `127.0.0.1:${sshPort}:127.0.0.1:${echoPort}`, `root@${guestIP}`], { stdio: "ignore" }), "ssh -L");
while ((await tryConnect(sshPort, "127.0.0.1")) !== "connected") await Bun.sleep(100);
console.log(`sshL 127.0.0.1 ${sshPort}`);
if (GRPC) {
  const sshIperf = await freePort();
  new Proc(spawn("ssh", ["-N", "-F", "/dev/null", "-i", sshd.clientKey, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes", "-o", "Ciphers=aes128-gcm@openssh.com", "-o", "Compression=no",
    "-L", `127.0.0.1:${sshIperf}:127.0.0.1:${iperfPort}`, `root@${guestIP}`], { stdio: "ignore" }), "ssh -L (iperf3)");
  await Bun.sleep(1500); // no probe: the iperf3 server would take it for a client
  console.log(`sshL-iperf 127.0.0.1 ${sshIperf}`);
}
console.log(`byIP ${guestIP} ${echoPort}`);
console.log(`guest-agent-pid ${guestAgent.child.pid}`);
console.log("ready");
process.on("SIGINT", async () => { await runCleanups(); process.exit(0); });
process.on("SIGTERM", async () => { await runCleanups(); process.exit(0); });
await new Promise(() => {});
