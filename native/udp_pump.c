#define _GNU_SOURCE
#include "shim.h"

/* ---- UDP flows pumped natively ------------------------------------------------------------
 *
 * A UDP flow between porthole agents on a data stream of its own (core/datagram-frames.ts:
 * a 4-byte big-endian head, the datagram's length or, top bit set, a credit report) was
 * carried by both agents' JavaScript event loops: the host's UDP socket overflowed whenever
 * its loop was not scheduled in time on a busy machine, and the flow's credits (its budget of
 * bytes in flight) waited on both loops. Here a thread of its own moves a flow's datagrams
 * between its connected UDP socket and its data stream (recvmmsg()/sendmmsg() one side,
 * read()/write() of frames the other), drops over the flow's budget as the JavaScript path
 * does, and writes the credit of the datagrams it handed to the UDP socket at once. Datagrams
 * of one size in a row go to the kernel as one message (UDP_SEGMENT, udp.c's ph_udp_sendv),
 * and the budget grows with the rate the far end delivers (grown_budget).
 *
 * Self-contained: its own thread, epoll and table (not the relay thread's: a flood must not
 * delay TCP relays, and relay.c stays as it is). The event loop learns of ended pumps
 * through an eventfd (watched through the relay thread's ph_watch) and ph_udp_pump_reap().
 *
 * The host's flow socket shares its forward's port (ph_udp_flow_socket): a socket connected
 * to one client gets that client's datagrams (the kernel's lookup prefers the connected
 * socket), the listening socket the others'.
 */


#define PUMP_MAX 4096
#define PUMP_SLOT 65536
#define PUMP_BATCH 64
#define PUMP_READS 8              /* recvmmsg() calls per wake-up before the other pumps get a turn */
#define PUMP_IN_CAP (512 * 1024)  /* bytes read from the stream at once (holds the largest frame) */
#define PUMP_SLACK (256 * 1024)   /* the out buffer: budget + this (credit frames, a datagram over) */
#define PUMP_CLOSE_MS 5000        /* an ended flow waits this long for the far end's end */
#define PUMP_GROWTH 4             /* a flow's budget grows up to this many times the one it was given */
#define PUMP_TAIL_MS 40           /* ... to what the far end delivered in this long */
#define PUMP_RATE_MS 16           /* the delivered rate is taken over at least this long */
#define CREDIT_BIT 0x80000000u
#define MAX_DATAGRAM 65535u

/* ph_udp_pump_stats(): out[] */
enum { ST_TO_STREAM, ST_TO_STREAM_BYTES, ST_TO_UDP, ST_TO_UDP_BYTES, ST_OVER_BUDGET, ST_UNSENT, ST_KERNEL_DROPS, ST_END, ST_ERR, ST_UDP_SENDS, ST_COUNT };
/* ST_END's values (0 while running) */
#define END_EOF 1     /* the far end ended the stream */
#define END_CLOSED 2  /* ph_udp_pump_close(): ended here, the far end answered or timed out */
#define END_RESET 3   /* the stream failed (err) or ph_udp_pump_abort() */
#define END_BAD 4     /* the far end broke the framing (err: the head read) */

struct pump {
  int used, udp, stream, group;
  int closing, ended, reaped;
  uint32_t gso_over; /* datagrams this long or longer go one per message (0: none; the kernel refused UDP_SEGMENT) */
  int drop_told; /* 1: the first drop over budget is to be told (ph_udp_pump_reap), 2: told */
  uint64_t deadline;
  uint64_t budget, inflight, credit;
  uint64_t floor, rate_since, rate_bytes; /* the budget given; what the far end credited since rate_since (ms) */
  uint8_t *out;
  size_t out_cap, out_off, out_len;
  uint8_t *in;
  size_t in_len;
  uint32_t want_stream; /* the stream's epoll events now */
  uint64_t st[ST_COUNT];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct pump pumps[PUMP_MAX];
static int epfd = -1, notify_fd = -1, wake_fd = -1; /* wake_fd: the thread's own (a deadline to watch) */
#define WAKE_TAG UINT64_MAX
static int closing_count; /* pumps waiting for the far end's end (their deadlines are checked) */
static int high; /* ids below this may be in use */
static uint8_t slots[PUMP_BATCH][PUMP_SLOT];

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Tag: id in the low 32 bits, side (0 udp, 1 stream) in bit 32. */
static uint64_t tag(int id, int side) {
  return (uint64_t)(uint32_t)id | ((uint64_t)side << 32);
}

static void set_stream_events(int id, struct pump *p) {
  uint32_t want = EPOLLRDHUP | (p->out_len > p->out_off ? EPOLLOUT : 0) | EPOLLIN;
  if (want == p->want_stream) return;
  struct epoll_event ev = { .events = want, .data.u64 = tag(id, 1) };
  epoll_ctl(epfd, EPOLL_CTL_MOD, p->stream, &ev);
  p->want_stream = want;
}

static void wake_js(void) {
  uint64_t one = 1;
  ssize_t n = write(notify_fd, &one, sizeof one);
  (void)n;
}

/* The pump is over: its fds close (reset: the stream with RST), the event loop hears of it. */
static void finish_pump(struct pump *p, int how, int err) {
  if (p->ended) return;
  if (p->closing) closing_count--;
  if (p->udp >= 0) {
    int d = ph_udp_drops(p->udp);
    if (d > 0) p->st[ST_KERNEL_DROPS] = (uint64_t)d;
  }
  p->ended = how;
  p->st[ST_END] = (uint64_t)how;
  p->st[ST_ERR] = (uint64_t)(uint32_t)err;
  if (how == END_RESET || how == END_BAD) {
    struct linger lg = { 1, 0 };
    setsockopt(p->stream, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  /* Out of the epoll set first: a registration lives as long as any fd of the socket, and the
   * runtime may still hold one. */
  if (p->udp >= 0) { epoll_ctl(epfd, EPOLL_CTL_DEL, p->udp, NULL); close(p->udp); }
  epoll_ctl(epfd, EPOLL_CTL_DEL, p->stream, NULL);
  close(p->stream);
  p->udp = p->stream = -1;
  free(p->out);
  free(p->in);
  p->out = p->in = NULL;
  wake_js();
}

/* Room for `need` more bytes at the end of the out buffer (moves what is left to the front). */
static int out_room(struct pump *p, size_t need) {
  if (p->out_cap - p->out_len >= need) return 1;
  if (p->out_off) {
    memmove(p->out, p->out + p->out_off, p->out_len - p->out_off);
    p->out_len -= p->out_off;
    p->out_off = 0;
  }
  return p->out_cap - p->out_len >= need;
}

static void add_credit_frames(struct pump *p) {
  while (p->credit) {
    uint32_t n = p->credit > 0x7fffffffu ? 0x7fffffffu : (uint32_t)p->credit;
    if (!out_room(p, 4)) return; /* cannot happen with the slack; the credit goes with the next */
    put32(p->out + p->out_len, CREDIT_BIT | n);
    p->out_len += 4;
    p->credit -= n;
  }
}

/* Writes what is queued for the stream; 0, or -errno for a failed stream. */
static int flush_out(struct pump *p) {
  while (p->out_len > p->out_off) {
    ssize_t n = send(p->stream, p->out + p->out_off, p->out_len - p->out_off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return NEG_ERRNO;
    }
    p->out_off += (size_t)n;
  }
  p->out_off = p->out_len = 0;
  return 0;
}

/* Hands the datagrams to the UDP socket; the ones the kernel will not take now are lost (as UDP may), all are credited. */
static void send_udp(struct pump *p, struct ph_dgram *d, int count) {
  struct ph_sent r = { 0 };
  for (int i = 0; i < count; i++) p->credit += d[i].len;
  int dealt = ph_udp_sendv(p->udp, d, count, NULL, 0, &p->gso_over, &r);
  if (dealt < 0) dealt = 0;
  p->st[ST_UNSENT] += (uint64_t)(count - dealt) + r.lost; /* the socket's buffer full, or refused */
  p->st[ST_TO_UDP] += (uint64_t)(dealt - (int)r.lost);
  p->st[ST_TO_UDP_BYTES] += r.bytes;
  p->st[ST_UDP_SENDS] += r.messages;
}

/*
 * The budget for a far end that delivered `bytes` in `ms`: what it delivers in PUMP_TAIL_MS, at
 * least the budget given (`floor`), at most PUMP_GROWTH times that. A fixed budget small enough
 * to keep a slow flow's queue short dropped a sixth of a 1 Gbit/s flood whenever a pump thread
 * waited a few ms for a CPU (bench/profile.ts --udp 1G); grown by the rate, a queue still holds
 * no more than ~PUMP_TAIL_MS of what the far end takes.
 */
static uint64_t grown_budget(uint64_t floor, uint64_t bytes, uint64_t ms) {
  uint64_t want = ms ? bytes * PUMP_TAIL_MS / ms : floor;
  if (want < floor) return floor;
  return want > floor * PUMP_GROWTH ? floor * PUMP_GROWTH : want;
}
/* For tests: the same, in 32 bits. */
int ph_udp_pump_grown_budget(int floor, int bytes, int ms) {
  if (floor <= 0 || bytes < 0 || ms < 0) return -EINVAL;
  return (int)grown_budget((uint64_t)floor, (uint64_t)bytes, (uint64_t)ms);
}

/* The far end reports `c` bytes delivered: they leave the flight, and count for its rate. */
static void credited(struct pump *p, uint64_t c) {
  if (c > p->inflight) c = p->inflight; /* a peer's larger credit frees no more than it had */
  p->inflight -= c;
  p->rate_bytes += c;
  uint64_t now = mono_ms();
  if (now - p->rate_since < PUMP_RATE_MS) return;
  uint64_t budget = grown_budget(p->floor, p->rate_bytes, now - p->rate_since);
  /* A window with a stall in it (a pump thread waiting for a CPU) measures a low rate just when
   * the queue is longest: the budget comes down by a sixteenth a window, not at once. */
  if (budget < p->budget - p->budget / 16) budget = p->budget - p->budget / 16;
  if (budget < p->floor) budget = p->floor;
  p->rate_since = now;
  p->rate_bytes = 0;
  if (budget + PUMP_SLACK > p->out_cap) { /* the out buffer holds what the stream will not take yet: up to the budget */
    uint8_t *out = realloc(p->out, (size_t)budget + PUMP_SLACK);
    if (!out) return; /* the budget stays */
    p->out = out;
    p->out_cap = (size_t)budget + PUMP_SLACK;
  }
  p->budget = budget;
}

/* Hands over the whole datagrams read from the stream and takes its credits; returns 0, or END_BAD. */
static int parse_in(struct pump *p, int *err) {
  struct ph_dgram d[PUMP_BATCH];
  int count = 0, end = 0;
  size_t at = 0;
  while (p->in_len - at >= 4) {
    uint32_t head = get32(p->in + at);
    if (head & CREDIT_BIT) {
      credited(p, head & ~CREDIT_BIT);
      at += 4;
      continue;
    }
    if (head > MAX_DATAGRAM) {
      *err = (int)head;
      end = END_BAD;
      break;
    }
    if (p->in_len - at < 4 + (size_t)head) break;
    d[count++] = (struct ph_dgram){ .data = p->in + at + 4, .len = head };
    at += 4 + head;
    if (count == PUMP_BATCH) {
      send_udp(p, d, count);
      count = 0;
    }
  }
  if (count) send_udp(p, d, count);
  memmove(p->in, p->in + at, p->in_len - at);
  p->in_len -= at;
  return end;
}

/* Reads the stream and hands its datagrams over; returns 0, or an END_ value. */
static int stream_in(struct pump *p, int *err) {
  for (int reads = 0; reads < 4; reads++) {
    ssize_t n = recv(p->stream, p->in + p->in_len, PUMP_IN_CAP - p->in_len, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      *err = errno;
      return END_RESET;
    }
    if (n == 0) return END_EOF;
    p->in_len += (size_t)n;
    if (p->closing) { /* ended here: what still comes is not delivered */
      p->in_len = 0;
      continue;
    }
    int end = parse_in(p, err);
    if (end) return end;
    if ((size_t)n < PUMP_IN_CAP / 2) break; /* read dry, most likely */
  }
  return 0;
}

/* Reads the UDP socket and frames its datagrams for the stream, dropping over the budget. */
static void udp_in(struct pump *p) {
  struct mmsghdr msgs[PUMP_BATCH];
  struct iovec iov[PUMP_BATCH];
  for (int reads = 0; reads < PUMP_READS; reads++) {
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < PUMP_BATCH; i++) {
      iov[i].iov_base = slots[i];
      iov[i].iov_len = PUMP_SLOT;
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(p->udp, msgs, PUMP_BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return; /* EAGAIN, or a connected socket's ICMP error (the server is not there right now): reported once, read on later */
    }
    for (int i = 0; i < n; i++) {
      uint32_t len = msgs[i].msg_len;
      if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) continue;
      if ((p->inflight > 0 && p->inflight + len > p->budget) || !out_room(p, 4 + (size_t)len)) {
        p->st[ST_OVER_BUDGET]++;
        if (!p->drop_told) {
          p->drop_told = 1;
          wake_js();
        }
        continue;
      }
      put32(p->out + p->out_len, len);
      memcpy(p->out + p->out_len + 4, slots[i], len);
      p->out_len += 4 + (size_t)len;
      p->inflight += len;
      p->st[ST_TO_STREAM]++;
      p->st[ST_TO_STREAM_BYTES] += len;
    }
    if (n < PUMP_BATCH) return;
  }
}

static void run_pump(int id, int side, uint32_t events) {
  struct pump *p = &pumps[id];
  if (!p->used || p->ended) return;
  int err = 0, end = 0;
  if (side == 1 && events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) end = stream_in(p, &err);
  if (!end && side == 0 && !p->closing) udp_in(p);
  if (end == END_EOF && p->closing) end = END_CLOSED;
  if (end == END_EOF) {
    /* The far end ended the flow: what is queued leaves, then our end (as DatagramStream does). */
    add_credit_frames(p);
    flush_out(p);
    shutdown(p->stream, SHUT_WR);
  }
  if (end) return finish_pump(p, end, err);
  add_credit_frames(p);
  int r = flush_out(p);
  if (r < 0) return finish_pump(p, END_RESET, -r);
  set_stream_events(id, p);
}

static void *pump_thread(void *unused) {
  (void)unused;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  prctl(PR_SET_NAME, "ph-udp-pump");
  struct epoll_event evs[64];
  for (;;) {
    /* Racy read of closing_count: at worst one wait of 500 ms too long or too short. */
    int n = epoll_wait(epfd, evs, 64, __atomic_load_n(&closing_count, __ATOMIC_RELAXED) ? 500 : -1);
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u64 == WAKE_TAG) {
        uint64_t v;
        ssize_t r = read(wake_fd, &v, sizeof v);
        (void)r;
        continue;
      }
      int id = (int)(uint32_t)evs[i].data.u64;
      int side = (int)(evs[i].data.u64 >> 32);
      if (id >= 0 && id < PUMP_MAX) run_pump(id, side, evs[i].events);
    }
    /* Deadlines only while some pump waits for one (a scan of the table on every wake-up cost ~7% of the thread). */
    if (closing_count) {
      uint64_t now = mono_ms();
      for (int id = 0; id < high; id++) {
        struct pump *p = &pumps[id];
        if (p->used && p->closing && !p->ended && now >= p->deadline) finish_pump(p, END_CLOSED, ETIMEDOUT);
      }
    }
    pthread_mutex_unlock(&lock);
  }
  return NULL;
}

/* Starts the pump thread (once); returns the eventfd that is readable when pumps ended (see ph_udp_pump_reap). */
int ph_udp_pump_start(void) {
  pthread_mutex_lock(&lock);
  int ret = notify_fd;
  if (ret < 0) {
    epfd = epoll_create1(EPOLL_CLOEXEC);
    notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = WAKE_TAG };
    pthread_t t;
    if (epfd < 0 || notify_fd < 0 || wake_fd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, wake_fd, &ev) != 0 || pthread_create(&t, NULL, pump_thread, NULL) != 0) {
      ret = -EAGAIN;
      if (epfd >= 0) close(epfd);
      if (notify_fd >= 0) close(notify_fd);
      if (wake_fd >= 0) close(wake_fd);
      epfd = notify_fd = wake_fd = -1;
    } else {
      pthread_detach(t);
      ret = notify_fd;
    }
  }
  pthread_mutex_unlock(&lock);
  return ret;
}

/*
 * Pumps a connected UDP socket <-> a data stream (both fds dup()ed; the caller closes its own).
 * `to_stream`: frames to write first (datagrams and credits the flow had queued; `queued`
 * payload bytes of them count against the budget), `from_stream`: bytes already read from the
 * stream. `group`: the host forward's listening fd whose port the UDP socket shares (-1 none).
 * Returns the pump's id or -errno.
 */
int ph_udp_pump_add(int udp, int stream, const uint8_t *to_stream, int to_stream_len, int queued, const uint8_t *from_stream, int from_stream_len, int budget, int group) {
  if (epfd < 0) return -EINVAL;
  if (to_stream_len < 0 || from_stream_len < 0 || from_stream_len > PUMP_IN_CAP || budget <= 0) return -EINVAL;
  int ut = 0, stt = 0;
  socklen_t tl = sizeof ut;
  if (getsockopt(udp, SOL_SOCKET, SO_TYPE, &ut, &tl) != 0 || ut != SOCK_DGRAM) return -EINVAL;
  tl = sizeof stt;
  if (getsockopt(stream, SOL_SOCKET, SO_TYPE, &stt, &tl) != 0 || stt != SOCK_STREAM) return -EINVAL;
  pthread_mutex_lock(&lock);
  int id = -1;
  for (int i = 0; i < PUMP_MAX; i++)
    if (!pumps[i].used) {
      id = i;
      break;
    }
  int ret = -ENOSPC; /* every pump slot taken (not an fd limit) */
  if (id < 0) goto out;
  struct pump *p = &pumps[id];
  memset(p, 0, sizeof *p);
  p->budget = p->floor = (uint64_t)budget;
  p->rate_since = mono_ms();
  p->inflight = queued > 0 ? (uint64_t)queued : 0;
  p->out_cap = (size_t)budget + PUMP_SLACK + (size_t)to_stream_len;
  p->out = malloc(p->out_cap);
  p->in = malloc(PUMP_IN_CAP);
  p->udp = fcntl(udp, F_DUPFD_CLOEXEC, 0);
  p->stream = fcntl(stream, F_DUPFD_CLOEXEC, 0);
  ret = -ENOMEM;
  if (!p->out || !p->in || p->udp < 0 || p->stream < 0) goto fail;
  fcntl(p->udp, F_SETFL, fcntl(p->udp, F_GETFL) | O_NONBLOCK);
  fcntl(p->stream, F_SETFL, fcntl(p->stream, F_GETFL) | O_NONBLOCK);
  /* A credit is 4 bytes: Nagle would hold it until the last segment's ACK (a delayed one: ms). */
  int one = 1;
  setsockopt(p->stream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* not TCP (unix, vsock): nothing to do */
  if (to_stream_len) memcpy(p->out, to_stream, (size_t)to_stream_len);
  p->out_len = (size_t)to_stream_len;
  p->group = group;
  p->used = 1;
  if (id >= high) high = id + 1;
  struct epoll_event ev = { .events = EPOLLIN, .data.u64 = tag(id, 0) };
  struct epoll_event es = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u64 = tag(id, 1) };
  p->want_stream = es.events;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, p->udp, &ev) != 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, p->stream, &es) != 0) {
    ret = NEG_ERRNO;
    p->used = 0;
    goto fail;
  }
  /* Bytes already read from the stream: handed over now, as if just read. */
  if (from_stream_len) {
    memcpy(p->in, from_stream, (size_t)from_stream_len);
    p->in_len = (size_t)from_stream_len;
    int err = 0;
    if (parse_in(p, &err)) finish_pump(p, END_BAD, err);
  }
  if (!p->ended) {
    add_credit_frames(p);
    int r = flush_out(p);
    if (r < 0) finish_pump(p, END_RESET, -r);
  }
  ret = id;
  goto out;
fail:
  if (p->udp >= 0) { epoll_ctl(epfd, EPOLL_CTL_DEL, p->udp, NULL); close(p->udp); }
  if (p->stream >= 0) { epoll_ctl(epfd, EPOLL_CTL_DEL, p->stream, NULL); close(p->stream); }
  free(p->out);
  free(p->in);
  memset(p, 0, sizeof *p);
out:
  pthread_mutex_unlock(&lock);
  return ret;
}

/* Frames to write to the flow's stream (a datagram that reached the JavaScript side late); `payload` bytes count against the budget. */
int ph_udp_pump_write(int id, const uint8_t *frames, int len, int payload) {
  if (id < 0 || id >= PUMP_MAX || len < 0) return -EINVAL;
  pthread_mutex_lock(&lock);
  struct pump *p = &pumps[id];
  int ret = -ENOENT;
  if (p->used && !p->ended && !p->closing) {
    ret = 0;
    if ((p->inflight > 0 && p->inflight + (uint64_t)payload > p->budget) || !out_room(p, (size_t)len)) {
      p->st[ST_OVER_BUDGET]++;
    } else {
      memcpy(p->out + p->out_len, frames, (size_t)len);
      p->out_len += (size_t)len;
      p->inflight += (uint64_t)payload;
      p->st[ST_TO_STREAM]++;
      p->st[ST_TO_STREAM_BYTES] += (uint64_t)payload;
      int r = flush_out(p);
      if (r < 0) finish_pump(p, END_RESET, -r);
      else set_stream_events(id, p);
      ret = 1;
    }
  }
  pthread_mutex_unlock(&lock);
  return ret;
}

/* Counters (ST_COUNT u64: see the enum); the UDP socket's kernel drops are read now. */
int ph_udp_pump_stats(int id, uint64_t *out) {
  if (id < 0 || id >= PUMP_MAX) return -EINVAL;
  pthread_mutex_lock(&lock);
  struct pump *p = &pumps[id];
  int ret = -ENOENT;
  if (p->used) {
    if (!p->ended && p->udp >= 0) {
      int d = ph_udp_drops(p->udp);
      if (d > 0) p->st[ST_KERNEL_DROPS] = (uint64_t)d;
    }
    memcpy(out, p->st, sizeof p->st);
    ret = 0;
  }
  pthread_mutex_unlock(&lock);
  return ret;
}

/* Ends the flow from this side: what is queued leaves, then the stream's end; the far end's end (or 5 s) finishes it. */
int ph_udp_pump_close(int id) {
  if (id < 0 || id >= PUMP_MAX) return -EINVAL;
  pthread_mutex_lock(&lock);
  struct pump *p = &pumps[id];
  int ret = -ENOENT;
  if (p->used && !p->ended) {
    ret = 0;
    if (!p->closing) {
      p->closing = 1;
      closing_count++;
      uint64_t one = 1;
      ssize_t w = write(wake_fd, &one, sizeof one); /* its deadline is watched from now */
      (void)w;
      p->deadline = mono_ms() + PUMP_CLOSE_MS;
      /* The UDP socket goes now: a host flow's holds the forward's port, which a new listener may want at once. */
      int d = ph_udp_drops(p->udp);
      if (d > 0) p->st[ST_KERNEL_DROPS] = (uint64_t)d;
      epoll_ctl(epfd, EPOLL_CTL_DEL, p->udp, NULL);
      close(p->udp);
      p->udp = -1;
      add_credit_frames(p);
      /* A stream that cannot take the rest now loses it: the end must not wait on it. */
      flush_out(p);
      shutdown(p->stream, SHUT_WR);
      p->out_off = p->out_len = 0;
      set_stream_events(id, p);
    }
  }
  pthread_mutex_unlock(&lock);
  return ret;
}

/* Ends the flow now, the stream reset. */
int ph_udp_pump_abort(int id) {
  if (id < 0 || id >= PUMP_MAX) return -EINVAL;
  pthread_mutex_lock(&lock);
  struct pump *p = &pumps[id];
  int ret = -ENOENT;
  if (p->used && !p->ended) {
    finish_pump(p, END_RESET, ECONNABORTED);
    ret = 0;
  }
  pthread_mutex_unlock(&lock);
  return ret;
}

/* Ids of pumps that ended since the last call (up to cap), and of running ones that dropped over budget for the first time (| PUMP_FIRST_DROP); empties the eventfd. */
#define PUMP_FIRST_DROP (1 << 30)
int ph_udp_pump_reap(int32_t *ids, int cap) {
  uint64_t v;
  ssize_t r = read(notify_fd, &v, sizeof v);
  (void)r;
  pthread_mutex_lock(&lock);
  int n = 0;
  for (int id = 0; id < high && n < cap; id++)
    if (pumps[id].used && pumps[id].ended && !pumps[id].reaped) {
      pumps[id].reaped = 1;
      ids[n++] = id;
    } else if (pumps[id].used && !pumps[id].ended && pumps[id].drop_told == 1) {
      pumps[id].drop_told = 2;
      ids[n++] = id | PUMP_FIRST_DROP;
    }
  if (n == cap) wake_js(); /* more may be left */
  pthread_mutex_unlock(&lock);
  return n;
}

/* Frees an ended pump's slot (after its last stats). */
int ph_udp_pump_free(int id) {
  if (id < 0 || id >= PUMP_MAX) return -EINVAL;
  pthread_mutex_lock(&lock);
  int ret = -ENOENT;
  if (pumps[id].used && pumps[id].ended) {
    memset(&pumps[id], 0, sizeof pumps[id]);
    ret = 0;
  }
  pthread_mutex_unlock(&lock);
  return ret;
}

/*
 * The host's socket for one client of a forward: bound to the listening socket's address
 * (sharing its port, with SO_REUSEPORT set on the listener and the forward's other flow
 * sockets for the bind only, then cleared: no other socket can join the port afterwards) and
 * connected to the client (`peer`, the 20-byte form of udp.c), so the kernel gives it that
 * client's datagrams, and replies leave from the forward's address. Returns the fd or -errno.
 */
int ph_udp_flow_socket(int listen_fd, const uint8_t *peer, int buffer_bytes) {
  struct sockaddr_storage local, to;
  socklen_t local_len = sizeof local;
  if (getsockname(listen_fd, (struct sockaddr *)&local, &local_len) != 0) return NEG_ERRNO;
  uint16_t family, port;
  memcpy(&family, peer, 2);
  memcpy(&port, peer + 2, 2);
  memset(&to, 0, sizeof to);
  socklen_t to_len;
  if (family == 4 && local.ss_family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)&to;
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    memcpy(&in->sin_addr, peer + 4, 4);
    to_len = sizeof *in;
  } else if (family == 6 && local.ss_family == AF_INET6) {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&to;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    memcpy(&in6->sin6_addr, peer + 4, 16);
    to_len = sizeof *in6;
  } else {
    return -EAFNOSUPPORT;
  }
  int fd = socket(local.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return NEG_ERRNO;
  int one = 1, zero = 0, v6only = 0;
  socklen_t vlen = sizeof v6only;
  if (local.ss_family == AF_INET6 && getsockopt(listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &vlen) == 0 && v6only)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (buffer_bytes > 0) {
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer_bytes, sizeof buffer_bytes) != 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buffer_bytes, sizeof buffer_bytes) != 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof buffer_bytes);
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  pthread_mutex_lock(&lock);
  setsockopt(listen_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  for (int i = 0; i < high; i++)
    if (pumps[i].used && !pumps[i].ended && pumps[i].udp >= 0 && pumps[i].group == listen_fd) setsockopt(pumps[i].udp, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  int ok = bind(fd, (struct sockaddr *)&local, local_len) == 0;
  int err = ok ? 0 : errno;
  setsockopt(listen_fd, SOL_SOCKET, SO_REUSEPORT, &zero, sizeof zero);
  for (int i = 0; i < high; i++)
    if (pumps[i].used && !pumps[i].ended && pumps[i].udp >= 0 && pumps[i].group == listen_fd) setsockopt(pumps[i].udp, SOL_SOCKET, SO_REUSEPORT, &zero, sizeof zero);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &zero, sizeof zero);
  pthread_mutex_unlock(&lock);
  if (ok && connect(fd, (struct sockaddr *)&to, to_len) != 0) {
    ok = 0;
    err = errno;
  }
  if (!ok) {
    close(fd);
    return -err;
  }
  /* Datagrams that reached it between bind() and connect() may be any client's: not this flow's to carry. */
  char scrap[1];
  while (recv(fd, scrap, sizeof scrap, MSG_DONTWAIT | MSG_TRUNC) >= 0) {
  }
  return fd;
}
