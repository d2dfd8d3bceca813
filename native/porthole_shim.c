/*
 * porthole's native shim: what JavaScript runtimes cannot do themselves.
 *   - AF_VSOCK stream sockets: create, bind+listen, non-blocking accept with the peer CID,
 *     connect with a timeout (finished before the fd is handed over), the local CID.
 *   - AF_NETLINK sock_diag: dumps of listening TCP and unconnected UDP sockets (kernel-side
 *     state filter), and the socket-destroy multicast groups as events.
 * Every function returns >= 0 on success and -errno on failure; ph_errno_name() and
 * ph_strerror() turn that into words. Nothing here aborts or prints.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>

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

/* Connects with a timeout and returns the connected, non-blocking fd. */
int ph_vsock_connect(uint32_t cid, uint32_t port, int timeout_ms) {
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return NEG_ERRNO;
  struct sockaddr_vm a = vm_addr(cid, port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (errno != EINPROGRESS) { int e = errno; close(fd); return -e; }
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    int r = poll(&p, 1, timeout_ms);
    if (r <= 0) { int e = r == 0 ? ETIMEDOUT : errno; close(fd); return -e; }
    int soerr = 0;
    socklen_t len = sizeof soerr;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
    if (soerr) { close(fd); return -soerr; }
  }
  return fd;
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
 * Records written to the caller's buffer, 24 bytes each:
 *   u8 family (AF_INET/AF_INET6), u8 protocol (IPPROTO_TCP/UDP), u8 state, u8 pad,
 *   u16 port (host order), u16 pad, u8 addr[16] (IPv4 in the first 4 bytes).
 */
#define PH_RECORD 24

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
  return 0;
}

static int diag_socket(void) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  return fd >= 0 ? fd : NEG_ERRNO;
}

/* One dump of (family, protocol) sockets whose state is in the `states` bit mask. */
static int dump_one(int fd, uint8_t family, uint8_t protocol, uint32_t states, uint8_t *buf, int cap, int n) {
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
int ph_diag_listeners(uint8_t *buf, int cap, int protocols) {
  /* One netlink socket for every dump (scans run many times a second); a failed dump
   * drops it, and the next call opens a fresh one. */
  static int fd = -1;
  if (fd < 0) fd = diag_socket();
  if (fd < 0) return fd;
  int n = 0;
  const uint8_t families[] = { AF_INET, AF_INET6 };
  for (int i = 0; i < 2 && n >= 0; i++) {
    if (protocols & 1) n = dump_one(fd, families[i], IPPROTO_TCP, 1u << 10, buf, cap, n);
    if (n >= 0 && (protocols & 2)) n = dump_one(fd, families[i], IPPROTO_UDP, 1u << 7, buf, cap, n);
  }
  if (n < 0) {
    close(fd);
    fd = -1;
  }
  return n;
}

/* A non-blocking netlink socket joined to the four socket-destroy groups. */
int ph_diag_subscribe(void) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_SOCK_DIAG);
  if (fd < 0) return NEG_ERRNO;
  struct sockaddr_nl local = { .nl_family = AF_NETLINK };
  if (bind(fd, (struct sockaddr *)&local, sizeof local) != 0) { int e = errno; close(fd); return -e; }
  const int groups[] = { SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET_UDP_DESTROY, SKNLGRP_INET6_TCP_DESTROY, SKNLGRP_INET6_UDP_DESTROY };
  for (int i = 0; i < 4; i++) {
    if (setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &groups[i], sizeof groups[i]) != 0) {
      int e = errno;
      close(fd);
      return -e;
    }
  }
  return fd;
}

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
