// A guest agent's Hello, as the host keeps it: the guest is untrusted, and its strings reach
// events, logs and `porthole status` (a terminal). Each field is bounded in size and count,
// control characters replaced, addresses kept only where they could be the guest's.
import type { HelloResponse } from "../proto/guest-service.ts";
import { usableGuestAddresses } from "./direct-proof.ts";
import { boundedText } from "./port-owner.ts";

const MAX_FEATURES = 64;
const MAX_DATA_ENDPOINTS = 16;

export function checkedHello(hello: HelloResponse): HelloResponse {
  const strings = (list: unknown, max: number, chars: number) =>
    (Array.isArray(list) ? list : []).filter((s): s is string => typeof s === "string").slice(0, max).map((s) => boundedText(s, chars));
  return {
    ...hello,
    version: boundedText(String(hello.version ?? ""), 64),
    features: strings(hello.features, MAX_FEATURES, 64),
    data_endpoints: (Array.isArray(hello.data_endpoints) ? hello.data_endpoints : []).filter((s) => typeof s === "string" && s.length <= 4096).slice(0, MAX_DATA_ENDPOINTS),
    addresses: usableGuestAddresses(hello.addresses),
    ...(hello.port_detector ? { port_detector: boundedText(String(hello.port_detector), 512) } : {}),
  };
}
