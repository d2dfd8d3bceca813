// What the first bytes of an agent connection say, read without taking them off the socket
// (MSG_PEEK): garbage (not an HTTP/2 client), not enough yet, or the client's SETTINGS frame,
// which every HTTP/2 client sends right after the preface, before it waits for the server.
// porthole's host marks its SETTINGS with a window size of its own (PORTHOLE_CLIENT_WINDOW): a
// client so marked never sends an empty :authority, so the guest can give its connection to the
// HTTP/2 server as it is. Any other client (grpc-go as Lima's host agent dials sends an empty
// :authority, which the runtimes' HTTP/2 servers refuse) goes through the relay that fixes it.
import { HTTP2_PREFACE } from "./mux-frames.ts";

/**
 * The HTTP/2 stream window porthole's host asks for (SETTINGS_INITIAL_WINDOW_SIZE): 16 MiB less
 * 17 bytes, a value no other client sends, so it doubles as the mark.
 */
export const PORTHOLE_CLIENT_WINDOW = (16 << 20) - 17;
const FRAME_HEADER_BYTES = 9;
const SETTINGS = 0x4;
const SETTINGS_INITIAL_WINDOW_SIZE = 0x4;
const SETTING_BYTES = 6;

export type ClientPreface =
  | { kind: "garbage"; bytes: number }
  | { kind: "more" }
  /** The preface and the client's first SETTINGS frame are whole: is it porthole's host? */
  | { kind: "settings"; portholeHost: boolean }
  /** A valid preface not followed by SETTINGS: HTTP/2 itself will refuse it. */
  | { kind: "no-settings" };

export function classifyClientPreface(bytes: Buffer): ClientPreface {
  const n = Math.min(bytes.length, HTTP2_PREFACE.length);
  if (!bytes.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n))) return { kind: "garbage", bytes: bytes.length };
  const at = HTTP2_PREFACE.length;
  if (bytes.length < at + FRAME_HEADER_BYTES) return { kind: "more" };
  const length = bytes.readUIntBE(at, 3);
  if (bytes[at + 3] !== SETTINGS || length % SETTING_BYTES !== 0) return { kind: "no-settings" };
  const end = at + FRAME_HEADER_BYTES + length;
  if (bytes.length < end) return { kind: "more" };
  let window: number | undefined;
  for (let p = at + FRAME_HEADER_BYTES; p < end; p += SETTING_BYTES) {
    if (bytes.readUInt16BE(p) === SETTINGS_INITIAL_WINDOW_SIZE) window = bytes.readUInt32BE(p + 2);
  }
  return { kind: "settings", portholeHost: window === PORTHOLE_CLIENT_WINDOW };
}
