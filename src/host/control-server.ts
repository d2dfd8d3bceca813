// The host agent's control socket (mode 0600): what `porthole status` reads.
//   GET /status   the agent, the guest's addresses, every forward and the ports not forwarded (JSON)
//   GET /events   every event from now on, one JSON object per line
//   GET /metrics  Prometheus text
import * as fs from "node:fs";
import * as http from "node:http";
import * as path from "node:path";
import { formatMetrics, type AgentStatus } from "../core/status.ts";
import { removeStaleSocket } from "../transport/listen.ts";

export class ControlServer {
  private server: http.Server | undefined;
  private readonly watchers = new Set<http.ServerResponse>();

  constructor(
    private readonly socketPath: string,
    private readonly status: () => AgentStatus,
  ) {}

  async start(): Promise<void> {
    await removeStaleSocket(this.socketPath);
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o700 });
    const server = http.createServer((req, res) => this.handle(req, res));
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(this.socketPath, () => resolve());
      });
    } finally {
      process.umask(oldMask);
    }
    this.server = server;
  }

  /** Sends one event to every /events watcher. */
  broadcast(event: object): void {
    if (!this.watchers.size) return;
    const line = `${JSON.stringify(event)}\n`;
    for (const res of this.watchers) res.write(line);
  }

  close(): void {
    for (const res of this.watchers) res.end();
    this.watchers.clear();
    this.server?.close();
    fs.rmSync(this.socketPath, { force: true });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://porthole");
    if (req.method !== "GET") return void res.writeHead(405).end();
    switch (url.pathname) {
      case "/status":
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(this.status()));
        return;
      case "/metrics":
        res.writeHead(200, { "content-type": "text/plain; version=0.0.4" }).end(formatMetrics(this.status()));
        return;
      case "/events":
        res.writeHead(200, { "content-type": "application/x-ndjson" });
        res.write(""); // headers out now: the watcher knows it is subscribed
        this.watchers.add(res);
        res.once("close", () => this.watchers.delete(res));
        return;
      default:
        res.writeHead(404, { "content-type": "text/plain" }).end("try /status, /events or /metrics\n");
    }
  }
}
