#define _GNU_SOURCE
#include "shim.h"
#include <linux/filter.h>

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

struct diag_request {
  struct nlmsghdr h;
  struct inet_diag_req_v2 r;
};

/* A sock_diag request about (family, protocol) sockets: a dump (NLM_F_DUMP) or one socket (0). */
static struct diag_request diag_request(uint8_t family, uint8_t protocol, uint16_t flags) {
  struct diag_request req;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | flags;
  req.r.sdiag_family = family;
  req.r.sdiag_protocol = protocol;
  return req;
}

/* One dump of (family, protocol) sockets whose state is in the `states` bit mask. */
static int dump_one(int fd, uint8_t family, uint8_t protocol, uint32_t states, uint16_t sport, uint8_t *buf, int cap, int n) {
  struct diag_request req = diag_request(family, protocol, NLM_F_DUMP);
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

/*
 * The socket a packet to addr:port would reach (bit 0 of `protocols` TCP, else UDP; family
 * AF_INET or AF_INET6; addr: 16 bytes, IPv4 in the first 4): one hash lookup in the kernel
 * instead of a walk over its whole table, so a kernel event that names the address costs the
 * same beside ten thousand listeners as beside none. Writes the socket's record if it is a
 * listener (TCP) or unconnected (UDP), and returns 1; 0 when there is none. A wildcard socket
 * on that port answers for a specific address: the caller compares the record's address.
 */
int ph_diag_socket(uint8_t *buf, int cap, int protocols, int family, const uint8_t *addr, int port) {
  static int fd = -1;
  if (fd < 0) fd = diag_socket();
  if (fd < 0) return fd;
  uint8_t protocol = (protocols & 1) ? IPPROTO_TCP : IPPROTO_UDP;
  struct diag_request req = diag_request((uint8_t)family, protocol, 0); /* no NLM_F_DUMP: one socket, looked up by address */
  req.r.idiag_states = ~0u;
  req.r.id.idiag_cookie[0] = req.r.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  if (protocol == IPPROTO_TCP) {
    memcpy(req.r.id.idiag_src, addr, 16);
    req.r.id.idiag_sport = htons((uint16_t)port);
  } else {
    /* udp_dump_one looks the socket up as a packet from (src, sport) to (dst, dport) */
    memcpy(req.r.id.idiag_dst, addr, 16);
    req.r.id.idiag_dport = htons((uint16_t)port);
  }
  struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
  if (sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) { int e = errno; close(fd); fd = -1; return -e; }
  static __thread uint8_t rx[8192] __attribute__((aligned(8)));
  ssize_t len;
  do len = recv(fd, rx, sizeof rx, 0); while (len < 0 && errno == EINTR);
  if (len < 0) { int e = errno; close(fd); fd = -1; return -e; }
  struct nlmsghdr *h = (struct nlmsghdr *)rx;
  if (!NLMSG_OK(h, len)) return 0;
  if (h->nlmsg_type == NLMSG_ERROR) {
    struct nlmsgerr *e = NLMSG_DATA(h);
    return e->error == -ENOENT || e->error == 0 ? 0 : e->error;
  }
  if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) return 0;
  const struct inet_diag_msg *m = NLMSG_DATA(h);
  if (m->idiag_state != (protocol == IPPROTO_TCP ? 10 : 7)) return 0;
  int r = put_record(buf, cap, 0, protocol, m);
  return r < 0 ? r : 1;
}

int ph_diag_listeners(uint8_t *buf, int cap, int protocols) {
  return diag_dump(buf, cap, protocols, 0, 3);
}

/* A non-blocking netlink socket joined to the socket-destroy groups of `protocols` (bit 0
 * TCP, bit 1 UDP; IPv4 and IPv6): one socket per protocol tells which one closed. With bit 2,
 * a socket filter drops in the kernel the closes of connected sockets (a remote port): the
 * agent then wakes for a listener's or an unconnected UDP socket's close, not for every
 * connection the guest closes. (Each destroy event is a message of its own.) A kernel that
 * refuses the filter gets every close, as without bit 2. */
int ph_diag_subscribe_to(int protocols) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_SOCK_DIAG);
  if (fd < 0) return NEG_ERRNO;
  if (protocols & 4) {
    struct sock_filter code[] = {
      /* the inet_diag_msg's idiag_dport, after the 16-byte netlink header */
      BPF_STMT(BPF_LD | BPF_H | BPF_ABS, sizeof(struct nlmsghdr) + offsetof(struct inet_diag_msg, id.idiag_dport)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 0xffffffff), /* no remote port: keep */
      BPF_STMT(BPF_RET | BPF_K, 0),          /* connected: drop */
    };
    struct sock_fprog prog = { .len = sizeof code / sizeof code[0], .filter = code };
    (void)setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
  }
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
