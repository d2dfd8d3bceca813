// Forwards changed at run time through the control socket (`porthole forward add/remove/pause/
// resume`): they live until the host agent stops, or are written to its config file with --save.
import { readFileSync, realpathSync, renameSync, statSync, writeFileSync } from "node:fs";
import { formatHostPort } from "../core/address.ts";
import { appendRule, removeRule } from "../core/config-append.ts";
import type { HostEvent } from "../core/forward-event.ts";
import type { RuleEntry } from "../core/rules.ts";
import { describeForward, MAX_RUNTIME_FORWARDS, parseForwardRequest, RequestError, ruleYaml, runtimeRule, sameForward, type RuntimeForward } from "../core/runtime-forward.ts";
import type { Reconciler } from "./reconciler.ts";

/** What a control request gets back: a message for the user, and details. */
export interface ControlReply {
  message: string;
  [key: string]: unknown;
}

/** What the run-time forwards need of the host agent. */
export interface RuntimeForwardsHost {
  /** --host-ip: the default host address of an added forward. */
  hostIP?: string;
  /** The config file `--save` edits. */
  configFile?: string;
  snapshot(): ReturnType<Reconciler["snapshot"]>;
  emit(e: HostEvent): void;
  /** Re-plans the forwards (the rules changed). */
  apply(): void;
  /** Re-reads the config file. */
  reload(): void;
}

export class RuntimeForwards {
  /** Forwards added through the control socket: static, until the agent stops. */
  private forwards: RuntimeForward[] = [];
  /** `porthole forward pause`: guest ports are not forwarded; static forwards stay. */
  paused = false;
  /** Control requests waiting to tell whether a new forward's host address could be bound. */
  private readonly bindWaiters = new Set<(e: HostEvent) => void>();

  constructor(private readonly host: RuntimeForwardsHost) {}

  /** The added forwards as static rules, ahead of Lima's list. */
  rules(): RuleEntry[] {
    return this.forwards.map((f) => ({ rule: runtimeRule(f), origin: "runtime" as const }));
  }

  /** Every event of the agent passes here: a waiting `forward add` may be told its outcome. */
  heard(e: HostEvent): void {
    for (const waiter of this.bindWaiters) waiter(e);
  }

  /** POST /forwards: a static forward now (until the agent stops), or appended to the config file with `save`. */
  async add(body: unknown): Promise<ControlReply> {
    const { forward, save } = parseForwardRequest(body, this.host.hostIP ?? "127.0.0.1");
    const what = describeForward(forward);
    if (this.forwards.some((f) => sameForward(f, forward))) throw new RequestError(409, `${what} is already forwarded`);
    // A host address carries one forward: taking another's would silently send its clients elsewhere.
    // The same guest port is fine: the forward then stays static (through a pause).
    const hostAddr = formatHostPort(forward.hostIP, forward.hostPort);
    const holder = this.host.snapshot().forwards.find((f) => f.key === `${forward.protocol} ${hostAddr}` && f.state !== "closing");
    if (holder && !holder.guestAddr.endsWith(`:${forward.guestPort}`)) {
      throw new RequestError(409, `host ${hostAddr} (${forward.protocol}) already forwards guest ${holder.guestAddr} (rule ${holder.rule}); pick another host port, or remove that forward first`);
    }
    if (!save && this.forwards.length >= MAX_RUNTIME_FORWARDS) throw new RequestError(409, `at most ${MAX_RUNTIME_FORWARDS} forwards can be added at run time`);
    let reply: ControlReply;
    if (save) reply = this.saveForward(forward, what);
    else {
      this.forwards.push(forward);
      const message = `${what} (lasts until the host agent stops; --save keeps it in the config file)`;
      this.host.emit({ type: "forward-added", message });
      this.host.apply();
      reply = { message, forward, saved: false };
    }
    // The answer says whether the host listens now (binding is asynchronous: no event came yet);
    // a busy port is said with who holds it.
    const outcome = await this.bindOutcome(forward.protocol, hostAddr);
    if (outcome.state === "failed") reply.message = `${reply.message}; not listening yet: ${outcome.error} (the agent retries; porthole forward remove drops it)`;
    return { ...reply, state: outcome.state };
  }

  /**
   * The first `forwarding` or `failed` event of a host address (or its state now, when it
   * already listens), waited for at most 3 s.
   */
  private bindOutcome(protocol: string, hostAddr: string): Promise<{ state: string; error?: string }> {
    const now = this.host.snapshot().forwards.find((f) => f.key === `${protocol} ${hostAddr}` && f.state === "forwarding");
    if (now) return Promise.resolve({ state: "forwarding" });
    return new Promise((resolve) => {
      const done = (outcome: { state: string; error?: string }) => {
        clearTimeout(timer);
        this.bindWaiters.delete(waiter);
        resolve(outcome);
      };
      const waiter = (e: HostEvent) => {
        if ("protocol" in e && e.protocol === protocol && e.hostAddr === hostAddr && (e.type === "forwarding" || e.type === "failed")) done({ state: e.type, error: e.error });
      };
      const timer = setTimeout(() => done({ state: "waiting" }), 3000);
      this.bindWaiters.add(waiter);
    });
  }

  /** `--save`: the rule is appended to the config file (nothing else in it changes), which is then re-read. */
  private saveForward(forward: RuntimeForward, what: string): ControlReply {
    const file = this.editConfig(forward, "add", (text, file) => appendRule(text, ruleYaml(forward), runtimeRule(forward), file));
    const message = `${what} (saved in ${file}: it stays after a restart)`;
    this.host.emit({ type: "forward-added", file, message });
    this.host.reload();
    return { message, forward, saved: true, file };
  }

  /** POST /forwards/remove: the forward added at run time with these arguments (with `save`, the rule saved so). */
  remove(body: unknown): ControlReply {
    const { forward, save } = parseForwardRequest(body, this.host.hostIP ?? "127.0.0.1");
    const what = describeForward(forward);
    const index = this.forwards.findIndex((f) => sameForward(f, forward));
    if (index >= 0) {
      this.forwards.splice(index, 1);
      this.host.emit({ type: "forward-removed", message: what });
      this.host.apply();
      return { message: `removed ${what}`, forward };
    }
    if (save) {
      const file = this.editConfig(forward, "remove", (text, file) => removeRule(text, runtimeRule(forward), file));
      this.host.emit({ type: "forward-removed", file, message: `${what} (removed from ${file})` });
      this.host.reload();
      return { message: `removed ${what} from ${file}`, forward, file };
    }
    const added = this.forwards.map(describeForward);
    throw new RequestError(404, `no forward added at run time is ${what} (${added.length ? `there are: ${added.join("; ")}` : "there are none"}; one saved in the config file is removed with --save)`);
  }

  /** Rewrites the config file with `edit` (written beside it, then renamed over it: never half a file). */
  private editConfig(forward: RuntimeForward, action: "add" | "remove", edit: (text: string, file: string) => string): string {
    const file = this.host.configFile;
    if (!file) throw new RequestError(400, `this host agent has no config file to save to: start it with --config FILE (nothing was ${action === "add" ? "added" : "removed"})`);
    let next: string;
    try {
      next = edit(readFileSync(file, "utf8"), file);
    } catch (err) {
      const first = (err as Error).message.split("\n")[0];
      throw new RequestError(409, action === "add"
        ? `cannot save to ${file}: ${first} (nothing was added; add this rule by hand: - ${ruleYaml(forward)})`
        : `cannot remove it from ${file}: ${first} (nothing was removed; edit the file by hand)`);
    }
    const real = realpathSync(file); // a symlinked config stays a symlink
    const temp = `${real}.porthole-${process.pid}`;
    writeFileSync(temp, next, { mode: statSync(real).mode & 0o777 });
    renameSync(temp, real);
    return file;
  }

  /** POST /pause and /resume: auto-forwarding of guest ports off or on; static forwards stay. */
  setPaused(paused: boolean): ControlReply {
    if (paused === this.paused) return { message: `auto-forwarding is already ${paused ? "paused" : "on"}`, paused };
    this.paused = paused;
    const message = paused
      ? "guest ports are no longer forwarded (static forwards stay); porthole forward resume turns it back on"
      : "guest ports are forwarded again";
    this.host.emit({ type: paused ? "auto-forwarding-paused" : "auto-forwarding-resumed", message });
    this.host.apply();
    return { message: `auto-forwarding ${paused ? "paused" : "resumed"}: ${message}`, paused };
  }
}
