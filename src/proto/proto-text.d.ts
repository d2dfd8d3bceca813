// The .proto file is imported as text so that it is embedded in the single binary.
declare module "*.proto" {
  const text: string;
  export default text;
}

// The native shim is imported as a file so that `bun build --compile` embeds it.
declare module "*.so" {
  const path: string;
  export default path;
}
