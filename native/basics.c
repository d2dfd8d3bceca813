#define _GNU_SOURCE
#include "shim.h"

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

/* The socket's pending error (SO_ERROR) as -errno, or 0. */
int ph_socket_error(int fd) {
  int soerr = 0;
  socklen_t len = sizeof soerr;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) return NEG_ERRNO;
  return -soerr;
}

/* Copies up to cap bytes queued on a stream socket without taking them off it (MSG_PEEK): the
 * count, 0 once the peer has closed, -EAGAIN while nothing is queued. */
int ph_peek(int fd, uint8_t *buf, int cap) {
  ssize_t n = recv(fd, buf, (size_t)cap, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 ? NEG_ERRNO : (int)n;
}

/* The fd's poll() events right now (POLLIN 1, POLLOUT 4, POLLERR 8, POLLHUP 16, POLLNVAL 32), or -errno.
 * A virtio-serial port reports POLLHUP while no host is attached to it. */
int ph_poll_now(int fd) {
  struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT };
  int n = poll(&p, 1, 0);
  return n < 0 ? NEG_ERRNO : n == 0 ? 0 : p.revents;
}

/* Clears O_NONBLOCK on the open file (shared by all its dups): 0 or -errno. */
int ph_set_blocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return NEG_ERRNO;
  return !(fl & O_NONBLOCK) || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0 ? 0 : NEG_ERRNO;
}

/* Sets the backlog of a socket that already listens (listen() again changes only that; the
 * kernel caps it at net.core.somaxconn). For runtimes whose listen() takes no backlog. */
int ph_listen_backlog(int fd, int backlog) {
  return listen(fd, backlog) == 0 ? 0 : NEG_ERRNO;
}
