// Lima's GuestService, loaded from the embedded .proto text with protobufjs and
// @grpc/proto-loader. Host and guest share these definitions and nothing else.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import protoText from "../../proto/guestservice.proto" with { type: "text" };

export interface IPPort {
  protocol: string;
  ip: string;
  port: number;
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
  protobuf.parse(protoText, root, { keepCase: true });
  root.resolveAll();
  return root;
}

export const packageDefinition = protoLoader.fromJSON(loadRoot().toJSON(), LOADER_OPTIONS);

const loaded = grpc.loadPackageDefinition(packageDefinition);

const GuestServiceClient = loaded.GuestService as grpc.ServiceClientConstructor;
export const guestServiceDefinition = GuestServiceClient.service;

/** The generated client's methods, typed. */
export interface GuestServiceClient extends grpc.Client {
  GetInfo(
    request: object,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, info: Info) => void,
  ): grpc.ClientUnaryCall;
  GetEvents(request: object): grpc.ClientReadableStream<GuestEvent>;
  Tunnel(): grpc.ClientDuplexStream<Partial<TunnelMessage>, TunnelMessage>;
}

export function createGuestServiceClient(
  target: string,
  options: grpc.ChannelOptions,
): GuestServiceClient {
  return new GuestServiceClient(target, grpc.credentials.createInsecure(), options) as unknown as GuestServiceClient;
}

export function nowTimestamp(): Timestamp {
  const ms = Date.now();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}
