/*
 * What kernel_events.c and connect_rewrite.c both need to hand-assemble and attach BPF
 * programs (no libbpf): instruction encoders, and the bpf() calls they share.
 */
#ifndef PORTHOLE_BPF_ASM_H
#define PORTHOLE_BPF_ASM_H
#include "shim.h"

#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })
#define LDX(size, d, s, o) INSN(BPF_LDX | BPF_MEM | (size), d, s, o, 0)
#define STX(size, d, s, o) INSN(BPF_STX | BPF_MEM | (size), d, s, o, 0)
#define ST_IMM(size, d, o, i) INSN(BPF_ST | BPF_MEM | (size), d, 0, o, i)
#define MOV_IMM(d, i) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, i)
#define MOV_REG(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define ALU_IMM(op, d, i) INSN(BPF_ALU64 | (op) | BPF_K, d, 0, 0, i)
#define ALU_REG(op, d, s) INSN(BPF_ALU64 | (op) | BPF_X, d, s, 0, 0)
/* o: how many instructions to skip when taken (0 where the assembler patches it later). */
#define JMP_IMM(op, d, i, o) INSN(BPF_JMP | (op) | BPF_K, d, 0, o, i)
#define JMP_REG(op, d, s, o) INSN(BPF_JMP | (op) | BPF_X, d, s, o, 0)
#define CALL(f) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, f)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

/* The cgroup2 root's fd (mounted privately where the system has none mounted), or -errno. */
int ph_cgroup2_root(void);
/* The bpf() system call: its result, -1 with errno set on failure. */
int ph_bpf(int cmd, union bpf_attr *attr);
/* Attaches a program to a cgroup with a BPF link (gone when its fd closes): the link's fd, or -errno. */
int ph_cgroup_link(int prog, int cgroup, enum bpf_attach_type attach);
/* This process's network namespace cookie (SO_NETNS_COOKIE) in *out: 0, or -errno where the kernel has none. */
int ph_netns_cookie(uint64_t *out);

#endif
