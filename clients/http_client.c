/*
 * clients/http_client.c: the blocking HTTP/1.1 client of http_client.h:
 * URL parsing, non-blocking connect with a deadline, request building, the
 * response parser (Content-Length, chunked, read-to-close, 1xx skipped) and
 * multipart/form-data bodies.
 */
#include "clients/http_client.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *const hc__err_names[HC_NERR] = {
    "", "connect", "timeout", "closed", "malformed", "too_large", "send", "nomem", "invalid",
};

const char *hc_strerror(int code)
{
    return code <= 0 && code > -HC_NERR ? hc__err_names[-code] : "?";
}

int64_t hc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- target ------------------------------------------------------------ */

static int hc__bad(char *err, size_t errlen, const char *what, const char *url)
{
    if (err && errlen)
        snprintf(err, errlen, "%s in %.300s", what, url);
    return HC_EINVAL;
}

int hc_target_init(hc_target *t, const char *url, char *err, size_t errlen)
{
    char host[256], port[16] = "80";
    memset(t, 0, sizeof *t);
    if (strncasecmp(url, "http://", 7) != 0)
        return hc__bad(err, errlen, "the URL must start with http:// (https is not supported)",
                       url);
    const char *p = url + 7;
    const char *slash = strchr(p, '/');
    size_t alen = slash ? (size_t)(slash - p) : strlen(p);
    if (alen == 0 || alen >= sizeof t->host_hdr || memchr(p, '@', alen))
        return hc__bad(err, errlen, "bad host", url);
    for (size_t i = 0; i < alen; i++)
        if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f)
            return hc__bad(err, errlen, "bad host", url);
    memcpy(t->host_hdr, p, alen);
    t->host_hdr[alen] = '\0';
    const char *hs = t->host_hdr, *colon;
    size_t hl;
    if (hs[0] == '[') {
        const char *rb = strchr(hs, ']');
        if (!rb)
            return hc__bad(err, errlen, "unclosed '['", url);
        hs++;
        hl = (size_t)(rb - hs);
        colon = rb[1] == ':' ? rb + 1 : NULL;
        if (rb[1] && !colon)
            return hc__bad(err, errlen, "junk after ']'", url);
    } else {
        colon = strrchr(hs, ':');
        hl = colon ? (size_t)(colon - hs) : strlen(hs);
    }
    if (hl == 0 || hl >= sizeof host)
        return hc__bad(err, errlen, "bad host", url);
    memcpy(host, hs, hl);
    host[hl] = '\0';
    if (colon) {
        const char *ps = colon + 1;
        size_t pl = strlen(ps);
        long v = 0;
        for (size_t i = 0; i < pl; i++)
            v = ps[i] >= '0' && ps[i] <= '9' && v < 100000 ? v * 10 + (ps[i] - '0') : 100000;
        if (pl == 0 || v < 1 || v > 65535)
            return hc__bad(err, errlen, "bad port", url);
        snprintf(port, sizeof port, "%ld", v);
    }
    size_t pl = slash ? strlen(slash) : 0;
    while (pl && slash[pl - 1] == '/')
        pl--;
    if (pl >= sizeof t->prefix)
        return hc__bad(err, errlen, "path too long", url);
    for (size_t i = 0; i < pl; i++)
        if ((unsigned char)slash[i] <= ' ' || slash[i] == 0x7f || slash[i] == '?' ||
            slash[i] == '#')
            return hc__bad(err, errlen, "bad path (no spaces, controls, query or fragment)", url);
    memcpy(t->prefix, slash ? slash : "", pl);
    t->prefix[pl] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int g = getaddrinfo(host, port, &hints, &t->ai);
    if (g != 0) {
        t->ai = NULL;
        if (err && errlen)
            snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(g));
        return HC_EINVAL;
    }
    return 0;
}

int hc_target_loopback(hc_target *t, int port)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    return hc_target_init(t, url, NULL, 0);
}

void hc_target_free(hc_target *t)
{
    if (t && t->ai)
        freeaddrinfo(t->ai);
    if (t)
        t->ai = NULL;
}

/* ---- connection -------------------------------------------------------- */

void hc_conn_init(hc_conn *c)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

void hc_conn_close(hc_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->nresp = 0;
    c->len = c->off = 0;
}

void hc_conn_free(hc_conn *c)
{
    hc_conn_close(c);
    free(c->in);
    c->in = NULL;
    c->cap = 0;
}

/* Wait for ev on fd until the deadline. 0 ready, HC_ETIMEOUT, HC_ECLOSED. */
static int hc__wait(int fd, short ev, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - hc_now_ns();
        if (left <= 0)
            return HC_ETIMEOUT;
        struct pollfd p = {.fd = fd, .events = ev};
        int ms = (int)((left + 999999) / 1000000);
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 0; /* errors and hangups surface in the following recv/send */
        if (r < 0 && errno != EINTR)
            return HC_ECLOSED;
    }
}

/* Non-blocking connect to each address in turn, bounded by the deadline. */
static int hc__open(hc_conn *c, const hc_target *t, int64_t deadline)
{
    int last = HC_ECONNECT;
    for (struct addrinfo *a = t->ai; a; a = a->ai_next) {
        int fd =
            socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        int r = connect(fd, a->ai_addr, a->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            r = hc__wait(fd, POLLOUT, deadline);
            if (r == 0) {
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0)
                    r = HC_ECONNECT;
            }
        } else if (r != 0) {
            r = HC_ECONNECT;
        }
        if (r == 0) {
            /* A request is one write; Nagle would only add delay. */
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            c->fd = fd;
            c->nresp = 0;
            c->len = c->off = 0;
            return 0;
        }
        close(fd);
        last = r;
        if (r == HC_ETIMEOUT)
            break;
    }
    return last;
}

static int hc__send_all(hc_conn *c, const char *p, size_t n, int64_t deadline)
{
    while (n) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            int r = hc__wait(c->fd, POLLOUT, deadline);
            if (r)
                return r;
        } else {
            return HC_ESEND;
        }
    }
    return 0;
}

/* Receive into p (up to n bytes). >0 bytes, 0 EOF, or HC_E*. */
static ssize_t hc__recv(hc_conn *c, char *p, size_t n, int64_t deadline)
{
    if (c->fd_none)
        return 0;
    for (;;) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r > 0) {
            c->rx += (size_t)r;
            return r;
        }
        if (r == 0)
            return 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            int w = hc__wait(c->fd, POLLIN, deadline);
            if (w)
                return w;
            continue;
        }
        return HC_ECLOSED; /* ECONNRESET and friends */
    }
}

/* Read more into the line buffer, which never grows past HC_MAX_HEAD +
 * 1 KiB: a header or chunk-size line longer than that is malformed. */
static int hc__fill(hc_conn *c, int64_t deadline)
{
    if (c->fd_none)
        return HC_ECLOSED;
    if (c->off == c->len) {
        c->off = c->len = 0;
    } else if (c->off > 0 && c->len == c->cap) {
        memmove(c->in, c->in + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 16384;
        if (ncap > HC_MAX_HEAD + 1024)
            return HC_EMALFORMED;
        char *n = realloc(c->in, ncap);
        if (!n)
            return HC_ENOMEM;
        c->in = n;
        c->cap = ncap;
    }
    ssize_t r = hc__recv(c, c->in + c->len, c->cap - c->len, deadline);
    if (r == 0)
        return HC_ECLOSED;
    if (r < 0)
        return (int)r;
    c->len += (size_t)r;
    return 0;
}

/* Next line (CRLF or bare LF, terminator stripped, NUL-terminated in place).
 * The pointer is valid until the next read from c. */
static int hc__line(hc_conn *c, int64_t deadline, char **line, size_t *len)
{
    size_t scanned = 0;
    for (;;) {
        size_t avail = c->len - c->off;
        size_t look = avail - scanned;
        if (scanned + look > HC_MAX_HEAD + 1024) /* a preloaded buffer is not bounded by fill */
            look = scanned < HC_MAX_HEAD + 1024 ? HC_MAX_HEAD + 1024 - scanned : 0;
        char *lf = look ? memchr(c->in + c->off + scanned, '\n', look) : NULL;
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
        if (avail > HC_MAX_HEAD + 1024)
            return HC_EMALFORMED;
        /* fill may move the unread bytes to the front; scanned counts from
         * off, the line's start, so it stays right. */
        scanned = avail;
        int r = hc__fill(c, deadline);
        if (r)
            return r;
    }
}

/* ---- response ---------------------------------------------------------- */

void hc_response_init(hc_response *r) { memset(r, 0, sizeof *r); }

void hc_response_free(hc_response *r)
{
    if (!r)
        return;
    free(r->body);
    free(r->hdr);
    memset(r, 0, sizeof *r);
}

const char *hc_response_header(const hc_response *r, const char *name)
{
    const char *p = r->hdr;
    for (int i = 0; p && i < r->n_hdr; i++) {
        const char *v = p + strlen(p) + 1;
        if (!strcasecmp(p, name))
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

/* Keep one header field: name lower-cased, value as trimmed. */
static int hc__keep_header(hc_response *r, const char *name, size_t nl, const char *v, size_t vl)
{
    size_t need = r->hdr_len + nl + vl + 2;
    if (need > r->hdr_cap) {
        size_t nc = r->hdr_cap ? r->hdr_cap : 1024;
        while (nc < need)
            nc *= 2;
        char *n = realloc(r->hdr, nc);
        if (!n)
            return HC_ENOMEM;
        r->hdr = n;
        r->hdr_cap = nc;
    }
    for (size_t i = 0; i < nl; i++)
        r->hdr[r->hdr_len++] = (char)tolower((unsigned char)name[i]);
    r->hdr[r->hdr_len++] = '\0';
    memcpy(r->hdr + r->hdr_len, v, vl);
    r->hdr_len += vl;
    r->hdr[r->hdr_len++] = '\0';
    r->n_hdr++;
    return 0;
}

static size_t hc__max_body(const hc_response *r) { return r->max_body ? r->max_body : HC_MAX_BODY; }

/* Make room for n more body bytes, never past max_body (+1 for the NUL). */
static int hc__reserve(hc_response *r, size_t n)
{
    size_t mb = hc__max_body(r);
    if (n > mb || r->len > mb - n)
        return HC_ETOOLARGE;
    size_t need = r->len + n + 1;
    if (need <= r->cap)
        return 0;
    size_t ncap = r->cap ? r->cap : 4096;
    while (ncap < need)
        ncap = ncap > (mb + 1) / 2 ? mb + 1 : ncap * 2;
    char *b = realloc(r->body, ncap);
    if (!b)
        return HC_ENOMEM;
    r->body = b;
    r->cap = ncap;
    return 0;
}

/* Exactly n body bytes: first what the line buffer holds, then straight
 * from the socket into the body. */
static int hc__body_n(hc_conn *c, hc_response *r, size_t n, int64_t deadline)
{
    int e = hc__reserve(r, n);
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
        ssize_t got = hc__recv(c, r->body + r->len, n, deadline);
        if (got == 0)
            return HC_ECLOSED;
        if (got < 0)
            return (int)got;
        r->len += (size_t)got;
        n -= (size_t)got;
    }
    return 0;
}

static int hc__body_to_eof(hc_conn *c, hc_response *r, int64_t deadline)
{
    int e = hc__body_n(c, r, c->len - c->off, deadline);
    if (e)
        return e;
    for (;;) {
        if ((e = hc__reserve(r, 65536)) != 0) {
            /* Near the cap: one more byte decides between "exactly at the
             * limit" and "over it". */
            if ((e = hc__reserve(r, 1)) != 0)
                return e;
        }
        size_t room = r->cap - 1 - r->len;
        ssize_t got = hc__recv(c, r->body + r->len, room, deadline);
        if (got == 0)
            return 0;
        if (got < 0)
            return (int)got;
        r->len += (size_t)got;
    }
}

/* Case-insensitive: does the comma-separated list contain token? If last
 * is set, only its last element counts (Transfer-Encoding). */
static int hc__has_token(const char *v, const char *token, int last)
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

static int hc__chunk_size(const char *s, size_t *out)
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
            return HC_ETOOLARGE;
        v = v << 4 | (size_t)d;
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (!digits || (*s && *s != ';'))
        return HC_EMALFORMED;
    *out = v;
    return 0;
}

static int hc__chunked(hc_conn *c, hc_response *r, int64_t deadline)
{
    char *line;
    size_t n;
    int e;
    for (;;) {
        size_t size;
        if ((e = hc__line(c, deadline, &line, &n)) != 0)
            return e;
        if ((e = hc__chunk_size(line, &size)) != 0)
            return e;
        if (size == 0)
            break;
        if ((e = hc__body_n(c, r, size, deadline)) != 0)
            return e;
        if ((e = hc__line(c, deadline, &line, &n)) != 0)
            return e;
        if (n != 0)
            return HC_EMALFORMED; /* chunk data must end with CRLF */
    }
    for (int i = 0;; i++) { /* trailer fields, ignored, up to the empty line */
        if (i > HC_MAX_HEADERS)
            return HC_EMALFORMED;
        if ((e = hc__line(c, deadline, &line, &n)) != 0)
            return e;
        if (n == 0)
            return 0;
    }
}

static int hc__status_line(const char *line, size_t n, int *minor, int *status)
{
    if (n < 12 || memcmp(line, "HTTP/1.", 7) || line[7] < '0' || line[7] > '9' || line[8] != ' ' ||
        line[9] < '1' || line[9] > '5' || line[10] < '0' || line[10] > '9' || line[11] < '0' ||
        line[11] > '9' || (n > 12 && line[12] != ' '))
        return HC_EMALFORMED;
    *minor = line[7] - '0';
    *status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    return 0;
}

static int hc__read_response(hc_conn *c, hc_response *r, int64_t deadline)
{
    char *line;
    size_t n;
    int e, minor = 1;
    int64_t clen;
    int chunked, te, conn_close_hdr, conn_ka;
    r->len = 0;
    r->status = 0;
    r->close = 0;
    for (;;) { /* 1xx interim responses are skipped */
        size_t head = 0;
        r->hdr_len = 0;
        r->n_hdr = 0;
        if ((e = hc__line(c, deadline, &line, &n)) != 0)
            return e;
        head += n;
        if ((e = hc__status_line(line, n, &minor, &r->status)) != 0)
            return e;
        clen = -1;
        chunked = te = conn_close_hdr = conn_ka = 0;
        for (int i = 0;; i++) {
            if ((e = hc__line(c, deadline, &line, &n)) != 0)
                return e;
            head += n + 2;
            if (n == 0)
                break;
            if (i >= HC_MAX_HEADERS || head > HC_MAX_HEAD)
                return HC_EMALFORMED;
            char *colon = memchr(line, ':', n);
            if (!colon || colon == line || memchr(line, '\0', n))
                return HC_EMALFORMED; /* no name, or a NUL (RFC 9110 5.5 forbids it) */
            for (const char *q = line; q < colon; q++)
                if ((unsigned char)*q <= ' ' || *q == 0x7f)
                    return HC_EMALFORMED; /* no space before the colon (RFC 9112 5.1) */
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            char *end = line + n;
            while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
                *--end = '\0';
            if ((e = hc__keep_header(r, line, (size_t)(colon - line), v, (size_t)(end - v))) != 0)
                return e;
            if (!strcasecmp(line, "Content-Length")) {
                int64_t x = 0;
                if (!*v)
                    return HC_EMALFORMED;
                for (const char *p = v; *p; p++) {
                    if (*p < '0' || *p > '9')
                        return HC_EMALFORMED;
                    if (x > (INT64_MAX - 9) / 10)
                        return HC_ETOOLARGE;
                    x = x * 10 + (*p - '0');
                }
                if (clen >= 0 && clen != x)
                    return HC_EMALFORMED; /* conflicting lengths: a smuggling shape */
                clen = x;
            } else if (!strcasecmp(line, "Transfer-Encoding")) {
                te = 1;
                chunked = hc__has_token(v, "chunked", 1);
            } else if (!strcasecmp(line, "Connection")) {
                conn_close_hdr |= hc__has_token(v, "close", 0);
                conn_ka |= hc__has_token(v, "keep-alive", 0);
            }
        }
        if (r->status == 101)
            return HC_EMALFORMED; /* we never ask to switch protocols */
        if (r->status >= 200)
            break;
    }
    r->close = conn_close_hdr || (minor == 0 && !conn_ka);
    if (r->status == 204 || r->status == 304)
        e = 0;
    else if (chunked)
        e = hc__chunked(c, r, deadline);
    else if (te) {
        /* A coding other than chunked last: the body runs to the close. */
        r->close = 1;
        e = hc__body_to_eof(c, r, deadline);
    } else if (clen >= 0) {
        if ((uint64_t)clen > hc__max_body(r))
            return HC_ETOOLARGE;
        e = hc__body_n(c, r, (size_t)clen, deadline);
    } else {
        r->close = 1;
        e = hc__body_to_eof(c, r, deadline);
    }
    if (e)
        return e;
    if (!r->body && (e = hc__reserve(r, 0)) != 0)
        return e;
    r->body[r->len] = '\0';
    return 0;
}

int hc_exchange(hc_conn *c, const hc_target *t, const char *req, size_t req_len, hc_response *r,
                double timeout_s, long *reconnects)
{
    int64_t deadline = hc_now_ns() + (int64_t)(timeout_s * 1e9);
    for (int attempt = 0;; attempt++) {
        int e;
        if (c->fd < 0 && (e = hc__open(c, t, deadline)) != 0)
            return e;
        int reused = c->nresp > 0;
        c->rx = 0;
        e = hc__send_all(c, req, req_len, deadline);
        if (!e)
            e = hc__read_response(c, r, deadline);
        if (!e) {
            c->nresp++;
            if (r->close)
                hc_conn_close(c);
            return 0;
        }
        hc_conn_close(c);
        if (attempt == 0 && reused && c->rx == 0 && (e == HC_ECLOSED || e == HC_ESEND)) {
            if (reconnects)
                (*reconnects)++;
            continue;
        }
        return e;
    }
}

int hc_parse_response(const void *data, size_t len, hc_response *r)
{
    hc_conn c;
    hc_conn_init(&c);
    c.fd_none = 1;
    c.in = malloc(len + 1);
    if (!c.in)
        return HC_ENOMEM;
    memcpy(c.in, data, len);
    c.cap = len + 1;
    c.len = len;
    int e = hc__read_response(&c, r, INT64_MAX);
    free(c.in);
    return e;
}

/* ---- requests ---------------------------------------------------------- */

/* 1 when s (n bytes) holds CR, LF or NUL. */
static int hc__has_crlf(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 1;
    return 0;
}

/* Extra header lines: each "Name: value\r\n", no bare CR or LF. */
static int hc__headers_ok(const char *h)
{
    size_t n = strlen(h);
    for (size_t i = 0; i < n; i++) {
        if (h[i] == '\r' && (i + 1 >= n || h[i + 1] != '\n'))
            return 0;
        if (h[i] == '\n' && (i == 0 || h[i - 1] != '\r'))
            return 0;
    }
    return n == 0 || (n >= 2 && h[n - 2] == '\r' && h[n - 1] == '\n');
}

int hc_request_build(const hc_target *t, const hc_request *rq, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    const char *m = rq->method ? rq->method : "GET", *path = rq->path ? rq->path : "/";
    const char *hdr = rq->headers ? rq->headers : "", *ct = rq->content_type;
    size_t bl = rq->body ? rq->body_len : 0;
    if (!*m || strpbrk(m, " \r\n") || hc__has_crlf(path, strlen(path)) || strchr(path, ' ') ||
        path[0] != '/' || !hc__headers_ok(hdr) || (ct && hc__has_crlf(ct, strlen(ct))))
        return HC_EINVAL;
    size_t cap = bl + strlen(t->prefix) + strlen(path) + strlen(t->host_hdr) + strlen(m) +
                 strlen(hdr) + (ct ? strlen(ct) : 0) + 256;
    char *req = malloc(cap);
    if (!req)
        return HC_ENOMEM;
    int h = snprintf(req, cap, "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tasam-http/1\r\n%s", m,
                     t->prefix, path, t->host_hdr, hdr);
    size_t n = h > 0 ? (size_t)h : 0;
    if (ct)
        n += (size_t)snprintf(req + n, cap - n, "Content-Type: %s\r\n", ct);
    if (rq->body && rq->chunked)
        n += (size_t)snprintf(req + n, cap - n, "Transfer-Encoding: chunked\r\n\r\n%zx\r\n", bl);
    else if (rq->body || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0)
        n += (size_t)snprintf(req + n, cap - n, "Content-Length: %zu\r\n\r\n", bl);
    else
        n += (size_t)snprintf(req + n, cap - n, "\r\n");
    if (n + bl + 16 > cap) {
        free(req);
        return HC_ENOMEM;
    }
    if (bl)
        memcpy(req + n, rq->body, bl);
    n += bl;
    if (rq->body && rq->chunked)
        n += (size_t)snprintf(req + n, cap - n, bl ? "\r\n0\r\n\r\n" : "\r\n");
    req[n] = '\0';
    *out = req;
    *out_len = n;
    return 0;
}

/* ---- multipart --------------------------------------------------------- */

int hc_multipart_build(const hc_part *parts, int n, char **body, size_t *len, char *ctype,
                       size_t ctype_len, char *err, size_t errlen)
{
    char boundary[64];
    size_t total = 64;
    *body = NULL;
    *len = 0;
    for (int i = 0; i < n; i++) {
        const hc_part *p = &parts[i];
        const char *bad = NULL;
        if (!p->name || !*p->name || strpbrk(p->name, "\"\r\n"))
            bad = "name";
        else if (p->filename && strpbrk(p->filename, "\"\r\n"))
            bad = "filename";
        else if (p->content_type && strpbrk(p->content_type, "\r\n"))
            bad = "content type";
        else if (p->len && !p->data)
            bad = "data";
        if (bad) {
            if (err && errlen)
                snprintf(err, errlen, "multipart part %d: bad %s", i, bad);
            return HC_EINVAL;
        }
        total += p->len + strlen(p->name) + (p->filename ? strlen(p->filename) : 0) +
                 (p->content_type ? strlen(p->content_type) : 0) + 200;
    }
    /* A boundary that no part contains (RFC 2046 5.1.1): a counter and the
     * clock make it new each try; each try scans every part once. */
    static unsigned seq;
    for (int attempt = 0;; attempt++) {
        unsigned k = __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED);
        snprintf(boundary, sizeof boundary, "tasam-%08x%08x%04x", k,
                 (unsigned)(hc_now_ns() & 0xffffffff), (unsigned)attempt & 0xffff);
        size_t bl = strlen(boundary);
        int clash = 0;
        for (int i = 0; i < n && !clash; i++)
            clash = parts[i].len >= bl && memmem(parts[i].data, parts[i].len, boundary, bl);
        if (!clash)
            break;
        if (attempt > 100) {
            if (err && errlen)
                snprintf(err, errlen, "multipart: no free boundary");
            return HC_EINVAL;
        }
    }
    char *b = malloc(total);
    if (!b)
        return HC_ENOMEM;
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        const hc_part *p = &parts[i];
        o += (size_t)snprintf(b + o, total - o,
                              "--%s\r\nContent-Disposition: form-data; name=\"%s\"", boundary,
                              p->name);
        if (p->filename)
            o += (size_t)snprintf(b + o, total - o, "; filename=\"%s\"", p->filename);
        o += (size_t)snprintf(b + o, total - o, "\r\n");
        if (p->content_type)
            o += (size_t)snprintf(b + o, total - o, "Content-Type: %s\r\n", p->content_type);
        o += (size_t)snprintf(b + o, total - o, "\r\n");
        if (p->len)
            memcpy(b + o, p->data, p->len);
        o += p->len;
        o += (size_t)snprintf(b + o, total - o, "\r\n");
    }
    o += (size_t)snprintf(b + o, total - o, "--%s--\r\n", boundary);
    if (ctype && ctype_len)
        snprintf(ctype, ctype_len, "multipart/form-data; boundary=%s", boundary);
    *body = b;
    *len = o;
    return 0;
}
