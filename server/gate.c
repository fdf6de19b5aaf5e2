/*
 * server/gate.c: the front door: accept, per-client limits, strict framing
 * (http1.h), absolute deadlines, JSON errors, and the relay to
 * libmicrohttpd. See gate.h.
 *
 * One connection's bytes, client to libmicrohttpd, sit in `in`:
 *
 *   in: [ validated, not yet written to libmicrohttpd | not yet checked ]
 *       0                                          in_ok             in_len
 *
 * The unchecked part is the head being assembled (it is forwarded only
 * once whole and valid) or body bytes about to be walked by the framing
 * parser. Bytes from libmicrohttpd to the client sit in `out`. The event
 * loop is level-triggered; interest follows the buffers (read a side only
 * while there is room for what it sends).
 */
#include "server/gate.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "server/http1.h"
#include "server/log.h"
#include "server/routes.h"

#define OUT_CAP     (32 * 1024) /* libmicrohttpd -> client buffer */
#define IN_SPARE    (16 * 1024) /* `in` holds a whole head plus this much */
#define LINGER_S    2.0         /* reading and discarding after an error reply */
#define FAIL_WAIT_S 120.0       /* longest wait for earlier responses before an error */

struct srv_gate_link {
    int refs;            /* atomic: the gate's and libmicrohttpd's */
    int mhd_fd;          /* libmicrohttpd's end of the socketpair */
    int taken;           /* libmicrohttpd holds it (under the gate's mu) */
    uint64_t completed;  /* atomic: requests libmicrohttpd completed */
    srv_gate_link *next; /* registry of links not yet taken (gate's mu) */
};

typedef enum phase {
    PH_HEAD = 0, /* reading a head (or idle between requests) */
    PH_BODY,     /* walking a body */
    PH_FAIL,     /* an error is pending: waiting for earlier responses */
    PH_REPLY,    /* writing our error reply */
    PH_LINGER,   /* reply sent: discarding input until EOF or LINGER_S */
    PH_CLOSING   /* libmicrohttpd closed: flushing its last bytes */
} phase;

typedef struct gconn gconn;

/* What an epoll event points at: one of a connection's two sockets. */
typedef struct gend {
    gconn *c;  /* the connection */
    int which; /* 0: client socket, 1: our end of the pair */
} gend;

struct gconn {
    int cfd;                      /* client socket */
    int mfd;                      /* our end of the socketpair, -1 before the first head */
    gend ec, em;                  /* epoll tags */
    uint32_t ev_c, ev_m;          /* registered interest (0: not registered) */
    srv_client_key key;           /* for the per-client count */
    char peer[64];                /* printable client address */
    struct sockaddr_storage addr; /* the client's address, handed to libmicrohttpd */
    socklen_t addrlen;
    uint8_t *in; /* client bytes (see the top of the file) */
    size_t in_ok, in_len, in_cap;
    size_t scanned;          /* srv_h1_head_scan position within the current head */
    uint8_t *out;            /* libmicrohttpd bytes (or our reply) for the client */
    size_t out_off, out_len; /* pending = out[out_off..out_len) */
    phase ph;                /* state */
    srv_h1_body body;        /* framing of the current body */
    double t_head;           /* when the current head began (0: idle, no bytes yet) */
    double t_body;           /* when the current body began */
    double t_phase;          /* when PH_FAIL / PH_LINGER began */
    uint64_t forwarded;      /* heads handed to libmicrohttpd */
    uint64_t need;           /* PH_FAIL: completions to wait for */
    srv_gate_link *link;     /* shared with libmicrohttpd (NULL before the first head) */
    int err_status;          /* the pending error */
    char err_msg[256];
    int mhd_hup;        /* libmicrohttpd's end hung up: drained, no longer polled */
    int reg_m;          /* mfd is registered with epoll */
    int dead;           /* freed at the end of the event batch */
    gconn *prev, *next; /* all connections (or the dead list) */
};

struct srv_gate {
    srv_server *srv;       /* borrowed */
    struct MHD_Daemon *d;  /* borrowed */
    srv_clients *clients;  /* borrowed */
    int listen_fd;         /* -1 once quiesced */
    int epfd;              /* the event loop */
    int wake_fd;           /* eventfd: quiesce / stop */
    gend e_listen, e_wake; /* epoll tags */
    pthread_t thread;      /* the loop */
    int started;           /* thread exists */
    int stop;              /* atomic: leave the loop */
    int quiesce;           /* atomic: close the listening socket */
    int n_conns;           /* atomic: connections held */
    gconn *conns;          /* list of them (gate thread only) */
    gconn *dead;           /* closed during this event batch, freed after it */
    uint64_t refused;      /* connections refused since the last log line */
    double t_refused_log;  /* when that line was written */
    pthread_mutex_t mu;    /* guards the link registry */
    srv_gate_link *links;  /* links registered, not yet taken */
};

static int64_t opt(srv_gate *g, srv_opt_id id) { return srv_config_int(g->srv->cfg, id); }

/* ---- links ---- */

static void link_unref(srv_gate_link *l)
{
    if (l && __atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(l);
}

/* Contract: under mu; removes l from the registry when it is there. */
static void link_unregister(srv_gate *g, srv_gate_link *l)
{
    for (srv_gate_link **p = &g->links; *p; p = &(*p)->next)
        if (*p == l) {
            *p = l->next;
            l->next = NULL;
            link_unref(l); /* the registry's reference */
            return;
        }
}

srv_gate_link *srv_gate_link_take(srv_gate *g, int mhd_fd)
{
    srv_gate_link *l = NULL;
    if (!g)
        return NULL;
    pthread_mutex_lock(&g->mu);
    for (srv_gate_link **p = &g->links; *p; p = &(*p)->next)
        if ((*p)->mhd_fd == mhd_fd) {
            l = *p;
            *p = l->next; /* the registry's reference passes to libmicrohttpd */
            l->next = NULL;
            l->taken = 1;
            break;
        }
    pthread_mutex_unlock(&g->mu);
    return l;
}

void srv_gate_link_completed(srv_gate_link *l)
{
    if (l)
        __atomic_add_fetch(&l->completed, 1, __ATOMIC_RELEASE);
}

void srv_gate_link_release(srv_gate_link *l) { link_unref(l); }

/* ---- connections ---- */

static void set_interest(srv_gate *g, gconn *c)
{
    uint32_t want_c = EPOLLRDHUP, want_m = 0;
    int reading = c->ph == PH_HEAD || c->ph == PH_BODY || c->ph == PH_LINGER;
    if (reading && c->in_len < c->in_cap)
        want_c |= EPOLLIN;
    if (c->out_len > c->out_off && c->ph != PH_LINGER)
        want_c |= EPOLLOUT;
    if (want_c != c->ev_c) {
        struct epoll_event ev = {.events = want_c, .data.ptr = &c->ec};
        epoll_ctl(g->epfd, c->ev_c ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->cfd, &ev);
        c->ev_c = want_c;
    }
    if (c->mfd < 0 || c->mhd_hup)
        return;
    if (c->out_len < OUT_CAP && c->ph != PH_REPLY && c->ph != PH_LINGER)
        want_m |= EPOLLIN;
    if (c->in_ok > 0)
        want_m |= EPOLLOUT;
    if (!c->reg_m || want_m != c->ev_m) {
        /* an empty interest set stays registered: a hang-up still comes */
        struct epoll_event ev = {.events = want_m, .data.ptr = &c->em};
        epoll_ctl(g->epfd, c->reg_m ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->mfd, &ev);
        c->ev_m = want_m;
        c->reg_m = 1;
    }
}

static void close_mhd_side(srv_gate *g, gconn *c)
{
    if (c->mfd < 0)
        return;
    if (c->reg_m)
        epoll_ctl(g->epfd, EPOLL_CTL_DEL, c->mfd, NULL);
    close(c->mfd); /* libmicrohttpd sees the hang-up and closes its end */
    c->mfd = -1;
    c->ev_m = 0;
    c->reg_m = 0;
    if (c->link) {
        pthread_mutex_lock(&g->mu);
        if (!c->link->taken)
            link_unregister(g, c->link);
        pthread_mutex_unlock(&g->mu);
        link_unref(c->link);
        c->link = NULL;
    }
}

/* Contract: closes both sockets and moves c to the dead list (its memory
 * stays valid until the end of the event batch, which may still hold
 * events for it). */
static void conn_close(srv_gate *g, gconn *c)
{
    if (c->dead)
        return;
    close_mhd_side(g, c);
    epoll_ctl(g->epfd, EPOLL_CTL_DEL, c->cfd, NULL);
    close(c->cfd);
    srv_clients_conn_del(g->clients, &c->key);
    if (c->prev)
        c->prev->next = c->next;
    else
        g->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->dead = 1;
    c->prev = NULL;
    c->next = g->dead;
    g->dead = c;
    __atomic_sub_fetch(&g->n_conns, 1, __ATOMIC_RELAXED);
    srv_metrics_gauge_set(&g->srv->metrics->connections,
                          __atomic_load_n(&g->n_conns, __ATOMIC_RELAXED));
}

static void free_dead(srv_gate *g)
{
    while (g->dead) {
        gconn *c = g->dead;
        g->dead = c->next;
        free(c->in);
        free(c->out);
        free(c);
    }
}

/* Contract: formats a complete JSON error response (Connection: close)
 * into buf; returns its length, 0 when it does not fit. */
static size_t error_response(const srv_gate *g, char *buf, size_t cap, int status, int retry_after,
                             const char *msg)
{
    srv_reply r;
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    srv_reply_errorf(&r, status, "", "%s", msg);
    const char *reason = MHD_get_reason_phrase_for((unsigned)status);
    int n = snprintf(buf, cap,
                     "HTTP/1.1 %d %s\r\nDate: %s\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                     "X-Tasam-Instance: %s\r\n",
                     status, reason && *reason ? reason : "Error", date, r.len, g->srv->instance);
    if (n > 0 && retry_after > 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, "Retry-After: %d\r\n", retry_after);
    if (n < 0 || (size_t)n + 2 + r.len > cap) {
        free(r.body);
        return 0;
    }
    memcpy(buf + n, "\r\n", 2);
    memcpy(buf + n + 2, r.body, r.len);
    free(r.body);
    return (size_t)n + 2 + r.len;
}

/* Contract: answers a connection the gate will not take (over a limit)
 * with a best-effort write of the error, then closes it. Refusals are
 * logged as one line every 10 s at most: they come in floods. */
static void refuse(srv_gate *g, int fd, const char *peer, int status, const char *msg)
{
    char buf[1024];
    size_t n = error_response(g, buf, sizeof buf, status, 1, msg);
    if (n && send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        srv_log_debug("gate: %s: %s", peer, strerror(errno));
    shutdown(fd, SHUT_WR);
    close(fd);
    srv_metrics_request(g->srv->metrics, SRV_ROUTE_OTHER, status, 0);
    g->refused++;
    double now = srv_now();
    if (now - g->t_refused_log >= 10) {
        srv_log_warn("gate: refused %llu connection%s (latest: %s: %d %s)",
                     (unsigned long long)g->refused, g->refused == 1 ? "" : "s", peer, status, msg);
        g->refused = 0;
        g->t_refused_log = now;
    }
}

/* Contract: the request in progress is refused with `status`: stop reading
 * it; the reply goes out once libmicrohttpd has answered the requests
 * before it. */
static void fail(srv_gate *g, gconn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(srv_gate *g, gconn *c, int status, const char *fmt, ...)
{
    va_list ap;
    if (c->ph >= PH_FAIL)
        return;
    /* a head error: the requests before it are whole and forwarded, wait for
     * all of them; a body error: this request's head went to libmicrohttpd,
     * which will not complete it */
    c->need = c->ph == PH_BODY ? c->forwarded - 1 : c->forwarded;
    c->ph = PH_FAIL;
    c->t_phase = srv_now();
    c->err_status = status;
    va_start(ap, fmt);
    vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
    va_end(ap);
    c->in_len = c->in_ok; /* what was not checked is dropped */
    (void)g;
}

/* Contract: the first head is whole and valid: hand libmicrohttpd its end
 * of a new socketpair. 0 or -1 (the caller answers 503). */
static int attach(srv_gate *g, gconn *c)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        srv_log_warn("gate: socketpair: %s", strerror(errno));
        return -1;
    }
    srv_gate_link *l = calloc(1, sizeof *l);
    c->out = malloc(OUT_CAP);
    if (!l || !c->out) {
        free(l);
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    l->refs = 2; /* the gate's and the registry's (then libmicrohttpd's) */
    l->mhd_fd = sv[1];
    pthread_mutex_lock(&g->mu);
    /* a link left by a connection libmicrohttpd dropped before starting it
     * may still carry this descriptor number */
    for (srv_gate_link *o = g->links; o; o = o->next)
        if (o->mhd_fd == sv[1]) {
            link_unregister(g, o);
            break;
        }
    l->next = g->links;
    g->links = l;
    pthread_mutex_unlock(&g->mu);
    c->link = l;
    c->mfd = sv[0];
    /* libmicrohttpd owns (and closes) sv[1] from here, even on failure */
    if (MHD_add_connection(g->d, sv[1], (const struct sockaddr *)&c->addr, c->addrlen) != MHD_YES) {
        srv_log_warn("gate: %s: libmicrohttpd refused the connection: %s", c->peer,
                     strerror(errno));
        close_mhd_side(g, c);
        return -1;
    }
    return 0;
}

/* Contract: checks what arrived from the client: heads, then bodies, as
 * far as the bytes go; may fail the connection. */
static void process(srv_gate *g, gconn *c, double now)
{
    size_t max_head = (size_t)opt(g, SRV_OPT_MAX_HEADER_BYTES);
    uint64_t max_body = (uint64_t)opt(g, SRV_OPT_MAX_BODY_BYTES);
    while (c->in_ok < c->in_len && (c->ph == PH_HEAD || c->ph == PH_BODY)) {
        uint8_t *p = c->in + c->in_ok;
        size_t avail = c->in_len - c->in_ok;
        srv_h1_error e;
        if (c->ph == PH_HEAD) {
            /* empty lines before a request line are ignored (RFC 9112 2.2) */
            if (c->scanned == 0 && p[0] == '\r') {
                if (avail < 2)
                    return;
                if (p[1] != '\n') {
                    fail(g, c, 400, "a CR not followed by LF in the request head");
                    return;
                }
                memmove(p, p + 2, avail - 2);
                c->in_len -= 2;
                continue;
            }
            if (!c->t_head)
                c->t_head = now;
            long n = srv_h1_head_scan(p, avail, &c->scanned, max_head, &e);
            if (n == 0)
                return;
            srv_h1_head h;
            if (n < 0 || srv_h1_parse_head(p, (size_t)n, max_body, &h, &e) != 0) {
                fail(g, c, e.status, "%s", e.message);
                return;
            }
            if (c->mfd < 0 && attach(g, c) != 0) {
                fail(g, c, 503, "the server cannot take the connection now; retry later");
                return;
            }
            c->forwarded++;
            c->in_ok += (size_t)n;
            c->scanned = 0;
            c->t_head = 0;
            srv_h1_body_begin(&c->body, &h, max_body);
            if (!c->body.done) {
                c->ph = PH_BODY;
                c->t_body = now;
            }
        } else {
            long n = srv_h1_body_feed(&c->body, p, avail, &e);
            if (n < 0) {
                fail(g, c, e.status, "%s", e.message);
                return;
            }
            c->in_ok += (size_t)n;
            if (c->body.done)
                c->ph = PH_HEAD;
        }
    }
}

/* Contract: writes validated client bytes to libmicrohttpd. */
static void forward(srv_gate *g, gconn *c)
{
    (void)g;
    while (c->in_ok > 0 && c->mfd >= 0) {
        ssize_t n = send(c->mfd, c->in, c->in_ok, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* EAGAIN: later; an error shows up as a hang-up on read */
        memmove(c->in, c->in + n, c->in_len - (size_t)n);
        c->in_ok -= (size_t)n;
        c->in_len -= (size_t)n;
    }
}

/* Contract: writes pending bytes to the client; -1 when it is gone. */
static int flush_client(gconn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n =
            send(c->cfd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1;
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

/* Contract: reads what libmicrohttpd sent into `out`; 1 at its EOF. */
static int read_mhd(gconn *c)
{
    while (c->mfd >= 0 && c->out_len < OUT_CAP) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        ssize_t n = recv(c->mfd, c->out + c->out_len, OUT_CAP - c->out_len, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return 1;
        c->out_len += (size_t)n;
    }
    return 0;
}

/* Contract: a PH_FAIL connection whose earlier requests are all answered
 * and relayed gets our reply queued; libmicrohttpd's side is closed. */
static void maybe_reply(srv_gate *g, gconn *c, double now)
{
    if (c->ph != PH_FAIL)
        return;
    if (c->mfd >= 0) {
        uint64_t done = c->link ? __atomic_load_n(&c->link->completed, __ATOMIC_ACQUIRE) : 0;
        int mhd_eof = read_mhd(c);
        if (!mhd_eof && done < c->need && now - c->t_phase < FAIL_WAIT_S)
            return;
        if (!mhd_eof && c->out_len >= OUT_CAP)
            return; /* its last bytes first: the client has to read */
        close_mhd_side(g, c);
    }
    if (c->out_len > c->out_off && c->out_len + 1024 > OUT_CAP)
        return; /* room for the reply once the client reads */
    if (!c->out && !(c->out = malloc(OUT_CAP))) {
        c->ph = PH_LINGER; /* nothing to send it from: just close */
        return;
    }
    if (c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    c->out_len += error_response(g, (char *)c->out + c->out_len, OUT_CAP - c->out_len,
                                 c->err_status, c->err_status == 503 ? 1 : 0, c->err_msg);
    srv_log_info("gate: %s: %d %s", c->peer, c->err_status, c->err_msg);
    srv_metrics_request(g->srv->metrics, SRV_ROUTE_OTHER, c->err_status,
                        now - (c->t_head ? c->t_head : c->t_phase));
    c->ph = PH_REPLY;
    c->in_len = c->in_ok = 0;
}

/* Contract: runs the connection's state machine after any event or tick;
 * frees it when it is done (returns 1 then). */
static int step(srv_gate *g, gconn *c, double now)
{
    if (c->ph == PH_HEAD || c->ph == PH_BODY)
        process(g, c, now);
    forward(g, c);
    if (c->ph == PH_FAIL)
        maybe_reply(g, c, now);
    /* After libmicrohttpd's hang-up its side is no longer polled, so what it
     * left in the socket pair is read here until the client's socket is full
     * (then EPOLLOUT brings us back) or its EOF: stopping once `out` was
     * flushed would strand the rest of a response larger than OUT_CAP. */
    do {
        if (c->mfd >= 0 && c->ph != PH_FAIL && read_mhd(c)) {
            /* libmicrohttpd closed (Connection: close, its idle timeout): flush */
            close_mhd_side(g, c);
            if (c->ph == PH_HEAD || c->ph == PH_BODY)
                c->ph = PH_CLOSING;
        }
        if (flush_client(c) != 0)
            goto gone;
    } while (c->mfd >= 0 && c->mhd_hup && c->ph != PH_FAIL && c->out_len == 0);
    if ((c->ph == PH_CLOSING || c->ph == PH_REPLY) && c->out_len == 0) {
        shutdown(c->cfd, SHUT_WR);
        c->ph = PH_LINGER;
        c->t_phase = now;
        c->in_len = c->in_ok = 0;
    }
    set_interest(g, c);
    return 0;
gone:
    conn_close(g, c);
    return 1;
}

/* Contract: the client sent bytes or closed. A client that closes (or
 * half-closes) its side has abandoned whatever it asked: libmicrohttpd
 * sees the hang-up, and a suspended request's queued job is dropped by
 * http.c's sweep. After our error reply, its EOF ends the linger. */
static int on_client(srv_gate *g, gconn *c, uint32_t ev, double now)
{
    if (ev & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
        conn_close(g, c);
        return 1;
    }
    while (ev & EPOLLIN) {
        ssize_t n;
        if (c->ph == PH_LINGER) {
            char junk[4096];
            n = recv(c->cfd, junk, sizeof junk, MSG_DONTWAIT);
        } else {
            if (c->in_len >= c->in_cap || (c->ph != PH_HEAD && c->ph != PH_BODY))
                break;
            n = recv(c->cfd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            conn_close(g, c);
            return 1;
        }
        if (c->ph != PH_LINGER)
            c->in_len += (size_t)n;
    }
    return step(g, c, now);
}

/*
 * Contract: at max-connections, a connection still waiting for its first
 * request head (not yet handed to libmicrohttpd) may give way to the new
 * one from `key`: the one of the client holding the most connections (the
 * longest waiting among its), when that client holds more than the
 * newcomer will, or else the longest waiting one when it has waited over
 * 1 s. It gets a best-effort 408 and is closed. So a slowloris from many
 * addresses, each under max-connections-per-client, cannot keep a client
 * with few connections out, and a request sent at once is never dropped
 * for a slow one.
 */
static void make_room(srv_gate *g, const srv_client_key *key, double now)
{
    gconn *heavy = NULL, *oldest = NULL;
    int heavy_n = 0, mine = srv_clients_conns(g->clients, key); /* the newcomer counted */
    for (gconn *c = g->conns; c; c = c->next) {
        if (c->ph != PH_HEAD || c->mfd >= 0)
            continue;
        if (!oldest || c->t_head < oldest->t_head)
            oldest = c;
        int n = srv_clients_conns(g->clients, &c->key);
        if (n > heavy_n || (n == heavy_n && heavy && c->t_head < heavy->t_head)) {
            heavy = c;
            heavy_n = n;
        }
    }
    gconn *v = heavy && heavy_n > mine                ? heavy
               : oldest && now - oldest->t_head > 1.0 ? oldest
                                                      : NULL;
    if (!v)
        return;
    char buf[1024];
    size_t n = error_response(g, buf, sizeof buf, 408, 0,
                              "the server is at max-connections and this request head gave way "
                              "to another client's");
    if (n && send(v->cfd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        srv_log_debug("gate: %s: %s", v->peer, strerror(errno));
    srv_metrics_request(g->srv->metrics, SRV_ROUTE_OTHER, 408, now - v->t_head);
    conn_close(g, v);
}

static void on_accept(srv_gate *g, double now)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(g->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                srv_log_warn("gate: accept: %s", strerror(errno));
            return;
        }
        srv_client_key key;
        char peer[64];
        srv_client_key_of((struct sockaddr *)&ss, sl, &key);
        srv_client_key_str(&key, peer, sizeof peer);
        /* the client's own limit first: a refused newcomer never costs
         * another client its connection */
        int per = (int)opt(g, SRV_OPT_MAX_CONNECTIONS_PER_CLIENT);
        int rc = srv_clients_conn_add(g->clients, &key, per);
        if (rc != 0) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     rc == -1 ? "your address holds max-connections-per-client (%d) connections; "
                                "close one or retry later"
                              : "too many clients at once (%d per client); retry later",
                     per);
            refuse(g, fd, peer, 429, msg);
            continue;
        }
        int maxc = (int)opt(g, SRV_OPT_MAX_CONNECTIONS);
        if (__atomic_load_n(&g->n_conns, __ATOMIC_RELAXED) >= maxc)
            make_room(g, &key, now);
        if (__atomic_load_n(&g->n_conns, __ATOMIC_RELAXED) >= maxc) {
            char msg[160];
            srv_clients_conn_del(g->clients, &key);
            snprintf(msg, sizeof msg,
                     "the server holds max-connections (%d) connections; retry later", maxc);
            refuse(g, fd, peer, 503, msg);
            continue;
        }
        gconn *c = calloc(1, sizeof *c);
        size_t cap = (size_t)opt(g, SRV_OPT_MAX_HEADER_BYTES) + IN_SPARE;
        if (c)
            c->in = malloc(cap);
        if (!c || !c->in) {
            free(c);
            srv_clients_conn_del(g->clients, &key);
            refuse(g, fd, peer, 503, "out of memory; retry later");
            continue;
        }
        c->cfd = fd;
        c->mfd = -1;
        c->ec.c = c->em.c = c;
        c->em.which = 1;
        c->key = key;
        snprintf(c->peer, sizeof c->peer, "%s", peer);
        memcpy(&c->addr, &ss, sizeof ss);
        c->addrlen = sl;
        c->in_cap = cap;
        c->t_head = now; /* the first head's clock starts at accept */
        c->next = g->conns;
        if (g->conns)
            g->conns->prev = c;
        g->conns = c;
        __atomic_add_fetch(&g->n_conns, 1, __ATOMIC_RELAXED);
        srv_metrics_gauge_set(&g->srv->metrics->connections,
                              __atomic_load_n(&g->n_conns, __ATOMIC_RELAXED));
        set_interest(g, c);
    }
}

/* Contract: deadlines of every connection; runs every tick. */
static void sweep(srv_gate *g, double now)
{
    double th = (double)opt(g, SRV_OPT_HEADER_TIMEOUT_MS) * 1e-3;
    double tb = (double)opt(g, SRV_OPT_BODY_TIMEOUT_MS) * 1e-3;
    gconn *next;
    for (gconn *c = g->conns; c; c = next) {
        next = c->next;
        if (c->ph == PH_HEAD && c->t_head && now - c->t_head > th)
            fail(g, c, 408, "the request head did not arrive within header-timeout-ms (%lld)",
                 (long long)opt(g, SRV_OPT_HEADER_TIMEOUT_MS));
        else if (c->ph == PH_BODY && now - c->t_body > tb)
            fail(g, c, 408, "the request body did not arrive within body-timeout-ms (%lld)",
                 (long long)opt(g, SRV_OPT_BODY_TIMEOUT_MS));
        if (c->ph == PH_LINGER && now - c->t_phase > LINGER_S) {
            conn_close(g, c);
            continue;
        }
        if (c->ph == PH_FAIL)
            step(g, c, now);
    }
}

static void *gate_main(void *arg)
{
    srv_gate *g = arg;
    struct epoll_event evs[64];
    double last_sweep = 0;
    while (!__atomic_load_n(&g->stop, __ATOMIC_ACQUIRE)) {
        int n = epoll_wait(g->epfd, evs, 64, 50);
        double now = srv_now();
        if (__atomic_load_n(&g->quiesce, __ATOMIC_ACQUIRE) && g->listen_fd >= 0) {
            epoll_ctl(g->epfd, EPOLL_CTL_DEL, g->listen_fd, NULL);
            close(g->listen_fd);
            g->listen_fd = -1;
        }
        for (int i = 0; i < n; i++) {
            gend *e = evs[i].data.ptr;
            if (e == &g->e_wake) {
                uint64_t v;
                if (read(g->wake_fd, &v, sizeof v) < 0)
                    srv_log_debug("gate: wake: %s", strerror(errno));
                continue;
            }
            if (e == &g->e_listen) {
                if (g->listen_fd >= 0)
                    on_accept(g, now);
                continue;
            }
            /* a connection closed earlier in this batch may still have
             * events in this array */
            gconn *c = e->c;
            if (c->dead)
                continue;
            if (e->which == 0) {
                on_client(g, c, evs[i].events, now);
            } else {
                if (evs[i].events & (EPOLLHUP | EPOLLERR)) {
                    /* drained by read_mhd as the client makes room; not
                     * polled again (a hang-up stays ready) */
                    if (c->reg_m)
                        epoll_ctl(g->epfd, EPOLL_CTL_DEL, c->mfd, NULL);
                    c->reg_m = 0;
                    c->mhd_hup = 1;
                }
                step(g, c, now);
            }
        }
        if (now - last_sweep >= 0.05) {
            sweep(g, now);
            last_sweep = now;
        }
        free_dead(g);
    }
    while (g->conns)
        conn_close(g, g->conns);
    free_dead(g);
    return NULL;
}

int srv_gate_start(srv_gate **out, srv_server *srv, struct MHD_Daemon *d, int listen_fd,
                   srv_clients *clients, char *err, size_t errlen)
{
    srv_gate *g = calloc(1, sizeof *g);
    if (!g)
        return srv_errf(err, errlen, "out of memory");
    g->srv = srv;
    g->d = d;
    g->clients = clients;
    g->listen_fd = listen_fd;
    g->e_listen.which = g->e_wake.which = -1;
    pthread_mutex_init(&g->mu, NULL);
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    g->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event el = {.events = EPOLLIN, .data.ptr = &g->e_listen};
    struct epoll_event ew = {.events = EPOLLIN, .data.ptr = &g->e_wake};
    if (g->epfd < 0 || g->wake_fd < 0 || epoll_ctl(g->epfd, EPOLL_CTL_ADD, listen_fd, &el) != 0 ||
        epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->wake_fd, &ew) != 0) {
        srv_errf(err, errlen, "gate: epoll: %s", strerror(errno));
        goto fail;
    }
    /* published before the thread runs: libmicrohttpd's threads look the
     * gate up (srv_gate_link_take) as soon as it hands them a connection */
    *out = g;
    int rc = pthread_create(&g->thread, NULL, gate_main, g);
    if (rc != 0) {
        *out = NULL;
        srv_errf(err, errlen, "gate: cannot start its thread: %s", strerror(rc));
        goto fail;
    }
    g->started = 1;
    return 0;
fail:
    if (g->epfd >= 0)
        close(g->epfd);
    if (g->wake_fd >= 0)
        close(g->wake_fd);
    pthread_mutex_destroy(&g->mu);
    free(g);
    return -1;
}

static void wake(srv_gate *g)
{
    uint64_t one = 1;
    if (write(g->wake_fd, &one, sizeof one) < 0)
        srv_log_debug("gate: wake: %s", strerror(errno));
}

void srv_gate_quiesce(srv_gate *g)
{
    if (!g)
        return;
    __atomic_store_n(&g->quiesce, 1, __ATOMIC_RELEASE);
    wake(g);
}

int srv_gate_connections(srv_gate *g)
{
    return g ? __atomic_load_n(&g->n_conns, __ATOMIC_RELAXED) : 0;
}

void srv_gate_stop(srv_gate *g)
{
    if (!g)
        return;
    if (g->started) {
        __atomic_store_n(&g->stop, 1, __ATOMIC_RELEASE);
        wake(g);
        pthread_join(g->thread, NULL);
    }
    if (g->listen_fd >= 0)
        close(g->listen_fd);
    pthread_mutex_lock(&g->mu);
    while (g->links)
        link_unregister(g, g->links);
    pthread_mutex_unlock(&g->mu);
    close(g->epfd);
    close(g->wake_fd);
    pthread_mutex_destroy(&g->mu);
    free(g);
}
