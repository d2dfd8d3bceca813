// The .proto file is imported as text so that it is embedded in the single binary.
declare module "*.proto" {
  const text: string;
  export default text;
}
