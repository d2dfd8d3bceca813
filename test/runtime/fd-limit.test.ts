import { expect, test } from "bun:test";
import { fdLimit, fdLimitHint, FdPressure, isFdExhaustion, openFds } from "../../src/runtime/fd-limit.ts";
import { waitUntil } from "../wait.ts";

test("the fd limit and use come from /proc", () => {
  expect(fdLimit()).toBeGreaterThan(0);
  expect(openFds()).toBeGreaterThan(2);
  expect(fdLimitHint(1024)).toBe("the limit of 1024 open files is reached; raise it with `ulimit -n` (e.g. `ulimit -n 65536`) before starting porthole");
});

test("EMFILE and ENFILE in any of the forms the runtimes give are fd exhaustion; other errors are not", () => {
  expect(isFdExhaustion(Object.assign(new Error("x"), { code: "EMFILE" }))).toBe(true);
  expect(isFdExhaustion(Object.assign(new Error("getifaddrs returned an error"), { code: "ERR_SYSTEM_ERROR", errno: 24 }))).toBe(true);
  expect(isFdExhaustion(new Error("accept EMFILE"))).toBe(true);
  expect(isFdExhaustion(Object.assign(new Error("x"), { code: "ECONNREFUSED", errno: -111 }))).toBe(false);
  expect(isFdExhaustion(undefined)).toBe(false);
});

test("an episode is said once however often it is hit, and its end is said when fds are free", async () => {
  const said: string[] = [];
  const pressure = new FdPressure((m) => said.push(m), 10);
  for (let i = 0; i < 100; i++) pressure.exhausted("refusing connections");
  expect(said).toHaveLength(1);
  expect(said[0]).toStartWith("out of file descriptors: refusing connections; the limit of");
  await waitUntil("the episode ends (this process has fds to spare)", () => !pressure.inEpisode);
  expect(said[1]).toStartWith("file descriptors available again");
  pressure.exhausted("again");
  expect(said).toHaveLength(3);
  pressure.stop();
});
