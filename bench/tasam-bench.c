/*
 * bench/tasam-bench.c: the bundled HTTP load tester for tasamd.
 *
 *   build/bench/tasam-bench [--url http://HOST:PORT] [--route segment|embeddings|healthz]
 *       [--image FILE] [--no-cache] [--points "x,y,l;..."] [--boxes "x0,y0,x1,y1;..."]
 *       [--multimask[=true|false]] [--output rle|png|polygon] [--concurrency N]
 *       [--requests N | --duration S] [--warmup N] [--timeout S] [--json] [--quiet]
 *
 * Plain sockets and HTTP/1.1 keep-alive, one connection per client thread
 * (reopened when the server closes it), so what is measured is the daemon
 * and the kernel's loopback, not a client library. The request bytes are
 * built once and shared read-only by every thread: the client's own work per
 * request is one send, the response parse and one JSON parse (every 200 is
 * checked, since a fast wrong answer must not count as throughput).
 *
 * The server is not trusted: headers are capped at 64 KiB, bodies at
 * 256 MiB (checked against Content-Length and chunk sizes before anything is
 * allocated), every wait has a deadline (--timeout covers connect, send and
 * the whole response), and anything unparsable is counted as an error of its
 * kind rather than crashing or hanging the run.
 *
 * A benchmark, never a test: it reports and asserts nothing about speed.
 * Exit status: 0 every measured request succeeded, 1 some failed (they are
 * in the report), 2 bad usage, 3 setup failed (image, address, image_id).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/base64.h"

#define MAX_REQUESTS     1000000 /* bound on recorded requests (memory: ~32 B each) */
#define MAX_DURATION_S   3600.0
#define MAX_CONCURRENCY  1024
#define MAX_BODY         ((size_t)256 << 20) /* largest response body accepted */
#define MAX_HEAD         (64 << 10) /* status line + headers, and any one chunk-size line */
#define MAX_HEADER_LINES 256

/* Transport failures, kept apart from HTTP statuses so that a run against a
 * broken server says what broke. */
enum {
    ERR_CONNECT = 1, /* connect refused / unreachable */
    ERR_TIMEOUT,     /* --timeout passed (connect, send or response) */
    ERR_CLOSED,      /* the server closed or reset the connection mid-response */
    ERR_MALFORMED,   /* not HTTP/1.x as we can parse it */
    ERR_TOO_LARGE,   /* body over MAX_BODY */
    ERR_SEND,        /* the request could not be written */
    ERR_NOMEM,
    ERR_INVALID, /* a 200 whose body is not the JSON the route promises */
    NERR
};
static const char *const err_names[NERR] = {
    "", "connect", "timeout", "closed", "malformed", "too_large", "send", "nomem", "invalid_body",
};

/* timings_ms stages, in the API's order (schema/openapi.yaml, Timings). */
enum { ST_DECODE, ST_QUEUE, ST_ENCODE, ST_DECODE_MASKS, ST_POSTPROCESS, ST_TOTAL, NST };
static const char *const stage_names[NST] = {"decode",       "queue",       "encode",
                                             "decode_masks", "postprocess", "total"};

enum { ROUTE_SEGMENT, ROUTE_EMBEDDINGS, ROUTE_HEALTHZ };

typedef struct {
    char url[1024];
    int route;
    const char *image;
    int no_cache;
    const char *points, *boxes, *output;
    int multimask; /* -1: not sent (server default) */
    int concurrency;
    long requests;   /* 0: not given */
    double duration; /* 0: not given */
    long warmup;
    double timeout_s;
    int json, quiet;
} options;

/* Where to connect and what to put in the request line and Host header. */
typedef struct {
    struct addrinfo *ai;
    char host_hdr[300];
    char prefix[512]; /* path prefix from the URL, without a trailing '/' */
} target;

/* One result. status > 0: an HTTP status; < 0: -ERR_*. Timings are NaN
 * where the response had none. Floats keep 1e6 records at ~32 MB. */
typedef struct {
    float lat_ms;
    int status;
    float t[NST];
} record;

typedef struct {
    int fd;
    long nresp; /* responses read on this connection: 0 means fresh */
    size_t rx;  /* bytes received for the current response */
    char *in;   /* read buffer: bytes not yet consumed are in[off, len) */
    size_t cap, len, off;
} hconn;

typedef struct {
    int status;
    int close; /* the server will close (Connection: close, HTTP/1.0, read-to-EOF) */
    char *body;
    size_t len, cap;
} hresp;

static volatile sig_atomic_t g_stop;

static void on_sigint(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- connection ------------------------------------------------------- */

static void conn_close(hconn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->nresp = 0;
    c->len = c->off = 0;
}

/* Wait for ev on fd until the deadline. 0 ready, -ERR_TIMEOUT, -ERR_CLOSED. */
static int wait_fd(int fd, short ev, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ns();
        if (left <= 0)
            return -ERR_TIMEOUT;
        struct pollfd p = {.fd = fd, .events = ev};
        int ms = (int)((left + 999999) / 1000000);
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 0; /* errors/hangups surface in the following recv/send */
        if (r < 0 && errno != EINTR)
            return -ERR_CLOSED;
    }
}

/* Non-blocking connect to each address in turn, bounded by the deadline. */
static int conn_open(hconn *c, const target *t, int64_t deadline)
{
    int last = -ERR_CONNECT;
    for (struct addrinfo *a = t->ai; a; a = a->ai_next) {
        int fd =
            socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        int r = connect(fd, a->ai_addr, a->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            r = wait_fd(fd, POLLOUT, deadline);
            if (r == 0) {
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0)
                    r = -ERR_CONNECT;
            }
        } else if (r != 0) {
            r = -ERR_CONNECT;
        }
        if (r == 0) {
            /* Requests are one write each; Nagle would only add delay. */
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            c->fd = fd;
            c->nresp = 0;
            c->len = c->off = 0;
            return 0;
        }
        close(fd);
        last = r;
        if (r == -ERR_TIMEOUT)
            break;
    }
    return last;
}

static int send_all(hconn *c, const char *p, size_t n, int64_t deadline)
{
    while (n) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            int r = wait_fd(c->fd, POLLOUT, deadline);
            if (r)
                return r;
        } else {
            return -ERR_SEND;
        }
    }
    return 0;
}

/* Receive into p (up to n bytes). >0 bytes, 0 EOF, or -ERR_*. */
static ssize_t recv_some(hconn *c, char *p, size_t n, int64_t deadline)
{
    for (;;) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r > 0) {
            c->rx += (size_t)r;
            return r;
        }
        if (r == 0)
            return 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            int w = wait_fd(c->fd, POLLIN, deadline);
            if (w)
                return w;
            continue;
        }
        return -ERR_CLOSED; /* ECONNRESET and friends */
    }
}

/* Read more into the line buffer, which never grows past MAX_HEAD + 1 KiB:
 * a header line or chunk-size line longer than that is malformed. */
static int fill(hconn *c, int64_t deadline)
{
    if (c->off == c->len) {
        c->off = c->len = 0;
    } else if (c->off > 0 && c->len == c->cap) {
        memmove(c->in, c->in + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 16384;
        if (ncap > MAX_HEAD + 1024)
            return -ERR_MALFORMED;
        char *n = realloc(c->in, ncap);
        if (!n)
            return -ERR_NOMEM;
        c->in = n;
        c->cap = ncap;
    }
    ssize_t r = recv_some(c, c->in + c->len, c->cap - c->len, deadline);
    if (r == 0)
        return -ERR_CLOSED;
    if (r < 0)
        return (int)r;
    c->len += (size_t)r;
    return 0;
}

/* Next line (CRLF or bare LF, terminator stripped, NUL-terminated in place).
 * The pointer is valid until the next read from c. */
static int read_line(hconn *c, int64_t deadline, char **line, size_t *len)
{
    size_t scanned = 0;
    for (;;) {
        size_t avail = c->len - c->off;
        char *lf = avail > scanned ? memchr(c->in + c->off + scanned, '\n', avail - scanned) : NULL;
        if (lf) {
            char *s = c->in + c->off;
            size_t n = (size_t)(lf - s);
            c->off += n + 1;
            if (n && s[n - 1] == '\r')
                n--;
            s[n] = '\0';
            *line = s;
            *len = n;
            return 0;
        }
        /* fill may move the unread bytes to the front; scanned counts from
         * off, the line's start, so it stays right. */
        scanned = avail;
        int r = fill(c, deadline);
        if (r)
            return r;
    }
}

/* Make room for n more body bytes, never past MAX_BODY (+1 for the NUL). */
static int body_reserve(hresp *r, size_t n)
{
    if (n > MAX_BODY || r->len > MAX_BODY - n)
        return -ERR_TOO_LARGE;
    size_t need = r->len + n + 1;
    if (need <= r->cap)
        return 0;
    size_t ncap = r->cap ? r->cap : 4096;
    while (ncap < need)
        ncap = ncap > (MAX_BODY + 1) / 2 ? MAX_BODY + 1 : ncap * 2;
    char *b = realloc(r->body, ncap);
    if (!b)
        return -ERR_NOMEM;
    r->body = b;
    r->cap = ncap;
    return 0;
}

/* Exactly n body bytes: first what the line buffer holds, then straight
 * from the socket into the body. */
static int read_body_n(hconn *c, hresp *r, size_t n, int64_t deadline)
{
    int e = body_reserve(r, n);
    if (e)
        return e;
    size_t have = c->len - c->off;
    size_t take = have < n ? have : n;
    if (take) {
        memcpy(r->body + r->len, c->in + c->off, take);
        c->off += take;
        r->len += take;
    }
    n -= take;
    while (n) {
        ssize_t got = recv_some(c, r->body + r->len, n, deadline);
        if (got == 0)
            return -ERR_CLOSED;
        if (got < 0)
            return (int)got;
        r->len += (size_t)got;
        n -= (size_t)got;
    }
    return 0;
}

static int read_body_to_eof(hconn *c, hresp *r, int64_t deadline)
{
    int e = read_body_n(c, r, c->len - c->off, deadline);
    if (e)
        return e;
    for (;;) {
        if ((e = body_reserve(r, 65536)) != 0) {
            /* Near the cap: one more byte decides between "exactly at the
             * limit" and "over it". */
            if ((e = body_reserve(r, 1)) != 0)
                return e;
        }
        size_t room = r->cap - 1 - r->len;
        ssize_t got = recv_some(c, r->body + r->len, room, deadline);
        if (got == 0)
            return 0;
        if (got < 0)
            return (int)got;
        r->len += (size_t)got;
    }
}

/* Case-insensitive: does the comma-separated list contain token? If last
 * is set, only its last element counts (Transfer-Encoding). */
static int has_token(const char *v, const char *token, int last)
{
    size_t tl = strlen(token);
    int found = 0;
    while (*v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *e = v;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > v && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        int m = (size_t)(t - v) == tl && !strncasecmp(v, token, tl);
        if (last)
            found = m;
        else if (m)
            return 1;
        v = e;
    }
    return found;
}

static int parse_chunk_size(const char *s, size_t *out)
{
    size_t v = 0;
    int digits = 0;
    for (; *s; s++, digits++) {
        int d;
        if (*s >= '0' && *s <= '9')
            d = *s - '0';
        else if (*s >= 'a' && *s <= 'f')
            d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F')
            d = *s - 'A' + 10;
        else
            break;
        if (v > (SIZE_MAX >> 4))
            return -ERR_TOO_LARGE;
        v = v << 4 | (size_t)d;
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (!digits || (*s && *s != ';'))
        return -ERR_MALFORMED;
    *out = v;
    return 0;
}

static int read_chunked(hconn *c, hresp *r, int64_t deadline)
{
    char *line;
    size_t n;
    int e;
    for (;;) {
        size_t size;
        if ((e = read_line(c, deadline, &line, &n)) != 0)
            return e;
        if ((e = parse_chunk_size(line, &size)) != 0)
            return e;
        if (size == 0)
            break;
        if ((e = read_body_n(c, r, size, deadline)) != 0)
            return e;
        if ((e = read_line(c, deadline, &line, &n)) != 0)
            return e;
        if (n != 0)
            return -ERR_MALFORMED; /* chunk data must end with CRLF */
    }
    for (int i = 0;; i++) { /* trailer fields, ignored, up to the empty line */
        if (i > MAX_HEADER_LINES)
            return -ERR_MALFORMED;
        if ((e = read_line(c, deadline, &line, &n)) != 0)
            return e;
        if (n == 0)
            return 0;
    }
}

static int read_response(hconn *c, hresp *r, int64_t deadline)
{
    char *line;
    size_t n;
    int e, minor;
    int64_t clen;
    int chunked, te, conn_close_hdr, conn_ka;
    r->len = 0;
    r->status = 0;
    r->close = 0;
    for (;;) { /* 1xx interim responses are skipped */
        size_t head = 0;
        if ((e = read_line(c, deadline, &line, &n)) != 0)
            return e;
        head += n;
        if (n < 12 || memcmp(line, "HTTP/1.", 7) || line[7] < '0' || line[7] > '9' ||
            line[8] != ' ' || line[9] < '1' || line[9] > '5' || line[10] < '0' || line[10] > '9' ||
            line[11] < '0' || line[11] > '9' || (n > 12 && line[12] != ' '))
            return -ERR_MALFORMED;
        minor = line[7] - '0';
        r->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
        clen = -1;
        chunked = te = conn_close_hdr = conn_ka = 0;
        for (int i = 0;; i++) {
            if ((e = read_line(c, deadline, &line, &n)) != 0)
                return e;
            head += n + 2;
            if (n == 0)
                break;
            if (i >= MAX_HEADER_LINES || head > MAX_HEAD)
                return -ERR_MALFORMED;
            char *colon = memchr(line, ':', n);
            if (!colon || colon == line)
                return -ERR_MALFORMED;
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            char *end = line + n;
            while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
                *--end = '\0';
            if (!strcasecmp(line, "Content-Length")) {
                int64_t x = 0;
                if (!*v)
                    return -ERR_MALFORMED;
                for (const char *p = v; *p; p++) {
                    if (*p < '0' || *p > '9')
                        return -ERR_MALFORMED;
                    if (x > (INT64_MAX - 9) / 10)
                        return -ERR_TOO_LARGE;
                    x = x * 10 + (*p - '0');
                }
                if (clen >= 0 && clen != x)
                    return -ERR_MALFORMED; /* conflicting lengths: a smuggling shape */
                clen = x;
            } else if (!strcasecmp(line, "Transfer-Encoding")) {
                te = 1;
                chunked = has_token(v, "chunked", 1);
            } else if (!strcasecmp(line, "Connection")) {
                conn_close_hdr |= has_token(v, "close", 0);
                conn_ka |= has_token(v, "keep-alive", 0);
            }
        }
        if (r->status == 101)
            return -ERR_MALFORMED; /* we never asked to switch protocols */
        if (r->status >= 200)
            break;
    }
    r->close = conn_close_hdr || (minor == 0 && !conn_ka);
    if (r->status == 204 || r->status == 304)
        e = 0;
    else if (chunked)
        e = read_chunked(c, r, deadline);
    else if (te) {
        /* A coding other than chunked last: the body runs to the close. */
        r->close = 1;
        e = read_body_to_eof(c, r, deadline);
    } else if (clen >= 0) {
        if ((uint64_t)clen > MAX_BODY)
            return -ERR_TOO_LARGE;
        e = read_body_n(c, r, (size_t)clen, deadline);
    } else {
        r->close = 1;
        e = read_body_to_eof(c, r, deadline);
    }
    if (e)
        return e;
    if (r->body)
        r->body[r->len] = '\0';
    return 0;
}

/* One exchange. A reused keep-alive connection that the server closed while
 * idle (nothing at all came back) is reopened and the request sent again
 * once; *reconnects counts that. Any failure closes the connection. */
static int do_request(hconn *c, const target *t, const char *req, size_t req_len, hresp *r,
                      double timeout_s, long *reconnects)
{
    int64_t deadline = now_ns() + (int64_t)(timeout_s * 1e9);
    for (int attempt = 0;; attempt++) {
        int e;
        if (c->fd < 0 && (e = conn_open(c, t, deadline)) != 0)
            return e;
        int reused = c->nresp > 0;
        c->rx = 0;
        e = send_all(c, req, req_len, deadline);
        if (!e)
            e = read_response(c, r, deadline);
        if (!e) {
            c->nresp++;
            if (r->close)
                conn_close(c);
            return 0;
        }
        conn_close(c);
        if (attempt == 0 && reused && c->rx == 0 && (e == -ERR_CLOSED || e == -ERR_SEND)) {
            (*reconnects)++;
            continue;
        }
        return e;
    }
}

/* ---- validation and timings ------------------------------------------ */

/* Check a 200 body against what the route promises and pull timings_ms. */
static int check_body(int route, const hresp *r, float *t)
{
    for (int i = 0; i < NST; i++)
        t[i] = NAN;
    if (!r->len)
        return -ERR_INVALID;
    json_t *o = json_loadb(r->body, r->len, 0, NULL);
    int ok = 0;
    if (json_is_object(o)) {
        if (route == ROUTE_SEGMENT)
            ok = json_is_array(json_object_get(o, "masks"));
        else if (route == ROUTE_EMBEDDINGS)
            ok = json_is_string(json_object_get(o, "image_id"));
        else
            ok = 1;
        json_t *tm = json_object_get(o, "timings_ms");
        for (int i = 0; i < NST && json_is_object(tm); i++) {
            json_t *v = json_object_get(tm, stage_names[i]);
            if (json_is_number(v))
                t[i] = (float)json_number_value(v);
        }
    }
    json_decref(o);
    return ok ? 0 : -ERR_INVALID;
}

/* ---- workers ---------------------------------------------------------- */

typedef struct {
    const options *o;
    const target *t;
    const char *req;
    size_t req_len;
    /* Start gate: every thread warms up, then waits here, so measuring
     * starts together and warm-up requests never overlap measured ones. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, go;
    int64_t t_go;
    atomic_long warm_next, next, done, errors;
    atomic_int finished;
    atomic_int measuring;
} shared;

typedef struct {
    shared *s;
    pthread_t tid;
    record *rec;
    size_t n, cap;
    long warm_errors, reconnects;
    int64_t t0, t1;
    int oom;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    shared *s = w->s;
    const options *o = s->o;
    hconn c = {.fd = -1};
    hresp r = {0};
    float tm[NST];

    while (!g_stop && atomic_fetch_add(&s->warm_next, 1) < o->warmup) {
        int e = do_request(&c, s->t, s->req, s->req_len, &r, o->timeout_s, &w->reconnects);
        if (e || r.status != 200 || check_body(o->route, &r, tm))
            w->warm_errors++;
    }
    pthread_mutex_lock(&s->mu);
    s->ready++;
    while (!s->go)
        pthread_cond_wait(&s->cv, &s->mu);
    int64_t t_go = s->t_go;
    pthread_mutex_unlock(&s->mu);
    w->t0 = now_ns();
    int64_t end = o->duration > 0 ? t_go + (int64_t)(o->duration * 1e9) : INT64_MAX;
    long limit = o->requests > 0 ? o->requests : MAX_REQUESTS;
    while (!g_stop && now_ns() < end) {
        if (atomic_fetch_add(&s->next, 1) >= limit)
            break;
        if (w->n == w->cap) {
            size_t ncap = w->cap ? w->cap * 2 : 1024;
            record *nr = realloc(w->rec, ncap * sizeof *nr);
            if (!nr) {
                w->oom = 1;
                break;
            }
            w->rec = nr;
            w->cap = ncap;
        }
        int64_t a = now_ns();
        int e = do_request(&c, s->t, s->req, s->req_len, &r, o->timeout_s, &w->reconnects);
        int64_t b = now_ns();
        record *rc = &w->rec[w->n++];
        rc->lat_ms = (float)((b - a) / 1e6);
        for (int i = 0; i < NST; i++)
            rc->t[i] = NAN;
        rc->status = e ? e : r.status;
        if (!e && r.status == 200 && check_body(o->route, &r, rc->t) != 0)
            rc->status = -ERR_INVALID;
        atomic_fetch_add(&s->done, 1);
        if (rc->status != 200) {
            atomic_fetch_add(&s->errors, 1);
            /* A refused connect fails in microseconds: back off a little so
             * a dead server does not turn into a busy loop. */
            if (e == -ERR_CONNECT)
                nanosleep(&(struct timespec){0, 10000000}, NULL);
        }
    }
    w->t1 = now_ns();
    conn_close(&c);
    free(c.in);
    free(r.body);
    atomic_fetch_add(&s->finished, 1);
    return NULL;
}

/* ---- setup ------------------------------------------------------------ */

/* http://HOST[:PORT][/prefix], HOST a name, an IPv4 address or [IPv6]. */
static int parse_url(const char *url, target *t, char *err, size_t errlen)
{
    char host[256], port[16] = "80";
    const char *p;
    if (strncasecmp(url, "http://", 7) != 0) {
        snprintf(err, errlen, "--url must start with http:// (https is not supported): %.300s",
                 url);
        return -1;
    }
    p = url + 7;
    const char *slash = strchr(p, '/');
    size_t alen = slash ? (size_t)(slash - p) : strlen(p);
    if (alen == 0 || alen >= sizeof t->host_hdr || memchr(p, '@', alen)) {
        snprintf(err, errlen, "--url: bad host in %.300s", url);
        return -1;
    }
    memcpy(t->host_hdr, p, alen);
    t->host_hdr[alen] = '\0';
    const char *hs = t->host_hdr, *colon;
    size_t hl;
    if (hs[0] == '[') {
        const char *rb = strchr(hs, ']');
        if (!rb) {
            snprintf(err, errlen, "--url: unclosed '[' in %.300s", url);
            return -1;
        }
        hs++;
        hl = (size_t)(rb - hs);
        colon = rb[1] == ':' ? rb + 1 : NULL;
        if (rb[1] && !colon) {
            snprintf(err, errlen, "--url: junk after ']' in %.300s", url);
            return -1;
        }
    } else {
        colon = strrchr(hs, ':');
        hl = colon ? (size_t)(colon - hs) : strlen(hs);
    }
    if (hl == 0 || hl >= sizeof host) {
        snprintf(err, errlen, "--url: bad host in %.300s", url);
        return -1;
    }
    memcpy(host, hs, hl);
    host[hl] = '\0';
    if (colon) {
        const char *ps = colon + 1;
        size_t pl = strlen(ps);
        long v = 0;
        for (size_t i = 0; i < pl; i++)
            v = ps[i] >= '0' && ps[i] <= '9' && v < 100000 ? v * 10 + (ps[i] - '0') : 100000;
        if (pl == 0 || v < 1 || v > 65535) {
            snprintf(err, errlen, "--url: bad port in %.300s", url);
            return -1;
        }
        snprintf(port, sizeof port, "%ld", v);
    }
    size_t pl = slash ? strlen(slash) : 0;
    while (pl && slash[pl - 1] == '/')
        pl--;
    if (pl >= sizeof t->prefix ||
        (slash && (strchr(slash, ' ') || strchr(slash, '\r') || strchr(slash, '\n')))) {
        snprintf(err, errlen, "--url: bad path in %.300s", url);
        return -1;
    }
    if (pl)
        memcpy(t->prefix, slash, pl);
    t->prefix[pl] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int g = getaddrinfo(host, port, &hints, &t->ai);
    if (g != 0) {
        snprintf(err, errlen, "--url: cannot resolve %s: %s", host, gai_strerror(g));
        return -1;
    }
    return 0;
}

static int read_file(const char *path, uint8_t **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 1 << 16, n = 0;
    uint8_t *b = malloc(cap);
    while (b) {
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        if (cap >= MAX_BODY) { /* the daemon would refuse it anyway */
            free(b);
            b = NULL;
            break;
        }
        uint8_t *nb = realloc(b, cap * 2);
        if (!nb) {
            free(b);
            b = NULL;
            break;
        }
        b = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!b || bad) {
        free(b);
        return -1;
    }
    *buf = b;
    *len = n;
    return 0;
}

/* "a,b,c;d,e,f" -> [[a,b,c],[d,e,f]], each item exactly `arity` numbers. */
static json_t *parse_tuples(const char *s, int arity, const char *what, char *err, size_t errlen)
{
    json_t *arr = json_array();
    const char *p = s;
    while (arr && *p) {
        json_t *item = json_array();
        for (int k = 0; k < arity; k++) {
            char *end;
            errno = 0;
            double v = strtod(p, &end);
            if (end == p || errno || !isfinite(v) ||
                (k < arity - 1 ? *end != ',' : (*end && *end != ';'))) {
                snprintf(err, errlen,
                         "%s: expected %d comma-separated numbers per item, "
                         "items separated by ';': %s",
                         what, arity, s);
                json_decref(item);
                json_decref(arr);
                return NULL;
            }
            json_array_append_new(
                item, v == floor(v) && fabs(v) < 1e15 ? json_integer((json_int_t)v) : json_real(v));
            p = end + (*end == ',' || *end == ';');
        }
        json_array_append_new(arr, item);
    }
    if (arr && json_array_size(arr) == 0) {
        snprintf(err, errlen, "%s: empty", what);
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The whole request, head and body, as one buffer (sent as-is every time). */
static char *build_request(const target *t, const char *method, const char *path, const char *body,
                           size_t *len)
{
    size_t bl = body ? strlen(body) : 0;
    size_t cap = bl + strlen(t->prefix) + strlen(path) + strlen(t->host_hdr) + 256;
    char *req = malloc(cap);
    if (!req)
        return NULL;
    int h;
    if (body)
        h = snprintf(req, cap,
                     "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tasam-bench/1\r\n"
                     "Accept: application/json\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     method, t->prefix, path, t->host_hdr, bl);
    else
        h = snprintf(req, cap,
                     "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tasam-bench/1\r\n"
                     "Accept: application/json\r\n\r\n",
                     method, t->prefix, path, t->host_hdr);
    if (h < 0 || (size_t)h + bl >= cap) {
        free(req);
        return NULL;
    }
    if (body)
        memcpy(req + h, body, bl);
    *len = (size_t)h + bl;
    req[*len] = '\0';
    return req;
}

/* POST the image to /v1/embeddings once; the image_id comes back in idbuf. */
static int fetch_image_id(const target *t, const char *b64, double timeout_s, char *idbuf,
                          size_t idlen, char *err, size_t errlen)
{
    json_t *o = json_pack("{s:s}", "image", b64);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    size_t rl = 0;
    char *req = body ? build_request(t, "POST", "/v1/embeddings", body, &rl) : NULL;
    free(body);
    if (!req) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    hconn c = {.fd = -1};
    hresp r = {0};
    long rec = 0;
    int rc = -1;
    int e = do_request(&c, t, req, rl, &r, timeout_s, &rec);
    if (e) {
        snprintf(err, errlen, "POST /v1/embeddings: %s", err_names[-e]);
    } else if (r.status != 200) {
        snprintf(err, errlen, "POST /v1/embeddings answered %d: %.300s", r.status,
                 r.body ? r.body : "");
    } else {
        json_t *j = json_loadb(r.body, r.len, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "image_id"));
        if (id && strlen(id) < idlen) {
            snprintf(idbuf, idlen, "%s", id);
            rc = 0;
        } else {
            snprintf(err, errlen, "POST /v1/embeddings: no image_id in the answer");
        }
        json_decref(j);
    }
    conn_close(&c);
    free(c.in);
    free(r.body);
    free(req);
    return rc;
}

/* ---- report ----------------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static double pct(const float *v, size_t n, double p)
{
    if (!n)
        return NAN;
    double rank = ceil(p / 100.0 * (double)n);
    size_t i = rank < 1 ? 0 : (size_t)rank - 1;
    return v[i < n ? i : n - 1];
}

static json_t *jnum(double v)
{
    return isfinite(v) ? json_real(round(v * 1000) / 1000) : json_null();
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: tasam-bench [options]\n"
        "HTTP load tester for tasamd (keep-alive, one connection per thread).\n"
        "  --url http://HOST:PORT    server (default http://127.0.0.1:8080)\n"
        "  --route R                 segment (default), embeddings or healthz\n"
        "  --image FILE              JPEG/PNG; for segment it is POSTed once to /v1/embeddings\n"
        "                            and requests send its image_id\n"
        "  --no-cache                send the base64 image in every segment request instead\n"
        "  --points \"x,y,l;...\"      point prompts (l: 1 foreground, 0 background)\n"
        "  --boxes \"x0,y0,x1,y1;...\" box prompts\n"
        "  --multimask[=true|false]  send multimask (default: not sent, the server's default)\n"
        "  --output rle|png|polygon  mask encoding (default: not sent, rle)\n"
        "  --concurrency N           client threads, each with its own connection (default 1)\n"
        "  --requests N              measured requests in all (at most %d; default 100)\n"
        "  --duration S              or measure for S seconds (at most %.0f)\n"
        "  --warmup N                unmeasured requests first (default 0)\n"
        "  --timeout S               per request: connect, send and whole response (default 60)\n"
        "  --json                    machine-readable summary on stdout\n"
        "  --quiet                   no progress line on stderr\n"
        "  --help                    this text\n"
        "Reports errors by status (429/503/504 apart) and by transport failure (a 200 whose\n"
        "body is not the route's JSON counts as invalid_body, not as 200), throughput,\n"
        "latency of successful requests (min/p50/p90/p99/p99.9/max from every sample), the\n"
        "p50 of each server stage (timings_ms) and the HTTP+JSON overhead: client latency\n"
        "minus the server's queue, encode, decode_masks and postprocess time, split into\n"
        "the server's unstaged time (total - stages) and the time outside it (latency - total).\n"
        "Exit: 0 all succeeded, 1 some failed, 2 usage, 3 setup failed.\n",
        MAX_REQUESTS, MAX_DURATION_S);
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_secs(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a bad option (message printed). */
static int parse_args(int argc, char **argv, options *o)
{
    enum {
        O_URL = 256,
        O_ROUTE,
        O_IMAGE,
        O_NOCACHE,
        O_POINTS,
        O_BOXES,
        O_MULTI,
        O_OUTPUT,
        O_CONC,
        O_REQ,
        O_DUR,
        O_WARM,
        O_TIMEOUT,
        O_JSON,
        O_QUIET,
        O_HELP
    };
    static const struct option lo[] = {{"url", required_argument, 0, O_URL},
                                       {"route", required_argument, 0, O_ROUTE},
                                       {"image", required_argument, 0, O_IMAGE},
                                       {"no-cache", no_argument, 0, O_NOCACHE},
                                       {"points", required_argument, 0, O_POINTS},
                                       {"boxes", required_argument, 0, O_BOXES},
                                       {"multimask", optional_argument, 0, O_MULTI},
                                       {"output", required_argument, 0, O_OUTPUT},
                                       {"concurrency", required_argument, 0, O_CONC},
                                       {"requests", required_argument, 0, O_REQ},
                                       {"duration", required_argument, 0, O_DUR},
                                       {"warmup", required_argument, 0, O_WARM},
                                       {"timeout", required_argument, 0, O_TIMEOUT},
                                       {"json", no_argument, 0, O_JSON},
                                       {"quiet", no_argument, 0, O_QUIET},
                                       {"help", no_argument, 0, O_HELP},
                                       {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    snprintf(o->url, sizeof o->url, "http://127.0.0.1:8080");
    o->multimask = -1;
    o->concurrency = 1;
    o->timeout_s = 60;
    opterr = 0;
    optind = 1;
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        const char *a = optarg;
        switch (ch) {
        case O_URL:
            if (strlen(a) >= sizeof o->url)
                goto bad;
            snprintf(o->url, sizeof o->url, "%s", a);
            break;
        case O_ROUTE:
            if (!strcmp(a, "segment"))
                o->route = ROUTE_SEGMENT;
            else if (!strcmp(a, "embeddings"))
                o->route = ROUTE_EMBEDDINGS;
            else if (!strcmp(a, "healthz"))
                o->route = ROUTE_HEALTHZ;
            else
                goto bad;
            break;
        case O_IMAGE:
            o->image = a;
            break;
        case O_NOCACHE:
            o->no_cache = 1;
            break;
        case O_POINTS:
            o->points = a;
            break;
        case O_BOXES:
            o->boxes = a;
            break;
        case O_MULTI:
            if (!a || !strcmp(a, "true") || !strcmp(a, "1"))
                o->multimask = 1;
            else if (!strcmp(a, "false") || !strcmp(a, "0"))
                o->multimask = 0;
            else
                goto bad;
            break;
        case O_OUTPUT:
            if (strcmp(a, "rle") && strcmp(a, "png") && strcmp(a, "polygon"))
                goto bad;
            o->output = a;
            break;
        case O_CONC:
            if (parse_long(a, 1, MAX_CONCURRENCY, &v))
                goto bad;
            o->concurrency = (int)v;
            break;
        case O_REQ:
            if (parse_long(a, 1, MAX_REQUESTS, &o->requests))
                goto bad;
            break;
        case O_DUR:
            if (parse_secs(a, 0.001, MAX_DURATION_S, &o->duration))
                goto bad;
            break;
        case O_WARM:
            if (parse_long(a, 0, MAX_REQUESTS, &o->warmup))
                goto bad;
            break;
        case O_TIMEOUT:
            if (parse_secs(a, 0.001, 3600, &o->timeout_s))
                goto bad;
            break;
        case O_JSON:
            o->json = 1;
            break;
        case O_QUIET:
            o->quiet = 1;
            break;
        case O_HELP:
            usage(stdout);
            return 1;
        default:
            fprintf(stderr, "tasam-bench: unknown option or missing value: %s\n", argv[optind - 1]);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "tasam-bench: bad value for %s: %s\n", argv[optind - 1], a ? a : "");
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "tasam-bench: unexpected argument: %s\n", argv[optind]);
        return 2;
    }
    if (o->requests == 0 && o->duration == 0)
        o->requests = 100;
    if (o->route != ROUTE_HEALTHZ && !o->image) {
        fprintf(stderr, "tasam-bench: --route %s needs --image FILE\n",
                o->route == ROUTE_SEGMENT ? "segment" : "embeddings");
        return 2;
    }
    if (o->route != ROUTE_SEGMENT &&
        (o->points || o->boxes || o->multimask >= 0 || o->output || o->no_cache)) {
        fprintf(stderr, "tasam-bench: prompt options and --no-cache apply to --route segment\n");
        return 2;
    }
    return 0;
}

/* Builds the measured request. Returns 0, 2 (usage) or 3 (setup). */
static int prepare(const options *o, const target *t, char **req, size_t *req_len, char *err,
                   size_t errlen)
{
    if (o->route == ROUTE_HEALTHZ) {
        *req = build_request(t, "GET", "/healthz", NULL, req_len);
        return *req ? 0 : 3;
    }
    uint8_t *img = NULL;
    size_t img_len = 0;
    if (read_file(o->image, &img, &img_len) != 0) {
        snprintf(err, errlen, "cannot read --image %s", o->image);
        return 3;
    }
    char *b64 = srv_base64_encode(img, img_len);
    free(img);
    if (!b64) {
        snprintf(err, errlen, "out of memory");
        return 3;
    }
    json_t *body = json_object();
    int rc = 0;
    if (o->route == ROUTE_EMBEDDINGS) {
        json_object_set_new(body, "image", json_string(b64));
    } else {
        /* Prompts first: a typo is a usage error, found before any traffic. */
        if (o->points) {
            json_t *p = parse_tuples(o->points, 3, "--points", err, errlen);
            if (!p)
                rc = 2;
            json_object_set_new(body, "points", p ? p : json_null());
        }
        if (!rc && o->boxes) {
            json_t *b = parse_tuples(o->boxes, 4, "--boxes", err, errlen);
            if (!b)
                rc = 2;
            json_object_set_new(body, "boxes", b ? b : json_null());
        }
        if (!rc && o->no_cache) {
            json_object_set_new(body, "image", json_string(b64));
        } else if (!rc) {
            char id[128];
            if (fetch_image_id(t, b64, o->timeout_s, id, sizeof id, err, errlen) != 0)
                rc = 3;
            else
                json_object_set_new(body, "image_id", json_string(id));
        }
        if (o->multimask >= 0)
            json_object_set_new(body, "multimask", json_boolean(o->multimask));
        if (o->output)
            json_object_set_new(body, "output", json_string(o->output));
    }
    free(b64);
    if (!rc) {
        char *s = json_dumps(body, JSON_COMPACT);
        *req = s ? build_request(t, "POST",
                                 o->route == ROUTE_SEGMENT ? "/v1/segment" : "/v1/embeddings", s,
                                 req_len)
                 : NULL;
        free(s);
        if (!*req) {
            snprintf(err, errlen, "out of memory");
            rc = 3;
        }
    }
    json_decref(body);
    return rc;
}

static const char *route_path(int route)
{
    return route == ROUTE_SEGMENT      ? "POST /v1/segment"
           : route == ROUTE_EMBEDDINGS ? "POST /v1/embeddings"
                                       : "GET /healthz";
}

static int report(const options *o, worker *w, int nw, long warm_errors, long reconnects)
{
    size_t n = 0, ok = 0;
    long status_count[600] = {0}, err_count[NERR] = {0};
    int64_t t0 = INT64_MAX, t1 = 0;
    int oom = 0;
    for (int i = 0; i < nw; i++) {
        n += w[i].n;
        if (w[i].t0 < t0)
            t0 = w[i].t0;
        if (w[i].t1 > t1)
            t1 = w[i].t1;
        oom |= w[i].oom;
    }
    double secs = t1 > t0 ? (t1 - t0) / 1e9 : 0;
    /* Sample arrays: latency, each stage, overhead, outside-the-server. */
    float *lat = malloc((n ? n : 1) * sizeof *lat);
    float *st[NST], *ovh = malloc((n ? n : 1) * sizeof *ovh);
    float *outside = malloc((n ? n : 1) * sizeof *outside),
          *other = malloc((n ? n : 1) * sizeof *other);
    size_t nst[NST] = {0}, novh = 0, nout = 0, noth = 0;
    int fail = !lat || !ovh || !outside || !other;
    for (int k = 0; k < NST; k++)
        fail |= !(st[k] = malloc((n ? n : 1) * sizeof **st));
    if (fail) {
        fprintf(stderr, "tasam-bench: out of memory for the report\n");
        free(lat), free(ovh), free(outside), free(other);
        for (int k = 0; k < NST; k++)
            free(st[k]);
        return 3;
    }
    for (int i = 0; i < nw; i++)
        for (size_t j = 0; j < w[i].n; j++) {
            const record *r = &w[i].rec[j];
            if (r->status > 0 && r->status < 600)
                status_count[r->status]++;
            else if (r->status < 0 && -r->status < NERR)
                err_count[-r->status]++;
            if (r->status != 200)
                continue;
            lat[ok++] = r->lat_ms;
            for (int k = 0; k < NST; k++)
                if (!isnan(r->t[k]))
                    st[k][nst[k]++] = r->t[k];
            if (!isnan(r->t[ST_QUEUE]) && !isnan(r->t[ST_DECODE_MASKS])) {
                float model = r->t[ST_QUEUE] + r->t[ST_DECODE_MASKS] +
                              (isnan(r->t[ST_ENCODE]) ? 0 : r->t[ST_ENCODE]) +
                              (isnan(r->t[ST_POSTPROCESS]) ? 0 : r->t[ST_POSTPROCESS]);
                ovh[novh++] = r->lat_ms - model;
                if (!isnan(r->t[ST_TOTAL]))
                    other[noth++] =
                        r->t[ST_TOTAL] - model - (isnan(r->t[ST_DECODE]) ? 0 : r->t[ST_DECODE]);
            }
            if (!isnan(r->t[ST_TOTAL]))
                outside[nout++] = r->lat_ms - r->t[ST_TOTAL];
        }
    qsort(lat, ok, sizeof *lat, cmp_float);
    qsort(ovh, novh, sizeof *ovh, cmp_float);
    qsort(outside, nout, sizeof *outside, cmp_float);
    qsort(other, noth, sizeof *other, cmp_float);
    for (int k = 0; k < NST; k++)
        qsort(st[k], nst[k], sizeof **st, cmp_float);
    size_t errors = n - ok;
    double rps = secs > 0 ? ok / secs : 0;
    double mean = 0;
    for (size_t i = 0; i < ok; i++)
        mean += lat[i];
    mean = ok ? mean / ok : NAN;
    static const double ps[] = {50, 90, 99, 99.9};
    static const char *const pn[] = {"p50", "p90", "p99", "p99_9"};

    if (o->json) {
        json_t *j = json_object(), *sc = json_object(), *te = json_object(), *l = json_object();
        json_t *sv = json_object(), *ov = json_object(), *ou = json_object(), *ot = json_object();
        json_object_set_new(j, "url", json_string(o->url));
        json_object_set_new(j, "route", json_string(route_path(o->route)));
        json_object_set_new(j, "concurrency", json_integer(o->concurrency));
        json_object_set_new(j, "warmup", json_integer(o->warmup));
        json_object_set_new(j, "warmup_errors", json_integer(warm_errors));
        json_object_set_new(j, "requests", json_integer((json_int_t)n));
        json_object_set_new(j, "ok", json_integer((json_int_t)ok));
        json_object_set_new(j, "errors", json_integer((json_int_t)errors));
        for (int s = 100; s < 600; s++)
            if (status_count[s]) {
                char k[8];
                snprintf(k, sizeof k, "%d", s);
                json_object_set_new(sc, k, json_integer(status_count[s]));
            }
        json_object_set_new(j, "status", sc);
        json_object_set_new(j, "status_429", json_integer(status_count[429]));
        json_object_set_new(j, "status_503", json_integer(status_count[503]));
        json_object_set_new(j, "status_504", json_integer(status_count[504]));
        for (int e = 1; e < NERR; e++)
            json_object_set_new(te, err_names[e], json_integer(err_count[e]));
        json_object_set_new(j, "transport_errors", te);
        json_object_set_new(j, "reconnects", json_integer(reconnects));
        json_object_set_new(j, "duration_s", jnum(secs));
        json_object_set_new(j, "throughput_rps", jnum(rps));
        json_object_set_new(l, "min", jnum(ok ? lat[0] : NAN));
        for (int i = 0; i < 4; i++)
            json_object_set_new(l, pn[i], jnum(pct(lat, ok, ps[i])));
        json_object_set_new(l, "max", jnum(ok ? lat[ok - 1] : NAN));
        json_object_set_new(l, "mean", jnum(mean));
        json_object_set_new(j, "latency_ms", l);
        for (int k = 0; k < NST; k++)
            json_object_set_new(sv, stage_names[k], jnum(pct(st[k], nst[k], 50)));
        json_object_set_new(j, "server_p50_ms", sv);
        json_object_set_new(ov, "p50", jnum(pct(ovh, novh, 50)));
        json_object_set_new(ov, "p99", jnum(pct(ovh, novh, 99)));
        json_object_set_new(j, "overhead_ms", ov);
        json_object_set_new(ou, "p50", jnum(pct(outside, nout, 50)));
        json_object_set_new(ou, "p99", jnum(pct(outside, nout, 99)));
        json_object_set_new(j, "outside_server_ms", ou);
        json_object_set_new(ot, "p50", jnum(pct(other, noth, 50)));
        json_object_set_new(ot, "p99", jnum(pct(other, noth, 99)));
        json_object_set_new(j, "server_unstaged_ms", ot);
        json_object_set_new(j, "truncated_oom", json_boolean(oom));
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
        fputc('\n', stdout);
        json_decref(j);
    } else {
        printf("%s at %s, %d connection%s, warmup %ld (%ld failed)\n", route_path(o->route), o->url,
               o->concurrency, o->concurrency == 1 ? "" : "s", o->warmup, warm_errors);
        printf("  requests     %zu: %zu ok, %zu errors\n", n, ok, errors);
        printf("  status      ");
        for (int s = 100; s < 600; s++)
            if (status_count[s])
                printf(" %d: %ld", s, status_count[s]);
        printf("  (429 %ld, 503 %ld, 504 %ld)\n", status_count[429], status_count[503],
               status_count[504]);
        printf("  transport   ");
        for (int e = 1; e < NERR; e++)
            printf(" %s %ld%s", err_names[e], err_count[e], e + 1 < NERR ? "," : "");
        printf("; reconnects %ld\n", reconnects);
        printf("  throughput   %.2f req/s (%zu ok in %.2f s)\n", rps, ok, secs);
        printf("  latency ms   min %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean "
               "%.3f\n",
               ok ? lat[0] : NAN, pct(lat, ok, 50), pct(lat, ok, 90), pct(lat, ok, 99),
               pct(lat, ok, 99.9), ok ? lat[ok - 1] : NAN, mean);
        if (nst[ST_TOTAL]) {
            printf("  server p50   ");
            for (int k = 0; k < NST; k++)
                if (nst[k])
                    printf(" %s %.3f", stage_names[k], pct(st[k], nst[k], 50));
            printf("\n");
        }
        if (novh)
            printf("  overhead ms  p50 %.3f  p99 %.3f  (client latency - queue - encode - "
                   "decode_masks - postprocess)\n",
                   pct(ovh, novh, 50), pct(ovh, novh, 99));
        if (noth)
            printf("  unstaged ms  p50 %.3f  p99 %.3f  (server total - its stages: parse, cache "
                   "lookup, mask encoding, JSON)\n",
                   pct(other, noth, 50), pct(other, noth, 99));
        if (nout)
            printf("  outside ms   p50 %.3f  p99 %.3f  (client latency - server total: sockets, "
                   "response write)\n",
                   pct(outside, nout, 50), pct(outside, nout, 99));
        if (oom)
            printf("  (out of memory for records: the run stopped early)\n");
    }
    fflush(stdout);
    free(lat), free(ovh), free(outside), free(other);
    for (int k = 0; k < NST; k++)
        free(st[k]);
    return errors || oom ? 1 : 0;
}

int main(int argc, char **argv)
{
    options o;
    target t = {0};
    char err[1024] = "";
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    if (parse_url(o.url, &t, err, sizeof err) != 0) {
        fprintf(stderr, "tasam-bench: %s\n", err);
        return 2;
    }
    char *req = NULL;
    size_t req_len = 0;
    rc = prepare(&o, &t, &req, &req_len, err, sizeof err);
    if (rc) {
        fprintf(stderr, "tasam-bench: %s\n", err[0] ? err : "setup failed");
        free(req);
        freeaddrinfo(t.ai);
        return rc;
    }

    shared *s = calloc(1, sizeof *s);
    worker *w = calloc((size_t)o.concurrency, sizeof *w);
    if (!s || !w) {
        fprintf(stderr, "tasam-bench: out of memory\n");
        free(s), free(w), free(req);
        freeaddrinfo(t.ai);
        return 3;
    }
    s->o = &o;
    s->t = &t;
    s->req = req;
    s->req_len = req_len;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int started = 0;
    for (; started < o.concurrency; started++) {
        w[started].s = s;
        if (pthread_create(&w[started].tid, NULL, worker_main, &w[started]) != 0)
            break;
    }
    if (started < o.concurrency) {
        fprintf(stderr, "tasam-bench: cannot start %d threads (started %d)\n", o.concurrency,
                started);
        g_stop = 1; /* the ones running finish at once; nothing is measured */
    }

    /* Open the gate once every thread is warm, and print progress once a
     * second on stderr while they run. */
    int64_t start = now_ns(), last_t = start;
    long last_done = 0;
    while (atomic_load(&s->finished) < started) {
        nanosleep(&(struct timespec){0, 5000000}, NULL);
        int64_t now = now_ns();
        if (!atomic_load(&s->measuring)) {
            pthread_mutex_lock(&s->mu);
            if (s->ready == started) {
                s->go = 1;
                s->t_go = now_ns();
                atomic_store(&s->measuring, 1);
                pthread_cond_broadcast(&s->cv);
            }
            pthread_mutex_unlock(&s->mu);
        }
        if (!o.quiet && now - last_t >= 1000000000) {
            long d = atomic_load(&s->done);
            if (!atomic_load(&s->measuring))
                fprintf(stderr, "[%5.1fs] warmup %ld/%ld\n", (now - start) / 1e9,
                        (long)atomic_load(&s->warm_next) < o.warmup
                            ? (long)atomic_load(&s->warm_next)
                            : o.warmup,
                        o.warmup);
            else
                fprintf(stderr, "[%5.1fs] %ld requests, %.1f req/s, %ld errors\n",
                        (now - start) / 1e9, d, (d - last_done) / ((now - last_t) / 1e9),
                        (long)atomic_load(&s->errors));
            last_done = d;
            last_t = now;
        }
    }
    long warm_errors = 0, reconnects = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(w[i].tid, NULL);
        warm_errors += w[i].warm_errors;
        reconnects += w[i].reconnects;
    }
    rc = report(&o, w, started, warm_errors, reconnects);
    if (g_stop && !o.json)
        printf("  (interrupted)\n");
    for (int i = 0; i < started; i++)
        free(w[i].rec);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(w);
    free(s);
    free(req);
    freeaddrinfo(t.ai);
    return rc;
}
