/*
 * porthole's native shim: what JavaScript runtimes cannot do themselves.
 *   - AF_VSOCK stream sockets: create, bind+listen, non-blocking accept with the peer CID,
 *     a non-blocking connect (its completion is watched by the relay thread), the local CID.
 *   - AF_NETLINK sock_diag: dumps of listening TCP and unconnected UDP sockets (kernel-side
 *     state filter), and the socket-destroy multicast groups as events.
 *   - Kernel port events: two hand-assembled BPF programs (a TCP socket entering or leaving
 *     LISTEN, a UDP bind) feeding a ring buffer, so the watcher dumps when something changed.
 *   - The relay: a thread that moves the bytes of joined socket pairs (splice() through a pipe
 *     per direction, read/write where splice does not apply), and tells the event loop about
 *     finished relays and ready fds through one socket the loop watches (see "relay" below).
 * Every function returns >= 0 on success and -errno on failure; ph_errno_name() and
 * ph_strerror() turn that into words. Nothing here aborts or prints.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/bpf.h>
#include <linux/mount.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/vm_sockets.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#define NEG_ERRNO (-errno)

/* ---- errors -------------------------------------------------------------------------- */

const char *ph_errno_name(int err) {
  switch (err < 0 ? -err : err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(EINTR) E(EIO) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT) E(EBUSY)
    E(EEXIST) E(ENODEV) E(EINVAL) E(EMFILE) E(ENFILE) E(ENOTTY) E(ENOSPC) E(EPIPE) E(ENOSYS)
    E(ENOTSOCK) E(EDESTADDRREQ) E(EMSGSIZE) E(EPROTOTYPE) E(ENOPROTOOPT) E(EPROTONOSUPPORT)
    E(ESOCKTNOSUPPORT) E(EOPNOTSUPP) E(EAFNOSUPPORT) E(EADDRINUSE) E(EADDRNOTAVAIL) E(ENETDOWN)
    E(ENETUNREACH) E(ECONNABORTED) E(ECONNRESET) E(ENOBUFS) E(EISCONN) E(ENOTCONN) E(ETIMEDOUT)
    E(ECONNREFUSED) E(EHOSTUNREACH) E(EALREADY) E(EINPROGRESS)
#undef E
    default: return "EUNKNOWN";
  }
}

const char *ph_strerror(int err) { return strerror(err < 0 ? -err : err); }

int ph_close(int fd) { return close(fd) == 0 ? 0 : NEG_ERRNO; }

/* A connected pair of non-blocking unix stream sockets: fds[0], fds[1]. */
int ph_socketpair(int *fds) {
  return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) == 0 ? 0 : NEG_ERRNO;
}

/* ---- AF_VSOCK ------------------------------------------------------------------------- */

int ph_vsock_socket(void) {
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  return fd >= 0 ? fd : NEG_ERRNO;
}

static struct sockaddr_vm vm_addr(uint32_t cid, uint32_t port) {
  struct sockaddr_vm a;
  memset(&a, 0, sizeof a);
  a.svm_family = AF_VSOCK;
  a.svm_cid = cid;
  a.svm_port = port;
  return a;
}

/* Binds to (cid, port) and listens; the fd becomes non-blocking for ph_vsock_accept. */
int ph_vsock_bind_listen(int fd, uint32_t cid, uint32_t port, int backlog) {
  struct sockaddr_vm a = vm_addr(cid, port);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) return NEG_ERRNO;
  if (listen(fd, backlog) != 0) return NEG_ERRNO;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return NEG_ERRNO;
  return 0;
}

/* out[0] = cid, out[1] = port of the socket's own address. */
int ph_vsock_getsockname(int fd, uint32_t *out) {
  struct sockaddr_vm a;
  socklen_t len = sizeof a;
  if (getsockname(fd, (struct sockaddr *)&a, &len) != 0) return NEG_ERRNO;
  out[0] = a.svm_cid;
  out[1] = a.svm_port;
  return 0;
}

/* A pending connection (non-blocking: -EAGAIN when none); peer[0] = cid, peer[1] = port. */
int ph_vsock_accept(int fd, uint32_t *peer) {
  struct sockaddr_vm a;
  socklen_t len = sizeof a;
  int c = accept4(fd, (struct sockaddr *)&a, &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (c < 0) return NEG_ERRNO;
  peer[0] = a.svm_cid;
  peer[1] = a.svm_port;
  return c;
}

/* IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock. */
int ph_vsock_local_cid(void) {
  int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NEG_ERRNO;
  uint32_t cid = 0;
  int r = ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid);
  int e = errno;
  close(fd);
  return r == 0 ? (int)cid : -e;
}

/* ---- netlink sock_diag ------------------------------------------------------------------ */

/*
 * Records written to the caller's buffer, 32 bytes each:
 *   u8 family (AF_INET/AF_INET6), u8 protocol (IPPROTO_TCP/UDP), u8 state, u8 pad,
 *   u16 port (host order), u16 pad, u8 addr[16] (IPv4 in the first 4 bytes),
 *   u32 uid, u32 inode (host order): the socket's owner and inode, to find its process.
 */
#define PH_RECORD 32

static int put_record(uint8_t *buf, int cap, int n, uint8_t protocol, const struct inet_diag_msg *m) {
  if ((n + 1) * PH_RECORD > cap) return -ENOBUFS;
  uint8_t *r = buf + n * PH_RECORD;
  memset(r, 0, PH_RECORD);
  r[0] = m->idiag_family;
  r[1] = protocol;
  r[2] = m->idiag_state;
  uint16_t port = ntohs(m->id.idiag_sport);
  memcpy(r + 4, &port, 2);
  memcpy(r + 8, m->id.idiag_src, m->idiag_family == AF_INET ? 4 : 16);
  memcpy(r + 24, &m->idiag_uid, 4);
  memcpy(r + 28, &m->idiag_inode, 4);
  return 0;
}

static int diag_socket(void) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  return fd >= 0 ? fd : NEG_ERRNO;
}

/* One dump of (family, protocol) sockets whose state is in the `states` bit mask. */
static int dump_one(int fd, uint8_t family, uint8_t protocol, uint32_t states, uint16_t sport, uint8_t *buf, int cap, int n) {
  struct {
    struct nlmsghdr h;
    struct inet_diag_req_v2 r;
  } req;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.r.sdiag_family = family;
  req.r.sdiag_protocol = protocol;
  req.r.idiag_states = states;
  req.r.id.idiag_sport = htons(sport); /* 0: every port; else the kernel skips other ports */
  struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
  if (sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return NEG_ERRNO;

  static __thread uint8_t rx[32768] __attribute__((aligned(8)));
  for (;;) {
    ssize_t len = recv(fd, rx, sizeof rx, 0);
    if (len < 0) {
      if (errno == EINTR) continue;
      return NEG_ERRNO;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)rx; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) return n;
      if (h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA(h);
        return e->error ? e->error : n;
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
      int r = put_record(buf, cap, n, protocol, NLMSG_DATA(h));
      if (r < 0) return r;
      n++;
    }
  }
}

/*
 * Listening TCP sockets (protocols bit 0) and bound, unconnected UDP sockets (bit 1), IPv4
 * and IPv6, filtered in the kernel by state (TCP_LISTEN = 10; UDP's "unconnected" is
 * TCP_CLOSE = 7). A TCP dump walks only the listening table; a UDP dump walks every slot of
 * the UDP table, which costs more, so callers may ask for it less often. Returns the number
 * of records.
 */
static int diag_dump(uint8_t *buf, int cap, int protocols, uint16_t port, int families_mask) {
  /* One netlink socket for every dump (scans run many times a second); a failed dump
   * drops it, and the next call opens a fresh one. */
  static int fd = -1;
  if (fd < 0) fd = diag_socket();
  if (fd < 0) return fd;
  int n = 0;
  const uint8_t families[] = { AF_INET, AF_INET6 };
  for (int i = 0; i < 2 && n >= 0; i++) {
    if (!(families_mask & (1 << i))) continue;
    if (protocols & 1) n = dump_one(fd, families[i], IPPROTO_TCP, 1u << 10, port, buf, cap, n);
    if (n >= 0 && (protocols & 2)) n = dump_one(fd, families[i], IPPROTO_UDP, 1u << 7, port, buf, cap, n);
  }
  if (n < 0) {
    close(fd);
    fd = -1;
  }
  return n;
}

/* As ph_diag_listeners, for the sockets on one local port only (a kernel event named it), of
 * the families in `families` (bit 0 IPv4, bit 1 IPv6): each dump still walks the kernel's
 * whole listening table, so the fewer the better. */
int ph_diag_port(uint8_t *buf, int cap, int protocols, int port, int families) {
  return diag_dump(buf, cap, protocols, (uint16_t)port, families);
}

int ph_diag_listeners(uint8_t *buf, int cap, int protocols) {
  return diag_dump(buf, cap, protocols, 0, 3);
}

/* A non-blocking netlink socket joined to the socket-destroy groups of `protocols` (bit 0
 * TCP, bit 1 UDP; IPv4 and IPv6): one socket per protocol tells which one closed. */
int ph_diag_subscribe_to(int protocols) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_SOCK_DIAG);
  if (fd < 0) return NEG_ERRNO;
  struct sockaddr_nl local = { .nl_family = AF_NETLINK };
  if (bind(fd, (struct sockaddr *)&local, sizeof local) != 0) { int e = errno; close(fd); return -e; }
  const int groups[] = { SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET_UDP_DESTROY, SKNLGRP_INET6_TCP_DESTROY, SKNLGRP_INET6_UDP_DESTROY };
  for (int i = 0; i < 4; i++) {
    if (!(protocols & (1 << (i % 2)))) continue;
    if (setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &groups[i], sizeof groups[i]) != 0) {
      int e = errno;
      close(fd);
      return -e;
    }
  }
  return fd;
}

/* The four socket-destroy groups on one socket. */
int ph_diag_subscribe(void) { return ph_diag_subscribe_to(3); }

/*
 * Destroy events waiting on a subscribed socket, as records with protocol 0 (an
 * inet_diag_msg does not name its protocol, and a socket being destroyed is in state
 * CLOSE whatever it was): they say which address and port closed, and the caller
 * re-scans. Returns the count; 0 when none wait.
 */
int ph_diag_read_events(int fd, uint8_t *buf, int cap) {
  static __thread uint8_t rx[32768] __attribute__((aligned(8)));
  int n = 0;
  for (;;) {
    ssize_t len = recv(fd, rx, sizeof rx, MSG_DONTWAIT);
    if (len < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return n;
      if (errno == EINTR) continue;
      if (errno == ENOBUFS) return n; /* overran: the caller re-scans anyway */
      return NEG_ERRNO;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)rx; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
      if (put_record(buf, cap, n, 0, NLMSG_DATA(h)) < 0) return n;
      n++;
    }
  }
}

/* ---- kernel port events (eBPF) ------------------------------------------------------------
 *
 * Small BPF programs, assembled here and loaded with plain bpf() syscalls (no libbpf, no
 * compiler at run time), all attached to the cgroup2 root with BPF links, write an 8-byte
 * record (u8 protocol, then the port where the hook tells it) to one ring buffer whenever a
 * port may have appeared or gone:
 *   - sock_ops, BPF_SOCK_OPS_TCP_LISTEN_CB: listen() succeeded (the listener is hashed, so a
 *     dump finds it); the program then asks for that listener's state changes, so its close
 *     comes as BPF_SOCK_OPS_STATE_CB (from LISTEN), with the port;
 *   - cgroup post-bind (IPv4, IPv6): a UDP socket was bound (also after the hash), its port.
 * A listener's close is reported as it begins, before the kernel unhashes it (the caller dumps
 * again shortly when the first dump still shows it). Every close, UDP's included, also comes
 * as a socket-destroy multicast event (after an RCU grace period), with its port.
 * Each program first compares bpf_get_netns_cookie(ctx) with this process's network namespace
 * and ignores sockets of every other one (a container's, another VM tool's): those cost
 * nothing. Where the kernel lacks that helper for a hook, the program goes without the check
 * and another namespace's socket costs one dump of this one (said in the start message).
 * A record only says "dump now": the ports always come from sock_diag. Closing the link fds
 * (or the process ending, however it ends) detaches everything; nothing is pinned.
 */

#define PH_RING_BYTES (64 * 1024)

#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })
#define LDX_W(d, s, o) INSN(BPF_LDX | BPF_MEM | BPF_W, d, s, o, 0)
#define STX_DW(d, s, o) INSN(BPF_STX | BPF_MEM | BPF_DW, d, s, o, 0)
#define MOV_IMM(d, i) INSN(BPF_ALU64 | BPF_MOV | BPF_K, d, 0, 0, i)
#define MOV_REG(d, s) INSN(BPF_ALU64 | BPF_MOV | BPF_X, d, s, 0, 0)
#define ALU_IMM(op, d, i) INSN(BPF_ALU64 | (op) | BPF_K, d, 0, 0, i)
#define ALU_REG(op, d, s) INSN(BPF_ALU64 | (op) | BPF_X, d, s, 0, 0)
#define JMP_IMM(op, d, i, o) INSN(BPF_JMP | (op) | BPF_K, d, 0, o, i)
#define JMP_REG(op, d, s, o) INSN(BPF_JMP | (op) | BPF_X, d, s, o, 0)
#define CALL(f) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, f)
#define EXIT() INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)

/* A program being assembled: jumps to "out" (return the verdict) are patched at the end. */
struct prog {
  struct bpf_insn insn[64];
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

/* Record flags (byte 1). */
#define PH_EV_CLOSING 1 /* reported as the close begins, before the kernel unhashes the socket */
#define PH_EV_V6 2      /* an AF_INET6 socket */

/* Writes the record { u8 protocol, u8 flags, u16 0, u32 port, u32 tgid, u32 0 } to the ring:
 * r3 holds the port, r5 the socket's family (AF_INET6 adds PH_EV_V6). With `pid`, tgid is
 * the calling process's (listen() and bind() run in the binding process: the agent looks for
 * the socket's owner there first); else 0. */
static void record(struct prog *p, int ring, int protocol, int flags, int pid) {
  emit(p, ALU_IMM(BPF_LSH, BPF_REG_3, 32));
  emit(p, ALU_IMM(BPF_OR, BPF_REG_3, protocol | flags << 8));
  emit(p, JMP_IMM(BPF_JNE, BPF_REG_5, AF_INET6, 1));
  emit(p, ALU_IMM(BPF_OR, BPF_REG_3, PH_EV_V6 << 8));
  emit(p, STX_DW(BPF_REG_10, BPF_REG_3, -16));
  if (pid) {
    emit(p, CALL(BPF_FUNC_get_current_pid_tgid));
    emit(p, ALU_IMM(BPF_RSH, BPF_REG_0, 32));
  } else {
    emit(p, MOV_IMM(BPF_REG_0, 0));
  }
  emit(p, STX_DW(BPF_REG_10, BPF_REG_0, -8));
  emit(p, MOV_REG(BPF_REG_2, BPF_REG_10));
  emit(p, ALU_IMM(BPF_ADD, BPF_REG_2, -16));
  ld_imm64(p, BPF_REG_1, BPF_PSEUDO_MAP_FD, (uint32_t)ring);
  emit(p, MOV_IMM(BPF_REG_3, 16));
  emit(p, MOV_IMM(BPF_REG_4, 0));
  emit(p, CALL(BPF_FUNC_ringbuf_output));
}

/* Every program returns `verdict` (1: allow the bind or release; sock_ops ignores it). */
static void prog_end(struct prog *p, int verdict) {
  for (int i = 0; i < p->n_outs; i++) p->insn[p->outs[i]].off = (int16_t)(p->n - p->outs[i] - 1);
  emit(p, MOV_IMM(BPF_REG_0, verdict));
  emit(p, EXIT());
}

enum { PH_HOOK_LISTEN, PH_HOOK_BIND4, PH_HOOK_BIND6, PH_HOOKS };

static const struct {
  const char *name;
  uint32_t prog_type, attach_type;
} hooks[PH_HOOKS] = {
  { "ph_listen", BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS },
  { "ph_bind4", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET4_POST_BIND },
  { "ph_bind6", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET6_POST_BIND },
};

/* The program of one hook. Exposed (ph_events_program) so tests can look at it. */
static void assemble(int hook, int ring, uint64_t cookie, int pid, struct prog *p) {
  memset(p, 0, sizeof *p);
  switch (hook) {
  case PH_HOOK_LISTEN: { /* ctx: struct bpf_sock_ops */
    emit(p, LDX_W(BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock_ops, op)));
    emit(p, JMP_IMM(BPF_JEQ, BPF_REG_2, BPF_SOCK_OPS_TCP_LISTEN_CB, 1));
    skip_if(p, JMP_IMM(BPF_JNE, BPF_REG_2, BPF_SOCK_OPS_STATE_CB, 0));
    this_netns_only(p, cookie);
    emit(p, MOV_REG(BPF_REG_6, BPF_REG_1));
    emit(p, LDX_W(BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock_ops, op)));
    int to_state = p->n;
    emit(p, JMP_IMM(BPF_JNE, BPF_REG_2, BPF_SOCK_OPS_TCP_LISTEN_CB, 0));
    /* listen(): ask for this listener's state changes (its close comes as STATE_CB). */
    emit(p, MOV_IMM(BPF_REG_2, BPF_SOCK_OPS_STATE_CB_FLAG));
    emit(p, CALL(BPF_FUNC_sock_ops_cb_flags_set));
    emit(p, MOV_REG(BPF_REG_1, BPF_REG_6));
    emit(p, LDX_W(BPF_REG_3, BPF_REG_1, offsetof(struct bpf_sock_ops, local_port))); /* host order */
    emit(p, LDX_W(BPF_REG_5, BPF_REG_1, offsetof(struct bpf_sock_ops, family)));
    record(p, ring, IPPROTO_TCP, 0, pid);
    skip_if(p, JMP_IMM(BPF_JA, 0, 0, 0));
    p->insn[to_state].off = (int16_t)(p->n - to_state - 1);
    /* A state change: only a listener's (args[0]: the old state), as its close begins. */
    emit(p, LDX_W(BPF_REG_3, BPF_REG_1, offsetof(struct bpf_sock_ops, args[0])));
    skip_if(p, JMP_IMM(BPF_JNE, BPF_REG_3, 10, 0));
    emit(p, LDX_W(BPF_REG_3, BPF_REG_1, offsetof(struct bpf_sock_ops, local_port)));
    emit(p, LDX_W(BPF_REG_5, BPF_REG_1, offsetof(struct bpf_sock_ops, family)));
    record(p, ring, IPPROTO_TCP, PH_EV_CLOSING, 0); /* a close: no owner to find */
    break;
  }
  case PH_HOOK_BIND4:
  case PH_HOOK_BIND6: /* ctx: struct bpf_sock; only UDP (a TCP socket is a port once it listens) */
    emit(p, LDX_W(BPF_REG_2, BPF_REG_1, offsetof(struct bpf_sock, protocol)));
    skip_if(p, JMP_IMM(BPF_JNE, BPF_REG_2, IPPROTO_UDP, 0));
    this_netns_only(p, cookie);
    emit(p, LDX_W(BPF_REG_3, BPF_REG_1, offsetof(struct bpf_sock, src_port))); /* host order */
    emit(p, MOV_IMM(BPF_REG_5, hook == PH_HOOK_BIND6 ? AF_INET6 : AF_INET));
    record(p, ring, IPPROTO_UDP, 0, pid);
    break;
  }
  prog_end(p, 1);
}
/* For tests: hook's instructions (8 bytes each) into out; returns their count. */
int ph_events_program(int hook, int ring, uint32_t cookie_lo, uint32_t cookie_hi, int pid, uint8_t *out, int cap) {
  if (hook < 0 || hook >= PH_HOOKS) return -EINVAL;
  struct prog p;
  assemble(hook, ring, ((uint64_t)cookie_hi << 32) | cookie_lo, pid, &p);
  if (cap < p.n * (int)sizeof(struct bpf_insn)) return -ENOBUFS;
  memcpy(out, p.insn, (size_t)p.n * sizeof(struct bpf_insn));
  return p.n;
}

static struct {
  int ring, prog[PH_HOOKS], link[PH_HOOKS];
  uint8_t *consumer, *producer;
  uint64_t events;
} ev = { -1, { -1, -1, -1 }, { -1, -1, -1 }, NULL, NULL, 0 };

static int sys_bpf(int cmd, union bpf_attr *attr) {
  return (int)syscall(__NR_bpf, cmd, attr, sizeof *attr);
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
    int fd = sys_bpf(BPF_PROG_LOAD, &a);
    if (fd >= 0) return fd;
    int e = errno;
    if (verbose || (e != EINVAL && e != EACCES)) {
      if (msg && cap > 0) snprintf(msg, (size_t)cap, "loading %s: %s (%s)%s%s", hooks[hook].name, ph_errno_name(-e), strerror(e), verbose ? "; verifier log: " : "", verbose ? log : "");
      return -e;
    }
  }
  return -EINVAL;
}

/* This process's network namespace cookie (SO_NETNS_COOKIE), or 0 where the kernel has none. */
static uint64_t own_netns_cookie(void) {
  uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  if (getsockopt(fd, SOL_SOCKET, 71 /* SO_NETNS_COOKIE */, &cookie, &len) != 0) cookie = 0;
  close(fd);
  return cookie;
}

/*
 * The cgroup2 hierarchy's root: where it is mounted (from /proc/self/mounts), else (a mount
 * namespace without it, as `ip netns exec` makes) a detached cgroup2 mount of our own that is
 * never attached anywhere (fsopen/fsmount) and goes away with its fd.
 */
static int cgroup2_root(void) {
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
 * verifier's log where it refused a program) in msg. On success msg says what this kernel
 * could not do (no per-namespace filter), or is empty. Started once; a second call returns
 * the same fd.
 */
int ph_events_start(char *msg, int cap) {
  if (msg && cap > 0) msg[0] = 0;
  if (ev.ring >= 0) return ev.ring;
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_type = BPF_MAP_TYPE_RINGBUF;
  a.max_entries = PH_RING_BYTES;
  strncpy(a.map_name, "porthole_ports", sizeof a.map_name - 1);
  ev.ring = sys_bpf(BPF_MAP_CREATE, &a);
  if (ev.ring < 0) { int e = errno; say(msg, cap, "creating the ring buffer", e); ev.ring = -1; return -e; }
  long page = sysconf(_SC_PAGESIZE);
  void *c = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, ev.ring, 0);
  void *p = mmap(NULL, (size_t)page + 2 * PH_RING_BYTES, PROT_READ, MAP_SHARED, ev.ring, page);
  ev.consumer = c == MAP_FAILED ? NULL : c;
  ev.producer = p == MAP_FAILED ? NULL : p;
  int e = 0, cg = -1, unfiltered = 0;
  if (!ev.consumer || !ev.producer) { e = errno; say(msg, cap, "mapping the ring buffer", e); goto fail; }
  cg = cgroup2_root();
  if (cg < 0) { e = -cg; say(msg, cap, "opening the cgroup2 root", e); goto fail; }
  uint64_t cookie = own_netns_cookie();
  int no_pid = 0;
  for (int i = 0; i < PH_HOOKS; i++) {
    struct prog prog;
    /* The fullest program first; a kernel without bpf_get_netns_cookie or
     * bpf_get_current_pid_tgid for this hook gets the same program without it. */
    for (int v = 0; v < 4; v++) {
      uint64_t c = v & 2 ? 0 : cookie;
      int pid = !(v & 1);
      if (v & 2 && !cookie) break;
      assemble(i, ev.ring, c, pid, &prog);
      ev.prog[i] = load(i, &prog, msg, cap);
      if (ev.prog[i] >= 0) {
        if (cookie && !c) unfiltered = 1;
        if (!pid) no_pid = 1;
        break;
      }
      if (!cookie && v == 1) break;
    }
    if (ev.prog[i] < 0) { e = -ev.prog[i]; ev.prog[i] = -1; goto fail; }
    memset(&a, 0, sizeof a);
    a.link_create.prog_fd = (uint32_t)ev.prog[i];
    a.link_create.target_fd = (uint32_t)cg;
    a.link_create.attach_type = hooks[i].attach_type;
    ev.link[i] = sys_bpf(BPF_LINK_CREATE, &a);
    if (ev.link[i] < 0) {
      e = errno;
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
 * caller scans that protocol whole), out[2..3] = records since start (low, high 32 bits), then from
 * out[4] two u32 per record that fits: protocol | flags << 8 (PH_EV_*) | port << 16, then the
 * binding process's tgid (0 where unknown). Returns the count, or -ENOTCONN
 * when not started.
 */
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
      uint64_t rec;
      uint32_t tgid = 0;
      memcpy(&rec, (uint8_t *)hdr + BPF_RINGBUF_HDR_SZ, 8);
      if (size >= 12) memcpy(&tgid, (uint8_t *)hdr + BPF_RINGBUF_HDR_SZ + 8, 4);
      uint32_t protocol = (uint32_t)(rec & 0xff), flags = (uint32_t)(rec >> 8) & 0xff, port = (uint32_t)(rec >> 32) & 0xffff;
      protocols |= protocol == IPPROTO_TCP ? 1u : protocol == IPPROTO_UDP ? 2u : 3u;
      if (5 + 2 * (int)count < cap && port) {
        out[4 + 2 * count] = protocol | flags << 8 | port << 16;
        out[5 + 2 * count] = tgid;
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

/* ---- vsock connect without blocking -------------------------------------------------- */

/* Starts a non-blocking connect and returns the fd at once (connected or in progress): the
 * caller waits for it to become writable (ph_watch) and then reads ph_socket_error(). */
int ph_vsock_connect_start(uint32_t cid, uint32_t port) {
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return NEG_ERRNO;
  struct sockaddr_vm a = vm_addr(cid, port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* The socket's pending error (SO_ERROR) as -errno, or 0. */
int ph_socket_error(int fd) {
  int soerr = 0;
  socklen_t len = sizeof soerr;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) return NEG_ERRNO;
  return -soerr;
}

/* ---- relay ------------------------------------------------------------------------------
 *
 * JavaScript keeps accepting, dialling and deciding; once both sockets of a forwarded
 * connection are connected it hands them here (ph_relay_add dup()s both fds, so the runtime
 * closes its own socket objects without touching the relay's). One thread with one epoll
 * set moves the bytes of every relay:
 *   - each direction goes socket -> pipe -> socket with splice() (no copy through user space);
 *     where splice() is refused (EINVAL: a socket family without splice support) that
 *     direction falls back to read()/send() through a buffer;
 *   - EOF on one side becomes shutdown(SHUT_WR) on the other once the pipe is drained;
 *   - an error on either side (a reset, a write to a closed peer) resets both: SO_LINGER 0
 *     then close(), so the far peers see a reset, never a clean EOF;
 *   - bytes delivered each way are counted (readable while the relay runs: ph_relay_counters).
 * The event loop learns what happened through one non-blocking unix socket (the other end of
 * a socketpair, which the runtime adopts like any socket): 32-byte records, one per finished
 * relay and one per fd readiness asked for with ph_watch(). Nothing polls.
 */

#define PH_MAX_RELAYS 65536
#define PH_PIPE_SIZE (1 << 20)
#define PH_COPY_SIZE (256 * 1024)
#define PH_SMALL (16 * 1024) /* a direction copies through this much until a read fills it */
#define PH_BUDGET 64 /* transfers per direction before the thread looks at other relays */

enum { REC_RELAY_DONE = 1, REC_READY = 2, REC_DIALED = 3 };
/* Record flags of REC_RELAY_DONE. */
#define PH_RESET 1u        /* ended by an error: both sides were reset */
#define PH_SPLICE_AB 2u    /* a -> b moved with splice() */
#define PH_SPLICE_BA 4u    /* b -> a moved with splice() */
#define PH_ERR_A 8u        /* the error was on side a */
#define PH_ERR_B 16u       /* the error was on side b */
#define PH_ABORTED 32u     /* ph_relay_abort() */
#define PH_BAD_FRAME 64u   /* the framed side broke its framing (err: the header read) */
#define PH_LOST 128u       /* the framed side closed without an end frame (its agent died) */
#define PH_AFTER_END 256u  /* with PH_BAD_FRAME: bytes came after the end frame */
#define PH_DIAL_FAILED 512u /* ph_relay_dial: b never connected (err); a_to_b is a's fd, handed back */
/* ph_relay_add flags. */
#define PH_FORCE_COPY 1
#define PH_FRAMED_B 2      /* side b carries PHDATA2 frames (see "framed relays" below) */

/* Frame headers (src/core/data-frames.ts): a big-endian length 1..PH_MAX_FRAME, or an end. */
#define PH_MAX_FRAME (16u << 20)
#define PH_END_EOF 0xffffffffu
#define PH_END_RESET 0xfffffffeu

struct record {
  uint32_t kind, id, flags, err;
  uint64_t a_to_b, b_to_a;
};

struct dir {
  int src, dst;
  int pipe_r, pipe_w; /* -1 when copying */
  char *buf;
  size_t off, queued, cap;
  int src_eof, shut, spliced;
  int lazy; /* 1: no pipe yet, copying small reads; 2: a read filled the buffer, splice next */
  int hold; /* the source failed: deliver what is queued, then no shutdown (a reset follows) */
  uint64_t bytes;
};

/* The state of a framed relay: a (fd[0]) is plain, b (fd[1]) carries frames. */
struct framing {
  /* encoder, d[0] (plain -> frames): the header of the frame whose payload is queued */
  uint8_t ehdr[4];
  int ehdr_off;        /* 4: sent (or none pending) */
  uint32_t end_code;   /* the end frame to send once the queued frame is out (0: none yet) */
  int end_started, end_done;
  /* decoder, d[1] (frames -> plain) */
  uint8_t dhdr[4];
  int dhdr_have;
  uint32_t remaining;  /* payload bytes of the current frame still to read */
  uint32_t got_end;    /* PH_END_EOF or PH_END_RESET once received */
  int stream_gone;     /* b closed or failed before its end frame, or broke its framing */
  uint32_t bad_code;   /* with PH_BAD_FRAME */
  uint32_t flags;      /* PH_LOST, PH_BAD_FRAME, PH_ERR_*: for the record */
  uint32_t err;
  int plain_dead;      /* a was reset (by us or its peer): nothing more is read from or written to it */
  int plain_resetting; /* a's reset waits for its send queue to drain (bounded) */
  uint64_t reset_deadline_ms;
};

struct relay {
  uint32_t id;
  int fd[2];
  struct dir d[2]; /* d[0]: a -> b, d[1]: b -> a */
  struct framing *fr; /* framed relays only */
  int closed, in_ready;
  int pend;                /* directions to pump on the next run (bit i: d[i]) */
  int want_out[2];         /* EPOLLOUT is asked for on fd[i] only while a write to it waits */
  int failing, fail_dir;   /* a source failed: d[fail_dir] delivers what it read, then both reset */
  uint32_t fail_flags, fail_err;
  int in_resetting;
  int dialing;               /* ph_relay_dial: b is still connecting (only b is in the epoll set) */
  uint64_t dial_deadline_ms;
  int handback_fd;         /* a dial failed: the relay's fd for a, now the caller's (in the record) */
  struct relay *dial_prev, *dial_next;
  uint64_t drain_deadline_ms; /* a failing relay waits for a send queue until then */
  struct relay *next_pending, *next_ready, *next_resetting;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int epfd = -1, wake_fd = -1, notify_fd = -1, notify_js = -1;
static struct relay *slots[PH_MAX_RELAYS];
static uint8_t slot_taken[PH_MAX_RELAYS]; /* until JavaScript releases the id */
static uint8_t slot_abort[PH_MAX_RELAYS];
static struct relay *pending;   /* added, not yet registered by the thread */
static struct relay *graveyard; /* finished, freed by the thread after its current round */
static struct relay *resetting; /* framed relays waiting for a plain side's send queue to drain */
static struct relay *dialing;   /* ph_relay_dial relays whose b is connecting, for their deadline */
static int abort_requested;
static struct record *outq;     /* records the notify socket had no room for */
static size_t outq_len, outq_cap, outq_sent_bytes;
static uint64_t total_spliced, total_copied, total_relays;

#define WATCH_TAG (1ULL << 63)

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void flush_records(void) {
  while (outq_len > 0) {
    const char *p = (const char *)outq + outq_sent_bytes;
    size_t left = outq_len * sizeof(struct record) - outq_sent_bytes;
    ssize_t n = send(notify_fd, p, left, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return; /* EPOLLOUT on notify_fd brings us back */
      outq_len = outq_sent_bytes = 0; /* nobody listens any more */
      return;
    }
    outq_sent_bytes += (size_t)n;
    size_t whole = outq_sent_bytes / sizeof(struct record);
    if (whole) {
      memmove(outq, outq + whole, (outq_len - whole) * sizeof(struct record));
      outq_len -= whole;
      outq_sent_bytes -= whole * sizeof(struct record);
    }
  }
}

static void post(struct record r) {
  if (outq_len == outq_cap) {
    size_t cap = outq_cap ? outq_cap * 2 : 256;
    struct record *q = realloc(outq, cap * sizeof *q);
    if (!q) return; /* out of memory: the record is lost, the relay is still closed */
    outq = q;
    outq_cap = cap;
  }
  outq[outq_len++] = r;
  flush_records();
}

static void reset_fd(int fd) {
  struct linger l = { .l_onoff = 1, .l_linger = 0 };
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l); /* unix sockets ignore it: close() it is */
  close(fd);
}

static void dir_free(struct dir *d) {
  if (d->pipe_r >= 0) close(d->pipe_r);
  if (d->pipe_w >= 0) close(d->pipe_w);
  free(d->buf);
}

/* Ends a relay: both sides closed (reset when flags has PH_RESET), the record posted. */
static void dial_unlink(struct relay *r);
static void finish(struct relay *r, uint32_t flags, int err) {
  if (r->closed) return;
  r->closed = 1;
  dial_unlink(r);
  for (int i = 0; i < 2; i++) {
    if (r->fd[i] < 0) continue; /* a framed relay closed it already */
    epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd[i], NULL);
    if (flags & PH_RESET) reset_fd(r->fd[i]);
    else close(r->fd[i]);
    r->fd[i] = -1;
  }
  if (r->d[0].spliced) flags |= PH_SPLICE_AB;
  if (r->d[1].spliced) flags |= PH_SPLICE_BA;
  struct record rec = { REC_RELAY_DONE, r->id, flags, (uint32_t)err, r->d[0].bytes, r->d[1].bytes };
  if (flags & PH_DIAL_FAILED) rec.a_to_b = (uint64_t)r->handback_fd;
  pthread_mutex_lock(&lock);
  slots[r->id - 1] = NULL; /* counters now come from the record; the id stays taken */
  pthread_mutex_unlock(&lock);
  dir_free(&r->d[0]);
  dir_free(&r->d[1]);
  r->next_pending = graveyard;
  graveyard = r;
  post(rec);
}

static int to_copy(struct dir *d) {
  if (d->pipe_r >= 0) { close(d->pipe_r); close(d->pipe_w); d->pipe_r = d->pipe_w = -1; }
  d->spliced = 0;
  d->lazy = 0;
  d->cap = PH_COPY_SIZE;
  char *b = realloc(d->buf, d->cap);
  if (!b) return -ENOMEM;
  d->buf = b;
  return 0;
}

/* The direction's pipe, for splice(); -1 when none can be made. */
static int make_pipe(struct dir *d) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
  d->pipe_r = p[0];
  d->pipe_w = p[1];
  int size = fcntl(p[1], F_SETPIPE_SZ, PH_PIPE_SIZE);
  if (size < 0) size = fcntl(p[1], F_GETPIPE_SZ);
  d->cap = size > 0 ? (size_t)size : 65536;
  d->spliced = 1;
  return 0;
}

/*
 * Small exchanges (requests, keystrokes, a new connection's first bytes) cost no pipe: a
 * direction starts by copying through a small buffer (read/send: as many calls as splice) and
 * makes its pipe only once a read fills that buffer, i.e. when bulk data flows; it then
 * splices from the next read on (its buffer is empty by then).
 */
static void note_read(struct dir *d, ssize_t n) {
  if (d->lazy == 1 && (size_t)n == d->cap) d->lazy = 2;
}

static void maybe_upgrade(struct dir *d) {
  if (d->lazy != 2 || d->queued > 0) return;
  d->lazy = 0;
  make_pipe(d); /* no pipe: it keeps copying */
}

/* Writes what the direction holds (its pipe, or its buffer where splice does not apply) to
 * its destination; -1 with errno on a real error, EAGAIN is no error. */
static int write_queued(struct dir *d, int *progressed) {
  ssize_t m = d->pipe_r >= 0
    ? splice(d->pipe_r, NULL, d->dst, NULL, d->queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
    : send(d->dst, d->buf + d->off, d->queued, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (m > 0) {
    d->queued -= (size_t)m;
    if (d->pipe_r < 0) d->off += (size_t)m;
    __atomic_fetch_add(&d->bytes, (uint64_t)m, __ATOMIC_RELAXED);
    __atomic_fetch_add(d->pipe_r >= 0 ? &total_spliced : &total_copied, (uint64_t)m, __ATOMIC_RELAXED);
    *progressed = 1;
  } else if (m < 0 && errno != EAGAIN && errno != EINTR) {
    return -1;
  }
  return 0;
}

/*
 * Moves what can be moved in one direction without blocking. Returns 0 when it would block
 * (or is done), 1 when the budget ran out with more to do, or -errno with *side = 0 (the
 * source) or 1 (the destination) on an error.
 */
static int pump(struct dir *d, int *side) {
  for (int budget = PH_BUDGET; budget > 0; budget--) {
    int progressed = 0;
    maybe_upgrade(d);
    int pipe_mode = d->pipe_r >= 0;
    if (!d->src_eof && (pipe_mode ? d->queued < d->cap : d->queued == 0)) {
      ssize_t n = pipe_mode
        ? splice(d->src, NULL, d->pipe_w, NULL, d->cap - d->queued, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
        : read(d->src, d->buf, d->cap);
      if (n > 0) {
        d->queued += (size_t)n;
        if (!pipe_mode) { d->off = 0; note_read(d, n); }
        progressed = 1;
      } else if (n == 0) {
        d->src_eof = 1;
        progressed = 1;
      } else if (errno == EINTR) {
        continue;
      } else if (errno == EINVAL && pipe_mode && d->queued == 0) {
        int e = to_copy(d); /* this socket family cannot splice */
        if (e) { *side = 0; return e; }
        continue;
      } else if (errno != EAGAIN) {
        *side = 0;
        return NEG_ERRNO;
      }
    }
    if (d->queued > 0 && write_queued(d, &progressed) < 0) {
      *side = 1;
      return NEG_ERRNO;
    }
    if (d->src_eof && d->queued == 0 && !d->shut && !d->hold) {
      d->shut = 1;
      if (shutdown(d->dst, SHUT_WR) != 0 && errno != ENOTCONN) { *side = 1; return NEG_ERRNO; }
    }
    if (!progressed) return 0;
  }
  return 1;
}

/* A relay's fd in the epoll set is tagged with its side (bit 0 of the aligned pointer), so that
 * an event wakes only the direction it concerns: readable a -> a to b, writable a -> b to a. */
static struct epoll_event side_event(struct relay *r, int side, uint32_t events) {
  struct epoll_event ev = { .events = events, .data.u64 = (uint64_t)(uintptr_t)r | (uint64_t)side };
  return ev;
}

static void ready_push_dirs(struct relay **ready, struct relay *r, int dirs) {
  r->pend |= dirs;
  if (r->in_ready) return;
  r->in_ready = 1;
  r->next_ready = *ready;
  *ready = r;
}

static void ready_push(struct relay **ready, struct relay *r) {
  ready_push_dirs(ready, r, 3);
}

static void framed_run(struct relay *r, struct relay **ready);
static uint64_t now_ms(void);
static void resetting_push(struct relay *r);
#define PH_RESET_WAIT_MS 3000

/* Before a reset: are bytes already written to fd still in its send queue (a peer that is not
 * reading right now), and is there time left to wait for them? (A reset drops them.) */
static int still_draining(int fd, uint64_t *deadline) {
  int outq = 0;
  if (ioctl(fd, SIOCOUTQ, &outq) != 0 || outq <= 0) return 0;
  uint64_t now = now_ms();
  if (!*deadline) *deadline = now + PH_RESET_WAIT_MS;
  return now < *deadline;
}

/* Pumps both directions; a relay with more to do goes back on the ready list. */
static void run(struct relay *r, struct relay **ready) {
  if (r->fr) { framed_run(r, ready); return; }
  if (r->failing) {
    /* Data the failed side sent before its reset still reaches the other side, then the reset
     * (once it left the other side's send queue, bounded). */
    struct dir *d = &r->d[r->fail_dir];
    int side = 0;
    int res = pump(d, &side);
    if (res < 0) { finish(r, r->fail_flags, r->fail_err); return; }
    if (d->queued == 0) {
      if (still_draining(d->dst, &r->drain_deadline_ms)) { resetting_push(r); return; }
      finish(r, r->fail_flags, r->fail_err);
      return;
    }
    if (res > 0) { ready_push(ready, r); return; }
    int i = r->fail_dir == 0 ? 1 : 0; /* the fd that d writes */
    if (!r->want_out[i]) {
      struct epoll_event ev = side_event(r, i, EPOLLIN | EPOLLRDHUP | EPOLLET | EPOLLOUT);
      if (epoll_ctl(epfd, EPOLL_CTL_MOD, r->fd[i], &ev) == 0) r->want_out[i] = 1;
    }
    return;
  }
  int more = 0;
  int pend = r->pend ? r->pend : 3;
  r->pend = 0;
  for (int i = 0; i < 2; i++) {
    if (!(pend & (1 << i))) continue; /* nothing happened on its side since its last pump */
    int side = 0;
    int res = pump(&r->d[i], &side);
    if (res < 0) {
      /* d[0] reads a, writes b; d[1] reads b, writes a. */
      int on_b = (i == 0) == (side == 1);
      uint32_t flags = PH_RESET | (on_b ? PH_ERR_B : PH_ERR_A);
      if (side == 0) {
        r->failing = 1;
        r->fail_dir = i;
        r->fail_flags = flags;
        r->fail_err = (uint32_t)-res;
        r->d[i].src_eof = r->d[i].hold = 1;
        ready_push(ready, r);
      } else {
        finish(r, flags, (uint32_t)-res);
      }
      return;
    }
    more |= res;
  }
  if (r->d[0].shut && r->d[1].shut) { finish(r, 0, 0); return; }
  if (more) { ready_push(ready, r); return; }
  /* Writability matters only while bytes wait for it: asking for it always would wake the
   * thread on every ACK (TCP) or read (unix) on the other end. d[0] writes fd[1], d[1] fd[0]. */
  for (int i = 0; i < 2; i++) {
    int want = r->d[1 - i].queued > 0;
    if (want == r->want_out[i]) continue;
    struct epoll_event ev = side_event(r, i, EPOLLIN | EPOLLRDHUP | EPOLLET | (want ? EPOLLOUT : 0));
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, r->fd[i], &ev) == 0) r->want_out[i] = want;
  }
}

/* A socket error on a side whose reading is over (reads report the others themselves, after
 * the data that came before the error). */
static void check_errors(struct relay *r) {
  if (r->failing) return;
  for (int i = 0; i < 2; i++) {
    if (!r->d[i].src_eof) continue;
    int e = -ph_socket_error(r->fd[i]);
    if (e <= 0) continue;
    /* What side i sent before failing (queued in d[i], or still in the other side's send
     * queue) still goes out first. */
    r->failing = 1;
    r->fail_dir = i;
    r->fail_flags = PH_RESET | (i ? PH_ERR_B : PH_ERR_A);
    r->fail_err = (uint32_t)e;
    r->d[i].src_eof = r->d[i].hold = 1;
    return;
  }
}

/* ---- framed relays ----------------------------------------------------------------------
 *
 * A PHDATA2 data-path stream (src/core/data-frames.ts) carries frames both ways: a 4-byte
 * big-endian length then that many bytes, and at the end one end frame, EOF or RESET. A relay
 * added with PH_FRAMED_B joins a plain socket (a) to such a stream (b) with the semantics of
 * the JavaScript spliceFramed() (src/transport/tunnel-relay.ts):
 *   - encoder, d[0]: plain -> pipe with splice(); the count n read becomes the header sent with
 *     send(), then exactly n bytes go pipe -> stream with splice() (a frame is finished before
 *     more is read). a's EOF goes out as END_EOF, a's error (or reset) as END_RESET;
 *   - decoder, d[1]: the header is read with recv() (possibly in pieces), then at most the
 *     frame's remaining bytes go stream -> pipe -> plain; END_EOF half-closes a once what came
 *     before it is delivered, END_RESET resets a after that (and after a's send queue drained,
 *     bounded); a stream that closes or fails before its end frame, or breaks its framing,
 *     resets a the same way and is closed at once;
 *   - the stream is closed once an end frame went each way.
 * Payload never passes through user space (except where splice() is refused: then read/send).
 */

static uint64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* The stream broke its framing (code: the header read; PH_AFTER_END: bytes after its end). */
static void frame_bad(struct framing *f, uint32_t code, uint32_t flags) {
  f->stream_gone = 1;
  f->bad_code = code;
  f->flags |= PH_BAD_FRAME | flags;
}

/* A complete header was read into dhdr. */
static void frame_header(struct framing *f) {
  uint32_t code = get_be32(f->dhdr);
  f->dhdr_have = 0;
  if (code == PH_END_EOF || code == PH_END_RESET) f->got_end = code;
  else if (code == 0 || code > PH_MAX_FRAME) frame_bad(f, code, 0);
  else f->remaining = code;
}

/* Decodes bytes read from the stream outside the splice path (the bytes JavaScript had read,
 * and what is read to be thrown away once a is gone): payload is appended to out (if any). */
static void frame_feed(struct framing *f, const uint8_t *p, size_t len, uint8_t *out, size_t *out_len) {
  size_t at = 0;
  while (at < len && !f->stream_gone) {
    if (f->got_end) { frame_bad(f, 0, PH_AFTER_END); return; }
    if (f->remaining > 0) {
      size_t n = len - at < f->remaining ? len - at : f->remaining;
      if (out) { memcpy(out + *out_len, p + at, n); *out_len += n; }
      f->remaining -= (uint32_t)n;
      at += n;
      continue;
    }
    f->dhdr[f->dhdr_have++] = p[at++];
    if (f->dhdr_have == 4) frame_header(f);
  }
}

/* The stream is over for us: closed (never reset: it is a unix or vsock stream). */
static void stream_close(struct relay *r) {
  if (r->fd[1] < 0) return;
  epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd[1], NULL);
  close(r->fd[1]);
  r->fd[1] = -1;
}

static void plain_reset_now(struct relay *r) {
  r->fr->plain_resetting = 0;
  if (r->fd[0] < 0) return;
  epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd[0], NULL);
  reset_fd(r->fd[0]);
  r->fd[0] = -1;
}

/* a is over: nothing more is read from it or written to it, and it is reset, once the bytes
 * already written to it left its send queue if `drain` (bounded by PH_RESET_WAIT_MS). */
static void plain_reset(struct relay *r, int drain) {
  struct framing *f = r->fr;
  f->plain_dead = 1;
  r->d[1].queued = 0; /* undelivered bytes for a are dropped (the pipe is not used again) */
  if (f->plain_resetting || r->fd[0] < 0) return;
  int outq = 0;
  if (drain && ioctl(r->fd[0], SIOCOUTQ, &outq) == 0 && outq > 0) {
    f->plain_resetting = 1;
    f->reset_deadline_ms = now_ms() + PH_RESET_WAIT_MS;
    return;
  }
  plain_reset_now(r);
}

/* The stream closed or failed before its end frame (err: its errno, or 0 for EOF). */
static void stream_lost(struct relay *r, int err) {
  struct framing *f = r->fr;
  if (!f->stream_gone) {
    f->stream_gone = 1;
    f->flags |= PH_LOST | PH_ERR_B;
    if (!f->err) f->err = (uint32_t)err;
  }
}

/* Plain -> frames. Same returns as pump(); *side 0: reading a failed, 1: writing b failed. */
static int enc_pump(struct relay *r, int *side) {
  struct framing *f = r->fr;
  struct dir *d = &r->d[0];
  for (int budget = PH_BUDGET; budget > 0; budget--) {
    int progressed = 0;
    if (f->ehdr_off < 4) {
      ssize_t m = send(d->dst, f->ehdr + f->ehdr_off, (size_t)(4 - f->ehdr_off), MSG_DONTWAIT | MSG_NOSIGNAL | (d->queued ? MSG_MORE : 0));
      if (m > 0) {
        f->ehdr_off += (int)m;
        progressed = 1;
        if (f->ehdr_off == 4 && f->end_started) f->end_done = 1;
      } else if (m < 0 && errno != EAGAIN && errno != EINTR) {
        *side = 1;
        return NEG_ERRNO;
      }
      if (f->ehdr_off < 4) {
        if (!progressed) return 0;
        continue;
      }
    }
    if (d->queued > 0 && write_queued(d, &progressed) < 0) {
      *side = 1;
      return NEG_ERRNO;
    }
    if (d->queued == 0) {
      maybe_upgrade(d);
      if (f->end_code && !f->end_started) {
        put_be32(f->ehdr, f->end_code);
        f->ehdr_off = 0;
        f->end_started = 1;
        continue;
      }
      if (!f->end_code && !f->plain_dead && !d->src_eof) {
        int pipe_mode = d->pipe_r >= 0;
        ssize_t n = pipe_mode
          ? splice(d->src, NULL, d->pipe_w, NULL, d->cap, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
          : read(d->src, d->buf, d->cap);
        if (n > 0) {
          d->queued = (size_t)n;
          d->off = 0;
          if (!pipe_mode) note_read(d, n);
          put_be32(f->ehdr, (uint32_t)n); /* n <= the pipe's or buffer's size < PH_MAX_FRAME */
          f->ehdr_off = 0;
          progressed = 1;
        } else if (n == 0) {
          d->src_eof = 1;
          f->end_code = PH_END_EOF;
          progressed = 1;
        } else if (errno == EINTR) {
          continue;
        } else if (errno == EINVAL && pipe_mode) {
          int e = to_copy(d); /* this socket family cannot splice */
          if (e) { *side = 0; return e; }
          continue;
        } else if (errno != EAGAIN) {
          *side = 0;
          return NEG_ERRNO;
        }
      }
    }
    if (!progressed) return 0;
  }
  return 1;
}

/* Frames -> plain. Same returns as pump(); an error is always a's (writing it failed); the
 * stream's own failures become stream_lost(). */
static int dec_pump(struct relay *r, int *side) {
  struct framing *f = r->fr;
  struct dir *d = &r->d[1];
  *side = 0;
  for (int budget = PH_BUDGET; budget > 0; budget--) {
    int progressed = 0;
    if (d->queued > 0 && !f->plain_dead) {
      if (write_queued(d, &progressed) < 0) return NEG_ERRNO;
    }
    maybe_upgrade(d);
    if (!f->got_end && !f->stream_gone) {
      ssize_t n;
      if (f->plain_dead) {
        /* a is gone: what still comes is read and thrown away, up to the end frame. */
        static uint8_t scratch[65536];
        n = recv(d->src, scratch, sizeof scratch, MSG_DONTWAIT);
        if (n > 0) frame_feed(f, scratch, (size_t)n, NULL, NULL);
      } else if (f->remaining == 0) {
        n = recv(d->src, f->dhdr + f->dhdr_have, (size_t)(4 - f->dhdr_have), MSG_DONTWAIT);
        if (n > 0) {
          f->dhdr_have += (int)n;
          if (f->dhdr_have == 4) frame_header(f);
        }
      } else if (d->pipe_r >= 0 ? d->queued < d->cap : d->queued == 0) {
        size_t room = d->pipe_r >= 0 ? d->cap - d->queued : d->cap;
        size_t want = room < f->remaining ? room : f->remaining;
        n = d->pipe_r >= 0
          ? splice(d->src, NULL, d->pipe_w, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
          : read(d->src, d->buf, want);
        if (n > 0) {
          if (d->pipe_r < 0) { d->off = 0; note_read(d, n); }
          d->queued += (size_t)n;
          f->remaining -= (uint32_t)n;
        } else if (n < 0 && errno == EINVAL && d->pipe_r >= 0 && d->queued == 0) {
          int e = to_copy(d); /* this socket family cannot splice */
          if (e) return e;
          continue;
        }
      } else {
        n = -2; /* the pipe is full: a has to read first */
      }
      if (n > 0) {
        progressed = 1;
      } else if (n == 0) {
        stream_lost(r, 0); /* closed before its end frame */
        progressed = 1;
      } else if (n == -1 && errno == EINTR) {
        continue;
      } else if (n == -1 && errno != EAGAIN) {
        stream_lost(r, errno);
        progressed = 1;
      }
    }
    if (!progressed) return 0;
  }
  return 1;
}

static void resetting_push(struct relay *r) {
  if (r->in_resetting) return;
  r->in_resetting = 1;
  r->next_resetting = resetting;
  resetting = r;
}

static void framed_run(struct relay *r, struct relay **ready) {
  struct framing *f = r->fr;
  struct dir *enc = &r->d[0], *dec = &r->d[1];
  if (f->plain_resetting) {
    int outq = 0;
    if (ioctl(r->fd[0], SIOCOUTQ, &outq) != 0 || outq == 0 || now_ms() >= f->reset_deadline_ms) plain_reset_now(r);
  }
  int was_dead = f->plain_dead;
  int more = 0, side = 0, res;
  if (r->fd[1] >= 0 && !f->stream_gone && !f->end_done) {
    res = enc_pump(r, &side);
    if (res < 0 && side == 0) {
      f->flags |= PH_ERR_A; /* a failed (its peer reset it): END_RESET after what it sent */
      if (!f->err) f->err = (uint32_t)-res;
      plain_reset(r, 0);
    } else if (res < 0) {
      stream_lost(r, -res);
    }
    more |= res > 0;
  }
  res = dec_pump(r, &side);
  if (res < 0) {
    f->flags |= PH_ERR_A;
    if (!f->err) f->err = (uint32_t)-res;
    plain_reset(r, 0);
  }
  more |= res > 0;
  /* a failed after its reading was over (EOF, then a reset): it is gone. */
  if (!f->plain_dead && enc->src_eof && ph_socket_error(r->fd[0]) < 0) {
    f->flags |= PH_ERR_A;
    plain_reset(r, 0);
  }
  /* What ends what. */
  if (f->stream_gone) stream_close(r);
  if (!f->plain_dead && dec->queued == 0) {
    if (f->stream_gone || f->got_end == PH_END_RESET) {
      plain_reset(r, 1);
    } else if (f->got_end == PH_END_EOF && !dec->shut) {
      dec->shut = 1;
      if (shutdown(r->fd[0], SHUT_WR) != 0 && errno != ENOTCONN) {
        f->flags |= PH_ERR_A;
        plain_reset(r, 0);
      }
    }
  }
  /* a is gone (an error above, or the reset just decided): END_RESET goes out. Decided after
   * the reset above, or nothing would wake this relay again to send it. */
  if (f->plain_dead && !f->end_code) { f->end_code = PH_END_RESET; more = 1; }
  if (!was_dead && f->plain_dead && !f->stream_gone && !f->got_end) more = 1; /* read on, to the end frame */
  int enc_over = f->end_done || f->stream_gone;
  int dec_over = f->stream_gone || f->got_end;
  int plain_over = f->plain_dead ? !f->plain_resetting : (enc->src_eof && dec->shut);
  if (enc_over && dec_over && plain_over) {
    stream_close(r);
    uint32_t flags = f->flags | (f->plain_dead ? PH_RESET : 0);
    finish(r, flags, (f->flags & PH_BAD_FRAME) ? (int)f->bad_code : (int)f->err);
    return;
  }
  if (f->plain_resetting) resetting_push(r);
  if (more) { ready_push(ready, r); return; }
  /* Writability is asked for only while bytes wait for it (see run()). */
  int want[2] = {
    r->fd[0] >= 0 && !f->plain_dead && dec->queued > 0,
    r->fd[1] >= 0 && (f->ehdr_off < 4 || enc->queued > 0),
  };
  for (int i = 0; i < 2; i++) {
    if (r->fd[i] < 0 || want[i] == r->want_out[i]) continue;
    struct epoll_event ev = side_event(r, i, EPOLLIN | EPOLLRDHUP | EPOLLET | (want[i] ? EPOLLOUT : 0));
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, r->fd[i], &ev) == 0) r->want_out[i] = want[i];
  }
}

/* ---- dialing relays ----------------------------------------------------------------------
 *
 * ph_relay_dial() gives the thread a connected socket a and an address: the thread connects b
 * itself (non-blocking), so a new forwarded connection waits for no JavaScript between its
 * accept and its first byte. Once b is connected, a REC_DIALED record tells the event loop
 * (which then lets go of its socket object for a) and the relay runs as any other. If b
 * fails to connect (or not within the deadline), a is handed back untouched: the
 * REC_RELAY_DONE record (PH_DIAL_FAILED, err, and a's fd in a_to_b) lets the event loop adopt
 * it again and decide what happens to it (another path, a reset). */

static void dial_unlink(struct relay *r) {
  if (!r->dialing) return;
  r->dialing = 0;
  if (r->dial_prev) r->dial_prev->dial_next = r->dial_next;
  else dialing = r->dial_next;
  if (r->dial_next) r->dial_next->dial_prev = r->dial_prev;
  r->dial_prev = r->dial_next = NULL;
}

static void dial_failed(struct relay *r, int err) {
  dial_unlink(r);
  epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd[1], NULL);
  close(r->fd[1]); /* b never connected */
  epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd[0], NULL);
  r->handback_fd = r->fd[0];
  r->fd[0] = r->fd[1] = -1;
  finish(r, PH_DIAL_FAILED, err);
}

/* b became writable (or failed): connected, or not. */
static void dial_check(struct relay *r, struct relay **ready) {
  int err = -ph_socket_error(r->fd[1]);
  if (err) { dial_failed(r, err); return; }
  struct sockaddr_storage peer;
  socklen_t len = sizeof peer;
  if (getpeername(r->fd[1], (struct sockaddr *)&peer, &len) != 0) return; /* still connecting */
  dial_unlink(r);
  struct epoll_event ev1 = side_event(r, 1, EPOLLIN | EPOLLRDHUP | EPOLLET);
  struct epoll_event ev0 = side_event(r, 0, EPOLLIN | EPOLLRDHUP | EPOLLET);
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, r->fd[1], &ev1) != 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, r->fd[0], &ev0) != 0) {
    dial_failed(r, errno);
    return;
  }
  struct record rec = { REC_DIALED, r->id, 0, 0, 0, 0 };
  post(rec);
  ready_push(ready, r);
}

/* Dials past their deadline fail with ETIMEDOUT; returns the ms until the next deadline (-1: none). */
static int dial_deadlines(void) {
  if (!dialing) return -1;
  uint64_t now = now_ms(), next = UINT64_MAX;
  for (struct relay *r = dialing, *n; r; r = n) {
    n = r->dial_next;
    if (r->dial_deadline_ms <= now) dial_failed(r, ETIMEDOUT);
    else if (r->dial_deadline_ms < next) next = r->dial_deadline_ms;
  }
  return next == UINT64_MAX ? -1 : (int)(next - now);
}

static void take_pending(struct relay **ready) {
  pthread_mutex_lock(&lock);
  struct relay *list = pending;
  pending = NULL;
  int aborts = abort_requested;
  abort_requested = 0;
  pthread_mutex_unlock(&lock);
  for (struct relay *r = list, *next; r; r = next) {
    next = r->next_pending;
    if (r->dialing) {
      /* Only b, for its connection; a joins once b is connected. */
      struct epoll_event out = side_event(r, 1, EPOLLOUT | EPOLLET);
      if (epoll_ctl(epfd, EPOLL_CTL_ADD, r->fd[1], &out) != 0) { dial_failed(r, errno); continue; }
      r->dial_next = dialing;
      if (dialing) dialing->dial_prev = r;
      dialing = r;
      continue;
    }
    for (int i = 0; i < 2; i++) {
      struct epoll_event ev = side_event(r, i, EPOLLIN | EPOLLRDHUP | EPOLLET);
      if (epoll_ctl(epfd, EPOLL_CTL_ADD, r->fd[i], &ev) != 0) {
        int e = errno;
        if (i == 1) epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd[0], NULL);
        finish(r, PH_RESET, (uint32_t)e);
        break;
      }
    }
    if (!r->closed) ready_push(ready, r);
  }
  if (!aborts) return;
  for (int i = 0; i < PH_MAX_RELAYS; i++) {
    pthread_mutex_lock(&lock);
    struct relay *r = slot_abort[i] ? slots[i] : NULL;
    slot_abort[i] = 0;
    pthread_mutex_unlock(&lock);
    if (r && !r->closed) finish(r, PH_RESET | PH_ABORTED, ECONNABORTED);
  }
}

static void *relay_thread(void *unused) {
  (void)unused;
  /* Signals are the runtime's business: none is delivered on this thread. A SIGPIPE that a
   * splice() to a closed socket raises stays pending here, harmlessly. */
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  prctl(PR_SET_NAME, "porthole-relay"); /* its own name in top and perf */
  struct epoll_event events[256];
  struct relay *ready = NULL;
  for (;;) {
    /* A plain side waiting for its send queue to drain is looked at every 10 ms. */
    int dial_ms = dial_deadlines();
    int timeout = ready ? 0 : resetting ? 10 : -1;
    if (dial_ms >= 0 && (timeout < 0 || dial_ms < timeout)) timeout = dial_ms;
    int n = epoll_wait(epfd, events, 256, timeout);
    if (n < 0 && errno != EINTR) return NULL;
    for (int i = 0; i < n; i++) {
      uint64_t tag = events[i].data.u64;
      if (events[i].data.ptr == &wake_fd) {
        uint64_t v;
        while (read(wake_fd, &v, sizeof v) > 0) {}
        take_pending(&ready);
      } else if (events[i].data.ptr == &notify_fd) {
        flush_records();
      } else if (tag & WATCH_TAG) {
        struct record rec = { REC_READY, (uint32_t)tag, events[i].events, (uint32_t)(tag >> 32) & 0x7fffffffu, 0, 0 };
        post(rec);
      } else {
        struct relay *r = (struct relay *)(uintptr_t)(tag & ~1ULL);
        int side = (int)(tag & 1);
        uint32_t ev = events[i].events;
        if (r->closed) continue;
        if (r->dialing) { dial_check(r, &ready); continue; }
        if ((ev & EPOLLERR) && !r->fr) check_errors(r); /* framed: framed_run looks */
        /* Readable side i: d[i] reads it; writable side i: d[1 - i] writes it; anything else
         * (EOF, hang-up, error): both. */
        int dirs = (ev & (EPOLLIN | EPOLLOUT)) && !(ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
          ? ((ev & EPOLLIN) ? 1 << side : 0) | ((ev & EPOLLOUT) ? 1 << (1 - side) : 0)
          : 3;
        if (!r->closed) ready_push_dirs(&ready, r, dirs);
      }
    }
    while (resetting) {
      struct relay *r = resetting;
      resetting = r->next_resetting;
      r->in_resetting = 0;
      if (!r->closed) ready_push(&ready, r);
    }
    /* Each ready relay gets one budget's worth per round, so one fast relay cannot starve
     * the others. */
    struct relay *round = ready;
    ready = NULL;
    for (struct relay *r = round, *next; r; r = next) {
      next = r->next_ready;
      r->in_ready = 0;
      if (!r->closed) run(r, &ready);
    }
    /* Finished relays go only now: events of this batch may still have named them, and the
     * ready list holds none that is closed. */
    while (graveyard) {
      struct relay *r = graveyard;
      graveyard = r->next_pending;
      free(r->fr);
      free(r);
    }
  }
  return NULL;
}

/*
 * Starts the relay thread (once) and returns the fd that the event loop watches for
 * records; the same fd on every call. -errno when it cannot start.
 */
int ph_relay_start(void) {
  pthread_mutex_lock(&lock);
  int result = notify_js;
  if (result >= 0) goto out;
  int pair[2] = { -1, -1 };
  epfd = epoll_create1(EPOLL_CLOEXEC);
  wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epfd < 0 || wake_fd < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) != 0) {
    result = NEG_ERRNO;
    goto fail;
  }
  int big = 1 << 20;
  setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  struct epoll_event wake = { .events = EPOLLIN, .data.ptr = &wake_fd };
  struct epoll_event out = { .events = EPOLLOUT | EPOLLET, .data.ptr = &notify_fd };
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, wake_fd, &wake) != 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, pair[0], &out) != 0) {
    result = NEG_ERRNO;
    goto fail;
  }
  notify_fd = pair[0];
  pthread_t t;
  int e = pthread_create(&t, NULL, relay_thread, NULL);
  if (e) { result = -e; notify_fd = -1; goto fail; }
  pthread_detach(t);
  notify_js = result = pair[1];
  goto out;
fail:
  if (pair[0] >= 0) { close(pair[0]); close(pair[1]); }
  if (epfd >= 0) close(epfd);
  if (wake_fd >= 0) close(wake_fd);
  epfd = wake_fd = -1;
out:
  pthread_mutex_unlock(&lock);
  return result;
}

static void wake(void) {
  uint64_t one = 1;
  ssize_t r = write(wake_fd, &one, sizeof one);
  (void)r; /* EAGAIN: the counter is already non-zero, the thread will wake */
}

static int dir_init(struct dir *d, int src, int dst, int copy, const uint8_t *first, int first_len) {
  d->src = src;
  d->dst = dst;
  d->pipe_r = d->pipe_w = -1;
  if (copy) {
    if (to_copy(d) != 0) return -ENOMEM;
  } else {
    d->buf = malloc(PH_SMALL);
    if (!d->buf) return -ENOMEM;
    d->cap = PH_SMALL;
    d->lazy = 1;
  }
  if (first_len > 0) {
    /* Bytes JavaScript had already read go out first. */
    if ((size_t)first_len <= d->cap) {
      memcpy(d->buf, first, (size_t)first_len);
      d->off = 0;
      d->queued = (size_t)first_len;
    } else if (d->lazy && make_pipe(d) == 0 && (size_t)first_len <= d->cap && write(d->pipe_w, first, (size_t)first_len) == first_len) {
      d->lazy = 0;
      d->queued = (size_t)first_len;
    } else {
      return -ENOBUFS;
    }
  }
  return 0;
}

/*
 * Relays between two connected stream sockets until both directions ended or one failed.
 * Both fds are dup()ed: the caller closes its own. to_b/to_a: bytes already read by the
 * caller that must reach b (resp. a) before anything else. flags: PH_FORCE_COPY to use
 * read()/send() both ways; PH_FRAMED_B when b is a framed data-path stream (to_b are then
 * plain bytes, sent as a frame, and to_a the stream's bytes as read, decoded here).
 * Returns the relay's id (> 0), or -errno.
 */
static int framed_init(struct relay *r, int copy, const uint8_t *to_b, int to_b_len, const uint8_t *to_a, int to_a_len) {
  struct framing *f = calloc(1, sizeof *f);
  if (!f) return -ENOMEM;
  r->fr = f;
  f->ehdr_off = 4;
  int e = dir_init(&r->d[0], r->fd[0], r->fd[1], copy, to_b, to_b_len);
  if (e) return e;
  if (to_b_len > 0) { put_be32(f->ehdr, (uint32_t)to_b_len); f->ehdr_off = 0; }
  /* The stream's bytes JavaScript read (after the data header or status byte) are decoded
   * here: their payload goes out first, and an end or a bad frame among them counts. */
  uint8_t *payload = to_a_len > 0 ? malloc((size_t)to_a_len) : NULL;
  size_t len = 0;
  if (to_a_len > 0 && !payload) return -ENOMEM;
  if (to_a_len > 0) frame_feed(f, to_a, (size_t)to_a_len, payload, &len);
  e = dir_init(&r->d[1], r->fd[1], r->fd[0], copy, payload, (int)len);
  free(payload);
  return e;
}

/* Gives r an id and hands it to the thread; on an error (e) frees it. Returns the id or -errno. */
static int relay_register(struct relay *r, int e) {
  int slot = -1;
  if (!e) {
    pthread_mutex_lock(&lock);
    static int hint = 0;
    for (int i = 0; i < PH_MAX_RELAYS; i++) {
      int s = (hint + i) % PH_MAX_RELAYS;
      if (!slot_taken[s]) { slot = s; break; }
    }
    if (slot >= 0) {
      hint = slot + 1;
      slot_taken[slot] = 1;
      slots[slot] = r;
      r->id = (uint32_t)slot + 1;
      r->next_pending = pending;
      pending = r;
      total_relays++;
    }
    pthread_mutex_unlock(&lock);
    if (slot < 0) e = -EMFILE;
  }
  if (e) {
    for (int i = 0; i < 2; i++) if (r->fd[i] >= 0) close(r->fd[i]);
    dir_free(&r->d[0]);
    dir_free(&r->d[1]);
    free(r->fr);
    free(r);
    return e;
  }
  wake();
  return slot + 1;
}

int ph_relay_add(int fd_a, int fd_b, const uint8_t *to_b, int to_b_len, const uint8_t *to_a, int to_a_len, int flags) {
  if (notify_js < 0) return -ENOTCONN;
  struct relay *r = calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  r->fd[0] = fcntl(fd_a, F_DUPFD_CLOEXEC, 0);
  r->fd[1] = r->fd[0] < 0 ? -1 : fcntl(fd_b, F_DUPFD_CLOEXEC, 0);
  int e = 0;
  if (r->fd[0] < 0 || r->fd[1] < 0) e = NEG_ERRNO;
  if (!e) {
    set_nonblock(r->fd[0]);
    set_nonblock(r->fd[1]);
    int copy = flags & PH_FORCE_COPY;
    if (flags & PH_FRAMED_B) e = framed_init(r, copy, to_b, to_b_len, to_a, to_a_len);
    else {
      e = dir_init(&r->d[0], r->fd[0], r->fd[1], copy, to_b, to_b_len);
      if (!e) e = dir_init(&r->d[1], r->fd[1], r->fd[0], copy, to_a, to_a_len);
    }
  }
  return relay_register(r, e);
}

/*
 * Connects a new TCP socket b to host (a numeric IPv4 or IPv6 address, NUL-terminated) and
 * port, and relays a <-> b once it is connected (see "dialing relays"). fd_a is dup()ed (the
 * caller closes its own at once); if the dial fails, the dup is handed back in the record.
 * to_b: bytes already read from a. b gets TCP_NODELAY, and keepalive probes after keepalive_s
 * idle seconds (0: none). Returns the relay's id, or -errno when the connect failed at once.
 */
int ph_relay_dial(int fd_a, const char *host, int port, const uint8_t *to_b, int to_b_len, int flags, int timeout_ms, int keepalive_s) {
  if (notify_js < 0) return -ENOTCONN;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t ss_len;
  struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    ss_len = sizeof *in4;
  } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    ss_len = sizeof *in6;
  } else {
    return -EINVAL;
  }
  int b = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (b < 0) return NEG_ERRNO;
  int one = 1;
  setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (keepalive_s > 0) {
    setsockopt(b, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_KEEPIDLE, &keepalive_s, sizeof keepalive_s);
  }
  if (connect(b, (struct sockaddr *)&ss, ss_len) != 0 && errno != EINPROGRESS) {
    int e = errno;
    close(b);
    return -e;
  }
  struct relay *r = calloc(1, sizeof *r);
  if (!r) { close(b); return -ENOMEM; }
  r->fd[1] = b;
  r->fd[0] = fcntl(fd_a, F_DUPFD_CLOEXEC, 0);
  int e = r->fd[0] < 0 ? NEG_ERRNO : 0;
  if (!e) {
    set_nonblock(r->fd[0]);
    setsockopt(r->fd[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int copy = flags & PH_FORCE_COPY;
    e = dir_init(&r->d[0], r->fd[0], r->fd[1], copy, to_b, to_b_len);
    if (!e) e = dir_init(&r->d[1], r->fd[1], r->fd[0], copy, NULL, 0);
  }
  r->dialing = 1;
  r->dial_deadline_ms = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 2000);
  return relay_register(r, e);
}

/* out[0] = bytes a -> b, out[1] = bytes b -> a so far; -ENOENT once it finished. */
int ph_relay_counters(uint32_t id, uint64_t *out) {
  if (id < 1 || id > PH_MAX_RELAYS) return -EINVAL;
  pthread_mutex_lock(&lock);
  struct relay *r = slots[id - 1];
  if (r) {
    out[0] = __atomic_load_n(&r->d[0].bytes, __ATOMIC_RELAXED);
    out[1] = __atomic_load_n(&r->d[1].bytes, __ATOMIC_RELAXED);
  }
  pthread_mutex_unlock(&lock);
  return r ? 0 : -ENOENT;
}

/* Resets both sides of a running relay (its record follows, with PH_ABORTED). */
int ph_relay_abort(uint32_t id) {
  if (id < 1 || id > PH_MAX_RELAYS) return -EINVAL;
  pthread_mutex_lock(&lock);
  int live = slots[id - 1] != NULL;
  if (live) { slot_abort[id - 1] = 1; abort_requested = 1; }
  pthread_mutex_unlock(&lock);
  if (live) wake();
  return live ? 0 : -ENOENT;
}

/* After its record was read: the id may be given to a new relay. */
int ph_relay_release(uint32_t id) {
  if (id < 1 || id > PH_MAX_RELAYS) return -EINVAL;
  pthread_mutex_lock(&lock);
  int ok = slots[id - 1] == NULL && slot_taken[id - 1];
  if (ok) slot_taken[id - 1] = 0;
  pthread_mutex_unlock(&lock);
  return ok ? 0 : -EBUSY;
}

/* out: relays started, bytes moved with splice(), bytes moved with read()/send(). */
int ph_relay_totals(uint64_t *out) {
  pthread_mutex_lock(&lock);
  out[0] = total_relays;
  pthread_mutex_unlock(&lock);
  out[1] = __atomic_load_n(&total_spliced, __ATOMIC_RELAXED);
  out[2] = __atomic_load_n(&total_copied, __ATOMIC_RELAXED);
  return 0;
}

/*
 * Asks for one REC_READY record (id = token, flags = epoll events) when fd becomes ready for
 * `events` (EPOLLIN 1, EPOLLOUT 4); call again after each record to keep watching.
 */
int ph_watch(int fd, uint32_t events, uint32_t token) {
  if (epfd < 0) return -ENOTCONN;
  if (fd < 0) return -EBADF;
  struct epoll_event ev = { .events = events | EPOLLONESHOT, .data.u64 = WATCH_TAG | ((uint64_t)fd << 32) | token };
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) == 0) return 0;
  if (errno == ENOENT && epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0) return 0;
  return NEG_ERRNO;
}

/* Stops watching fd (before closing it). */
int ph_unwatch(int fd) {
  if (epfd < 0) return -ENOTCONN;
  return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : NEG_ERRNO;
}
