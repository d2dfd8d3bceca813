// `porthole forward add|remove|pause|resume`: change a running host agent's forwards through
// its control socket. The agent checks the request; this prints its answer, or its refusal
// (and exits non-zero).
import type { CAC } from "cac";
import * as http from "node:http";
import { join } from "node:path";
import { defaultStateDir, UsageError } from "./options.ts";

const ACTIONS = ["add", "remove", "pause", "resume"] as const;

function request(socketPath: string, method: string, path: string, body?: object): Promise<{ status: number; body: { message?: string; error?: string } }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path, headers: { "content-type": "application/json" } }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) });
        } catch {
          resolve({ status: res.statusCode ?? 0, body: { error: text.trim() || `HTTP ${res.statusCode}` } });
        }
      });
    });
    req.on("error", (err: NodeJS.ErrnoException) =>
      reject(
        err.code === "ENOENT" || err.code === "ECONNREFUSED"
          ? new Error(`no host agent is running with the control socket ${socketPath} (start one with porthole host, or pass --control PATH)`)
          : err,
      ),
    );
    req.end(body ? JSON.stringify(body) : undefined);
  });
}

export function registerForward(cli: CAC): void {
  cli
    .command("forward <action> [guest] [host]", "Change a running host agent's forwards: add|remove [GUEST_IP:]GUEST_PORT [[HOST_IP:]HOST_PORT], pause|resume auto-forwarding")
    .option("--udp", "A UDP forward (default TCP)")
    .option("--save", "add: append the rule to the agent's config file, so it stays after a restart; remove: take a rule saved so out of it")
    .option("--control <path>", "The host agent's control socket (default: STATE_DIR/control.sock)")
    .example("porthole forward add 8080            # guest 127.0.0.1:8080 on host 127.0.0.1:8080 (or --host-ip)")
    .example("porthole forward add 0.0.0.0:5432 127.0.0.1:15432 --save")
    .example("porthole forward pause               # stop auto-forwarding; static forwards stay")
    .action(async (action: string, guest: string | undefined, host: string | undefined, flags: { udp?: boolean; save?: boolean; control?: string }) => {
      if (!ACTIONS.includes(action as (typeof ACTIONS)[number])) throw new UsageError(`forward: "${action}" is not one of ${ACTIONS.join(", ")}`);
      const socketPath = flags.control ?? join(defaultStateDir(), "control.sock");
      let reply;
      if (action === "pause" || action === "resume") {
        if (guest !== undefined) throw new UsageError(`forward ${action} takes no addresses`);
        reply = await request(socketPath, "POST", `/${action}`);
      } else {
        if (guest === undefined) throw new UsageError(`forward ${action} needs [GUEST_IP:]GUEST_PORT`);
        const body = { guest: String(guest), ...(host !== undefined ? { host: String(host) } : {}), proto: flags.udp ? "udp" : "tcp", ...(flags.save ? { save: true } : {}) };
        reply = await request(socketPath, "POST", action === "add" ? "/forwards" : "/forwards/remove", body);
      }
      if (reply.status !== 200) throw new Error(reply.body.error ?? `the agent answered HTTP ${reply.status}`);
      process.stdout.write(`${reply.body.message}\n`);
    });
}
