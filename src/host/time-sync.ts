// `porthole host --sync-time`: keeps the guest's clock on the host's, as Lima's host agent does
// for Linux guests: SyncTime right after connecting and every 10 s; the guest agent sets its
// clock when it is more than 100 ms off. What happened is said once per kind, not every 10 s.
import * as grpc from "@grpc/grpc-js";
import { nowTimestamp, type GuestServiceClient } from "../proto/guest-service.ts";

const EVERY_MS = 10_000;
const DEADLINE_MS = 5_000;

export class TimeSync {
  private timer: ReturnType<typeof setInterval> | undefined;
  private lastProblem = "";

  constructor(
    private readonly client: GuestServiceClient,
    private readonly log: (message: string) => void,
    private readonly warn: (message: string) => void,
  ) {}

  start(): void {
    this.stop();
    this.sync();
    this.timer = setInterval(() => this.sync(), EVERY_MS);
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private sync(): void {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    this.client.SyncTime({ host_time: nowTimestamp() }, { deadline }, (err, res) => {
      if (err?.code === grpc.status.UNIMPLEMENTED) {
        this.stop();
        return this.warn("the guest agent cannot set its clock (the guest agent has no SyncTime): --sync-time does nothing for this guest");
      }
      const problem = err ? `the guest agent did not answer SyncTime: ${err.details || err.message}` : res.error ? `the guest agent could not set its clock: ${res.error} (it needs CAP_SYS_TIME)` : "";
      if (problem && problem !== this.lastProblem) this.warn(problem);
      this.lastProblem = problem;
      if (!err && res.adjusted) this.log(`Guest clock was ${res.drift_ms} ms off the host's; the guest agent set it to the host's time`);
    });
  }
}
