// The host agent's words when it cannot reach a guest agent: what it tried, the errno, and
// what to check, never grpc-js's own prose. The messages are the ones grpc-js 1.14 produces.
import { describe, expect, test } from "bun:test";
import { explainUnreachable } from "../../src/core/agent-unreachable.ts";

const grpcNoConnection = (last: string) => `No connection established. Last error: ${last}. Resolution note: `;

describe("explainUnreachable", () => {
  test("a missing unix socket: ENOENT in plain words, the path and the agent to check, no grpc-js prose", () => {
    const m = explainUnreachable({ kind: "unix", path: "/run/x.sock" }, grpcNoConnection("Failed to connect (connect ENOENT /run/x.sock)"));
    expect(m).toContain("no socket exists at that path (ENOENT)");
    expect(m).toContain("is /run/x.sock the agent's socket");
    expect(m).toContain("is the guest agent running");
    expect(m).toContain("porthole-linux-arm64 on aarch64");
    expect(m).not.toMatch(/No connection established|Resolution note/);
  });

  test("a stale unix socket and a closed TCP port say nothing listens", () => {
    expect(explainUnreachable({ kind: "unix", path: "/s" }, grpcNoConnection("connect ECONNREFUSED /s"))).toContain("the socket file exists but nothing listens on it");
    const tcp = explainUnreachable({ kind: "tcp", host: "127.0.0.1", port: 7000 }, grpcNoConnection("connect ECONNREFUSED 127.0.0.1:7000"));
    expect(tcp).toContain("nothing listens on 127.0.0.1:7000 (ECONNREFUSED)");
    expect(tcp).toContain("--token-file");
  });

  test("vsock names the CID and port to check", () => {
    const m = explainUnreachable({ kind: "vsock", cid: 42, port: 2222 }, grpcNoConnection("connect ETIMEDOUT"));
    expect(m).toContain("no VM answers at CID 42 (ETIMEDOUT)");
    expect(m).toContain("is 42 the VM's vsock CID");
  });

  test("a peer that accepts but does not answer gRPC (a chardev with no agent behind it)", () => {
    expect(explainUnreachable({ kind: "unix", path: "/c" }, "Deadline exceeded after 3.001s")).toContain("did not answer as a gRPC guest agent in time");
  });

  test("an error that is not about reaching the agent is passed on as it is", () => {
    expect(explainUnreachable({ kind: "unix", path: "/c" }, "the guest agent ended the event stream")).toBe("the guest agent ended the event stream");
  });
});
