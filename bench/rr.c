// rr: a native 1-byte ping-pong client (and echo server), so that what a forwarder costs per
// round trip or per new connection is not hidden behind the client's own cost. `make bench`
// uses it for its latency row (built as dist/rr); bench/lab-up.ts for profiling.
//   rr serve PORT [ADDR]          an echo server, a thread per connection
//   rr rr HOST PORT SECS          round trips/s over one connection
//   rr crr HOST PORT SECS [MAX]   new connections/s, one round trip each, at most MAX of them
//                                 (each leaves a TIME_WAIT socket: MAX keeps a run within the
//                                 ephemeral ports)
//   rr wake MS COUNT              what one wake-up of an idle epoll loop costs on this machine
//                                 (a timerfd every MS ms, COUNT times): the floor under any
//                                 event-driven agent's CPU per event (bench/wake-cost.ts has
//                                 the runtimes' own)
// Prints "<rate> rt/s <count>" or "<rate> conn/s <count>"; exits 1 with the failing call on an
// error, 2 on bad arguments.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void *echo(void *p) {
  int fd = (int)(long)p;
  char b[4096];
  ssize_t n;
  while ((n = read(fd, b, sizeof b)) > 0)
    if (write(fd, b, n) != n) break;
  close(fd);
  return 0;
}

static struct sockaddr_in addr(const char *h, int port) {
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (inet_pton(AF_INET, h, &a.sin_addr) != 1) {
    fprintf(stderr, "rr: not an IPv4 address: %s\n", h);
    exit(2);
  }
  return a;
}

static int dial(struct sockaddr_in *a) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    perror("rr: socket");
    exit(1);
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (void *)a, sizeof *a)) {
    perror("rr: connect");
    exit(1);
  }
  return fd;
}

/* One byte out and the same byte back. */
static void round_trip(int fd, const char *what) {
  char b = 1;
  if (write(fd, &b, 1) != 1) {
    perror(what);
    exit(1);
  }
  ssize_t n = read(fd, &b, 1);
  if (n == 1) return;
  if (n == 0) fprintf(stderr, "%s: the connection ended before its echo\n", what);
  else perror(what);
  exit(1);
}

/* CPU (user + system) per wake-up of an epoll loop woken by a timer and nothing else. */
static int wake_cost(int ms, long count) {
  int ep = epoll_create1(0), tf = timerfd_create(CLOCK_MONOTONIC, 0);
  struct itimerspec every = { { ms / 1000, (ms % 1000) * 1000000L }, { ms / 1000, (ms % 1000) * 1000000L } };
  struct epoll_event ev = { .events = EPOLLIN };
  if (ep < 0 || tf < 0 || timerfd_settime(tf, 0, &every, 0) || epoll_ctl(ep, EPOLL_CTL_ADD, tf, &ev)) {
    perror("rr: wake");
    return 1;
  }
  struct rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  for (long i = 0; i < count; i++) {
    uint64_t ticks;
    if (epoll_wait(ep, &ev, 1, -1) != 1 || read(tf, &ticks, sizeof ticks) != sizeof ticks) {
      perror("rr: wake");
      return 1;
    }
  }
  getrusage(RUSAGE_SELF, &after);
  double us = (after.ru_utime.tv_sec - before.ru_utime.tv_sec + after.ru_stime.tv_sec - before.ru_stime.tv_sec) * 1e6 +
              (after.ru_utime.tv_usec - before.ru_utime.tv_usec + after.ru_stime.tv_usec - before.ru_stime.tv_usec);
  printf("%.1f us/wake %ld\n", us / count, count);
  return 0;
}

int main(int c, char **v) {
  signal(SIGPIPE, SIG_IGN); /* a reset is an error to report, not a silent death */
  if (c == 4 && !strcmp(v[1], "wake")) {
    int ms = atoi(v[2]);
    long count = atol(v[3]);
    if (ms <= 0 || count <= 0) {
      fprintf(stderr, "rr: wake MS COUNT: both positive\n");
      return 2;
    }
    return wake_cost(ms, count);
  }
  if (c >= 3 && !strcmp(v[1], "serve")) {
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = addr(c > 3 ? v[3] : "0.0.0.0", atoi(v[2]));
    if (bind(l, (void *)&a, sizeof a) || listen(l, 512)) {
      perror("rr: bind or listen");
      return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
      int fd = accept(l, 0, 0);
      if (fd < 0) {
        if (errno != EINTR && errno != ECONNABORTED) usleep(10000); /* out of fds: let some close */
        continue;
      }
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      pthread_t t;
      if (pthread_create(&t, 0, echo, (void *)(long)fd) != 0) {
        close(fd);
        continue;
      }
      pthread_detach(t);
    }
  }
  if (c < 5 || (strcmp(v[1], "rr") && strcmp(v[1], "crr"))) {
    fprintf(stderr, "usage: rr serve PORT [ADDR] | rr rr HOST PORT SECS | rr crr HOST PORT SECS [MAX] | rr wake MS COUNT\n");
    return 2;
  }
  struct sockaddr_in a = addr(v[2], atoi(v[3]));
  double secs = atof(v[4]), start = now(), end = start + secs;
  long k = 0, max = -1;
  if (c > 5 && (max = atol(v[5])) <= 0) {
    fprintf(stderr, "rr: MAX must be a positive count: %s\n", v[5]);
    return 2;
  }
  if (secs <= 0) {
    fprintf(stderr, "rr: SECS must be positive: %s\n", v[4]);
    return 2;
  }
  if (!strcmp(v[1], "rr")) {
    int fd = dial(&a);
    while (now() < end) {
      round_trip(fd, "rr: rr");
      k++;
    }
    printf("%.0f rt/s %ld\n", k / (now() - start), k);
  } else {
    while (now() < end && k != max) {
      int fd = dial(&a);
      round_trip(fd, "rr: crr");
      close(fd);
      k++;
    }
    printf("%.0f conn/s %ld\n", k / (now() - start), k);
  }
  return 0;
}
