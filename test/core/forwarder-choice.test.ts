import { describe, expect, test } from "bun:test";
import { chooseForwarder, chooseSshOverVsock } from "../../src/core/forwarder-choice.ts";

describe("choosing the forwarder: flag > LIMA_SSH_PORT_FORWARDER > config > auto", () => {
  test.each([
    [["ssh", "false", "grpc"], "ssh", "--forwarder ssh"],
    [[undefined, "true", "grpc"], "ssh", "LIMA_SSH_PORT_FORWARDER=true"],
    [[undefined, "1", undefined], "ssh", "LIMA_SSH_PORT_FORWARDER=1"],
    [[undefined, "false", "ssh"], "grpc", "LIMA_SSH_PORT_FORWARDER=false"],
    [[undefined, "", "ssh"], "ssh", "forwarder: ssh in the config"],
    [[undefined, undefined, undefined], "auto", "the default"],
    [["fast", undefined, "grpc"], "fast", "--forwarder fast"],
  ] as const)("%p -> %s", ([flag, env, config], value, reason) => {
    expect(chooseForwarder(flag, env, config)).toEqual({ value, reason });
  });
  test("an unparsable variable warns and means gRPC, whatever the config says", () => {
    expect(chooseForwarder(undefined, "yes please", "ssh")).toEqual({
      value: "grpc",
      reason: "the default",
      warning: 'LIMA_SSH_PORT_FORWARDER="yes please" is not true or false; using gRPC',
    });
  });
});

describe("SSH over vsock: LIMA_SSH_OVER_VSOCK (when set) > ssh.overVsock > on", () => {
  test("the variable wins when set", () => {
    expect(chooseSshOverVsock("false", true).value).toBe(false);
    expect(chooseSshOverVsock("true", false).value).toBe(true);
  });
  test("the config, then the default", () => {
    expect(chooseSshOverVsock(undefined, false)).toEqual({ value: false, reason: "ssh.overVsock: false in the config" });
    expect(chooseSshOverVsock(undefined, undefined)).toEqual({ value: true, reason: "the default" });
  });
  test("an unparsable variable is ignored with a warning", () => {
    expect(chooseSshOverVsock("maybe", false)).toMatchObject({ value: false, warning: expect.stringContaining("LIMA_SSH_OVER_VSOCK") });
  });
});
