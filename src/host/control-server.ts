// The host agent's control socket (mode 0600): what `porthole status` reads.
//   GET /status   the agent, the guest's addresses, every forward and the ports not forwarded (JSON)
//   GET /events   every event from now on, one JSON object per line
//   GET /metrics  Prometheus text
//   POST /forwards          add a static forward ({"guest": "[IP:]PORT", "host"?: "[IP:]PORT", "proto"?: "tcp"|"udp", "save"?: true})
//   POST /forwards/remove   remove one added so ({"guest", "host"?, "proto"?}; a POST: under Bun a DELETE body did not reach the handler)
//   POST /pause, /resume    auto-forwarding of guest ports off and on
// Changes answer JSON: {"message": …} (200), or {"error": …} with 400 (a bad request), 404 or 409.
// The socket is the user's, but a malformed request is still answered (400), never fatal, and
// an /events watcher that stops reading is dropped once its backlog passes a bound, so it
// cannot grow the agent's memory.
import * as fs from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as path from "node:path";
import { formatMetrics, type AgentStatus } from "../core/status.ts";
import { RequestError } from "../core/runtime-forward.ts";
import { removeStaleSocket } from "../transport/listen.ts";

/** Bytes an /events watcher may leave unread before it is dropped. */
export const WATCHER_BACKLOG_BYTES = 1 << 20;
/** The largest request body read (a forward request is tens of bytes). */
const MAX_BODY_BYTES = 64 << 10;

/** What the control socket can change; each throws a RequestError to refuse. */
export interface ControlActions {
  addForward(body: unknown): object | Promise<object>;
  removeForward(body: unknown): object;
  setPaused(paused: boolean): object;
}

export class ControlServer {
  private server: http.Server | undefined;
  private readonly watchers = new Set<http.ServerResponse>();

  constructor(
    private readonly socketPath: string,
    private readonly status: () => AgentStatus,
    /** One line about a refused request or a dropped watcher. */
    private readonly log: (message: string) => void = () => {},
    private readonly actions?: ControlActions,
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

  private change(req: http.IncomingMessage, res: http.ServerResponse, pathname: string): void {
    const reply = (status: number, body: object) => res.writeHead(status, { "content-type": "application/json" }).end(`${JSON.stringify(body)}\n`);
    const a = this.actions;
    const routes: Record<string, ((body: unknown) => object | Promise<object>) | undefined> = {
      "/forwards": a && ((b) => a.addForward(b)),
      "/forwards/remove": a && ((b) => a.removeForward(b)),
      "/pause": a && (() => a.setPaused(true)),
      "/resume": a && (() => a.setPaused(false)),
    };
    const run = req.method === "POST" ? routes[pathname] : undefined;
    if (!run) {
      req.resume();
      return void reply(pathname in routes ? 405 : 404, { error: `${req.method} ${pathname} is not a request this agent takes (POST /forwards, /forwards/remove, /pause or /resume)` });
    }
    readBody(req)
      .then(async (text) => {
        let body: unknown = {};
        if (text.trim()) {
          try {
            body = JSON.parse(text);
          } catch {
            throw new RequestError(400, "the request body is not JSON");
          }
        }
        const answer = await run(body);
        if (!res.destroyed) reply(200, answer);
      })
      .catch((err: Error) => {
        if (err instanceof RequestError) return void reply(err.status, { error: err.message });
        this.log(`control socket: ${req.method} ${pathname} failed: ${err.message}`);
        if (!res.headersSent) reply(500, { error: `the agent could not do it: ${err.message}` });
      });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const pathname = requestPath(req.url);
    if (pathname === undefined) {
      res.writeHead(400, { "content-type": "text/plain" }).end("bad request target\n");
      return;
    }
    if (req.method !== "GET") return this.change(req, res, pathname);
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

/** A request that changes something: its JSON body read (bounded), then the action. */
function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (chunk: string) => {
      body += chunk;
      if (body.length > MAX_BODY_BYTES) {
        reject(new RequestError(400, `the request body is over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
      }
    });
    req.on("end", () => resolve(body));
    req.on("error", reject);
  });
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
