import { expect, test } from "bun:test";
import { formatEventJSON, formatEventText } from "../../src/core/forward-event.ts";

test("text events read like Lima's log lines", () => {
  const base = { protocol: "tcp", guestAddr: "127.0.0.1:8080", hostAddr: "127.0.0.1:8080" };
  expect(formatEventText({ type: "forwarding", ...base })).toBe("Forwarding TCP from 127.0.0.1:8080 to 127.0.0.1:8080");
  expect(formatEventText({ type: "stopping", ...base })).toBe("Stopping forwarding TCP from 127.0.0.1:8080 to 127.0.0.1:8080");
  expect(formatEventText({ type: "not-forwarding", protocol: "tcp", guestAddr: "127.0.0.2:3000" })).toBe(
    "Not forwarding TCP 127.0.0.2:3000",
  );
  expect(formatEventText({ type: "failed", ...base, error: "address already in use", retryInMs: 1500 })).toBe(
    "Failed to forward TCP from 127.0.0.1:8080 to 127.0.0.1:8080: address already in use; retrying in 1.5s",
  );
});

test("JSON events carry the type, both addresses and the error", () => {
  const line = formatEventJSON(
    { type: "failed", protocol: "tcp", guestAddr: "[::]:80", hostAddr: "127.0.0.1:80", error: "permission denied", rule: "built-in" },
    new Date(0),
  );
  expect(JSON.parse(line)).toEqual({
    time: "1970-01-01T00:00:00.000Z",
    type: "failed",
    protocol: "tcp",
    guestAddr: "[::]:80",
    hostAddr: "127.0.0.1:80",
    error: "permission denied",
    rule: "built-in",
  });
});

test("outside strings with control characters are quoted and escaped in text lines; plain ones are not", () => {
  const evil = "/run/a.sock\nForwarding TCP from 1 to 2\u001b[31m\u009b\u2028";
  const line = formatEventText({ type: "forwarding", protocol: "tcp", guestAddr: evil, hostAddr: "127.0.0.1:1" });
  expect(line.split("\n")).toHaveLength(1);
  expect(line).toBe('Forwarding TCP from "/run/a.sock\\nForwarding TCP from 1 to 2\\u001b[31m\\u009b\\u2028" to 127.0.0.1:1');
  expect(formatEventText({ type: "warning", message: 'say "hi"\r' })).toBe('Warning: "say \\"hi\\"\\r"');
  expect(formatEventText({ type: "guest-disconnected", guest: "unix:///g.sock", error: "x\ny" })).toBe('Lost guest agent at unix:///g.sock: "x\\ny"; reconnecting');
  expect(formatEventText({ type: "config-rejected", file: "c.yaml", error: "c.yaml:1:1: a\nc.yaml:2:1: b\u001b" })).toBe(
    'Config c.yaml rejected, keeping the rules in force:\nc.yaml:1:1: a\n"c.yaml:2:1: b\\u001b"',
  );
});

test("run-time changes and --on-forward failures read as sentences, their text quoted", () => {
  expect(formatEventText({ type: "forward-added", message: "TCP guest 127.0.0.1:80 to host 127.0.0.1:8080 (lasts until the host agent stops; --save keeps it in the config file)" })).toBe(
    "Added a static forward: TCP guest 127.0.0.1:80 to host 127.0.0.1:8080 (lasts until the host agent stops; --save keeps it in the config file)",
  );
  expect(formatEventText({ type: "forward-removed", message: "TCP guest 127.0.0.1:80 to host 127.0.0.1:8080" })).toBe("Removed the static forward TCP guest 127.0.0.1:80 to host 127.0.0.1:8080");
  expect(formatEventText({ type: "auto-forwarding-paused", message: "m" })).toBe("Auto-forwarding paused: m");
  expect(formatEventText({ type: "auto-forwarding-resumed", message: "m" })).toBe("Auto-forwarding resumed: m");
  expect(formatEventText({ type: "on-forward-failed", message: "for tcp 127.0.0.1:80: exited with status 3\nforged" })).toBe(
    '--on-forward command failed "for tcp 127.0.0.1:80: exited with status 3\\nforged"',
  );
});
