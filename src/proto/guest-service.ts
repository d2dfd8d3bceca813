// Lima's GuestService and porthole's extensions, loaded from the embedded .proto texts with
// protobufjs and @grpc/proto-loader. Host and guest share these definitions and nothing else.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import limaProto from "../../proto/guestservice.proto" with { type: "text" };
import portholeProto from "../../proto/porthole.proto" with { type: "text" };
import { decodeTunnelMessage, encodeTunnelMessage } from "./tunnel-codec.ts";

/** Request header by which a porthole host asks for each port's owner (see OwnedIPPort). */
export const OWNERS_HEADER = "porthole-owners";

export interface IPPort {
  protocol: string;
  ip: string;
  port: number;
}

/**
 * Lima's IPPort plus porthole's owner (field 100), as GetInfo and GetEvents carry it to a host
 * that asked (OWNERS_HEADER). Untrusted: the host checks it (core/port-owner.ts) before use.
 */
export interface OwnedIPPort {
  protocol: string;
  ip: string;
  port: number;
  owner?: WireOwner | null;
}

/** porthole.PortOwner on the wire (core/port-owner.ts has the checked, in-memory form). */
export interface WireOwner {
  pid: number;
  command: string;
  command_line: string;
  user: string;
  uid: number;
  container_runtime: string;
  container_id: string;
  container_name: string;
  container_pod: string;
}

export interface Timestamp {
  seconds: string | number;
  nanos: number;
}

export interface Info {
  local_ports: IPPort[];
}

export interface GuestEvent {
  time?: Timestamp | null;
  added_local_ports: IPPort[];
  removed_local_ports: IPPort[];
  errors: string[];
}

export interface TunnelMessage {
  id: string;
  protocol: string;
  data: Buffer;
  guest_addr: string;
  udp_target_addr: string;
  /** porthole extension (handshake): the host understands `eof`. */
  half_close: boolean;
  /** porthole extension: the guest side reached EOF. */
  eof: boolean;
  /** porthole extension: several UDP datagrams in one message. */
  datagrams: Buffer[];
  /** porthole extension (UDP handshake): the host reads `datagrams`. */
  udp_batch: boolean;
  /** porthole extension (UDP, credited flows): bytes of datagrams delivered since the last report. */
  udp_delivered: number;
  /** porthole extension (UDP handshake): both ends report `udp_delivered` and count it against their budget. */
  udp_credit: boolean;
}

export interface HelloResponse {
  version: string;
  features: string[];
  ephemeral_port_low: number;
  ephemeral_port_high: number;
  data_endpoints: string[];
  data_secret: string;
  addresses: string[];
  /** The guest agent's proof port for the direct path (0 or absent: none). */
  direct_proof_port?: number;
  /** How the guest agent notices ports: "port detector: ebpf (…)" or "port detector: poll … (why)". */
  port_detector?: string;
}

export interface ReverseEvent {
  listening: boolean;
  connection_id: string;
}

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  defaults: true,
  arrays: true,
};

/** protobufjs root with the well-known types Lima's file imports, then the file itself. */
export function loadRoot(): protobuf.Root {
  const root = new protobuf.Root();
  for (const file of ["google/protobuf/empty.proto", "google/protobuf/timestamp.proto"]) {
    const json = protobuf.common.get(file);
    if (!json) throw new Error(`protobufjs lacks the well-known type ${file}`);
    root.addJSON(json.nested!);
  }
  protobuf.parse(limaProto, root, { keepCase: true });
  protobuf.parse(portholeProto, root, { keepCase: true });
  root.resolveAll();
  return root;
}

/** Tunnel and ReverseTunnel carry every forwarded byte: their messages go through the hand-written codec. */
const TUNNEL_CODEC = {
  requestSerialize: encodeTunnelMessage,
  requestDeserialize: decodeTunnelMessage,
  responseSerialize: encodeTunnelMessage,
  responseDeserialize: decodeTunnelMessage,
};

const root = loadRoot();
export const packageDefinition = protoLoader.fromJSON(root.toJSON(), LOADER_OPTIONS);

const limaService = (packageDefinition.GuestService as grpc.ServiceDefinition);
const portholeService = (packageDefinition["porthole.Porthole"] as grpc.ServiceDefinition);

/** Lima's GuestService exactly as Lima defines it (used by the compatibility tests). */
export const limaGuestServiceDefinition: grpc.ServiceDefinition = limaService;

/**
 * GuestService as porthole speaks it: the same paths and messages, except that Tunnel
 * carries porthole.ExtendedTunnelMessage (Lima's fields plus the extension fields).
 */
export const guestServiceDefinition: grpc.ServiceDefinition = {
  ...limaService,
  Tunnel: { ...limaService.Tunnel!, ...TUNNEL_CODEC },
  GetInfo: { ...limaService.GetInfo!, ...responseCodec("porthole.ExtendedInfo") },
  GetEvents: { ...limaService.GetEvents!, ...responseCodec("porthole.ExtendedEvent") },
};

/** A response (de)serializer for one of porthole's extended messages, as proto-loader makes them. */
function responseCodec(name: string) {
  const type = root.lookupType(name);
  return {
    responseSerialize: (value: object) => Buffer.from(type.encode(type.fromObject(value)).finish()),
    responseDeserialize: (bytes: Buffer) => type.toObject(type.decode(bytes), LOADER_OPTIONS),
  };
}

export const portholeServiceDefinition: grpc.ServiceDefinition = {
  ...portholeService,
  ReverseTunnel: { ...portholeService.ReverseTunnel!, ...TUNNEL_CODEC },
};

const GuestServiceClient = grpc.makeGenericClientConstructor(guestServiceDefinition, "GuestService");
const PortholeClient = grpc.makeGenericClientConstructor(portholeServiceDefinition, "Porthole");

/** The generated client's methods, typed. */
export interface GuestServiceClient extends grpc.Client {
  GetInfo(
    request: object,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, info: Info) => void,
  ): grpc.ClientUnaryCall;
  GetEvents(request: object, metadata?: grpc.Metadata): grpc.ClientReadableStream<GuestEvent>;
  SyncTime(
    request: { host_time: Timestamp },
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, res: { adjusted: boolean; drift_ms: string; error: string }) => void,
  ): grpc.ClientUnaryCall;
  Tunnel(): grpc.ClientDuplexStream<Partial<TunnelMessage>, TunnelMessage>;
}

export interface PortholeClient extends grpc.Client {
  Hello(request: object, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, res: HelloResponse) => void): grpc.ClientUnaryCall;
  Reverse(request: { guest_socket: string }): grpc.ClientReadableStream<ReverseEvent>;
  ReverseTunnel(): grpc.ClientDuplexStream<Partial<TunnelMessage>, TunnelMessage>;
}

export function createGuestServiceClient(target: string, options: grpc.ChannelOptions): GuestServiceClient {
  return new GuestServiceClient(target, grpc.credentials.createInsecure(), options) as unknown as GuestServiceClient;
}

/** A Porthole client sharing an existing client's channel (one connection for everything). */
export function createPortholeClient(sharing: grpc.Client): PortholeClient {
  return new PortholeClient("unused", grpc.credentials.createInsecure(), {
    channelOverride: sharing.getChannel(),
  }) as unknown as PortholeClient;
}

export function nowTimestamp(): Timestamp {
  const ms = Date.now();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}
