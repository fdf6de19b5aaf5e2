/*
 * tests/test_http1.c: the gate's pieces without a socket: the strict
 * HTTP/1.1 framing (server/http1.c) on hand-written requests with the
 * status each deserves (RFC 9112), the same requests fed a byte at a time,
 * chunked bodies with extensions and trailers, and the per-client table
 * (server/clients.c): address keys, connection counts, token buckets
 * checked against hand-computed refills, and eviction when full.
 */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "server/clients.h"
#include "server/http1.h"
#include "tests/harness.h"

/* Scan and parse a whole head; the status of the refusal or 0. */
static int head_status(const char *req, size_t max_head, uint64_t max_body, srv_h1_head *h,
                       srv_h1_error *e)
{
    size_t scanned = 0, n = strlen(req);
    long len = srv_h1_head_scan((const uint8_t *)req, n, &scanned, max_head, e);
    if (len < 0)
        return e->status;
    if (len == 0)
        return -1; /* incomplete */
    return srv_h1_parse_head((const uint8_t *)req, (size_t)len, max_body, h, e) ? e->status : 0;
}

static void test_heads(void)
{
    static const struct {
        const char *req;
        int status; /* 0: accepted */
        int chunked;
        uint64_t cl;
    } cases[] = {
        {"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", 0, 0, 0},
        {"GET /healthz HTTP/1.0\r\n\r\n", 0, 0, 0}, /* 1.0 needs no Host */
        {"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 0, 0, 0},
        {"POST /v1/segment HTTP/1.1\r\nHost: t\r\nContent-Length: 42\r\n\r\n", 0, 0, 42},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n", 0, 0, 7},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 7, 7\r\n\r\n", 0, 0, 7},
        {"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n", 0, 1, 0},
        {"GET /x?a=1&b=&&c HTTP/1.1\r\nHost: t\r\nX-Empty:\r\nX-Obs: caf\xc3\xa9\r\n\r\n", 0, 0, 0},
        {"GET /x HTTP/1.9\r\nHost: t\r\n\r\n", 0, 0, 0}, /* a later 1.x is 1.1 */
        /* refused */
        {"GARBAGE\r\n\r\n", 400, 0, 0},
        {"GET  /x HTTP/1.1\r\nHost: t\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/1.1 \r\nHost: t\r\n\r\n", 400, 0, 0},
        {"GET x HTTP/1.1\r\nHost: t\r\n\r\n", 400, 0, 0},
        {"GET http://h/x HTTP/1.1\r\nHost: t\r\n\r\n", 400, 0, 0},
        {"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, 0, 0},
        {"G@T /x HTTP/1.1\r\nHost: t\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/2.0\r\nHost: t\r\n\r\n", 505, 0, 0},
        {"GET /x HTTP/0.9\r\nHost: t\r\n\r\n", 505, 0, 0},
        {"GET /x HTTP/1.1x\r\nHost: t\r\n\r\n", 400, 0, 0},
        {"GET /x http/1.1\r\nHost: t\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/1.1\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/1.1\r\nHost: t\r\nX-A: b\r\n c\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/1.1\r\nHost: t\r\nNo colon\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/1.1\nHost: t\n\n", 400, 0, 0},
        {"GET /x HTTP/1.1\r\nHost: t\rX\r\n\r\n", 400, 0, 0},
        {"GET /x HTTP/1.1\r\nHost: t\x01\r\n\r\n", 400, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, 0,
         0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\n", 400, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0x10\r\n\r\n", 400, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n", 400, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413, 0,
         0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n", 413, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         400, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400, 0, 0},
        {"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
         "identity\r\n\r\n",
         501, 0, 0},
        {"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srv_h1_head h;
        srv_h1_error e;
        int st = head_status(cases[i].req, 4096, 1000, &h, &e);
        T_CHECK(st == cases[i].status, "case %zu: %d, want %d (%s): %.60s", i, st, cases[i].status,
                st > 0 ? e.message : "", cases[i].req);
        if (st == 0 && cases[i].status == 0)
            T_CHECK(h.chunked == cases[i].chunked && h.content_length == cases[i].cl,
                    "case %zu: chunked %d length %llu", i, h.chunked,
                    (unsigned long long)h.content_length);
    }
}

/* The limits: a request line past max-header-bytes is 414, a head past it
 * 431, more than 100 fields 431, more than 64 query arguments 400, more
 * than 100 cookies 431; a head of exactly max-header-bytes passes. */
static void test_head_limits(void)
{
    char buf[8192];
    srv_h1_head h;
    srv_h1_error e;
    int n = snprintf(buf, sizeof buf, "GET /");
    memset(buf + n, 'a', 300);
    snprintf(buf + n + 300, 64, " HTTP/1.1\r\nHost: t\r\n\r\n");
    T_CHECK(head_status(buf, 256, 0, &h, &e) == 414, "long request line: %d", e.status);
    n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: t\r\nX: ");
    memset(buf + n, 'b', 300);
    snprintf(buf + n + 300, 64, "\r\n\r\n");
    T_CHECK(head_status(buf, 256, 0, &h, &e) == 431, "long head: %d", e.status);
    size_t len = strlen(buf);
    T_CHECK(head_status(buf, len, 0, &h, &e) == 0, "a head of exactly max-header-bytes");
    T_CHECK(head_status(buf, len - 1, 0, &h, &e) == 431, "one byte over");
    n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 100; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "X-%d: v\r\n", i);
    snprintf(buf + n, sizeof buf - (size_t)n, "\r\n");
    T_CHECK(head_status(buf, sizeof buf, 0, &h, &e) == 431, "101 fields: %d", e.status);
    n = snprintf(buf, sizeof buf, "GET /?");
    for (int i = 0; i < 65; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "a%d=1&", i);
    snprintf(buf + n, sizeof buf - (size_t)n, " HTTP/1.1\r\nHost: t\r\n\r\n");
    T_CHECK(head_status(buf, sizeof buf, 0, &h, &e) == 400 && strstr(e.message, "query"),
            "65 query arguments: %d", e.status);
    n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: t\r\nCookie: ");
    for (int i = 0; i < 100; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "c%d=1; ", i);
    snprintf(buf + n, sizeof buf - (size_t)n, "\r\n\r\n");
    T_CHECK(head_status(buf, sizeof buf, 0, &h, &e) == 431, "101 cookies: %d", e.status);
}

/* A head fed a byte at a time ends at the same place, and an error shows
 * on the byte that makes it (not later). */
static void test_head_incremental(void)
{
    const char req[] = "POST /v1/segment HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc";
    size_t scanned = 0;
    srv_h1_error e;
    long got = 0;
    size_t at;
    for (at = 1; at <= sizeof req - 1 && got == 0; at++)
        got = srv_h1_head_scan((const uint8_t *)req, at, &scanned, 4096, &e);
    T_CHECK(got == (long)(sizeof req - 1 - 3) && at - 1 == (size_t)got,
            "head end %ld after %zu bytes", got, at - 1);
    const char bad[] = "GET / HTTP/1.1\r\nHost: t\nmore";
    scanned = 0;
    got = 0;
    for (at = 1; at <= sizeof bad - 1 && got == 0; at++)
        got = srv_h1_head_scan((const uint8_t *)bad, at, &scanned, 4096, &e);
    T_CHECK(got < 0 && e.status == 400 && at - 1 == (size_t)(strchr(bad + 16, '\n') - bad + 1),
            "bare LF seen at byte %zu", at - 1);
}

/* Walk a body fed in pieces of `piece` bytes; the bytes consumed, or -1. */
static long body_walk(const char *head_req, const char *body, size_t blen, size_t piece,
                      uint64_t max, int *status)
{
    srv_h1_head h;
    srv_h1_error e;
    srv_h1_body b;
    *status = 0;
    if (head_status(head_req, 4096, max, &h, &e) != 0) {
        *status = e.status;
        return -1;
    }
    srv_h1_body_begin(&b, &h, max);
    size_t at = 0;
    while (!b.done && at < blen) {
        size_t n = piece && blen - at > piece ? piece : blen - at;
        long k = srv_h1_body_feed(&b, (const uint8_t *)body + at, n, &e);
        if (k < 0) {
            *status = e.status;
            return -1;
        }
        at += (size_t)k;
        if (!b.done && (size_t)k != n)
            return -2; /* stopped inside a piece without ending */
    }
    return b.done ? (long)at : -3;
}

static void test_bodies(void)
{
    const char *CH = "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const struct {
        const char *body;
        long end; /* bytes of the body, -1 refused */
        int status;
    } cases[] = {
        {"5\r\nhello\r\n0\r\n\r\nNEXT", 15, 0},
        {"5;ext=1;q=\"a;b\"\r\nhello\r\n0\r\n\r\n", 29, 0},
        {"a\r\n0123456789\r\n00\r\nX-Trailer: v\r\n\r\n", 35, 0},
        {"0\r\n\r\n", 5, 0},
        {"5\r\nhelloX\r\n0\r\n\r\n", -1, 400},
        {"5 \r\nhello\r\n0\r\n\r\n", -1, 400},
        {"z\r\n", -1, 400},
        {"\r\n", -1, 400},
        {"5\nhello\r\n0\r\n\r\n", -1, 400},
        {"5\r\nhello\n0\r\n\r\n", -1, 400},
        {"0\r\nBad trailer\r\n\r\n", -1, 400},
        {"0\r\n: v\r\n\r\n", -1, 400},
        {"5;e\x01\r\nhello\r\n0\r\n\r\n", -1, 400},
        {"3e9\r\n", -1, 413},
        {"10000000000000000\r\n", -1, 413},
        {"1FFFFFFFFFFFFFFFF\r\n", -1, 413},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t blen = strlen(cases[i].body);
        for (size_t piece = 0; piece <= 3; piece++) {
            int st;
            long got = body_walk(CH, cases[i].body, blen, piece, 1000, &st);
            T_CHECK(got == cases[i].end && st == cases[i].status,
                    "chunked case %zu in pieces of %zu: %ld (status %d), want %ld (%d)", i, piece,
                    got, st, cases[i].end, cases[i].status);
        }
    }
    int st;
    T_CHECK(body_walk("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n", "abcdefg", 7, 1,
                      1000, &st) == 4,
            "Content-Length body ends after 4 bytes");
    /* chunks that add up past max-body-bytes */
    T_CHECK(body_walk(CH, "400\r\n", 5, 0, 1000, &st) == -1 && st == 413, "one chunk past max");
    char many[2000];
    int n = 0;
    for (int i = 0; i < 5; i++) {
        n += snprintf(many + n, sizeof many - (size_t)n, "c8\r\n");
        memset(many + n, 'x', 200);
        n += 200;
        n += snprintf(many + n, sizeof many - (size_t)n, "\r\n");
    }
    n += snprintf(many + n, sizeof many - (size_t)n, "1\r\n");
    T_CHECK(body_walk(CH, many, (size_t)n, 7, 1000, &st) == -1 && st == 413,
            "1001 bytes in six chunks: %d", st);
}

static void test_client_keys(void)
{
    struct sockaddr_in a4;
    struct sockaddr_in6 a6, b6, m6;
    srv_client_key k1, k2, k3;
    char s[80];
    memset(&a4, 0, sizeof a4);
    a4.sin_family = AF_INET;
    inet_pton(AF_INET, "192.0.2.7", &a4.sin_addr);
    srv_client_key_of((struct sockaddr *)&a4, sizeof a4, &k1);
    srv_client_key_str(&k1, s, sizeof s);
    T_CHECK(!strcmp(s, "192.0.2.7"), "IPv4 key '%s'", s);
    /* an IPv4-mapped IPv6 address is the same client */
    memset(&m6, 0, sizeof m6);
    m6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:192.0.2.7", &m6.sin6_addr);
    srv_client_key_of((struct sockaddr *)&m6, sizeof m6, &k2);
    T_CHECK(!memcmp(&k1, &k2, sizeof k1), "mapped IPv4 differs from IPv4");
    /* two addresses of one /64 are one client; another /64 is not */
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    b6 = a6;
    inet_pton(AF_INET6, "2001:db8:1:2:aaaa::1", &a6.sin6_addr);
    inet_pton(AF_INET6, "2001:db8:1:2:bbbb::9", &b6.sin6_addr);
    srv_client_key_of((struct sockaddr *)&a6, sizeof a6, &k2);
    srv_client_key_of((struct sockaddr *)&b6, sizeof b6, &k3);
    srv_client_key_str(&k2, s, sizeof s);
    T_CHECK(!memcmp(&k2, &k3, sizeof k2) && !strcmp(s, "2001:db8:1:2::/64"), "IPv6 /64 key '%s'",
            s);
    inet_pton(AF_INET6, "2001:db8:1:3::1", &b6.sin6_addr);
    srv_client_key_of((struct sockaddr *)&b6, sizeof b6, &k3);
    T_CHECK(memcmp(&k2, &k3, sizeof k2) != 0, "another /64 is the same client");
}

static srv_client_key key_n(int n)
{
    srv_client_key k;
    memset(&k, 0, sizeof k);
    k.b[10] = k.b[11] = 0xff;
    k.b[12] = 10;
    k.b[14] = (uint8_t)(n >> 8);
    k.b[15] = (uint8_t)n;
    return k;
}

static void test_client_limits(void)
{
    srv_clients *t;
    T_REQUIRE(srv_clients_create(&t, 16) == 0, "create");
    srv_client_key a = key_n(1), b = key_n(2);
    for (int i = 0; i < 3; i++)
        T_CHECK(srv_clients_conn_add(t, &a, 3) == 0, "connection %d of a", i);
    T_CHECK(srv_clients_conn_add(t, &a, 3) == -1, "a's 4th connection over a limit of 3");
    T_CHECK(srv_clients_conn_add(t, &b, 3) == 0, "b is another client");
    srv_clients_conn_del(t, &a);
    T_CHECK(srv_clients_conn_add(t, &a, 3) == 0 && srv_clients_conns(t, &a) == 3,
            "a slot comes back when a connection closes");
    T_CHECK(srv_clients_conn_add(t, &a, 0) == 0, "limit 0: no limit");
    /* a bucket of 3 refilling at 2 a second (hand-computed) */
    srv_client_key c = key_n(3);
    double t0 = 1000;
    for (int i = 0; i < 3; i++)
        T_CHECK(srv_clients_take(t, &c, 2, 3, t0) == 0, "burst token %d", i);
    T_CHECK(srv_clients_take(t, &c, 2, 3, t0) == 1, "empty: retry in ceil(1/2) = 1 s");
    T_CHECK(srv_clients_take(t, &c, 2, 3, t0 + 0.25) == 1, "0.5 tokens at +0.25 s: 1 s");
    T_CHECK(srv_clients_take(t, &c, 2, 3, t0 + 0.5) == 0, "1 token at +0.5 s");
    T_CHECK(srv_clients_take(t, &c, 0.1, 3, t0 + 0.5) == 10, "at 0.1/s an empty bucket: 10 s");
    T_CHECK(srv_clients_take(t, &c, 2, 3, t0 + 100) == 0 &&
                srv_clients_take(t, &c, 2, 3, t0 + 100) == 0 &&
                srv_clients_take(t, &c, 2, 3, t0 + 100) == 0 &&
                srv_clients_take(t, &c, 2, 3, t0 + 100) == 1,
            "a long pause refills to the burst, not beyond");
    T_CHECK(srv_clients_take(t, &c, 0, 3, t0) == 0, "rate 0: no limit");
    /* full of idle clients: the least recently seen ones are forgotten;
     * clients with connections never are */
    for (int i = 100; i < 200; i++)
        T_CHECK(srv_clients_take(t, &(srv_client_key){0}, 1, 1, t0) >= 0, "take");
    for (int i = 100; i < 200; i++) {
        srv_client_key k = key_n(i);
        srv_clients_take(t, &k, 1, 1, t0);
    }
    T_CHECK(srv_clients_conns(t, &a) == 4 && srv_clients_conns(t, &b) == 1,
            "clients with connections open were forgotten");
    srv_client_key old = key_n(100);
    T_CHECK(srv_clients_take(t, &old, 1, 1, t0) == 0,
            "a forgotten client starts with a full bucket");
    /* every slot held by a client with a connection: refused, not evicted */
    srv_clients *u;
    T_REQUIRE(srv_clients_create(&u, 16) == 0, "create");
    int rc = 0;
    for (int i = 0; i < 16 && rc == 0; i++) {
        srv_client_key k = key_n(500 + i);
        rc = srv_clients_conn_add(u, &k, 0);
    }
    srv_client_key k = key_n(999);
    T_CHECK(rc == 0 && srv_clients_conn_add(u, &k, 0) == -2, "a full table takes another client");
    srv_clients_destroy(u);
    srv_clients_destroy(t);
}

int main(void)
{
    T_RUN(test_heads);
    T_RUN(test_head_limits);
    T_RUN(test_head_incremental);
    T_RUN(test_bodies);
    T_RUN(test_client_keys);
    T_RUN(test_client_limits);
    return t_summary("test_http1");
}
