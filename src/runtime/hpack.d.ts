// The part of hpack.js (no bundled types) that h2-authority.ts uses.
declare module "hpack.js" {
  interface HeaderField {
    name: string;
    value: string;
    neverIndex?: boolean;
    incremental?: boolean;
  }
  interface Decompressor {
    write(data: Buffer): boolean;
    execute(): void;
    read(): HeaderField | null;
  }
  interface Compressor {
    write(headers: HeaderField[]): boolean;
    read(): Buffer | null;
  }
  const hpack: {
    decompressor: { create(options: { table: { maxSize: number } }): Decompressor };
    compressor: { create(options: { table: { maxSize: number } }): Compressor };
  };
  export default hpack;
}
