import type { CAC } from "cac";
import * as http from "node:http";
import { join } from "node:path";
import { formatStatusTable, type AgentStatus } from "../core/status.ts";
import { defaultStateDir } from "./options.ts";

function get(socketPath: string, path: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    http.get({ socketPath, path }, resolve).on("error", (err: NodeJS.ErrnoException) => {
      reject(
        err.code === "ENOENT" || err.code === "ECONNREFUSED"
          ? new Error(`no host agent is running with the control socket ${socketPath} (start one with porthole host, or pass --control PATH)`)
          : err,
      );
    });
  });
}

async function fetchStatus(socketPath: string): Promise<AgentStatus> {
  const res = await get(socketPath, "/status");
  let body = "";
  for await (const chunk of res) body += chunk;
  return JSON.parse(body) as AgentStatus;
}

export function registerStatus(cli: CAC): void {
  cli
    .command("status", "Show the running host agent's forwards, with traffic and state")
    .option("--control <path>", "The host agent's control socket (default: STATE_DIR/control.sock)")
    .option("--json", "Print the status as JSON")
    .option("--watch", "Print again on every change (and the events as they happen with --json)")
    .option("--metrics", "Print the Prometheus metrics")
    .action(async (flags: { control?: string; json?: boolean; watch?: boolean; metrics?: boolean }) => {
      const socketPath = flags.control ?? join(defaultStateDir(), "control.sock");
      if (flags.metrics) {
        const res = await get(socketPath, "/metrics");
        for await (const chunk of res) process.stdout.write(chunk);
        return;
      }
      const show = async () => {
        const status = await fetchStatus(socketPath);
        process.stdout.write(flags.json ? `${JSON.stringify(status, null, 2)}\n` : `${formatStatusTable(status)}\n`);
      };
      await show();
      if (!flags.watch) return;
      // Each event is a change: print it (JSON) or the table again.
      const events = await get(socketPath, "/events");
      let rest = "";
      for await (const chunk of events) {
        const lines = (rest + chunk).split("\n");
        rest = lines.pop()!;
        for (const line of lines.filter(Boolean)) {
          if (flags.json) process.stdout.write(`${line}\n`);
          else {
            process.stdout.write(`\n--- ${JSON.parse(line).type}\n`);
            await show();
          }
        }
      }
      throw new Error("the host agent went away");
    });
}
