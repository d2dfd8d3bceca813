#define _GNU_SOURCE
#include "bpf_asm.h"

/* ---- connect() rewritten to the guest -------------------------------------------------------
 *
 * For a direct forward (the guest proved it answers at its own address) the host's own clients
 * need no relay at all: a cgroup connect4 program on the cgroup2 root turns connect() to the
 * forward's loopback address into connect() to the guest's address, so the client's socket is
 * the guest's peer and the kernel carries every byte (as Cilium's socket load-balancer does).
 * Two hand-assembled programs, attached with BPF links (they go when the agent goes):
 *   - connect4: only TCP, only in the agent's own network namespace, only addresses set here,
 *     not a client bound to a loopback source; remembers the socket (by cookie);
 *   - sock_ops: a remembered socket that TCP connects is counted, given keepalive and a short
 *     SYN retry, and followed to its close, where its bytes are counted
 *     (bytes_acked: client -> guest; bytes_received: guest -> client). One that closes from
 *     SYN_SENT never connected: it counts as failed, and the program deletes the forward's
 *     rewrite, so the next clients reach the agent's own listener again (which dials and
 *     falls back as for any direct connection, and says so).
 * Maps (key: the forward's IPv4 address and port, network order):
 *   rewrites: key -> the guest's address and port, the netns cookie;
 *   stats:    key -> connections, closed, failed, bytes in, bytes out, generation (kept after a
 *             rewrite goes, until the forward is forgotten);
 *   sockets:  socket cookie -> key and generation, LRU (a socket that never reaches the sock_ops
 *             hook ages out).
 */

struct rw_key {
  uint32_t ip4, port;
};
/* gen: the counters' generation (see rw_stats); copied to each socket the rewrite sends. */
struct rw_target {
  uint32_t ip4, port;
  uint64_t netns;
  uint32_t gen, pad;
};
/* gen: new each time a forward's counters are created (after a forget, the port may go to a new
 * forward while the old one's rewritten connections are still open: their closes do not count here). */
struct rw_stats {
  uint64_t conns, closed, failed, bytes_in, bytes_out, gen;
};
/* A rewritten socket: its forward's key and the counters' generation it belongs to. */
struct rw_sock {
  struct rw_key key;
  uint32_t gen, pad;
};

static struct {
  int rewrites, stats, sockets;
  int prog[2], link[2];
  int started;
  uint32_t generation;
} rw = { -1, -1, -1, { -1, -1 }, { -1, -1 }, 0, 0 };

#define ADD_ATOMIC(d, s, o) INSN(BPF_STX | BPF_ATOMIC | BPF_DW, d, s, o, BPF_ADD)

#define RW_MAX_INSNS 160
struct rw_prog {
  struct bpf_insn insn[RW_MAX_INSNS];
  int n;
  int to_end[16]; /* jumps to the program's last two instructions (r0 = 1; exit) */
  int ends;
};

static void put(struct rw_prog *p, struct bpf_insn x) {
  if (p->n < RW_MAX_INSNS) p->insn[p->n] = x;
  p->n++; /* past the end: refused at load (see ph_rewrite_start) */
}
/* A conditional jump to the end (allow, nothing done). */
static void out_if(struct rw_prog *p, struct bpf_insn jump) {
  p->to_end[p->ends++] = p->n;
  put(p, jump);
}
static void map_fd(struct rw_prog *p, int reg, int fd) {
  put(p, INSN(BPF_LD | BPF_DW | BPF_IMM, reg, BPF_PSEUDO_MAP_FD, 0, fd));
  put(p, INSN(0, 0, 0, 0, 0));
}
/* helper(map, fp + key_off): a lookup or a delete of the key on the stack (r0: the result). */
static void map_call(struct rw_prog *p, int helper, int map, int key_off) {
  put(p, MOV_REG(BPF_REG_2, BPF_REG_10));
  put(p, ALU_IMM(BPF_ADD, BPF_REG_2, key_off));
  map_fd(p, BPF_REG_1, map);
  put(p, CALL(helper));
}
static void finish(struct rw_prog *p) {
  int end = p->n;
  put(p, MOV_IMM(BPF_REG_0, 1));
  put(p, EXIT());
  for (int i = 0; i < p->ends; i++) p->insn[p->to_end[i]].off = (int16_t)(end - p->to_end[i] - 1);
}

/* connect4: fp-8 the key, fp-16 the socket's cookie, fp-32 the socket's entry (struct rw_sock). */
static void assemble_connect(struct rw_prog *p) {
  memset(p, 0, sizeof *p);
  put(p, MOV_REG(BPF_REG_6, BPF_REG_1));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct bpf_sock_addr, type)));
  out_if(p, JMP_IMM(BPF_JNE, BPF_REG_2, SOCK_STREAM, 0));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct bpf_sock_addr, protocol)));
  out_if(p, JMP_IMM(BPF_JNE, BPF_REG_2, IPPROTO_TCP, 0)); /* not MPTCP, SCTP */
  /* A client bound to a loopback source could not reach the guest: left to the listener. */
  put(p, LDX(BPF_DW, BPF_REG_2, BPF_REG_6, offsetof(struct bpf_sock_addr, sk)));
  put(p, JMP_IMM(BPF_JEQ, BPF_REG_2, 0, 3));
  put(p, LDX(BPF_W, BPF_REG_3, BPF_REG_2, offsetof(struct bpf_sock, src_ip4)));
  put(p, ALU_IMM(BPF_AND, BPF_REG_3, 0xff)); /* the first octet (network order, little-endian load) */
  out_if(p, JMP_IMM(BPF_JEQ, BPF_REG_3, 127, 0));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct bpf_sock_addr, user_ip4)));
  put(p, STX(BPF_W, BPF_REG_10, BPF_REG_2, -8));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct bpf_sock_addr, user_port)));
  put(p, STX(BPF_W, BPF_REG_10, BPF_REG_2, -4));
  map_call(p, BPF_FUNC_map_lookup_elem, rw.rewrites, -8);
  out_if(p, JMP_IMM(BPF_JEQ, BPF_REG_0, 0, 0));
  put(p, MOV_REG(BPF_REG_7, BPF_REG_0));
  put(p, MOV_REG(BPF_REG_1, BPF_REG_6));
  put(p, CALL(BPF_FUNC_get_netns_cookie));
  put(p, LDX(BPF_DW, BPF_REG_2, BPF_REG_7, offsetof(struct rw_target, netns)));
  out_if(p, JMP_REG(BPF_JNE, BPF_REG_0, BPF_REG_2, 0));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_7, offsetof(struct rw_target, ip4)));
  put(p, STX(BPF_W, BPF_REG_6, BPF_REG_2, offsetof(struct bpf_sock_addr, user_ip4)));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_7, offsetof(struct rw_target, port)));
  put(p, STX(BPF_W, BPF_REG_6, BPF_REG_2, offsetof(struct bpf_sock_addr, user_port)));
  /* remembered, to be counted once TCP connects it (a connect() that fails before is not) */
  put(p, LDX(BPF_DW, BPF_REG_2, BPF_REG_10, -8));
  put(p, STX(BPF_DW, BPF_REG_10, BPF_REG_2, -32 + (int)offsetof(struct rw_sock, key)));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_7, offsetof(struct rw_target, gen)));
  put(p, STX(BPF_W, BPF_REG_10, BPF_REG_2, -32 + (int)offsetof(struct rw_sock, gen)));
  put(p, ST_IMM(BPF_W, BPF_REG_10, -32 + (int)offsetof(struct rw_sock, pad), 0));
  put(p, MOV_REG(BPF_REG_1, BPF_REG_6));
  put(p, CALL(BPF_FUNC_get_socket_cookie));
  put(p, STX(BPF_DW, BPF_REG_10, BPF_REG_0, -16));
  map_fd(p, BPF_REG_1, rw.sockets);
  put(p, MOV_REG(BPF_REG_2, BPF_REG_10));
  put(p, ALU_IMM(BPF_ADD, BPF_REG_2, -16));
  put(p, MOV_REG(BPF_REG_3, BPF_REG_10));
  put(p, ALU_IMM(BPF_ADD, BPF_REG_3, -32));
  put(p, MOV_IMM(BPF_REG_4, BPF_ANY));
  put(p, CALL(BPF_FUNC_map_update_elem));
  finish(p);
}

/* sock_ops: fp-8 the socket's cookie, fp-16 its forward's key; r9 the socket's generation. */
static void assemble_sockops(struct rw_prog *p) {
  memset(p, 0, sizeof *p);
  put(p, MOV_REG(BPF_REG_6, BPF_REG_1));
  put(p, LDX(BPF_W, BPF_REG_7, BPF_REG_6, offsetof(struct bpf_sock_ops, op)));
  put(p, JMP_IMM(BPF_JEQ, BPF_REG_7, BPF_SOCK_OPS_TCP_CONNECT_CB, 0));
  int to_lookup = p->n - 1;
  out_if(p, JMP_IMM(BPF_JNE, BPF_REG_7, BPF_SOCK_OPS_STATE_CB, 0));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct bpf_sock_ops, args[1])));
  out_if(p, JMP_IMM(BPF_JNE, BPF_REG_2, BPF_TCP_CLOSE, 0));
  p->insn[to_lookup].off = (int16_t)(p->n - to_lookup - 1);
  put(p, MOV_REG(BPF_REG_1, BPF_REG_6));
  put(p, CALL(BPF_FUNC_get_socket_cookie));
  put(p, STX(BPF_DW, BPF_REG_10, BPF_REG_0, -8));
  map_call(p, BPF_FUNC_map_lookup_elem, rw.sockets, -8);
  out_if(p, JMP_IMM(BPF_JEQ, BPF_REG_0, 0, 0));
  put(p, LDX(BPF_DW, BPF_REG_2, BPF_REG_0, offsetof(struct rw_sock, key)));
  put(p, STX(BPF_DW, BPF_REG_10, BPF_REG_2, -16));
  put(p, LDX(BPF_W, BPF_REG_9, BPF_REG_0, offsetof(struct rw_sock, gen)));
  put(p, JMP_IMM(BPF_JNE, BPF_REG_7, BPF_SOCK_OPS_TCP_CONNECT_CB, 0));
  int to_close = p->n - 1;
  /* connecting: counted, followed to its close (other programs' flags kept), and given the
   * relay's safeguards: a SYN retried twice (a silent guest fails the client within ~7 s,
   * which takes the rewrite away), keepalive so a guest that vanished is noticed. */
  map_call(p, BPF_FUNC_map_lookup_elem, rw.stats, -16);
  put(p, JMP_IMM(BPF_JEQ, BPF_REG_0, 0, 4));
  put(p, LDX(BPF_DW, BPF_REG_2, BPF_REG_0, offsetof(struct rw_stats, gen)));
  put(p, JMP_REG(BPF_JNE, BPF_REG_2, BPF_REG_9, 2)); /* another forward's counters now */
  put(p, MOV_IMM(BPF_REG_2, 1));
  put(p, ADD_ATOMIC(BPF_REG_0, BPF_REG_2, offsetof(struct rw_stats, conns)));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct bpf_sock_ops, bpf_sock_ops_cb_flags)));
  put(p, ALU_IMM(BPF_OR, BPF_REG_2, BPF_SOCK_OPS_STATE_CB_FLAG));
  put(p, MOV_REG(BPF_REG_1, BPF_REG_6));
  put(p, CALL(BPF_FUNC_sock_ops_cb_flags_set));
  static const int opts[][3] = {
    { SOL_SOCKET, SO_KEEPALIVE, 1 }, { IPPROTO_TCP, TCP_KEEPIDLE, 10 }, { IPPROTO_TCP, TCP_KEEPINTVL, 5 },
    { IPPROTO_TCP, TCP_KEEPCNT, 3 }, { IPPROTO_TCP, TCP_SYNCNT, 2 },
  };
  for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
    put(p, ST_IMM(BPF_W, BPF_REG_10, -20, opts[i][2]));
    put(p, MOV_REG(BPF_REG_1, BPF_REG_6));
    put(p, MOV_IMM(BPF_REG_2, opts[i][0]));
    put(p, MOV_IMM(BPF_REG_3, opts[i][1]));
    put(p, MOV_REG(BPF_REG_4, BPF_REG_10));
    put(p, ALU_IMM(BPF_ADD, BPF_REG_4, -20));
    put(p, MOV_IMM(BPF_REG_5, 4));
    put(p, CALL(BPF_FUNC_setsockopt)); /* refused on an older kernel: the defaults stay */
  }
  out_if(p, JMP_IMM(BPF_JA, 0, 0, 0));
  p->insn[to_close].off = (int16_t)(p->n - to_close - 1);
  /* closed: the socket forgotten; counted only in its own generation's counters (a forward
   * forgotten meanwhile, its port another forward's now: neither counted nor its rewrite touched) */
  map_call(p, BPF_FUNC_map_delete_elem, rw.sockets, -8);
  map_call(p, BPF_FUNC_map_lookup_elem, rw.stats, -16);
  out_if(p, JMP_IMM(BPF_JEQ, BPF_REG_0, 0, 0));
  put(p, LDX(BPF_DW, BPF_REG_2, BPF_REG_0, offsetof(struct rw_stats, gen)));
  out_if(p, JMP_REG(BPF_JNE, BPF_REG_2, BPF_REG_9, 0));
  put(p, MOV_REG(BPF_REG_8, BPF_REG_0));
  put(p, LDX(BPF_W, BPF_REG_2, BPF_REG_6, offsetof(struct bpf_sock_ops, args[0])));
  put(p, JMP_IMM(BPF_JNE, BPF_REG_2, BPF_TCP_SYN_SENT, 0));
  int to_counted = p->n - 1;
  /* never connected: counted as failed, and the rewrite taken away */
  put(p, MOV_IMM(BPF_REG_2, 1));
  put(p, ADD_ATOMIC(BPF_REG_8, BPF_REG_2, offsetof(struct rw_stats, failed)));
  map_call(p, BPF_FUNC_map_delete_elem, rw.rewrites, -16);
  out_if(p, JMP_IMM(BPF_JA, 0, 0, 0));
  p->insn[to_counted].off = (int16_t)(p->n - to_counted - 1);
  put(p, MOV_IMM(BPF_REG_2, 1));
  put(p, ADD_ATOMIC(BPF_REG_8, BPF_REG_2, offsetof(struct rw_stats, closed)));
  /* The kernel's counters take in sequence space: bytes_acked counts our SYN and, once acked,
   * our FIN; bytes_received the peer's FIN. The state the socket closed from tells which. */
  put(p, LDX(BPF_W, BPF_REG_3, BPF_REG_6, offsetof(struct bpf_sock_ops, args[0])));
  put(p, LDX(BPF_DW, BPF_REG_4, BPF_REG_6, offsetof(struct bpf_sock_ops, bytes_acked)));
  put(p, ALU_IMM(BPF_ADD, BPF_REG_4, -1)); /* the SYN */
  put(p, JMP_IMM(BPF_JEQ, BPF_REG_3, BPF_TCP_FIN_WAIT2, 2));
  put(p, JMP_IMM(BPF_JEQ, BPF_REG_3, BPF_TCP_CLOSING, 1));
  put(p, JMP_IMM(BPF_JNE, BPF_REG_3, BPF_TCP_LAST_ACK, 1));
  put(p, ALU_IMM(BPF_ADD, BPF_REG_4, -1)); /* our FIN, acked */
  put(p, JMP_IMM(BPF_JSGE, BPF_REG_4, 0, 1));
  put(p, MOV_IMM(BPF_REG_4, 0));
  put(p, ADD_ATOMIC(BPF_REG_8, BPF_REG_4, offsetof(struct rw_stats, bytes_in)));
  put(p, LDX(BPF_DW, BPF_REG_5, BPF_REG_6, offsetof(struct bpf_sock_ops, bytes_received)));
  put(p, JMP_IMM(BPF_JEQ, BPF_REG_3, BPF_TCP_CLOSE_WAIT, 3));
  put(p, JMP_IMM(BPF_JEQ, BPF_REG_3, BPF_TCP_LAST_ACK, 2));
  put(p, JMP_IMM(BPF_JEQ, BPF_REG_3, BPF_TCP_CLOSING, 1));
  put(p, JMP_IMM(BPF_JNE, BPF_REG_3, BPF_TCP_FIN_WAIT2, 1));
  put(p, ALU_IMM(BPF_ADD, BPF_REG_5, -1)); /* the peer's FIN (from FIN_WAIT2: taken as received, as after a FIN it is) */
  put(p, JMP_IMM(BPF_JSGE, BPF_REG_5, 0, 1));
  put(p, MOV_IMM(BPF_REG_5, 0));
  put(p, ADD_ATOMIC(BPF_REG_8, BPF_REG_5, offsetof(struct rw_stats, bytes_out)));
  finish(p);
}

static int rw_map(enum bpf_map_type type, uint32_t key, uint32_t value, uint32_t max, const char *name) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_type = type;
  a.key_size = key;
  a.value_size = value;
  a.max_entries = max;
  strncpy(a.map_name, name, sizeof a.map_name - 1);
  return ph_bpf(BPF_MAP_CREATE, &a);
}

static void rw_say(char *msg, int cap, const char *what, int err, const char *log) {
  if (!msg || cap <= 0) return;
  snprintf(msg, (size_t)cap, "%s: %s (%s)%s%s", what, ph_errno_name(-err), strerror(err), log && log[0] ? "; the verifier said: " : "", log ? log : "");
}

int ph_rewrite_stop(void) {
  for (int i = 0; i < 2; i++) {
    if (rw.link[i] >= 0) close(rw.link[i]);
    if (rw.prog[i] >= 0) close(rw.prog[i]);
    rw.link[i] = rw.prog[i] = -1;
  }
  if (rw.rewrites >= 0) close(rw.rewrites);
  if (rw.stats >= 0) close(rw.stats);
  if (rw.sockets >= 0) close(rw.sockets);
  rw.rewrites = rw.stats = rw.sockets = -1;
  rw.started = 0;
  return 0;
}

/* Loads and attaches both programs; 0, or -errno with the reason in msg. Started once. */
int ph_rewrite_start(char *msg, int cap) {
  if (msg && cap > 0) msg[0] = 0;
  if (rw.started) return 0;
  static char log[16384];
  int e = 0, cg = -1;
  rw.rewrites = rw_map(BPF_MAP_TYPE_HASH, sizeof(struct rw_key), sizeof(struct rw_target), 4096, "ph_rewrites");
  if (rw.rewrites < 0) { e = errno; rw_say(msg, cap, "creating the rewrite map", e, NULL); goto fail; }
  rw.stats = rw_map(BPF_MAP_TYPE_HASH, sizeof(struct rw_key), sizeof(struct rw_stats), 4096, "ph_rw_stats");
  if (rw.stats < 0) { e = errno; rw_say(msg, cap, "creating the counter map", e, NULL); goto fail; }
  rw.sockets = rw_map(BPF_MAP_TYPE_LRU_HASH, sizeof(uint64_t), sizeof(struct rw_sock), 65536, "ph_rw_sockets");
  if (rw.sockets < 0) { e = errno; rw_say(msg, cap, "creating the socket map", e, NULL); goto fail; }
  cg = ph_cgroup2_root();
  if (cg < 0) { e = -cg; cg = -1; rw_say(msg, cap, "opening the cgroup2 root", e, NULL); goto fail; }
  static const struct { enum bpf_prog_type type; enum bpf_attach_type attach; const char *name; } hooks[2] = {
    { BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT, "the connect4 program" },
    { BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS, "the sock_ops program" },
  };
  for (int i = 0; i < 2; i++) {
    static struct rw_prog prog;
    if (i == 0) assemble_connect(&prog);
    else assemble_sockops(&prog);
    if (prog.n > RW_MAX_INSNS) { e = E2BIG; rw_say(msg, cap, "assembling past RW_MAX_INSNS", e, NULL); goto fail; }
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = hooks[i].type;
    a.expected_attach_type = hooks[i].attach;
    a.insns = (uint64_t)(uintptr_t)prog.insn;
    a.insn_cnt = (uint32_t)prog.n;
    a.license = (uint64_t)(uintptr_t)"GPL";
    log[0] = 0;
    a.log_buf = (uint64_t)(uintptr_t)log;
    a.log_size = sizeof log;
    a.log_level = 1;
    strncpy(a.prog_name, i == 0 ? "ph_rw_connect" : "ph_rw_sockops", sizeof a.prog_name - 1);
    rw.prog[i] = ph_bpf(BPF_PROG_LOAD, &a);
    if (rw.prog[i] < 0) {
      e = errno;
      rw.prog[i] = -1;
      char what[64];
      snprintf(what, sizeof what, "loading %s", hooks[i].name);
      rw_say(msg, cap, what, e, e == EACCES || e == EINVAL ? log : NULL);
      goto fail;
    }
    rw.link[i] = ph_cgroup_link(rw.prog[i], cg, hooks[i].attach);
    if (rw.link[i] < 0) {
      e = -rw.link[i];
      rw.link[i] = -1;
      char what[64];
      snprintf(what, sizeof what, "attaching %s to the cgroup2 root", hooks[i].name);
      rw_say(msg, cap, what, e, NULL);
      goto fail;
    }
  }
  close(cg);
  rw.started = 1;
  return 0;
fail:
  if (cg >= 0) close(cg);
  ph_rewrite_stop();
  return -e;
}

static struct rw_key rw_key_of(const uint8_t *ip4, int port) {
  struct rw_key k;
  memcpy(&k.ip4, ip4, 4);
  k.port = htons((uint16_t)port);
  return k;
}

static int rw_elem(int cmd, int map, const void *key, void *value, uint64_t flags) {
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_fd = (uint32_t)map;
  a.key = (uint64_t)(uintptr_t)key;
  a.value = (uint64_t)(uintptr_t)value;
  a.flags = flags;
  return ph_bpf(cmd, &a) == 0 ? 0 : NEG_ERRNO;
}

/* Connections from this network namespace to host_ip4:host_port (4 bytes, network order) go to
 * guest_ip4:guest_port instead; its counters start (or go on) from where they are. */
int ph_rewrite_set(const uint8_t *host_ip4, int host_port, const uint8_t *guest_ip4, int guest_port) {
  if (!rw.started) return -ENOTCONN;
  if (host_port <= 0 || host_port > 65535 || guest_port <= 0 || guest_port > 65535) return -EINVAL;
  struct rw_key k = rw_key_of(host_ip4, host_port);
  struct rw_stats fresh;
  memset(&fresh, 0, sizeof fresh);
  fresh.gen = ++rw.generation;
  int e = rw_elem(BPF_MAP_UPDATE_ELEM, rw.stats, &k, &fresh, BPF_NOEXIST);
  if (e < 0 && e != -EEXIST) return e;
  struct rw_stats now; /* the counters' generation: this one, or theirs since the last forget */
  e = rw_elem(BPF_MAP_LOOKUP_ELEM, rw.stats, &k, &now, 0);
  if (e < 0) return e;
  struct rw_target t;
  memset(&t, 0, sizeof t);
  t.gen = (uint32_t)now.gen;
  memcpy(&t.ip4, guest_ip4, 4);
  t.port = htons((uint16_t)guest_port);
  e = ph_netns_cookie(&t.netns);
  if (e < 0) return e; /* without its namespace a rewrite would reach other namespaces' connections too */
  return rw_elem(BPF_MAP_UPDATE_ELEM, rw.rewrites, &k, &t, BPF_ANY);
}

/* No more rewriting for host_ip4:host_port (its counters stay until ph_rewrite_forget). */
int ph_rewrite_clear(const uint8_t *host_ip4, int host_port) {
  if (!rw.started) return -ENOTCONN;
  struct rw_key k = rw_key_of(host_ip4, host_port);
  int e = rw_elem(BPF_MAP_DELETE_ELEM, rw.rewrites, &k, NULL, 0);
  return e == -ENOENT ? 0 : e;
}

/* 1 while host_ip4:host_port is rewritten (a failed connection takes the rewrite away), else 0. */
int ph_rewrite_active(const uint8_t *host_ip4, int host_port) {
  if (!rw.started) return -ENOTCONN;
  struct rw_key k = rw_key_of(host_ip4, host_port);
  struct rw_target t;
  int e = rw_elem(BPF_MAP_LOOKUP_ELEM, rw.rewrites, &k, &t, 0);
  return e == 0 ? 1 : e == -ENOENT ? 0 : e;
}

/* out: connections, closed, failed, bytes in (client -> guest), bytes out (5 u64). */
int ph_rewrite_stats(const uint8_t *host_ip4, int host_port, uint64_t *out) {
  if (!rw.started) return -ENOTCONN;
  struct rw_key k = rw_key_of(host_ip4, host_port);
  struct rw_stats s;
  int e = rw_elem(BPF_MAP_LOOKUP_ELEM, rw.stats, &k, &s, 0);
  if (e < 0) return e;
  out[0] = s.conns;
  out[1] = s.closed;
  out[2] = s.failed;
  out[3] = s.bytes_in;
  out[4] = s.bytes_out;
  return 0;
}

/* The rewrite and the counters of host_ip4:host_port gone (its listener closed for good). */
int ph_rewrite_forget(const uint8_t *host_ip4, int host_port) {
  int e = ph_rewrite_clear(host_ip4, host_port);
  if (e < 0) return e;
  struct rw_key k = rw_key_of(host_ip4, host_port);
  e = rw_elem(BPF_MAP_DELETE_ELEM, rw.stats, &k, NULL, 0);
  return e == -ENOENT ? 0 : e;
}
