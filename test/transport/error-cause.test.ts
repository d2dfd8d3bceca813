// Errors that add words keep the error they wrap as `cause` (with its errno code).
import { expect, test } from "bun:test";
import { loadConfigFile } from "../../src/host/config-file.ts";
import { dialTransport } from "../../src/transport/dial.ts";
import { listenTransport } from "../../src/transport/listen.ts";

const causeCode = (err: unknown) => ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;

test("a failed dial keeps the socket error as its cause, and its code", async () => {
  const err = await dialTransport({ kind: "unix", path: "/nonexistent/porthole.sock" }, 1000).catch((e) => e);
  expect((err as Error).message).toStartWith("cannot connect to unix:///nonexistent/porthole.sock");
  expect(causeCode(err)).toBe("ENOENT");
  expect((err as NodeJS.ErrnoException).code).toBe("ENOENT");
});

test("a failed listen keeps the listen error as its cause", async () => {
  const err = await listenTransport({ kind: "tcp", host: "192.0.2.1", port: 1 }).catch((e) => e);
  expect((err as Error).message).toStartWith("cannot listen on tcp://192.0.2.1:1");
  expect((err as Error).cause).toBeInstanceOf(Error);
});

test("an unreadable config file keeps the read error as its cause", () => {
  let err: unknown;
  try {
    loadConfigFile("/nonexistent/porthole.yaml", "/tmp");
  } catch (e) {
    err = e;
  }
  expect(causeCode(err)).toBe("ENOENT");
});
