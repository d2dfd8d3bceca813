// The host agent's control socket (mode 0600): what `porthole status` reads.
//   GET /status   the agent, the guest's addresses, every forward and the ports not forwarded (JSON)
//   GET /events   every event from now on, one JSON object per line
//   GET /metrics  Prometheus text
// The socket is the user's, but a malformed request is still answered (400), never fatal, and
// an /events watcher that stops reading is dropped once its backlog passes a bound, so it
// cannot grow the agent's memory.
import * as fs from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as path from "node:path";
import { formatMetrics, type AgentStatus } from "../core/status.ts";
import { removeStaleSocket } from "../transport/listen.ts";

/** Bytes an /events watcher may leave unread before it is dropped. */
export const WATCHER_BACKLOG_BYTES = 1 << 20;

export class ControlServer {
  private server: http.Server | undefined;
  private readonly watchers = new Set<http.ServerResponse>();

  constructor(
    private readonly socketPath: string,
    private readonly status: () => AgentStatus,
    /** One line about a refused request or a dropped watcher. */
    private readonly log: (message: string) => void = () => {},
  ) {}

  async start(): Promise<void> {
    await removeStaleSocket(this.socketPath);
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true, mode: 0o700 });
    const server = http.createServer((req, res) => {
      try {
        this.handle(req, res);
      } catch (err) {
        this.log(`control socket: request failed: ${(err as Error).message}`);
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
        res.end();
      }
    });
    // What the HTTP parser itself rejects gets a 400 too, then the connection closes.
    server.on("clientError", (_err, socket: net.Socket) => {
      if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
      else socket.destroy();
    });
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(this.socketPath, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } finally {
      process.umask(oldMask);
    }
    server.on("error", (err) => this.log(`control socket: ${err.message}`));
    this.server = server;
  }

  /** Sends one event to every /events watcher; one that lets its backlog grow is dropped. */
  broadcast(event: object): void {
    if (!this.watchers.size) return;
    const line = `${JSON.stringify(event)}\n`;
    for (const res of this.watchers) {
      if (res.writableLength + line.length > WATCHER_BACKLOG_BYTES) {
        this.watchers.delete(res);
        this.log(`control socket: dropped an /events watcher that left ${res.writableLength} bytes unread`);
        res.destroy();
        continue;
      }
      res.write(line);
    }
  }

  /** Open /events watchers (for tests). */
  get watcherCount(): number {
    return this.watchers.size;
  }

  close(): void {
    for (const res of this.watchers) res.end();
    this.watchers.clear();
    this.server?.close();
    fs.rmSync(this.socketPath, { force: true });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const pathname = requestPath(req.url);
    if (pathname === undefined) {
      res.writeHead(400, { "content-type": "text/plain" }).end("bad request target\n");
      return;
    }
    if (req.method !== "GET") return void res.writeHead(405).end();
    switch (pathname) {
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

/** The path of a request target (origin form `/x?y` or absolute form), or undefined if it is not one. */
export function requestPath(target: string | undefined): string | undefined {
  if (!target) return undefined;
  try {
    return new URL(target, "http://porthole").pathname;
  } catch {
    return undefined;
  }
}
