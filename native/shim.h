/*
 * porthole's native shim: what JavaScript runtimes cannot do themselves. One shared object
 * built from these files (see README.md):
 *   - basics.c: errno names, close, socketpair, a socket's pending error, peeking at queued bytes, a listener's backlog.
 *   - vsock.c: AF_VSOCK stream sockets: create, bind+listen, non-blocking accept with the peer
 *     CID, a non-blocking connect (its completion is watched by the relay thread), the local CID.
 *   - sock_diag.c: netlink dumps of listening TCP and unconnected UDP sockets (kernel-side state
 *     filter), and the socket-destroy multicast groups as events.
 *   - kernel_events.c: three hand-assembled BPF programs (listen(), and a listener's close where
 *     asked for; a UDP bind, IPv4 and IPv6) feeding a ring buffer, so the watcher looks when
 *     something changed.
 *   - relay.c: a thread that moves the bytes of joined socket pairs (splice() through a pipe per
 *     direction, read/write where splice does not apply), and tells the event loop about
 *     finished relays and ready fds through one socket the loop watches.
 *   - udp.c: UDP sockets read with recvmmsg() and written with sendmmsg(), many datagrams per
 *     call, with large buffers (a gigabit of datagrams one call each overflowed the socket).
 *   - connect_rewrite.c: the host's own connect() to a direct forward's loopback port rewritten
 *     to the guest's address in the kernel (cgroup BPF), its connections and bytes counted.
 *   - bpf_asm.h: what kernel_events.c and connect_rewrite.c share to assemble and attach programs.
 *   - udp_pump.c: a thread of its own that carries UDP flows between a connected UDP socket and
 *     a data stream of datagram frames (budget and credits included), no JavaScript between.
 * Every function returns >= 0 on success and -errno on failure; ph_errno_name() and
 * ph_strerror() turn that into words. Nothing here aborts or prints.
 */
#ifndef PORTHOLE_SHIM_H
#define PORTHOLE_SHIM_H
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
#include <poll.h>
#include <sys/eventfd.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
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

/* basics.c, used by the other files too. */
const char *ph_errno_name(int err);
int ph_socket_error(int fd);

/* udp.c, used by udp_pump.c too. */
struct ph_dgram {
  const uint8_t *data;
  uint32_t len;
};
struct ph_sent {
  uint32_t messages, lost;
  uint64_t bytes;
};
int ph_udp_sendv(int fd, const struct ph_dgram *d, int count, const struct sockaddr *to, socklen_t tolen, uint32_t *gso_over, struct ph_sent *r);
int ph_udp_drops(int fd);
int ph_udp_send_messages(void);

#endif
