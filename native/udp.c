#define _GNU_SOURCE
#include "shim.h"

/* ---- UDP in batches ----------------------------------------------------------------------
 *
 * A UDP forward at a gigabit carries ~90,000 datagrams a second. Through the runtimes' own UDP
 * sockets each one is a system call and an event of its own, and between two events the
 * socket's receive buffer (~200 KiB, ~2 ms at that rate) overflowed: most of a flood was lost
 * in the kernel while the agents were not even busy. Here a socket is read with recvmmsg()
 * and written with sendmmsg(), many datagrams per call (those of one size in a row as one
 * message, UDP_SEGMENT), and gets large buffers. The event
 * loop learns that it is readable through the relay thread's ph_watch() (relay.c).
 *
 * An address is 20 bytes: family (4 or 6, u16), port (u16, host order), then the address (4
 * or 16 bytes, network order). A received datagram's meta is 6 u32: its length, then its
 * sender's address in those 20 bytes.
 */

#define PH_UDP_SLOT 65536 /* a datagram's largest payload is 65,507 (IPv4) / 65,527 (IPv6) bytes */
#define PH_UDP_BATCH 64

struct ph_udp_addr {
  uint16_t family, port;
  uint8_t addr[16];
};

/* Sizes the kernel would not send as one message, by socket (ph_udp_sendv's gso_over), for ph_udp_send. */
#define GSO_FDS 65536
static uint32_t gso_over_by_fd[GSO_FDS];

static socklen_t to_sockaddr(const struct ph_udp_addr *a, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (a->family == 4) {
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_port = htons(a->port);
    memcpy(&in->sin_addr, a->addr, 4);
    return sizeof *in;
  }
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons(a->port);
  memcpy(&in6->sin6_addr, a->addr, 16);
  return sizeof *in6;
}

static void from_sockaddr(const struct sockaddr_storage *ss, struct ph_udp_addr *a) {
  memset(a, 0, sizeof *a);
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    a->family = 4;
    a->port = ntohs(in->sin_port);
    memcpy(a->addr, &in->sin_addr, 4);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    a->family = 6;
    a->port = ntohs(in6->sin6_port);
    memcpy(a->addr, &in6->sin6_addr, 16);
  }
}

/* A numeric address ("127.0.0.1", "::1") and port in the 20-byte form; -EINVAL if not numeric. */
int ph_udp_address(const char *host, int port, uint8_t *out) {
  struct ph_udp_addr a = { .port = (uint16_t)port };
  if (inet_pton(AF_INET, host, a.addr) == 1) a.family = 4;
  else if (inet_pton(AF_INET6, host, a.addr) == 1) a.family = 6;
  else return -EINVAL;
  memcpy(out, &a, sizeof a);
  return 0;
}

/* Asks for `bytes` of buffer; as root past the system's maximum (the FORCE options), else up to it. */
static void set_buffer(int fd, int force, int plain, int bytes) {
  if (bytes <= 0) return;
  if (setsockopt(fd, SOL_SOCKET, force, &bytes, sizeof bytes) != 0) setsockopt(fd, SOL_SOCKET, plain, &bytes, sizeof bytes);
}

/*
 * A non-blocking UDP socket: bound to `local` if its family is set, connected to `peer` if its
 * family is set (the family of whichever is set; both must agree), IPv6-only when asked, with
 * receive and send buffers of `buffer_bytes` where allowed. Returns the fd or -errno.
 */
int ph_udp_open(const uint8_t *local, const uint8_t *peer, int v6only, int buffer_bytes) {
  struct ph_udp_addr l, p;
  memcpy(&l, local, sizeof l);
  memcpy(&p, peer, sizeof p);
  int family = l.family ? l.family : p.family;
  if (family != 4 && family != 6) return -EAFNOSUPPORT;
  if ((l.family && l.family != family) || (p.family && p.family != family)) return -EINVAL;
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return NEG_ERRNO;
  int one = 1;
  if (family == 6 && v6only && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) goto fail;
  set_buffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, buffer_bytes);
  set_buffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, buffer_bytes);
  struct sockaddr_storage ss;
  if (l.family && bind(fd, (struct sockaddr *)&ss, to_sockaddr(&l, &ss)) != 0) goto fail;
  if (p.family && connect(fd, (struct sockaddr *)&ss, to_sockaddr(&p, &ss)) != 0) goto fail;
  if (fd < GSO_FDS) gso_over_by_fd[fd] = 0; /* a new socket: whatever the fd's last one learnt is not its */
  return fd;
fail:;
  int err = NEG_ERRNO;
  close(fd);
  return err;
}

/* The socket's bound address in the 20-byte form. */
int ph_udp_local(int fd, uint8_t *out) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return NEG_ERRNO;
  struct ph_udp_addr a;
  from_sockaddr(&ss, &a);
  memcpy(out, &a, sizeof a);
  return 0;
}

/*
 * The socket's receive and send buffers as the kernel set them, in out[0] and out[1] (Linux
 * reports twice what was granted: it counts its own bookkeeping in). Where a process may not
 * pass the system's maximum (not root, no CAP_NET_ADMIN), set_buffer() got less than it asked.
 */
int ph_udp_buffers(int fd, int32_t *out) {
  socklen_t len = sizeof out[0];
  if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &out[0], &len) != 0) return NEG_ERRNO;
  len = sizeof out[1];
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &out[1], &len) != 0) return NEG_ERRNO;
  return 0;
}

/*
 * How many datagrams the kernel dropped at this socket (its receive buffer full, say): the
 * socket's own count (SO_MEMINFO's SK_MEMINFO_DROPS, what /proc/net/udp shows as "drops"), so
 * an agent can count and say the losses that happen before it reads. Returns it or -errno.
 */
int ph_udp_drops(int fd) {
  uint32_t mem[SK_MEMINFO_VARS];
  socklen_t len = sizeof mem;
  memset(mem, 0, sizeof mem);
  if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) != 0) return NEG_ERRNO;
  if (len < sizeof(uint32_t) * (SK_MEMINFO_DROPS + 1)) return -EINVAL;
  return (int)(mem[SK_MEMINFO_DROPS] & 0x7fffffff);
}

/*
 * Reads the datagrams waiting (up to `max` and what `cap` bytes hold at 64 KiB each) with one
 * recvmmsg(). They land in buf one after another, without gaps; meta gets 6 u32 per datagram
 * (length, then the sender's 20-byte address). Returns the count, 0 when none is waiting, or
 * -errno (a connected socket's pending ICMP error, say ECONNREFUSED, is reported once this way).
 */
int ph_udp_recv(int fd, uint8_t *buf, int cap, uint32_t *meta, int max) {
  if (max > PH_UDP_BATCH) max = PH_UDP_BATCH;
  if (max > cap / PH_UDP_SLOT) max = cap / PH_UDP_SLOT;
  if (max <= 0) return -EINVAL;
  struct mmsghdr msgs[PH_UDP_BATCH];
  struct iovec iov[PH_UDP_BATCH];
  struct sockaddr_storage from[PH_UDP_BATCH];
  memset(msgs, 0, sizeof msgs[0] * (size_t)max);
  for (int i = 0; i < max; i++) {
    iov[i].iov_base = buf + (size_t)i * PH_UDP_SLOT;
    iov[i].iov_len = PH_UDP_SLOT;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &from[i];
    msgs[i].msg_hdr.msg_namelen = sizeof from[i];
  }
  int n = recvmmsg(fd, msgs, (unsigned)max, MSG_DONTWAIT, NULL);
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : NEG_ERRNO;
  /* Packed: each datagram moves down to where the previous one ended (memmove: slots only move down). */
  size_t at = 0;
  int kept = 0;
  for (int i = 0; i < n; i++) {
    if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) continue; /* cannot happen with 64 KiB slots; never half a datagram */
    size_t len = msgs[i].msg_len;
    if (at != (size_t)i * PH_UDP_SLOT) memmove(buf + at, buf + (size_t)i * PH_UDP_SLOT, len);
    struct ph_udp_addr a;
    from_sockaddr(&from[i], &a);
    meta[kept * 6] = (uint32_t)len;
    memcpy(&meta[kept * 6 + 1], &a, sizeof a);
    at += len;
    kept++;
  }
  return kept;
}

/* Errors that concern one datagram (or a peer that went away), not the socket. */
static int lost_datagram(int err) {
  return err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH || err == EMSGSIZE || err == EINVAL || err == EPERM ||
         err == EACCES || err == EADDRNOTAVAIL || err == ENOTCONN || err == EDESTADDRREQ;
}

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define GSO_MAX_SEGS 64     /* the kernel's UDP_MAX_SEGMENTS (older kernels) */
#define GSO_MAX_BYTES 65000 /* one IP packet's payload, headers aside */

/*
 * Sends datagrams with sendmmsg(), those of one size in a row (a shorter one may end the run)
 * as one message the kernel cuts into them (UDP_SEGMENT): the stack is walked once for up to
 * 64 datagrams instead of once each, and that walk (a loopback receiver's delivery included)
 * was most of a guest agent's CPU under a flood. `*gso_over`: datagrams this long or longer go
 * one per message (0: none); where the kernel refuses a run (EMSGSIZE: that size is over the
 * route's MTU, sent alone the kernel fragments it; EIO: no checksum offload on the route) it is
 * set and the run goes again one by one. A datagram refused on its own (ECONNREFUSED from an
 * earlier ICMP, say) is passed over as lost. Returns how many were dealt with (sent or lost):
 * fewer than count when the socket's buffer is full (EAGAIN, ENOBUFS), or -errno for a failed
 * socket with none dealt with. `r` (optional) gets the messages sent, the datagrams lost and
 * the bytes sent.
 */
int ph_udp_sendv(int fd, const struct ph_dgram *d, int count, const struct sockaddr *to, socklen_t tolen, uint32_t *gso_over, struct ph_sent *r) {
  struct mmsghdr msgs[PH_UDP_BATCH];
  struct iovec iov[PH_UDP_BATCH];
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } ctl[PH_UDP_BATCH];
  int dealt = 0;
  while (dealt < count) {
    /* Up to PH_UDP_BATCH datagrams from `dealt` on, grouped into messages. */
    int first[PH_UDP_BATCH + 1], m = 0, n = count - dealt < PH_UDP_BATCH ? count - dealt : PH_UDP_BATCH;
    const struct ph_dgram *b = d + dealt;
    for (int i = 0; i < n;) {
      int k = 1;
      size_t total = b[i].len;
      if (b[i].len && (!*gso_over || b[i].len < *gso_over)) {
        while (i + k < n && k < GSO_MAX_SEGS && b[i + k].len && b[i + k].len <= b[i].len && total + b[i + k].len <= GSO_MAX_BYTES) {
          total += b[i + k].len;
          if (b[i + k++].len < b[i].len) break; /* a shorter one ends the message */
        }
      }
      memset(&msgs[m], 0, sizeof msgs[m]);
      for (int j = 0; j < k; j++) iov[i + j] = (struct iovec){ .iov_base = (void *)b[i + j].data, .iov_len = b[i + j].len };
      msgs[m].msg_hdr.msg_iov = &iov[i];
      msgs[m].msg_hdr.msg_iovlen = (size_t)k;
      msgs[m].msg_hdr.msg_name = (void *)to;
      msgs[m].msg_hdr.msg_namelen = to ? tolen : 0;
      if (k > 1) {
        msgs[m].msg_hdr.msg_control = ctl[m].buf;
        msgs[m].msg_hdr.msg_controllen = sizeof ctl[m].buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[m].msg_hdr);
        c->cmsg_level = IPPROTO_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)b[i].len;
        memcpy(CMSG_DATA(c), &size, sizeof size);
      }
      first[m++] = i;
      i += k;
    }
    first[m] = n;
    int sent = sendmmsg(fd, msgs, (unsigned)m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0) {
      int segs = first[1];
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) return dealt;
      if (segs > 1 && (errno == EMSGSIZE || errno == EINVAL || errno == EIO || errno == EOPNOTSUPP || errno == ENOPROTOOPT)) {
        *gso_over = errno == EMSGSIZE || errno == EINVAL ? b[0].len : 1;
        continue; /* the same datagrams again, that run one by one */
      }
      if (!lost_datagram(errno)) return dealt ? dealt : NEG_ERRNO;
      if (r) r->lost += (uint32_t)segs; /* those are lost; go on with the next */
      dealt += segs;
      continue;
    }
    if (r) {
      r->messages += (uint32_t)sent;
      for (int i = 0; i < first[sent]; i++) r->bytes += b[i].len;
    }
    dealt += first[sent];
  }
  return dealt;
}

/* Messages ph_udp_send() handed to the kernel, all sockets (wraps): tests count its grouping. */
static uint32_t send_messages;

int ph_udp_send_messages(void) { return (int)(__atomic_load_n(&send_messages, __ATOMIC_RELAXED) & 0x7fffffff); }

/*
 * Sends `count` datagrams, packed one after another in buf (lens[i] bytes each), to `to` if
 * its family is set, else to the connected peer (ph_udp_sendv). Returns how many were dealt
 * with, or -errno for a failed socket.
 */
int ph_udp_send(int fd, const uint8_t *buf, const uint32_t *lens, int count, const uint8_t *to) {
  struct ph_udp_addr t;
  memcpy(&t, to, sizeof t);
  struct sockaddr_storage ss;
  socklen_t sslen = t.family ? to_sockaddr(&t, &ss) : 0;
  struct ph_dgram d[PH_UDP_BATCH];
  uint32_t one_by_one = 1, *gso_over = fd >= 0 && fd < GSO_FDS ? &gso_over_by_fd[fd] : &one_by_one;
  size_t offset = 0;
  int done = 0;
  while (done < count) {
    int n = count - done < PH_UDP_BATCH ? count - done : PH_UDP_BATCH;
    for (int i = 0; i < n; i++) {
      d[i] = (struct ph_dgram){ .data = buf + offset, .len = lens[done + i] };
      offset += lens[done + i];
    }
    struct ph_sent sent = { 0 };
    int dealt = ph_udp_sendv(fd, d, n, sslen ? (struct sockaddr *)&ss : NULL, sslen, gso_over, &sent);
    __atomic_add_fetch(&send_messages, sent.messages, __ATOMIC_RELAXED);
    if (dealt < 0) return done ? done : dealt;
    done += dealt;
    if (dealt < n) return done;
  }
  return done;
}
