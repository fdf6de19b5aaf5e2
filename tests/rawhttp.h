/*
 * tests/rawhttp.h: HTTP over a plain socket, byte for byte (header-only),
 * for the tests and the benchmark that attack the daemon: a request is
 * whatever bytes the caller writes (malformed on purpose, sent a byte at a
 * time, from another loopback address), and one response is read back with
 * a deadline; with the few things those callers also share (a JSON POST
 * carrying an image, a test image, the daemon's resident memory). Used by
 * tests/test_server_hostile.c and bench/hostile_bench.c.
 */
#ifndef TASAM_TESTS_RAWHTTP_H
#define TASAM_TESTS_RAWHTTP_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/base64.h"

static inline double raw_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A socket connected to 127.0.0.1:port from `src` (e.g. "127.0.0.2", to
 * be another client than the usual 127.0.0.1; NULL: any); -1 on failure. */
static inline int raw_connect(int port, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a;
    if (fd < 0)
        return -1;
    if (src) {
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        inet_pton(AF_INET, src, &a.sin_addr);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            close(fd);
            return -1;
        }
    }
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static inline int raw_send_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One response. */
typedef struct raw_reply {
    int status;      /* 0: none (deadline, or closed first) */
    char head[2048]; /* the status line and headers */
    char *body;      /* malloc'd, NUL-terminated ("" when none) */
    size_t len;      /* body bytes */
    double secs;     /* time until it was complete */
} raw_reply;

static inline void raw_reply_free(raw_reply *r)
{
    free(r->body);
    r->body = NULL;
}

/* Contract: reads one response from fd within `timeout` seconds
 * (Content-Length framed, or up to EOF). */
static inline void raw_read_reply(int fd, double timeout, raw_reply *r)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    double t0 = raw_now();
    memset(r, 0, sizeof *r);
    for (;;) {
        double left = timeout - (raw_now() - t0);
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pf, 1, (int)(left * 1000) + 1) <= 0)
            break;
        if (n == cap) {
            char *b = realloc(buf, 2 * cap + 1);
            if (!b)
                break;
            buf = b;
            cap *= 2;
        }
        ssize_t k = recv(fd, buf + n, cap - n, 0);
        if (k <= 0)
            break;
        n += (size_t)k;
        buf[n] = 0;
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        const char *cl = strcasestr(buf, "\r\nContent-Length:");
        size_t hl = (size_t)(end + 4 - buf);
        if (cl && cl < end && n >= hl + strtoul(cl + 17, NULL, 10))
            break;
    }
    buf[n] = 0;
    r->secs = raw_now() - t0;
    char *end = strstr(buf, "\r\n\r\n");
    if (n >= 12 && !strncmp(buf, "HTTP/1.", 7) && end) {
        size_t hl = (size_t)(end - buf);
        r->status = atoi(buf + 9);
        snprintf(r->head, sizeof r->head, "%.*s", (int)(hl < sizeof r->head ? hl : 0), buf);
        r->len = n - hl - 4;
        r->body = malloc(r->len + 1);
        if (r->body) {
            memcpy(r->body, end + 4, r->len);
            r->body[r->len] = 0;
        }
    }
    if (!r->body) {
        r->body = calloc(1, 1);
        r->len = 0;
    }
    free(buf);
}

/* One request on a new connection from `src`, its response read within
 * `timeout` seconds. */
static inline void raw_request(int port, const char *src, const void *req, size_t len,
                               double timeout, raw_reply *r)
{
    int fd = raw_connect(port, src);
    memset(r, 0, sizeof *r);
    if (fd < 0 || raw_send_all(fd, req, len) != 0) {
        r->body = calloc(1, 1);
        if (fd >= 0)
            close(fd);
        return;
    }
    raw_read_reply(fd, timeout, r);
    close(fd);
}

/* A POST of a JSON body as raw bytes (malloc'd; *len bytes); `headers`
 * (may be NULL) are more header lines, each ending in CRLF. */
static inline char *raw_json_post(const char *path, const char *body, const char *headers,
                                  size_t *len)
{
    size_t bl = strlen(body);
    char *req = malloc(bl + 512);
    int n = snprintf(req, 512,
                     "POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
                     "Content-Length: %zu\r\n\r\n",
                     path, headers ? headers : "", bl);
    memcpy(req + n, body, bl);
    *len = (size_t)n + bl;
    return req;
}

/* A POST of {"image": "<b64>"} (malloc'd; *len bytes). */
static inline char *raw_b64_post(const char *path, const char *b64, size_t *len)
{
    char *body = malloc(strlen(b64) + 16);
    sprintf(body, "{\"image\":\"%s\"}", b64);
    char *req = raw_json_post(path, body, NULL, len);
    free(body);
    return req;
}

/* The same with the base64 of `n` bytes. */
static inline char *raw_image_post(const char *path, const void *bytes, size_t n, size_t *len)
{
    char *b64 = srv_base64_encode(bytes, n);
    char *req = raw_b64_post(path, b64, len);
    free(b64);
    return req;
}

/* A w x h RGB test picture of coloured 40-pixel squares (malloc'd): it
 * compresses well as PNG and the fixture model's masks of it are
 * irregular, so their polygons are large. */
static inline uint8_t *raw_squares_rgb(int w, int h)
{
    uint8_t *pix = malloc((size_t)w * h * 3);
    for (int y = 0; pix && y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = pix + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)((x / 40) * 37 + (y / 40) * 91);
            p[1] = (uint8_t)(p[0] * 3);
            p[2] = (uint8_t)(255 - p[0]);
        }
    return pix;
}

/* Resident memory of process pid in kB (/proc), -1 when unknown. */
static inline long raw_rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

#endif
