#define _GNU_SOURCE
#include "shim.h"
#include <sys/un.h>

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

enum { REC_RELAY_DONE = 1, REC_READY = 2, REC_DIALED = 3, REC_HANDOFF = 4, REC_REJECTED = 5, REC_ACCEPT_FAILED = 6, REC_ALL_ABORTED = 7, REC_UNLISTENED = 8 };
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
#define PH_STATUS_REFUSED 1024u /* with PH_DIAL_FAILED: the dialed side answered with a failure status byte */
#define PH_NO_STATUS 2048u /* with PH_DIAL_FAILED: the dialed side closed before its status byte */
#define PH_CONSUMED 4096u  /* with PH_DIAL_FAILED: bytes of the handed side already went out (it cannot go elsewhere) */
#define PH_ACCEPTED 8192u /* with PH_DIAL_FAILED: a data listener's connection (b_to_a: the listener's id) */
#define PH_EARLY_MAX 4096  /* the most of the handed side's first bytes sent with the header */
/* ph_relay_add flags. */
#define PH_FORCE_COPY 1
#define PH_FRAMED_B 2      /* side b carries PHDATA2 frames (see "framed relays" below) */
/* ph_relay_dial flags (see "dialing relays"). */
#define PH_DIAL_A 4        /* the dialed socket is side a (plain), the handed fd side b */
#define PH_HELLO_HANDED 8  /* hello goes to the handed fd once the dial connected (else to the dialed one) */
#define PH_AWAIT_STATUS 16 /* after hello, the dialed side answers one status byte (0: connected) */

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
  int dst_device; /* dst is no socket (a serial port): write(), and no shutdown at EOF */
  int src_device; /* src is no socket: its EOF (a serial port's host went away) ends the relay */
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
  int dialing;               /* ph_relay_dial: the dialed side is still connecting (only it is in the epoll set) */
  int pending_dial;          /* a forward's client still dialling: its listener's slot waits for its record */
  int dside;                 /* the dialed side's index (1 unless PH_DIAL_A) */
  int dial_flags;            /* PH_HELLO_HANDED, PH_AWAIT_STATUS */
  int awaiting;              /* connected, hello sent, its status byte not yet read */
  int through;               /* connected (and hello sent) in ph_relay_dial already: relay at once */
  int consumed;              /* the handed side's first bytes went out before the status byte */
  int hello_sent;
  uint8_t *hello;            /* sent once connected (a data header, or a status byte) */
  int hello_len;
  struct sockaddr_storage dial_addr; /* where the thread connects the dialed side */
  socklen_t dial_addr_len;
  int keepalive_s;
  uint64_t dial_deadline_ms;
  int handback_fd;         /* a dial failed: the relay's fd for a, now the caller's (in the record) */
  struct relay *dial_prev, *dial_next;
  int greeting;            /* a data listener's connection whose header is awaited (see "data listeners") */
  int listener;            /* that listener's index + 1 (0: JavaScript made this relay) */
  int forward;             /* ... a forward listener's (its records go to JavaScript as any relay's) */
  uint32_t target_gen;       /* ... and the target it was dialled to (ph_forward_target's number) */
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
static int abort_all_told; /* ph_relay_abort_all(): post REC_ALL_ABORTED once the aborts are done */
static struct record *outq;     /* records the notify socket had no room for */
static size_t outq_len, outq_cap, outq_sent_bytes;
static int notify_wants_out; /* EPOLLOUT asked for on notify_fd: only while records wait */
static uint64_t tell_deadline_ms; /* records waiting to be told later (post_later): when; 0: none */
static uint64_t total_spliced, total_copied, total_relays;

#define WATCH_TAG (1ULL << 63)

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/*
 * EPOLLOUT on the records socket only while records wait for room: asked for always, every
 * read by the event loop would wake this thread for nothing (one wake per record).
 */
static void notify_want_out(int want) {
  if (notify_wants_out == want) return;
  struct epoll_event ev = { .events = EPOLLET | (want ? EPOLLOUT : 0), .data.ptr = &notify_fd };
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, notify_fd, &ev) == 0) notify_wants_out = want;
}

static void flush_records(void);
/* Sends every waiting record now. */
static void post_now(void) {
  tell_deadline_ms = 0;
  flush_records();
}

static void flush_records(void) {
  while (outq_len > 0) {
    const char *p = (const char *)outq + outq_sent_bytes;
    size_t left = outq_len * sizeof(struct record) - outq_sent_bytes;
    ssize_t n = send(notify_fd, p, left, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        notify_want_out(1); /* EPOLLOUT on notify_fd brings us back */
        return;
      }
      outq_len = outq_sent_bytes = 0; /* nobody listens any more */
      break;
    }
    outq_sent_bytes += (size_t)n;
    size_t whole = outq_sent_bytes / sizeof(struct record);
    if (whole) {
      memmove(outq, outq + whole, (outq_len - whole) * sizeof(struct record));
      outq_len -= whole;
      outq_sent_bytes -= whole * sizeof(struct record);
    }
  }
  if (outq_len == 0) notify_want_out(0);
}

static int queue_record(struct record r) {
  if (outq_len == outq_cap) {
    size_t cap = outq_cap ? outq_cap * 2 : 256;
    struct record *q = realloc(outq, cap * sizeof *q);
    if (!q) return 0; /* out of memory: the record is lost, the relay is still closed */
    outq = q;
    outq_cap = cap;
  }
  outq[outq_len++] = r;
  return 1;
}

/*
 * Records that only tell JavaScript what already happened (a forward's client dialled and
 * relayed here, that relay's end) wait up to PH_TELL_LATER_MS, so that a burst of short
 * connections wakes the event loop once per batch instead of twice per connection: each wake
 * of a runtime's loop costs about as much CPU as the relay's own work for the connection.
 * Any other record goes at once and takes the waiting ones with it, in order.
 */
#define PH_TELL_LATER_MS 5
#define PH_TELL_LATER_MAX 128

static void post(struct record r) {
  if (queue_record(r)) post_now();
}

static uint64_t now_ms(void);
static void post_later(struct record r) {
  if (!queue_record(r)) return;
  if (outq_len >= PH_TELL_LATER_MAX) return post_now();
  if (!tell_deadline_ms) tell_deadline_ms = now_ms() + PH_TELL_LATER_MS;
}

/* Flushes what waits, once its time came; returns ms until then (-1: nothing waits). */
static int tell_waiting(void) {
  if (!tell_deadline_ms) return -1;
  uint64_t now = now_ms();
  if (now < tell_deadline_ms) return (int)(tell_deadline_ms - now);
  post_now();
  return -1;
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
static void refuse_stream(int fd);
static void dial_settled(struct relay *r);
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
  /* A data listener's connection is nobody's in JavaScript: it ends here, unsaid, unless its
   * dial failed (then the host hears a failure status, and JavaScript the errno). */
  int quiet = r->listener && !r->forward && !(flags & PH_DIAL_FAILED);
  if (r->listener && (flags & PH_DIAL_FAILED)) {
    if (!r->forward) {
      refuse_stream(r->handback_fd);
      rec.a_to_b = (uint64_t)-1;
    }
    rec.flags |= PH_ACCEPTED;
    rec.b_to_a = (uint64_t)r->listener | ((uint64_t)r->target_gen << 32);
  }
  pthread_mutex_lock(&lock);
  slots[r->id - 1] = NULL; /* counters now come from the record; the id stays taken */
  if (quiet) slot_taken[r->id - 1] = 0;
  pthread_mutex_unlock(&lock);
  dir_free(&r->d[0]);
  dir_free(&r->d[1]);
  r->next_pending = graveyard;
  graveyard = r;
  /* A forward's relay that ended as relays end: JavaScript only counts it (later, batched). */
  if (r->forward && !(flags & PH_DIAL_FAILED)) post_later(rec);
  else if (!quiet) post(rec);
  dial_settled(r); /* after its record */
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
    : d->dst_device ? write(d->dst, d->buf + d->off, d->queued)
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
      } else if (n == 0 && d->src_device) {
        /* Not a half-close: the port's far end is gone, and the connection it carried with
         * it. Ended as a failure (what was read still goes out first), so both sides close. */
        *side = 0;
        return -ECONNRESET;
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
      /* A device has no half-close: its side ends when the relay does. */
      if (!d->dst_device && shutdown(d->dst, SHUT_WR) != 0 && errno != ENOTCONN) { *side = 1; return NEG_ERRNO; }
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
    if (!r->d[i].src_eof || r->d[1 - i].dst_device) continue; /* a device has no SO_ERROR */
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
      if (out) { memmove(out + *out_len, p + at, n); *out_len += n; } /* out may be p: never ahead of it */
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

/* A frame read into the buffer goes out as header and payload in one sendmsg() (one system
 * call, not two: what a small exchange costs). What it could not send stays for enc_pump's
 * usual path. -1 with errno on a real error. */
static int send_frame(struct dir *d, struct framing *f) {
  struct iovec iov[2] = { { f->ehdr, 4 }, { d->buf + d->off, d->queued } };
  struct msghdr msg = { .msg_iov = iov, .msg_iovlen = 2 };
  ssize_t m = sendmsg(d->dst, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (m < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
  size_t header = (size_t)m < 4 ? (size_t)m : 4, payload = (size_t)m - header;
  f->ehdr_off = (int)header;
  d->off += payload;
  d->queued -= payload;
  __atomic_fetch_add(&d->bytes, (uint64_t)payload, __ATOMIC_RELAXED);
  __atomic_fetch_add(&total_copied, (uint64_t)payload, __ATOMIC_RELAXED);
  return 0;
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
          if (!pipe_mode && send_frame(d, f) < 0) { *side = 1; return NEG_ERRNO; }
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
      } else if (d->lazy == 1 && d->queued == 0) {
        /* Small exchanges (no pipe yet): one recv() takes headers and payload together and
         * they are decoded in the buffer, instead of a recv() for each header and a read()
         * for each payload. */
        n = recv(d->src, d->buf, d->cap, MSG_DONTWAIT);
        if (n > 0) {
          size_t len = 0;
          frame_feed(f, (const uint8_t *)d->buf, (size_t)n, (uint8_t *)d->buf, &len);
          d->off = 0;
          d->queued = len;
          note_read(d, n);
        }
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
  /* a gone after its END_EOF (its peer reset it while the far side still sends): one end frame
   * each way, so RESET cannot follow; the stream is closed instead, which the far agent takes
   * for a lost stream and answers with a reset of its side, as a plain relay would. */
  if (f->plain_dead && f->end_code == PH_END_EOF && !f->got_end && !f->stream_gone) f->stream_gone = 1;
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

static void dial_failed_flags(struct relay *r, int err, uint32_t flags) {
  int d = r->dside, h = 1 - r->dside;
  dial_unlink(r);
  epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd[d], NULL);
  close(r->fd[d]); /* the dialed side never connected (or never said yes) */
  epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd[h], NULL);
  r->handback_fd = r->fd[h];
  r->fd[0] = r->fd[1] = -1;
  finish(r, PH_DIAL_FAILED | flags | (r->consumed ? PH_CONSUMED : 0), err);
}

static void dial_failed(struct relay *r, int err) {
  dial_failed_flags(r, err, 0);
}

/* Sends all of hello to fd at once: it is small and the socket new, so its buffer has room
 * (a short write is taken as a failure, never waited for). */
static int send_hello(struct relay *r, int fd) {
  if (r->hello_len <= 0 || r->hello_sent) return 0;
  r->hello_sent = 1;
  ssize_t n = send(fd, r->hello, (size_t)r->hello_len, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n == r->hello_len) return 0;
  return n < 0 ? errno : EAGAIN;
}

/* The dial is through (connected, and answered where a status was awaited): both sides join
 * the epoll set and the relay runs as any other. */
static void dial_done(struct relay *r, struct relay **ready, int in_set) {
  int d = r->dside, h = 1 - r->dside;
  int e = (r->dial_flags & PH_HELLO_HANDED) ? send_hello(r, r->fd[h]) : 0;
  if (e) {
    /* The handed side cannot take its status byte: it is gone; so is the dialed one. */
    finish(r, PH_RESET | (h == 0 ? PH_ERR_A : PH_ERR_B), e);
    return;
  }
  dial_unlink(r);
  struct epoll_event evd = side_event(r, d, EPOLLIN | EPOLLRDHUP | EPOLLET);
  struct epoll_event evh = side_event(r, h, EPOLLIN | EPOLLRDHUP | EPOLLET);
  if (epoll_ctl(epfd, in_set ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, r->fd[d], &evd) != 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, r->fd[h], &evh) != 0) {
    dial_failed(r, errno);
    return;
  }
  if (!r->listener || r->forward) {
    /* a_to_b: a forward listener's id (JavaScript learns of its connection here), b_to_a: its target's number */
    struct record rec = { REC_DIALED, r->id, 0, 0, r->forward ? (uint64_t)r->listener : 0, r->forward ? (uint64_t)r->target_gen : 0 };
    if (r->forward) post_later(rec); /* JavaScript learns of it after the fact */
    else post(rec); /* JavaScript dialled it and waits */
  }
  dial_settled(r); /* after its record */
  ready_push(ready, r);
}

/* The dialed side is readable: its status byte (only that one is read; what follows it is
 * the relay's). */
static void status_check(struct relay *r, struct relay **ready) {
  uint8_t status;
  ssize_t n = read(r->fd[r->dside], &status, 1);
  if (n == 1) {
    if (status != 0) { dial_failed_flags(r, ECONNREFUSED, PH_STATUS_REFUSED); return; }
    r->awaiting = 0;
    dial_done(r, ready, 1);
  } else if (n == 0) {
    dial_failed_flags(r, ECONNRESET, PH_NO_STATUS);
  } else if (errno != EAGAIN && errno != EINTR) {
    dial_failed_flags(r, errno, PH_NO_STATUS);
  }
}

/* Where a non-blocking connect stands: 1 connected, 0 still connecting, or -errno. A far end
 * that accepted, sent data and reset (or closed) before this thread looked is connected: its
 * data is still queued and goes to the client first, then the reset. SO_ERROR alone would
 * say ECONNRESET and lose that data, so a peek comes first; it reads (and clears) a pending
 * error itself only when no data is queued. */
static int connect_state(int fd) {
  char byte;
  ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n >= 0) return 1;
  if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN) return -errno;
  int err = ph_socket_error(fd); /* reading SO_ERROR clears it */
  if (err) return err;
  struct sockaddr_storage peer;
  socklen_t len = sizeof peer;
  return getpeername(fd, (struct sockaddr *)&peer, &len) == 0 ? 1 : 0;
}

/* The dialed side became writable (or failed): connected, or not. */
static void greet_check(struct relay *r, struct relay **ready, uint32_t events);
static void greet_handoff(struct relay *r);
static void dial_check(struct relay *r, struct relay **ready, uint32_t events) {
  if (r->greeting) { greet_check(r, ready, events); return; }
  if (r->awaiting) { status_check(r, ready); return; }
  int fd = r->fd[r->dside];
  int state = connect_state(fd);
  if (state < 0) { dial_failed(r, -state); return; }
  if (state == 0) return; /* still connecting */
  if (!(r->dial_flags & PH_HELLO_HANDED)) {
    int e = send_hello(r, fd);
    if (e) { dial_failed(r, e); return; }
  }
  if (r->dial_flags & PH_AWAIT_STATUS) {
    /* Still within the dial's deadline: now for its answer (MOD reports one already there). */
    r->awaiting = 1;
    struct epoll_event ev = side_event(r, r->dside, EPOLLIN | EPOLLRDHUP | EPOLLET);
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) != 0) dial_failed(r, errno);
    return;
  }
  dial_done(r, ready, 1);
}

/* Dials past their deadline fail with ETIMEDOUT; returns the ms until the next deadline (-1: none). */
static int dial_deadlines(void) {
  if (!dialing) return -1;
  uint64_t now = now_ms(), next = UINT64_MAX;
  for (struct relay *r = dialing, *n; r; r = n) {
    n = r->dial_next;
    if (r->dial_deadline_ms <= now && r->greeting) greet_handoff(r);
    else if (r->dial_deadline_ms <= now) dial_failed(r, ETIMEDOUT);
    else if (r->dial_deadline_ms < next) next = r->dial_deadline_ms;
  }
  return next == UINT64_MAX ? -1 : (int)(next - now);
}

/*
 * While the status byte is awaited, what the client already sent (read by JavaScript, or
 * still in the kernel) goes out behind the header as its first frame (the guest reads both at once and hands them to its relay with the
 * target's connection): one wake-up of each agent less before the target sees its first
 * byte. Those bytes are gone from the client's socket, so a dial that fails after this resets
 * the client (PH_CONSUMED) instead of handing it to another path; a refused target resets it
 * anyway. Only on a fresh unix socket, at most PH_EARLY_MAX bytes: one send that fits its
 * empty buffer whole or not at all. 0 or an errno.
 */
static int early_frame(struct relay *r) {
  struct dir *d = &r->d[0]; /* a (the client) -> b (the stream) */
  if (r->dside != 1) return 0;
  if (d->queued > 0) {
    /* Bytes JavaScript had read (queued by framed_init as the first frame): they go now. */
    if (r->fr->ehdr_off != 0 || d->pipe_r >= 0 || d->queued > PH_EARLY_MAX) return 0;
    uint8_t first[4 + PH_EARLY_MAX];
    memcpy(first, r->fr->ehdr, 4);
    memcpy(first + 4, d->buf + d->off, d->queued);
    ssize_t w = send(r->fd[1], first, d->queued + 4, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w <= 0) return 0; /* still queued: the relay sends them once the status came */
    r->consumed = 1;
    if ((size_t)w != d->queued + 4) return EIO; /* cannot happen (see above) */
    __atomic_fetch_add(&d->bytes, (uint64_t)d->queued, __ATOMIC_RELAXED);
    __atomic_fetch_add(&total_copied, (uint64_t)d->queued, __ATOMIC_RELAXED);
    d->queued = 0;
    d->off = 0;
    r->fr->ehdr_off = 4;
    return 0;
  }
  if (r->fr->ehdr_off != 4) return 0;
  uint8_t buf[4 + PH_EARLY_MAX];
  ssize_t n = read(r->fd[0], buf + 4, PH_EARLY_MAX);
  if (n <= 0) return 0; /* nothing yet, or EOF (still there for the relay to read) */
  put_be32(buf, (uint32_t)n);
  ssize_t w = send(r->fd[1], buf, (size_t)n + 4, MSG_DONTWAIT | MSG_NOSIGNAL);
  r->consumed = 1;
  if (w != n + 4) {
    if (w > 0) return EIO; /* cannot happen (see above); the dial fails rather than corrupt the stream */
    /* Not sent at all: the relay sends them once the status came, as bytes JavaScript read. */
    memcpy(d->buf, buf + 4, (size_t)n);
    d->off = 0;
    d->queued = (size_t)n;
    put_be32(r->fr->ehdr, (uint32_t)n);
    r->fr->ehdr_off = 0;
    return 0;
  }
  __atomic_fetch_add(&d->bytes, (uint64_t)n, __ATOMIC_RELAXED);
  __atomic_fetch_add(&total_copied, (uint64_t)n, __ATOMIC_RELAXED);
  return 0;
}

/* The dialed side's socket and its non-blocking connect, made by ph_relay_dial itself: a
 * unix connect completes at once, and a loopback TCP one usually does, so the far end is
 * woken now, not after the relay thread's own wake-up. Once connected, hello goes out at once
 * too (then only the status byte, if awaited, is left to the thread). 0 or an errno. */
static int dial_connect(struct relay *r) {
  int fd = socket(r->dial_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  int one = 1;
  if (r->dial_addr.ss_family != AF_UNIX) {
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (r->keepalive_s > 0) {
      setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &r->keepalive_s, sizeof r->keepalive_s);
    }
  }
  r->fd[r->dside] = fd;
  r->d[0].src = r->fd[0]; r->d[0].dst = r->fd[1];
  r->d[1].src = r->fd[1]; r->d[1].dst = r->fd[0];
  /* A unix listener whose backlog is full says EAGAIN (it has no "in progress"). */
  if (connect(fd, (struct sockaddr *)&r->dial_addr, r->dial_addr_len) != 0) {
    if (errno != EINPROGRESS) return errno;
    int state = connect_state(fd); /* a refusal is said here, now */
    if (state < 0) return -state;
    if (state == 0) return 0; /* the thread waits */
  }
  int e = (r->dial_flags & PH_HELLO_HANDED) ? 0 : send_hello(r, fd);
  if (e) return e;
  if (r->dial_flags & PH_AWAIT_STATUS) {
    r->awaiting = 1;
    if (r->fr && r->dial_addr.ss_family == AF_UNIX) return early_frame(r);
    return 0;
  }
  e = (r->dial_flags & PH_HELLO_HANDED) ? send_hello(r, r->fd[1 - r->dside]) : 0;
  if (!e) r->through = 1;
  return e;
}

/* ---- data listeners ----------------------------------------------------------------------
 *
 * The guest's data endpoint, accepted in this thread instead of in JavaScript: each accepted
 * stream waits here for its data header (peeked at, not read, with MSG_PEEK), and when it is
 * a PHDATA2 header with the session's secret naming a numeric TCP address or a unix socket
 * path, the header is read, the target dialled, the status byte answered and the stream
 * relayed, with no JavaScript at all. Anything else (a UDP flow, an unframed PHDATA1 stream,
 * a bad or slow header, an EOF before it) is handed to JavaScript untouched (REC_HANDOFF, its
 * fd in err), whose data server then reads, refuses and says it as before: this parser only
 * has to recognise the well-formed case, strictly (the peer is untrusted). A dial that fails
 * answers the failure status here, and JavaScript hears the errno (PH_ACCEPTED).
 */
#define PH_MAX_LISTENERS 1024 /* one per host forward, and the guest's data endpoints */
#define LISTEN_TAG (1ULL << 62)
#define PH_HEADER_MAX 4096 /* core/data-header.ts's MAX_HEADER */
#define PH_ACCEPT_RETRY_MS 100

struct listener {
  int used, closing, fd, allow_cid, copy, armed;
  int forward;               /* a host forward's listener (see "forward listeners"), not a data endpoint */
  int pending_dials;         /* its clients still dialling (relay thread only) */
  int draining;              /* closed, its slot kept until those dials are told (then REC_UNLISTENED) */
  int idle;                  /* a forward listener without a target: not watched (the runtime's own server accepts) */
  int borrowed;              /* fd is the runtime's own (a forward's: no dup, one fd less per listener) */
  int own;                   /* a forward's listener the runtime stopped accepting on: always watched (no target: every client to JavaScript) */
  int fwd_set;               /* a target is set (else every connection goes to JavaScript) */
  int fwd_direct;            /* ... the guest's own TCP address (plain relay), not the data path */
  uint8_t *fwd_hello;        /* the data path's header (direct: none) */
  int fwd_hello_len;
  struct sockaddr_storage fwd_addr; /* the guest's data endpoint (unix), or its proven address (direct) */
  socklen_t fwd_addr_len;
  int fwd_dial_ms, fwd_keepalive_s;
  uint32_t fwd_gen;          /* counts ph_forward_target calls: records name the target their client took */
  int header_ms, dial_ms;
  uint64_t rearm_ms;
  char secret[129];
  size_t secret_len;
  uint64_t carried, handed; /* streams dialled here; streams handed to JavaScript */
};
static struct listener listeners[PH_MAX_LISTENERS];
static int listeners_closing, listeners_disarmed;

static int take_slot(struct relay *r);
static int framed_init(struct relay *r, int copy, const uint8_t *to_b, int to_b_len, const uint8_t *to_a, int to_a_len);
static int dir_init(struct dir *d, int src, int dst, int copy, const uint8_t *first, int first_len);

static void dial_list_add(struct relay *r, uint64_t deadline_ms) {
  r->dialing = 1;
  r->dial_deadline_ms = deadline_ms;
  r->dial_prev = NULL;
  r->dial_next = dialing;
  if (dialing) dialing->dial_prev = r;
  dialing = r;
}

/* A failed dial's stream: the failure status, then EOF (what the stream had sent after its
 * header is read first: a unix socket closed with unread bytes would reset its peer before
 * the peer read the status). */
static void refuse_stream(int fd) {
  if (fd < 0) return;
  uint8_t failed = 1;
  ssize_t n = send(fd, &failed, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  (void)n;
  shutdown(fd, SHUT_WR);
  char sink[4096];
  for (int i = 0; i < 4 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {}
  close(fd);
}

/* Hands a greeting stream to JavaScript as it is (nothing of it read). */
static void greet_handoff(struct relay *r) {
  struct listener *l = &listeners[r->listener - 1];
  int fd = r->fd[1];
  epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
  r->fd[1] = -1;
  __atomic_fetch_add(&l->handed, 1, __ATOMIC_RELAXED);
  struct record rec = { REC_HANDOFF, (uint32_t)r->listener, 0, (uint32_t)fd, 0, 0 };
  post(rec);
  finish(r, 0, 0); /* quiet: a listener's relay that did not fail a dial */
}

/* The target of a header line (without its newline) that this thread takes: 0 and the address,
 * or -1 for anything else (JavaScript then decides). Mirrors core/data-header.ts, stricter. */
static int parse_target(const struct listener *l, const uint8_t *p, size_t len, struct sockaddr_storage *ss, socklen_t *ss_len) {
  if (len > PH_HEADER_MAX || len < 8 || memcmp(p, "PHDATA2 ", 8) != 0) return -1;
  for (size_t i = 0; i < len; i++) if (p[i] < 0x20 || p[i] > 0x7e) return -1;
  const uint8_t *end = p + len, *sec = p + 8;
  const uint8_t *sp = memchr(sec, ' ', (size_t)(end - sec));
  if (!sp) return -1;
  size_t slen = (size_t)(sp - sec);
  if (slen < 16 || slen > 128 || slen != l->secret_len) return -1;
  unsigned diff = 0;
  for (size_t i = 0; i < slen; i++) {
    uint8_t c = sec[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return -1;
    diff |= (unsigned)(c ^ (uint8_t)l->secret[i]); /* no early exit: constant time */
  }
  if (diff) return -1;
  const uint8_t *proto = sp + 1;
  sp = memchr(proto, ' ', (size_t)(end - proto));
  if (!sp) return -1;
  size_t plen = (size_t)(sp - proto);
  const uint8_t *addr = sp + 1;
  size_t alen = (size_t)(end - addr);
  if (alen == 0 || memchr(addr, ' ', alen)) return -1;
  char a[PH_HEADER_MAX + 1];
  memcpy(a, addr, alen);
  a[alen] = 0;
  memset(ss, 0, sizeof *ss);
  if (plen == 4 && memcmp(proto, "unix", 4) == 0) {
    struct sockaddr_un *un = (struct sockaddr_un *)ss;
    if (a[0] != '/' || alen > 107 || alen >= sizeof un->sun_path) return -1;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, a, alen + 1);
    *ss_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + alen + 1);
    return 0;
  }
  if (plen != 3 || memcmp(proto, "tcp", 3) != 0) return -1; /* udp, or anything else */
  char *colon = strrchr(a, ':');
  if (!colon) return -1;
  *colon = 0;
  const char *ps = colon + 1;
  size_t pl = strlen(ps);
  if (pl < 1 || pl > 5 || ps[0] == '0') return -1;
  int port = 0;
  for (size_t i = 0; i < pl; i++) {
    if (ps[i] < '0' || ps[i] > '9') return -1;
    port = port * 10 + (ps[i] - '0');
  }
  if (port < 1 || port > 65535) return -1;
  char canon[INET6_ADDRSTRLEN];
  size_t hl = strlen(a);
  if (a[0] == '[') {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (hl < 3 || a[hl - 1] != ']') return -1;
    a[hl - 1] = 0;
    /* Only the canonical spelling (what the host writes): any other goes JavaScript's way. */
    if (inet_pton(AF_INET6, a + 1, &in6->sin6_addr) != 1 || !inet_ntop(AF_INET6, &in6->sin6_addr, canon, sizeof canon) || strcmp(canon, a + 1) != 0) return -1;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    *ss_len = sizeof *in6;
    return 0;
  }
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  if (inet_pton(AF_INET, a, &in4->sin_addr) != 1 || !inet_ntop(AF_INET, &in4->sin_addr, canon, sizeof canon) || strcmp(canon, a) != 0) return -1;
  in4->sin_family = AF_INET;
  in4->sin_port = htons((uint16_t)port);
  *ss_len = sizeof *in4;
  return 0;
}

/* A greeting stream is readable (or closed): a whole header yet? */
static void greet_check(struct relay *r, struct relay **ready, uint32_t events) {
  struct listener *l = &listeners[r->listener - 1];
  int fd = r->fd[1];
  uint8_t buf[PH_HEADER_MAX + 2];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) greet_handoff(r);
    return;
  }
  if (n <= 0) { greet_handoff(r); return; } /* EOF or an error: JavaScript says what it was */
  uint8_t *nl = memchr(buf, '\n', (size_t)n);
  if (!nl) {
    if (n > PH_HEADER_MAX || (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) greet_handoff(r);
    return; /* the rest of the header comes with the next edge */
  }
  size_t len = (size_t)(nl - buf);
  if (parse_target(l, buf, len, &r->dial_addr, &r->dial_addr_len) != 0) { greet_handoff(r); return; }
  /* Ours: the header is taken off the stream (what follows it is the relay's). */
  if (recv(fd, buf, len + 1, MSG_DONTWAIT) != (ssize_t)(len + 1)) { finish(r, PH_RESET, EIO); return; }
  epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); /* dial_done adds it back with the dialed side */
  dial_unlink(r);
  r->greeting = 0;
  __atomic_fetch_add(&l->carried, 1, __ATOMIC_RELAXED);
  int e = dial_connect(r);
  if (e) { dial_failed(r, e); return; }
  if (r->through) { dial_done(r, ready, 0); return; }
  struct epoll_event out = side_event(r, r->dside, EPOLLOUT | EPOLLET);
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, r->fd[r->dside], &out) != 0) { dial_failed(r, errno); return; }
  dial_list_add(r, now_ms() + (uint64_t)l->dial_ms);
}

/* A stream accepted on listener li: it waits for its header (see above). */
/* A listener's new connection goes to JavaScript as its fd (REC_HANDOFF); `r`, not started, is freed. */
/* A listener's relay before its directions are set up: no pipes (hand_to_js may free it as it
 * is; calloc's zeros would have it close fd 0, twice, a socket of the runtime's by then). */
static struct relay *listener_relay(void) {
  struct relay *r = calloc(1, sizeof *r);
  if (r) r->d[0].pipe_r = r->d[0].pipe_w = r->d[1].pipe_r = r->d[1].pipe_w = -1;
  return r;
}

static void hand_to_js(int li, int fd, struct relay *r) {
  struct record rec = { REC_HANDOFF, (uint32_t)li + 1, 0, (uint32_t)fd, 0, 0 };
  __atomic_fetch_add(&listeners[li].handed, 1, __ATOMIC_RELAXED);
  post(rec);
  if (!r) return;
  dir_free(&r->d[0]);
  dir_free(&r->d[1]);
  free(r->fr);
  free(r->hello);
  free(r);
}

static void greet_start(int li, int fd, struct relay **ready) {
  struct listener *l = &listeners[li];
  struct relay *r = listener_relay();
  int e = r ? 0 : ENOMEM;
  if (r) {
    r->fd[0] = -1;
    r->fd[1] = fd;
    r->dside = 0;                     /* the target is side a (plain), the stream side b (frames) */
    r->dial_flags = PH_HELLO_HANDED;  /* the status byte goes to the stream once connected */
    r->listener = li + 1;
    r->hello = malloc(1);
    if (!r->hello) e = ENOMEM;
    else {
      r->hello[0] = 0;
      r->hello_len = 1;
      e = -framed_init(r, l->copy, NULL, 0, NULL, 0);
    }
    if (!e) {
      pthread_mutex_lock(&lock);
      if (take_slot(r) < 0) e = EMFILE;
      pthread_mutex_unlock(&lock);
    }
  }
  if (e) { hand_to_js(li, fd, r); return; } /* out of memory or relay slots: JavaScript's data server takes this one */
  r->greeting = 1;
  struct epoll_event ev = side_event(r, 1, EPOLLIN | EPOLLRDHUP | EPOLLET);
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) { greet_handoff(r); return; }
  dial_list_add(r, now_ms() + (uint64_t)l->header_ms);
  greet_check(r, ready, 0); /* the header may be there already */
}

/* ---- forward listeners ---------------------------------------------------------------------
 *
 * A host forward's listening socket, accepted here: while JavaScript has set a data-path
 * target (ph_forward_target: the guest's data endpoint and the header for this forward), each
 * client is dialled to it as ph_relay_dial does (header, early frame, status byte, framed
 * relay), and JavaScript hears of it only by its records (REC_DIALED with the listener's id,
 * then REC_RELAY_DONE; a failed dial hands the client back, PH_ACCEPTED). Without a target,
 * or when the relay cannot take it, the client goes to JavaScript as an fd (REC_HANDOFF), to
 * be routed as any connection.
 */
static void forward_start(int li, int fd, struct relay **ready) {
  struct listener *l = &listeners[li];
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on unix */
  struct relay *r = listener_relay();
  int e = r ? 0 : ENOMEM, direct = 0, dial_ms = l->dial_ms;
  if (r) {
    pthread_mutex_lock(&lock);
    if (l->fwd_set && (l->fwd_direct || (r->hello = malloc((size_t)l->fwd_hello_len)) != NULL)) {
      direct = l->fwd_direct;
      if (!direct) {
        memcpy(r->hello, l->fwd_hello, (size_t)l->fwd_hello_len);
        r->hello_len = l->fwd_hello_len;
      }
      memcpy(&r->dial_addr, &l->fwd_addr, sizeof l->fwd_addr);
      r->dial_addr_len = l->fwd_addr_len;
      r->keepalive_s = l->fwd_keepalive_s;
      r->target_gen = l->fwd_gen;
      if (l->fwd_dial_ms > 0) dial_ms = l->fwd_dial_ms;
    } else {
      e = ENOENT; /* no target (or no memory for its header): JavaScript routes it */
    }
    pthread_mutex_unlock(&lock);
  }
  if (!e) {
    r->fd[0] = fd;
    r->fd[1] = -1;
    r->dside = 1;
    r->listener = li + 1;
    r->forward = 1;
    if (direct) {
      /* The guest's own address: a plain relay, as ph_relay_dial's (its fds are set once dialled). */
      r->dial_flags = 0;
      e = -dir_init(&r->d[0], r->fd[0], -1, l->copy, NULL, 0);
      if (!e) e = -dir_init(&r->d[1], -1, r->fd[0], l->copy, NULL, 0);
    } else {
      r->dial_flags = PH_AWAIT_STATUS;
      e = -framed_init(r, l->copy, NULL, 0, NULL, 0);
    }
    if (!e) {
      pthread_mutex_lock(&lock);
      if (take_slot(r) < 0) e = EMFILE;
      pthread_mutex_unlock(&lock);
    }
  }
  if (e) { hand_to_js(li, fd, r); return; } /* no target, or no memory or slot: JavaScript routes it */
  __atomic_fetch_add(&l->carried, 1, __ATOMIC_RELAXED);
  e = dial_connect(r);
  if (e) { dial_failed(r, e); return; }
  if (r->through) { dial_done(r, ready, 0); return; }
  struct epoll_event ev = side_event(r, r->dside, r->awaiting ? EPOLLIN | EPOLLRDHUP | EPOLLET : EPOLLOUT | EPOLLET);
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, r->fd[r->dside], &ev) != 0) { dial_failed(r, errno); return; }
  dial_list_add(r, now_ms() + (uint64_t)dial_ms);
  r->pending_dial = 1;
  l->pending_dials++;
}

static void accept_all(int li, struct relay **ready) {
  struct listener *l = &listeners[li];
  if (!l->used || l->closing || !l->armed) return;
  for (int k = 0; k < 64; k++) { /* then the others get their turn; the level-triggered watch brings us back */
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    /* Under the lock: a borrowed fd (a forward's) is the runtime's, which may close it once
     * ph_data_unlisten returned; from then on this thread never touches it. */
    pthread_mutex_lock(&lock);
    if (l->closing) { pthread_mutex_unlock(&lock); return; }
    int fd = accept4(l->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    int e = errno;
    int hard = fd < 0 && e != EAGAIN && e != EWOULDBLOCK && e != EINTR && e != ECONNABORTED;
    if (hard) {
      /* Out of fds or the like: accepting again at once would spin. Later, and said once. */
      struct epoll_event none = { .events = 0, .data.u64 = LISTEN_TAG | (uint64_t)li };
      epoll_ctl(epfd, EPOLL_CTL_MOD, l->fd, &none);
      l->armed = 0;
      l->rearm_ms = now_ms() + PH_ACCEPT_RETRY_MS;
      listeners_disarmed++;
    }
    pthread_mutex_unlock(&lock);
    if (fd < 0) {
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      if (!hard) continue;
      struct record rec = { REC_ACCEPT_FAILED, (uint32_t)li + 1, 0, (uint32_t)e, 0, 0 };
      post(rec);
      return;
    }
    if (peer.ss_family == AF_VSOCK && l->allow_cid >= 0 && (int)((struct sockaddr_vm *)&peer)->svm_cid != l->allow_cid) {
      struct record rec = { REC_REJECTED, (uint32_t)li + 1, 0, ((struct sockaddr_vm *)&peer)->svm_cid, 0, 0 };
      close(fd);
      post(rec);
      continue;
    }
    if (l->forward) forward_start(li, fd, ready);
    else greet_start(li, fd, ready);
  }
}

/* Listeners closed by JavaScript go, and those resting after a failed accept listen again
 * once due; returns the ms until the next one is due (-1: none). */
static int listeners_tend(void) {
  if (listeners_closing) {
    int gone[PH_MAX_LISTENERS], n_gone = 0;
    pthread_mutex_lock(&lock);
    listeners_closing = 0;
    for (int i = 0; i < PH_MAX_LISTENERS; i++) {
      struct listener *l = &listeners[i];
      if (!l->used || !l->closing || l->draining) continue;
      if (!l->borrowed) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, l->fd, NULL);
        close(l->fd);
      } /* a borrowed fd left the epoll set in ph_data_unlisten, and is not ours to close */
      if (!l->armed) listeners_disarmed--;
      l->armed = 1; /* (counted out of the disarmed ones once) */
      free(l->fwd_hello);
      l->fwd_hello = NULL;
      /* A forward's: REC_UNLISTENED tells JavaScript once every record of its clients went
       * before it (REC_DIALED comes late, and a client still dialling tells later still), so
       * JavaScript keeps the forward's handlers for them until then; the slot (its id) is not
       * given again before. */
      if (l->forward && l->pending_dials > 0) {
        l->draining = 1;
        continue;
      }
      if (l->forward) gone[n_gone++] = i + 1;
      l->used = l->closing = 0;
    }
    pthread_mutex_unlock(&lock);
    for (int k = 0; k < n_gone; k++) post((struct record){ REC_UNLISTENED, (uint32_t)gone[k], 0, 0, 0, 0 });
  }
  if (!listeners_disarmed) return -1;
  uint64_t now = now_ms(), next = UINT64_MAX;
  for (int i = 0; i < PH_MAX_LISTENERS; i++) {
    struct listener *l = &listeners[i];
    if (!l->used || l->armed) continue;
    if (l->rearm_ms <= now) {
      struct epoll_event ev = { .events = l->idle ? 0 : EPOLLIN, .data.u64 = LISTEN_TAG | (uint64_t)i };
      pthread_mutex_lock(&lock);
      if (!l->closing) epoll_ctl(epfd, EPOLL_CTL_MOD, l->fd, &ev);
      pthread_mutex_unlock(&lock);
      l->armed = 1;
      listeners_disarmed--;
    } else if (l->rearm_ms < next) {
      next = l->rearm_ms;
    }
  }
  return next == UINT64_MAX ? -1 : (int)(next - now);
}

/* A forward's client that was still dialling is told (its record queued): a listener closed
 * meanwhile, waiting for its last such client, is released now (REC_UNLISTENED after it). */
static void dial_settled(struct relay *r) {
  if (!r->pending_dial) return;
  r->pending_dial = 0;
  struct listener *l = &listeners[r->listener - 1];
  if (--l->pending_dials > 0 || !l->draining) return;
  pthread_mutex_lock(&lock);
  l->used = l->closing = l->draining = 0;
  pthread_mutex_unlock(&lock);
  post((struct record){ REC_UNLISTENED, (uint32_t)r->listener, 0, 0, 0, 0 });
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
    if (r->dialing && r->through) {
      r->dialing = 0; /* never on the dialing list */
      dial_done(r, ready, 0);
      continue;
    }
    if (r->dialing) {
      /* Only the dialed side, for its connection (or its status byte); the handed one joins
       * once it is through. */
      struct epoll_event out = side_event(r, r->dside, r->awaiting ? EPOLLIN | EPOLLRDHUP | EPOLLET : EPOLLOUT | EPOLLET);
      if (epoll_ctl(epfd, EPOLL_CTL_ADD, r->fd[r->dside], &out) != 0) { r->dialing = 0; dial_failed(r, errno); continue; }
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
  pthread_mutex_lock(&lock);
  int tell = abort_all_told;
  abort_all_told = 0;
  pthread_mutex_unlock(&lock);
  if (tell) post((struct record){ REC_ALL_ABORTED, 0, 0, 0, 0, 0 });
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
    int rearm_ms = listeners_tend();
    int timeout = ready ? 0 : resetting ? 10 : -1;
    if (dial_ms >= 0 && (timeout < 0 || dial_ms < timeout)) timeout = dial_ms;
    if (rearm_ms >= 0 && (timeout < 0 || rearm_ms < timeout)) timeout = rearm_ms;
    int tell_ms = tell_waiting();
    if (tell_ms >= 0 && (timeout < 0 || tell_ms < timeout)) timeout = tell_ms;
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
      } else if (tag & LISTEN_TAG) {
        accept_all((int)(tag & 0xffff), &ready);
      } else {
        struct relay *r = (struct relay *)(uintptr_t)(tag & ~1ULL);
        int side = (int)(tag & 1);
        uint32_t ev = events[i].events;
        if (r->closed) continue;
        if (r->dialing) { dial_check(r, &ready, ev); continue; }
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
      free(r->hello);
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
  struct epoll_event out = { .events = EPOLLET, .data.ptr = &notify_fd }; /* EPOLLOUT when records wait */
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

/* A free id for r (with the lock held): its slot index, or -1 when all are taken. */
static int take_slot(struct relay *r) {
  static int hint = 0;
  for (int i = 0; i < PH_MAX_RELAYS; i++) {
    int s = (hint + i) % PH_MAX_RELAYS;
    if (slot_taken[s]) continue;
    hint = s + 1;
    slot_taken[s] = 1;
    slots[s] = r;
    r->id = (uint32_t)s + 1;
    total_relays++;
    return s;
  }
  return -1;
}

/* Gives r an id and hands it to the thread; on an error (e) frees it. Returns the id or -errno. */
static int relay_register(struct relay *r, int e) {
  int slot = -1;
  if (!e) {
    pthread_mutex_lock(&lock);
    slot = take_slot(r);
    if (slot >= 0) {
      r->next_pending = pending;
      pending = r;
    }
    pthread_mutex_unlock(&lock);
    if (slot < 0) e = -EMFILE;
  }
  if (e) {
    for (int i = 0; i < 2; i++) if (r->fd[i] >= 0) close(r->fd[i]);
    dir_free(&r->d[0]);
    dir_free(&r->d[1]);
    free(r->fr);
    free(r->hello);
    free(r);
    return e;
  }
  wake();
  return slot + 1;
}

/* Relays fd_a <-> fd_b (both dup()ed). Either may be a character device (a virtio-serial
 * port) instead of a socket: it is then read and written with read()/write(), and its EOF
 * (the port's host went away) ends the relay as an error does: the socket side is closed. */
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
    /* A side that is no socket (a serial port's character device) is read and written with
     * read()/write(): no splice, send, shutdown or SO_ERROR there. */
    int device[2];
    for (int i = 0; i < 2; i++) {
      struct stat st;
      device[i] = fstat(r->fd[i], &st) == 0 && !S_ISSOCK(st.st_mode);
    }
    int copy = (flags & PH_FORCE_COPY) || device[0] || device[1];
    if ((device[0] || device[1]) && (flags & PH_FRAMED_B)) e = -EINVAL;
    else if (flags & PH_FRAMED_B) e = framed_init(r, copy, to_b, to_b_len, to_a, to_a_len);
    else {
      e = dir_init(&r->d[0], r->fd[0], r->fd[1], copy, to_b, to_b_len);
      if (!e) e = dir_init(&r->d[1], r->fd[1], r->fd[0], copy, to_a, to_a_len);
      r->d[0].dst_device = r->d[1].src_device = device[1];
      r->d[1].dst_device = r->d[0].src_device = device[0];
    }
  }
  return relay_register(r, e);
}

/*
 * Connects a new socket to host and port (a numeric IPv4 or IPv6 address, NUL-terminated; or
 * an absolute unix socket path, port unused) and relays it with the connected socket fd_h once
 * it is connected (see "dialing relays"). fd_h is dup()ed (the caller closes its own at once);
 * if the dial fails, the dup is handed back in the record.
 *   flags: PH_FORCE_COPY; PH_FRAMED_B (side b carries frames); PH_DIAL_A (the dialed socket
 *   is side a, fd_h side b; else fd_h is a); PH_HELLO_HANDED / PH_AWAIT_STATUS (see hello).
 *   pre: bytes already read from fd_h (for a framed fd_h: the stream's bytes as read).
 *   hello: sent once connected, to the dialed socket (a data header), or with PH_HELLO_HANDED
 *   to fd_h (a status byte); with PH_AWAIT_STATUS the dialed side must then answer a status
 *   byte 0 within the deadline, or the dial fails (PH_STATUS_REFUSED, PH_NO_STATUS).
 * A dialed TCP socket gets TCP_NODELAY, and keepalive probes after keepalive_s idle seconds
 * (0: none). Returns the relay's id, or -errno when the connect (or hello) failed at once.
 */
int ph_relay_dial(int fd_h, const char *host, int port, const uint8_t *pre, int pre_len, int flags, int timeout_ms, int keepalive_s,
                  const uint8_t *hello, int hello_len) {
  if (notify_js < 0) return -ENOTCONN;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t ss_len;
  struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
  struct sockaddr_un *un = (struct sockaddr_un *)&ss;
  if (host[0] == '/') {
    size_t len = strlen(host);
    if (len >= sizeof un->sun_path) return -ENAMETOOLONG;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, host, len + 1);
    ss_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  } else if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
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
  if (hello_len < 0 || hello_len > 65536) return -EINVAL;
  struct relay *r = calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  int d = (flags & PH_DIAL_A) ? 0 : 1, h = 1 - d;
  r->dside = d;
  r->dial_flags = flags & (PH_HELLO_HANDED | PH_AWAIT_STATUS);
  r->dial_addr = ss;
  r->dial_addr_len = ss_len;
  r->keepalive_s = keepalive_s;
  r->fd[d] = -1; /* dial_connect makes it */
  r->fd[h] = fcntl(fd_h, F_DUPFD_CLOEXEC, 0);
  int e = r->fd[h] < 0 ? NEG_ERRNO : 0;
  if (!e && hello_len > 0) {
    r->hello = malloc((size_t)hello_len);
    if (!r->hello) e = -ENOMEM;
    else memcpy(r->hello, hello, (size_t)hello_len);
    r->hello_len = hello_len;
  }
  if (!e) {
    int one = 1;
    set_nonblock(r->fd[h]);
    setsockopt(r->fd[h], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on unix */
    int copy = flags & PH_FORCE_COPY;
    /* The dirs' fds are set again once the dialed socket exists (dial_connect). */
    if (flags & PH_FRAMED_B) {
      /* pre are bytes read from fd_h: plain ones for b when fd_h is a, frames for a when it is b */
      e = d == 1 ? framed_init(r, copy, pre, pre_len, NULL, 0) : framed_init(r, copy, NULL, 0, pre, pre_len);
    } else {
      e = dir_init(&r->d[0], r->fd[0], r->fd[1], copy, d == 1 ? pre : NULL, d == 1 ? pre_len : 0);
      if (!e) e = dir_init(&r->d[1], r->fd[1], r->fd[0], copy, d == 0 ? pre : NULL, d == 0 ? pre_len : 0);
    }
  }
  if (!e) e = -dial_connect(r);
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
/*
 * Every relay (connected, or still dialling for a listener) reset now, for an agent that
 * exits: left to the kernel, its sockets would close with a FIN, as if complete. A
 * REC_ALL_ABORTED record follows once they are.
 */
int ph_relay_abort_all(void) {
  pthread_mutex_lock(&lock);
  for (int i = 0; i < PH_MAX_RELAYS; i++) if (slots[i]) slot_abort[i] = 1;
  abort_requested = 1;
  abort_all_told = 1;
  pthread_mutex_unlock(&lock);
  wake();
  return 0;
}

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

/*
 * Accepts on listening socket fd (dup()ed; unix or vsock) in the relay thread as a data
 * endpoint (see "data listeners"): secret is the session's (hex, NUL-terminated);
 * allow_cid: the only vsock peer CID accepted (-1: any; others are closed, REC_REJECTED);
 * flags: PH_FORCE_COPY; header_ms: how long a stream may take to send its header before it
 * goes to JavaScript; dial_ms: a target's connect deadline. Returns the listener's id (> 0).
 */
#define PH_LISTEN_FORWARD 2 /* ph_data_listen's flags: a forward listener (secret unused) */
#define PH_LISTEN_OWN 4     /* ... that this thread alone accepts on (its own dup; the runtime stops accepting) */
int ph_data_listen(int fd, const char *secret, int allow_cid, int flags, int header_ms, int dial_ms) {
  if (notify_js < 0) return -ENOTCONN;
  size_t slen = strlen(secret);
  if (!(flags & PH_LISTEN_FORWARD) && (slen < 16 || slen > 128)) return -EINVAL;
  if (slen > 128) return -EINVAL;
  /* A data endpoint's fd is dup()ed (JavaScript closes its own at once); a forward's is
   * borrowed (its server keeps it open until ph_data_unlisten has returned), unless this
   * thread is to accept on it alone: then dup()ed too, and the runtime closes its own. */
  int own = (flags & PH_LISTEN_FORWARD) && (flags & PH_LISTEN_OWN);
  int borrowed = (flags & PH_LISTEN_FORWARD) && !own;
  int dup = borrowed ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return NEG_ERRNO;
  set_nonblock(dup);
  pthread_mutex_lock(&lock);
  int i = 0;
  while (i < PH_MAX_LISTENERS && listeners[i].used) i++;
  if (i < PH_MAX_LISTENERS) {
    struct listener *l = &listeners[i];
    memset(l, 0, sizeof *l);
    l->used = 1;
    l->armed = 1;
    l->fd = dup;
    l->allow_cid = allow_cid;
    l->copy = flags & PH_FORCE_COPY;
    l->forward = (flags & PH_LISTEN_FORWARD) != 0;
    l->borrowed = borrowed;
    l->own = own;
    l->idle = l->forward && !own; /* until a target is set (one it owns is always watched) */
    l->header_ms = header_ms > 0 ? header_ms : 1000;
    l->dial_ms = dial_ms > 0 ? dial_ms : 2000;
    memcpy(l->secret, secret, slen);
    l->secret_len = slen;
  }
  pthread_mutex_unlock(&lock);
  if (i == PH_MAX_LISTENERS) { if (!borrowed) close(dup); return -EMFILE; }
  struct epoll_event ev = { .events = listeners[i].idle ? 0 : EPOLLIN, .data.u64 = LISTEN_TAG | (uint64_t)i };
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, dup, &ev) != 0) {
    int e = NEG_ERRNO;
    if (!borrowed) close(dup);
    pthread_mutex_lock(&lock);
    listeners[i].used = 0;
    pthread_mutex_unlock(&lock);
    return e;
  }
  return i + 1;
}

/* Stops accepting (the thread closes its dup; a borrowed fd is the caller's again when this
 * returns, an owned forward's is closed by then); streams already accepted carry on. */
int ph_data_unlisten(int id) {
  if (id < 1 || id > PH_MAX_LISTENERS) return -EINVAL;
  pthread_mutex_lock(&lock);
  struct listener *l = &listeners[id - 1];
  int live = l->used && !l->closing;
  if (live) {
    l->closing = 1;
    listeners_closing = 1;
    if (l->borrowed || l->own) epoll_ctl(epfd, EPOLL_CTL_DEL, l->fd, NULL); /* before the runtime closes it */
    if (l->own) {
      /* The port is free once this returns (the forward may be bound again at once). */
      close(l->fd);
      l->borrowed = 1; /* nothing left for the thread to close */
    }
  }
  pthread_mutex_unlock(&lock);
  if (live) wake();
  return live ? 0 : -ENOENT;
}

/* out[0]: streams this listener dialled itself; out[1]: streams handed to JavaScript. */
int ph_data_listener_stats(int id, uint64_t *out) {
  if (id < 1 || id > PH_MAX_LISTENERS) return -EINVAL;
  out[0] = __atomic_load_n(&listeners[id - 1].carried, __ATOMIC_RELAXED);
  out[1] = __atomic_load_n(&listeners[id - 1].handed, __ATOMIC_RELAXED);
  return 0;
}

/* A unix stream socket listening at path (which must not exist), non-blocking. The fd. */
int ph_unix_listen(const char *path, int backlog) {
  struct sockaddr_un un;
  memset(&un, 0, sizeof un);
  size_t len = strlen(path);
  if (len >= sizeof un.sun_path) return -ENAMETOOLONG;
  un.sun_family = AF_UNIX;
  memcpy(un.sun_path, path, len + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return NEG_ERRNO;
  if (bind(fd, (struct sockaddr *)&un, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1)) != 0 || listen(fd, backlog) != 0) {
    int e = NEG_ERRNO;
    close(fd);
    return e;
  }
  return fd;
}

/*
 * A forward listener's target: the guest's data endpoint (host a unix socket path, with hello
 * the header its connections open with: the data path), or the guest's proven TCP address
 * (host a numeric IPv4/IPv6 address with port, no hello: the direct path, relayed plain with
 * TCP keepalive every keepalive_s). host NULL or empty: none (clients go to JavaScript).
 * dial_ms: how long a dial (and the data path's status byte) may take (0: the listener's).
 * Connections accepted from now on take it. Returns the target's number (> 0: the records
 * of the connections dialled to it carry it), or -errno.
 */
int ph_forward_target(int id, const char *host, int port, const uint8_t *hello, int hello_len, int dial_ms, int keepalive_s) {
  if (id < 1 || id > PH_MAX_LISTENERS) return -EINVAL;
  int none = !host || !host[0];
  struct sockaddr_storage ss;
  socklen_t ss_len = 0;
  int direct = 0;
  memset(&ss, 0, sizeof ss);
  if (!none) {
    struct sockaddr_un *un = (struct sockaddr_un *)&ss;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (host[0] == '/') {
      size_t len = strlen(host);
      if (len >= sizeof un->sun_path || hello_len <= 0 || hello_len > 65536) return -EINVAL;
      un->sun_family = AF_UNIX;
      memcpy(un->sun_path, host, len + 1);
      ss_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    } else {
      if (hello_len != 0 || port < 1 || port > 65535) return -EINVAL;
      direct = 1;
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
    }
  }
  uint8_t *copy = none || direct ? NULL : malloc((size_t)hello_len);
  if (!none && !direct && !copy) return -ENOMEM;
  if (copy) memcpy(copy, hello, (size_t)hello_len);
  pthread_mutex_lock(&lock);
  struct listener *l = &listeners[id - 1];
  int ok = l->used && l->forward && !l->closing;
  uint8_t *old = NULL;
  int gen = 0;
  if (ok) {
    old = l->fwd_hello;
    l->fwd_gen = (l->fwd_gen + 1) & 0x7fffffff;
    if (!l->fwd_gen) l->fwd_gen = 1;
    gen = (int)l->fwd_gen;
    l->fwd_set = !none;
    l->fwd_direct = direct;
    l->fwd_hello = copy;
    l->fwd_hello_len = copy ? hello_len : 0;
    l->fwd_addr = ss;
    l->fwd_addr_len = ss_len;
    l->fwd_dial_ms = dial_ms > 0 ? dial_ms : 0;
    l->fwd_keepalive_s = keepalive_s > 0 ? keepalive_s : 0;
    /* Watched only with a target: without one the runtime's own server takes every client. */
    l->idle = none && !l->own;
    if (l->armed) {
      struct epoll_event ev = { .events = l->idle ? 0 : EPOLLIN, .data.u64 = LISTEN_TAG | (uint64_t)(id - 1) };
      epoll_ctl(epfd, EPOLL_CTL_MOD, l->fd, &ev);
    }
  }
  pthread_mutex_unlock(&lock);
  free(ok ? old : copy);
  return ok ? gen : -ENOENT;
}
