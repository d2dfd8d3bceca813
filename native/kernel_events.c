#define _GNU_SOURCE
#include "bpf_asm.h"

/* ---- kernel port events (eBPF) ------------------------------------------------------------
 *
 * Small BPF programs, assembled here and loaded with plain bpf() syscalls (no libbpf, no
 * compiler at run time), all attached to the cgroup2 root with BPF links, write an 8-byte
 * record (u8 protocol, then the port where the hook tells it) to one ring buffer whenever a
 * port may have appeared or gone:
 *   - sock_ops, BPF_SOCK_OPS_TCP_LISTEN_CB: listen() succeeded (the listener is hashed, so a
 *     dump finds it); with `closes`, the program then asks for that listener's state changes,
 *     so its close comes as BPF_SOCK_OPS_STATE_CB (from LISTEN), with the port;
 *   - cgroup post-bind (IPv4, IPv6): a UDP socket was bound (also after the hash), its port.
 * Every close, UDP's included, comes as a socket-destroy multicast event (after an RCU grace
 * period), with its port, which the caller watches itself: a second record of the same close
 * would wake it twice. Only where it cannot subscribe to those does it ask for `closes`; a
 * listener's close is then reported as it begins, before the kernel unhashes it (the caller
 * dumps again shortly when the first dump still shows it).
 * Each program first compares bpf_get_netns_cookie(ctx) with this process's network namespace
 * and ignores sockets of every other one (a container's, another VM tool's): those cost
 * nothing. Where the kernel lacks that helper for a hook, the program goes without the check
 * and another namespace's socket costs one dump of this one (said in the start message).
 * A record only says "dump now": the ports always come from sock_diag. Closing the link fds
 * (or the process ending, however it ends) detaches everything; nothing is pinned.
 */

#define PH_RING_BYTES (64 * 1024)


/* A program being assembled: jumps to "out" (return the verdict) are patched at the end. */
struct prog {
  struct bpf_insn insn[128];
  int n, outs[8], n_outs;
};

static void emit(struct prog *p, struct bpf_insn x) { p->insn[p->n++] = x; }

/* A conditional jump to the program's end (no record). */
static void skip_if(struct prog *p, struct bpf_insn jump) {
  p->outs[p->n_outs++] = p->n;
  emit(p, jump);
}

/* A 64-bit immediate (two instructions); src = BPF_PSEUDO_MAP_FD makes it a map. */
static void ld_imm64(struct prog *p, int reg, int src, uint64_t v) {
  emit(p, INSN(BPF_LD | BPF_DW | BPF_IMM, reg, src, 0, (int32_t)(uint32_t)v));
  emit(p, INSN(0, 0, 0, 0, (int32_t)(uint32_t)(v >> 32)));
}

/* Skips sockets of other network namespaces (cookie 0: no check). Keeps r1 = ctx. */
static void this_netns_only(struct prog *p, uint64_t cookie) {
  if (!cookie) return;
  emit(p, MOV_REG(BPF_REG_6, BPF_REG_1));
  emit(p, CALL(BPF_FUNC_get_netns_cookie));
  ld_imm64(p, BPF_REG_2, 0, cookie);
  skip_if(p, JMP_REG(BPF_JNE, BPF_REG_0, BPF_REG_2, 0));
  emit(p, MOV_REG(BPF_REG_1, BPF_REG_6));
}

enum { PH_HOOK_LISTEN, PH_HOOK_BIND4, PH_HOOK_BIND6, PH_HOOKS };

/* Record flags (byte 1). */
#define PH_EV_CLOSING 1 /* reported as the close begins, before the kernel unhashes the socket */
#define PH_EV_V6 2      /* an AF_INET6 socket */
#define PH_EV_ADDR 4    /* set by ph_events_drain: the record carries the socket's address */

/* Stores the socket's local address at r10-16 (16 bytes, network order; IPv4 in the first 4,
 * the rest 0): the agent looks that one socket up (a hash lookup) instead of dumping every
 * socket on the port. r1 = ctx, kept; r2 is used. */
static void store_addr(struct prog *p, int hook) {
  emit(p, MOV_IMM(BPF_REG_2, 0));
  for (int i = 0; i < 4; i++) emit(p, STX(BPF_W, BPF_REG_10, BPF_REG_2, -16 + 4 * i));
  switch (hook) {
  case PH_HOOK_BIND4:
    emit(p, LDX(BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock, src_ip4)));
    emit(p, STX(BPF_W, BPF_REG_10, BPF_REG_2, -16));
    break;
  case PH_HOOK_BIND6:
    for (int i = 0; i < 4; i++) {
      emit(p, LDX(BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock, src_ip6) + 4 * i));
      emit(p, STX(BPF_W, BPF_REG_10, BPF_REG_2, -16 + 4 * i));
    }
    break;
  default: /* sock_ops: either family */
    emit(p, LDX(BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock_ops, family)));
    emit(p, JMP_IMM(BPF_JNE, BPF_REG_2, AF_INET6, 9)); /* to the IPv4 address */
    for (int i = 0; i < 4; i++) {
      emit(p, LDX(BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock_ops, local_ip6) + 4 * i));
      emit(p, STX(BPF_W, BPF_REG_10, BPF_REG_2, -16 + 4 * i));
    }
    emit(p, JMP_IMM(BPF_JA, 0, 0, 2));
    emit(p, LDX(BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock_ops, local_ip4)));
    emit(p, STX(BPF_W, BPF_REG_10, BPF_REG_2, -16));
  }
}

/* Writes the record { u8 protocol, u8 flags, u16 0, u32 port, u32 tgid, u32 0, u8 addr[16] }
 * to the ring (store_addr wrote the address): r3 holds the port, r5 the socket's family
 * (AF_INET6 adds PH_EV_V6). With `pid`, tgid is the calling process's (listen() and bind()
 * run in the binding process: the agent looks for the socket's owner there first); else 0. */
static void record(struct prog *p, int ring, int protocol, int flags, int pid) {
  emit(p, ALU_IMM(BPF_LSH, BPF_REG_3, 32));
  emit(p, ALU_IMM(BPF_OR, BPF_REG_3, protocol | flags << 8));
  emit(p, JMP_IMM(BPF_JNE, BPF_REG_5, AF_INET6, 1));
  emit(p, ALU_IMM(BPF_OR, BPF_REG_3, PH_EV_V6 << 8));
  emit(p, STX(BPF_DW, BPF_REG_10, BPF_REG_3, -32));
  if (pid) {
    emit(p, CALL(BPF_FUNC_get_current_pid_tgid));
    emit(p, ALU_IMM(BPF_RSH, BPF_REG_0, 32));
  } else {
    emit(p, MOV_IMM(BPF_REG_0, 0));
  }
  emit(p, STX(BPF_DW, BPF_REG_10, BPF_REG_0, -24));
  emit(p, MOV_REG(BPF_REG_2, BPF_REG_10));
  emit(p, ALU_IMM(BPF_ADD, BPF_REG_2, -32));
  ld_imm64(p, BPF_REG_1, BPF_PSEUDO_MAP_FD, (uint32_t)ring);
  emit(p, MOV_IMM(BPF_REG_3, 32));
  emit(p, MOV_IMM(BPF_REG_4, 0));
  emit(p, CALL(BPF_FUNC_ringbuf_output));
}

/* Every program returns `verdict` (1: allow the bind or release; sock_ops ignores it). */
static void prog_end(struct prog *p, int verdict) {
  for (int i = 0; i < p->n_outs; i++) p->insn[p->outs[i]].off = (int16_t)(p->n - p->outs[i] - 1);
  emit(p, MOV_IMM(BPF_REG_0, verdict));
  emit(p, EXIT());
}

static const struct {
  const char *name;
  uint32_t prog_type, attach_type;
} hooks[PH_HOOKS] = {
  { "ph_listen", BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS },
  { "ph_bind4", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET4_POST_BIND },
  { "ph_bind6", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET6_POST_BIND },
};

/* The program of one hook. Exposed (ph_events_program) so tests can look at it. */
static void assemble(int hook, int ring, uint64_t cookie, int pid, int closes, struct prog *p) {
  memset(p, 0, sizeof *p);
  switch (hook) {
  case PH_HOOK_LISTEN: { /* ctx: struct bpf_sock_ops */
    emit(p, LDX(BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock_ops, op)));
    emit(p, JMP_IMM(BPF_JEQ, BPF_REG_2, BPF_SOCK_OPS_TCP_LISTEN_CB, 1));
    skip_if(p, JMP_IMM(BPF_JNE, BPF_REG_2, BPF_SOCK_OPS_STATE_CB, 0));
    this_netns_only(p, cookie);
    emit(p, MOV_REG(BPF_REG_6, BPF_REG_1));
    emit(p, LDX(BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock_ops, op)));
    int to_state = p->n;
    emit(p, JMP_IMM(BPF_JNE, BPF_REG_2, BPF_SOCK_OPS_TCP_LISTEN_CB, 0));
    if (closes) {
      /* listen(): ask for this listener's state changes (its close comes as STATE_CB). */
      emit(p, MOV_IMM(BPF_REG_2, BPF_SOCK_OPS_STATE_CB_FLAG));
      emit(p, CALL(BPF_FUNC_sock_ops_cb_flags_set));
      emit(p, MOV_REG(BPF_REG_1, BPF_REG_6));
    }
    store_addr(p, hook);
    emit(p, LDX(BPF_W, BPF_REG_3, BPF_REG_1, offsetof(struct bpf_sock_ops, local_port))); /* host order */
    emit(p, LDX(BPF_W, BPF_REG_5, BPF_REG_1, offsetof(struct bpf_sock_ops, family)));
    record(p, ring, IPPROTO_TCP, 0, pid);
    skip_if(p, JMP_IMM(BPF_JA, 0, 0, 0));
    p->insn[to_state].off = (int16_t)(p->n - to_state - 1);
    /* A state change: only a listener's (args[0]: the old state), as its close begins. */
    emit(p, LDX(BPF_W, BPF_REG_3, BPF_REG_1, offsetof(struct bpf_sock_ops, args[0])));
    skip_if(p, JMP_IMM(BPF_JNE, BPF_REG_3, 10, 0));
    store_addr(p, hook);
    emit(p, LDX(BPF_W, BPF_REG_3, BPF_REG_1, offsetof(struct bpf_sock_ops, local_port)));
    emit(p, LDX(BPF_W, BPF_REG_5, BPF_REG_1, offsetof(struct bpf_sock_ops, family)));
    record(p, ring, IPPROTO_TCP, PH_EV_CLOSING, 0); /* a close: no owner to find */
    break;
  }
  case PH_HOOK_BIND4:
  case PH_HOOK_BIND6: /* ctx: struct bpf_sock; only UDP (a TCP socket is a port once it listens) */
    emit(p, LDX(BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock, protocol)));
    skip_if(p, JMP_IMM(BPF_JNE, BPF_REG_2, IPPROTO_UDP, 0));
    this_netns_only(p, cookie);
    store_addr(p, hook);
    emit(p, LDX(BPF_W, BPF_REG_3, BPF_REG_1, offsetof(struct bpf_sock, src_port))); /* host order */
    emit(p, MOV_IMM(BPF_REG_5, hook == PH_HOOK_BIND6 ? AF_INET6 : AF_INET));
    record(p, ring, IPPROTO_UDP, 0, pid);
    break;
  }
  prog_end(p, 1);
}
/* For tests: hook's instructions (8 bytes each) into out; returns their count. */
int ph_events_program(int hook, int ring, uint32_t cookie_lo, uint32_t cookie_hi, int pid, int closes, uint8_t *out, int cap) {
  if (hook < 0 || hook >= PH_HOOKS) return -EINVAL;
  struct prog p;
  assemble(hook, ring, ((uint64_t)cookie_hi << 32) | cookie_lo, pid, closes, &p);
  if (cap < p.n * (int)sizeof(struct bpf_insn)) return -ENOBUFS;
  memcpy(out, p.insn, (size_t)p.n * sizeof(struct bpf_insn));
  return p.n;
}

static struct {
  int ring, prog[PH_HOOKS], link[PH_HOOKS];
  uint8_t *consumer, *producer;
  uint64_t events;
} ev = { -1, { -1, -1, -1 }, { -1, -1, -1 }, NULL, NULL, 0 };

int ph_bpf(int cmd, union bpf_attr *attr) {
  return (int)syscall(__NR_bpf, cmd, attr, sizeof *attr);
}

int ph_cgroup_link(int prog, int cgroup, enum bpf_attach_type attach) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.link_create.prog_fd = (uint32_t)prog;
  a.link_create.target_fd = (uint32_t)cgroup;
  a.link_create.attach_type = attach;
  int fd = ph_bpf(BPF_LINK_CREATE, &a);
  return fd >= 0 ? fd : NEG_ERRNO;
}

int ph_netns_cookie(uint64_t *out) {
  *out = 0;
  socklen_t len = sizeof *out;
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return NEG_ERRNO;
  int e = getsockopt(fd, SOL_SOCKET, 71 /* SO_NETNS_COOKIE */, out, &len) == 0 ? 0 : NEG_ERRNO;
  close(fd);
  return e;
}

/* Writes "what: reason" to the caller's message buffer. */
static void say(char *msg, int cap, const char *what, int err) {
  if (msg && cap > 0) snprintf(msg, (size_t)cap, "%s: %s (%s)", what, ph_errno_name(-err), strerror(err));
}

/* Loads a program; on failure loads it again with the verifier's log, into msg. */
static int load(int hook, const struct prog *p, char *msg, int cap) {
  static char log[8192];
  for (int verbose = 0; verbose < 2; verbose++) {
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = hooks[hook].prog_type;
    a.expected_attach_type = hooks[hook].attach_type;
    a.insns = (uint64_t)(uintptr_t)p->insn;
    a.insn_cnt = (uint32_t)p->n;
    a.license = (uint64_t)(uintptr_t)"Dual MIT/GPL";
    strncpy(a.prog_name, hooks[hook].name, sizeof a.prog_name - 1);
    if (verbose) {
      log[0] = 0;
      a.log_level = 1;
      a.log_buf = (uint64_t)(uintptr_t)log;
      a.log_size = sizeof log;
    }
    int fd = ph_bpf(BPF_PROG_LOAD, &a);
    if (fd >= 0) return fd;
    int e = errno;
    if (verbose || (e != EINVAL && e != EACCES)) {
      if (msg && cap > 0) snprintf(msg, (size_t)cap, "loading %s: %s (%s)%s%s", hooks[hook].name, ph_errno_name(-e), strerror(e), verbose ? "; verifier log: " : "", verbose ? log : "");
      return -e;
    }
  }
  return -EINVAL;
}


/*
 * The cgroup2 hierarchy's root: where it is mounted (from /proc/self/mounts), else (a mount
 * namespace without it, as `ip netns exec` makes) a detached cgroup2 mount of our own that is
 * never attached anywhere (fsopen/fsmount) and goes away with its fd.
 */
int ph_cgroup2_root(void) {
  FILE *f = fopen("/proc/self/mounts", "re");
  if (f) {
    char line[4096], dir[4096], type[64];
    while (fgets(line, sizeof line, f)) {
      if (sscanf(line, "%*s %4095s %63s", dir, type) == 2 && strcmp(type, "cgroup2") == 0) {
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) { fclose(f); return fd; }
      }
    }
    fclose(f);
  }
  int fs = (int)syscall(__NR_fsopen, "cgroup2", FSOPEN_CLOEXEC);
  if (fs < 0) return NEG_ERRNO;
  int mnt = -1;
  if (syscall(__NR_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
    mnt = (int)syscall(__NR_fsmount, fs, FSMOUNT_CLOEXEC, 0);
  int e = errno;
  close(fs);
  if (mnt < 0) return -e;
  int fd = openat(mnt, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  e = errno;
  close(mnt);
  return fd >= 0 ? fd : -e;
}

/* Detaches everything and frees the ring (also after a failed start). */
int ph_events_stop(void) {
  for (int i = 0; i < PH_HOOKS; i++) {
    if (ev.link[i] >= 0) close(ev.link[i]);
    if (ev.prog[i] >= 0) close(ev.prog[i]);
    ev.link[i] = ev.prog[i] = -1;
  }
  if (ev.ring >= 0) close(ev.ring);
  ev.ring = -1;
  long page = sysconf(_SC_PAGESIZE);
  if (ev.consumer) munmap(ev.consumer, (size_t)page);
  if (ev.producer) munmap(ev.producer, (size_t)page + 2 * PH_RING_BYTES);
  ev.consumer = ev.producer = NULL;
  return 0;
}

/*
 * Loads and attaches every program; returns the ring buffer's fd (readable when records
 * wait: watch it with ph_watch, then ph_events_drain), or -errno with the reason (and the
 * verifier's log where it refused a program) in msg. closes: listeners' closes are recorded
 * too (for a caller without socket-destroy events). On success msg says what this kernel
 * could not do (no per-namespace filter), or is empty. Started once; a second call returns
 * the same fd (with the first call's programs, whatever its closes).
 */
int ph_events_start(char *msg, int cap, int closes) {
  if (msg && cap > 0) msg[0] = 0;
  if (ev.ring >= 0) return ev.ring;
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_type = BPF_MAP_TYPE_RINGBUF;
  a.max_entries = PH_RING_BYTES;
  strncpy(a.map_name, "porthole_ports", sizeof a.map_name - 1);
  ev.ring = ph_bpf(BPF_MAP_CREATE, &a);
  if (ev.ring < 0) { int e = errno; say(msg, cap, "creating the ring buffer", e); ev.ring = -1; return -e; }
  long page = sysconf(_SC_PAGESIZE);
  void *c = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, ev.ring, 0);
  void *p = mmap(NULL, (size_t)page + 2 * PH_RING_BYTES, PROT_READ, MAP_SHARED, ev.ring, page);
  ev.consumer = c == MAP_FAILED ? NULL : c;
  ev.producer = p == MAP_FAILED ? NULL : p;
  int e = 0, cg = -1, unfiltered = 0;
  if (!ev.consumer || !ev.producer) { e = errno; say(msg, cap, "mapping the ring buffer", e); goto fail; }
  cg = ph_cgroup2_root();
  if (cg < 0) { e = -cg; say(msg, cap, "opening the cgroup2 root", e); goto fail; }
  uint64_t cookie;
  ph_netns_cookie(&cookie); /* 0 where the kernel has none: the programs go without the check */
  int no_pid = 0;
  for (int i = 0; i < PH_HOOKS; i++) {
    struct prog prog;
    /* The fullest program first; a kernel without bpf_get_netns_cookie or
     * bpf_get_current_pid_tgid for this hook gets the same program without it. */
    for (int v = 0; v < 4; v++) {
      uint64_t c = v & 2 ? 0 : cookie;
      int pid = !(v & 1);
      if (v & 2 && !cookie) break;
      assemble(i, ev.ring, c, pid, closes, &prog);
      ev.prog[i] = load(i, &prog, msg, cap);
      if (ev.prog[i] >= 0) {
        if (cookie && !c) unfiltered = 1;
        if (!pid) no_pid = 1;
        break;
      }
      if (!cookie && v == 1) break;
    }
    if (ev.prog[i] < 0) { e = -ev.prog[i]; ev.prog[i] = -1; goto fail; }
    ev.link[i] = ph_cgroup_link(ev.prog[i], cg, hooks[i].attach_type);
    if (ev.link[i] < 0) {
      e = -ev.link[i];
      ev.link[i] = -1;
      if (msg && cap > 0) snprintf(msg, (size_t)cap, "attaching %s to the cgroup2 root: %s (%s)", hooks[i].name, ph_errno_name(-e), strerror(e));
      goto fail;
    }
  }
  close(cg);
  if (msg && cap > 0) {
    msg[0] = 0;
    if (!cookie || unfiltered) snprintf(msg, (size_t)cap, "this kernel cannot tell the programs which network namespace a socket is in, so another namespace's sockets also wake the agent (for one dump of its own)");
    if (no_pid) snprintf(msg + strlen(msg), (size_t)cap - strlen(msg), "%sthis kernel cannot tell the programs which process bound a port, so finding a new port's owner reads every process's open files", msg[0] ? "; " : "");
  }
  return ev.ring;
fail:
  if (cg >= 0) close(cg);
  ph_events_stop();
  return -e;
}

/*
 * Consumes every record waiting in the ring: out[0] = records, out[1] = protocols seen (bit 0
 * TCP, bit 1 UDP; bits 2 and 3: a TCP or UDP record without a port or past the room, so the
 * caller scans that protocol whole), out[2..3] = records since start (low, high 32 bits), then
 * from out[4] PH_EV_WORDS u32 per record that fits: protocol | flags << 8 (PH_EV_*) | port << 16,
 * the binding process's tgid (0 where unknown), and the socket's address (16 bytes, network
 * order, with PH_EV_ADDR). Returns the count, or -ENOTCONN when not started.
 */
#define PH_EV_WORDS 6
int ph_events_drain(uint32_t *out, int cap) {
  if (!ev.consumer) return -ENOTCONN;
  if (cap < 4) return -EINVAL;
  uint64_t *cons_pos = (uint64_t *)ev.consumer, *prod_pos = (uint64_t *)ev.producer;
  uint8_t *data = ev.producer + sysconf(_SC_PAGESIZE);
  uint64_t cons = __atomic_load_n(cons_pos, __ATOMIC_ACQUIRE);
  uint64_t prod = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
  uint32_t count = 0, protocols = 0;
  while (cons < prod) {
    uint32_t *hdr = (uint32_t *)(data + (cons & (PH_RING_BYTES - 1)));
    uint32_t len = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
    if (len & BPF_RINGBUF_BUSY_BIT) break; /* still being written: its wake-up follows */
    uint32_t size = len & ~(uint32_t)(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
    if (!(len & BPF_RINGBUF_DISCARD_BIT) && size >= 8) {
      uint8_t *body = (uint8_t *)hdr + BPF_RINGBUF_HDR_SZ;
      uint64_t rec;
      uint32_t tgid = 0;
      memcpy(&rec, body, 8);
      if (size >= 12) memcpy(&tgid, body + 8, 4);
      uint32_t protocol = (uint32_t)(rec & 0xff), flags = (uint32_t)(rec >> 8) & 0xff, port = (uint32_t)(rec >> 32) & 0xffff;
      protocols |= protocol == IPPROTO_TCP ? 1u : protocol == IPPROTO_UDP ? 2u : 3u;
      if (4 + PH_EV_WORDS * ((int)count + 1) <= cap && port) {
        uint32_t *o = out + 4 + PH_EV_WORDS * count;
        if (size >= 32) flags |= PH_EV_ADDR;
        o[0] = protocol | flags << 8 | port << 16;
        o[1] = tgid;
        if (size >= 32) memcpy(o + 2, body + 16, 16);
        else memset(o + 2, 0, 16);
      }
      else protocols |= protocol == IPPROTO_UDP ? 8u : 4u;
      count++;
    }
    cons += (BPF_RINGBUF_HDR_SZ + size + 7) & ~7ull;
    __atomic_store_n(cons_pos, cons, __ATOMIC_RELEASE);
    if (cons >= prod) prod = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
  }
  ev.events += count;
  out[0] = count;
  out[1] = protocols;
  out[2] = (uint32_t)ev.events;
  out[3] = (uint32_t)(ev.events >> 32);
  return (int)count;
}
