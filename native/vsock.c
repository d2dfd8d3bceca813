#define _GNU_SOURCE
#include "shim.h"

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
