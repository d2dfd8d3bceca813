// A guest agent's Hello, as the host keeps it: the guest is untrusted, and its strings reach
// events, logs and `porthole status` (a terminal). Each field is bounded in size and count,
// control characters replaced, addresses kept only where they could be the guest's.
import type { HelloResponse } from "../proto/guest-service.ts";
import { usableGuestAddresses } from "./direct-proof.ts";
import { boundedText } from "./port-owner.ts";

const MAX_FEATURES = 64;
/** What a porthole guest hands out (and its data endpoint takes): anything else is dropped, the data and direct paths then unused. */
const DATA_SECRET = /^[0-9a-f]{16,128}$/;
const MAX_DATA_ENDPOINTS = 16;

export function checkedHello(hello: HelloResponse): HelloResponse {
  const strings = (list: unknown, max: number, chars: number) =>
    (Array.isArray(list) ? list : []).filter((s): s is string => typeof s === "string").slice(0, max).map((s) => boundedText(s, chars));
  return {
    ...hello,
    version: boundedText(String(hello.version ?? ""), 64),
    features: strings(hello.features, MAX_FEATURES, 64),
    data_endpoints: (Array.isArray(hello.data_endpoints) ? hello.data_endpoints : []).filter((s) => typeof s === "string" && s.length <= 4096).slice(0, MAX_DATA_ENDPOINTS),
    data_secret: typeof hello.data_secret === "string" && DATA_SECRET.test(hello.data_secret) ? hello.data_secret : "",
    addresses: usableGuestAddresses(hello.addresses),
    ...(hello.port_detector ? { port_detector: boundedText(String(hello.port_detector), 512) } : {}),
  };
}
