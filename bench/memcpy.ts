// How fast this runtime copies one buffer into another (Buffer#set, i.e. glibc's memmove)
// by where source and destination lie within a 4 KiB page: the case behind
// runtime/allocator.ts's glibc tunable. Run it as is and with the agents' setting:
//   bun bench/memcpy.ts
//   GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=4194304 bun bench/memcpy.ts
const SIZE = 32 * 1024; // ssh2's packet payload
const src = Buffer.alloc(1 << 20, 7);
const dst = Buffer.alloc(1 << 20);
const gbps = (srcOffset: number, dstOffset: number) => {
  const s = src.subarray(srcOffset, srcOffset + SIZE);
  const started = performance.now();
  let n = 0;
  while (performance.now() - started < 200) {
    dst.set(s, dstOffset);
    n++;
  }
  return (n * SIZE) / 1e6 / (performance.now() - started);
};
const dsts = [0, 9, 14, 16, 64];
console.log(`GB/s copying ${SIZE} bytes (GLIBC_TUNABLES=${process.env.GLIBC_TUNABLES ?? ""}); rows: source offset, columns: destination offset`);
console.log(["src \\ dst", ...dsts].map((x) => String(x).padStart(9)).join(""));
for (const so of [0, 8, 9, 16, 64, 4096]) console.log([so, ...dsts.map((d) => gbps(so, d).toFixed(1))].map((x) => String(x).padStart(9)).join(""));
