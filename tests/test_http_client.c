/*
 * tests/test_http_client.c: the shared HTTP client (clients/http_client.h)
 * on hand-written cases: URL parsing, the exact bytes of built requests,
 * the response parser on every framing and on malformed or hostile
 * responses, and multipart bodies (split back by their boundary).
 */
#include <string.h>

#include "clients/http_client.h"
#include "tests/harness.h"

static void test_target(void)
{
    hc_target t;
    char err[256];
    T_CHECK(hc_target_init(&t, "http://127.0.0.1:8080", err, sizeof err) == 0, "%s", err);
    T_CHECK(!strcmp(t.host_hdr, "127.0.0.1:8080") && !strcmp(t.prefix, ""), "%s %s", t.host_hdr,
            t.prefix);
    hc_target_free(&t);
    T_CHECK(hc_target_init(&t, "HTTP://[::1]:9/api/v1//", err, sizeof err) == 0, "%s", err);
    T_CHECK(!strcmp(t.host_hdr, "[::1]:9") && !strcmp(t.prefix, "/api/v1"), "%s %s", t.host_hdr,
            t.prefix);
    hc_target_free(&t);
    T_CHECK(hc_target_loopback(&t, 65535) == 0 && !strcmp(t.host_hdr, "127.0.0.1:65535"), "%s",
            t.host_hdr);
    hc_target_free(&t);
    static const char *const bad[] = {
        "https://x:1",    "http://",      "http://:80",      "http://h:0",      "http://h:65536",
        "http://h:8x",    "http://u@h:1", "http://[::1",     "http://[::1]x",   "http://h:1/a b",
        "http://h:1/a?q", "ftp://h",      "http://h\r\n:1/", "http://h:1/\x7f",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        T_CHECK(hc_target_init(&t, bad[i], err, sizeof err) == HC_EINVAL && err[0] && !t.ai,
                "%s accepted", bad[i]);
        hc_target_free(&t);
    }
}

static void test_request_bytes(void)
{
    hc_target t;
    T_REQUIRE(hc_target_init(&t, "http://127.0.0.1:1/p", NULL, 0) == 0, "target");
    char *req;
    size_t n;
    hc_request g = {.method = "GET", .path = "/healthz"};
    T_REQUIRE(hc_request_build(&t, &g, &req, &n) == 0, "GET");
    const char *want_get =
        "GET /p/healthz HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: tasam-http/1\r\n\r\n";
    T_CHECK(n == strlen(want_get) && !strcmp(req, want_get), "GET bytes:\n%s", req);
    free(req);
    hc_request p = {.method = "POST",
                    .path = "/v1/segment",
                    .headers = "X-Tasam-Image-Id: ab\r\n",
                    .content_type = "application/json",
                    .body = "{\"a\":1}",
                    .body_len = 7};
    T_REQUIRE(hc_request_build(&t, &p, &req, &n) == 0, "POST");
    const char *want_post = "POST /p/v1/segment HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: "
                            "tasam-http/1\r\nX-Tasam-Image-Id: ab\r\nContent-Type: "
                            "application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
    T_CHECK(n == strlen(want_post) && !strcmp(req, want_post), "POST bytes:\n%s", req);
    free(req);
    p.chunked = 1;
    p.headers = NULL;
    p.content_type = NULL;
    p.body = "0123456789abcdefX";
    p.body_len = 17;
    T_REQUIRE(hc_request_build(&t, &p, &req, &n) == 0, "chunked");
    const char *want_ch = "POST /p/v1/segment HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: "
                          "tasam-http/1\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n"
                          "0123456789abcdefX\r\n0\r\n\r\n";
    T_CHECK(n == strlen(want_ch) && !strcmp(req, want_ch), "chunked bytes:\n%s", req);
    free(req);
    /* An empty POST still says Content-Length: 0 (servers wait otherwise). */
    hc_request e = {.method = "POST", .path = "/x"};
    T_REQUIRE(hc_request_build(&t, &e, &req, &n) == 0, "empty POST");
    T_CHECK(strstr(req, "Content-Length: 0\r\n\r\n") != NULL, "%s", req);
    free(req);
    /* Header injection through any field is refused. */
    hc_request bad[] = {
        {.method = "GET", .path = "/a\r\nX: 1"},
        {.method = "GET", .path = "/a b"},
        {.method = "GET", .path = "a"},
        {.method = "GE T", .path = "/"},
        {.method = "GET", .path = "/", .headers = "X: 1"},
        {.method = "GET", .path = "/", .headers = "X: 1\nY: 2\r\n"},
        {.method = "GET", .path = "/", .headers = "X: 1\r\r\n"},
        {.method = "POST", .path = "/", .content_type = "text/plain\r\nX: 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        T_CHECK(hc_request_build(&t, &bad[i], &req, &n) == HC_EINVAL && !req,
                "bad request %zu built", i);
    hc_target_free(&t);
}

/* Parse s; returns the code and leaves the response in r. */
static int parse(const char *s, hc_response *r)
{
    hc_response_free(r);
    return hc_parse_response(s, strlen(s), r);
}

static void test_parse_framings(void)
{
    hc_response r;
    hc_response_init(&r);
    T_CHECK(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Tasam-Instance: r1\r\n"
                  "content-type:  application/json \r\n\r\nhelloEXTRA",
                  &r) == 0 &&
                r.status == 200 && r.len == 5 && !strcmp(r.body, "hello") && !r.close,
            "content-length: %d %zu", r.status, r.len);
    const char *v = hc_response_header(&r, "x-tasam-INSTANCE");
    T_CHECK(v && !strcmp(v, "r1"), "instance %s", v ? v : "(none)");
    v = hc_response_header(&r, "Content-Type");
    T_CHECK(v && !strcmp(v, "application/json"), "content type '%s'", v ? v : "(none)");
    T_CHECK(!hc_response_header(&r, "Retry-After"), "absent header found");
    T_CHECK(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                  "3;ext=\"x\"\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: 1\r\n\r\n",
                  &r) == 0 &&
                r.len == 13 && !strcmp(r.body, "abc0123456789"),
            "chunked: %zu '%s'", r.len, r.body ? r.body : "");
    T_CHECK(parse("HTTP/1.1 100 Continue\r\nX: 1\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"
                  "HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\n\r\nto the end",
                  &r) == 0 &&
                r.status == 503 && r.close && !strcmp(r.body, "to the end") &&
                !hc_response_header(&r, "X"),
            "1xx then HTTP/1.0 read to close: %d '%s'", r.status, r.body ? r.body : "");
    T_CHECK(parse("HTTP/1.1 204 No Content\nContent-Length: 10\n\n", &r) == 0 && r.status == 204 &&
                r.len == 0 && r.body && r.body[0] == 0,
            "204 with bare LF: %d %zu", r.status, r.len);
    T_CHECK(parse("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
                  &r) == 0 &&
                r.close,
            "Connection: close token");
    T_CHECK(parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", &r) == 0,
            "equal repeated lengths");
    hc_response_free(&r);
}

static void test_parse_hostile(void)
{
    hc_response r;
    hc_response_init(&r);
    static const struct {
        const char *in;
        int want;
    } cases[] = {
        {"", HC_ECLOSED},
        {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", HC_ECLOSED},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", HC_EMALFORMED},
        {"HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nabc", HC_EMALFORMED},
        {"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabc", HC_EMALFORMED},
        {"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", HC_ETOOLARGE},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
         HC_ETOOLARGE},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", HC_EMALFORMED},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
         HC_EMALFORMED},
        {"HTTP/1.1 101 Switching Protocols\r\n\r\n", HC_EMALFORMED},
        {"HTTP/2 200\r\n\r\n", HC_EMALFORMED},
        {"HTTP/1.1 600 Nope\r\n\r\n", HC_EMALFORMED},
        {"HTTP/1.1 20 OK\r\n\r\n", HC_EMALFORMED},
        {"SSH-2.0-OpenSSH\r\n\r\n", HC_EMALFORMED},
        {"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", HC_EMALFORMED},
        {"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", HC_EMALFORMED},
    };
    /* A NUL inside a header value (found by the fuzzer: the parser keeps
     * headers as NUL-separated pairs). */
    static const char nul[] =
        "HTTP/1.1 200 OK\r\nContent-Type: app\0json\r\nContent-Length: 0\r\n\r\n";
    T_CHECK(hc_parse_response(nul, sizeof nul - 1, &r) == HC_EMALFORMED, "NUL in a header value");
    hc_response_free(&r);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int e = parse(cases[i].in, &r);
        T_CHECK(e == cases[i].want, "case %zu: %s (%d), want %s", i, hc_strerror(e), e,
                hc_strerror(cases[i].want));
    }
    /* The body cap, exactly at it and one past, for each framing. */
    r.max_body = 4;
    const char *four = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd";
    T_CHECK(hc_parse_response(four, strlen(four), &r) == 0 && r.len == 4, "at the cap");
    hc_response_free(&r);
    r.max_body = 4;
    const char *five = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde";
    T_CHECK(hc_parse_response(five, strlen(five), &r) == HC_ETOOLARGE, "over the cap");
    hc_response_free(&r);
    r.max_body = 4;
    const char *eof = "HTTP/1.0 200 OK\r\n\r\nabcde";
    T_CHECK(hc_parse_response(eof, strlen(eof), &r) == HC_ETOOLARGE, "over the cap to EOF");
    hc_response_free(&r);
    r.max_body = 4;
    const char *ch =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0";
    T_CHECK(hc_parse_response(ch, strlen(ch), &r) == HC_ETOOLARGE, "over the cap in chunks");
    hc_response_free(&r);
    /* More header lines than HC_MAX_HEADERS, and a line longer than the
     * head cap. */
    size_t cap = 300 * 8 + 64;
    char *many = malloc(cap);
    size_t o = (size_t)snprintf(many, cap, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 300; i++)
        o += (size_t)snprintf(many + o, cap - o, "X: %03d\r\n", i);
    o += (size_t)snprintf(many + o, cap - o, "\r\n");
    T_CHECK(hc_parse_response(many, o, &r) == HC_EMALFORMED, "300 header lines accepted");
    free(many);
    hc_response_free(&r);
    size_t big = HC_MAX_HEAD + 4096;
    char *line = malloc(big + 64);
    o = (size_t)snprintf(line, 64, "HTTP/1.1 200 OK\r\nX: ");
    memset(line + o, 'a', big);
    memcpy(line + o + big, "\r\n\r\n", 4);
    T_CHECK(hc_parse_response(line, o + big + 4, &r) == HC_EMALFORMED, "a %zu-byte header line",
            big);
    free(line);
    hc_response_free(&r);
}

/* Split a multipart body by its boundary and check each part. */
static void test_multipart(void)
{
    static const char img[] = "\x89PNG\r\n--tasam-\0binary";
    hc_part parts[] = {
        {.name = "image",
         .filename = "a.png",
         .content_type = "image/png",
         .data = img,
         .len = sizeof img - 1},
        {.name = "request", .data = "{\"points\":[[1,2,1]]}", .len = 20},
        {.name = "task", .data = "", .len = 0},
    };
    char *body, ctype[128], err[128];
    size_t len;
    T_REQUIRE(hc_multipart_build(parts, 3, &body, &len, ctype, sizeof ctype, err, sizeof err) == 0,
              "%s", err);
    const char *b = strstr(ctype, "boundary=");
    T_REQUIRE(!strncmp(ctype, "multipart/form-data; boundary=", 30) && b, "%s", ctype);
    char delim[96];
    snprintf(delim, sizeof delim, "--%s", b + 9);
    size_t dl = strlen(delim);
    /* boundary + CRLF + headers + CRLF CRLF + data + CRLF, then the closing one */
    const char *p = body, *end = body + len;
    const char *want_head[3] = {
        ("Content-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
         "Content-Type: image/png\r\n\r\n"),
        "Content-Disposition: form-data; name=\"request\"\r\n\r\n",
        "Content-Disposition: form-data; name=\"task\"\r\n\r\n"};
    for (int i = 0; i < 3; i++) {
        T_REQUIRE((size_t)(end - p) > dl + 2 && !memcmp(p, delim, dl) && !memcmp(p + dl, "\r\n", 2),
                  "part %d: no delimiter", i);
        p += dl + 2;
        size_t hl = strlen(want_head[i]);
        T_REQUIRE(!memcmp(p, want_head[i], hl), "part %d head: %.80s", i, p);
        p += hl;
        T_REQUIRE((size_t)(end - p) >= parts[i].len + 2 &&
                      !memcmp(p, parts[i].data, parts[i].len) &&
                      !memcmp(p + parts[i].len, "\r\n", 2),
                  "part %d data", i);
        p += parts[i].len + 2;
    }
    T_CHECK((size_t)(end - p) == dl + 4 && !memcmp(p, delim, dl) && !memcmp(p + dl, "--\r\n", 4),
            "closing delimiter");
    T_CHECK(!memmem(img, sizeof img - 1, b + 9, strlen(b + 9)), "boundary inside the data");
    free(body);
    hc_part bad[] = {{.name = "a\"b", .data = "", .len = 0},
                     {.name = "", .data = "", .len = 0},
                     {.name = "f", .filename = "x\r\n", .data = "", .len = 0},
                     {.name = "f", .content_type = "a\nb", .data = "", .len = 0},
                     {.name = "f", .data = NULL, .len = 3}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        T_CHECK(hc_multipart_build(&bad[i], 1, &body, &len, ctype, sizeof ctype, err, sizeof err) ==
                        HC_EINVAL &&
                    !body && err[0],
                "bad part %zu accepted", i);
    }
}

static void test_strerror(void)
{
    T_CHECK(!strcmp(hc_strerror(HC_ETIMEOUT), "timeout") && !strcmp(hc_strerror(0), "") &&
                !strcmp(hc_strerror(-HC_NERR), "?") && !strcmp(hc_strerror(5), "?"),
            "names");
}

int main(void)
{
    T_RUN(test_target);
    T_RUN(test_request_bytes);
    T_RUN(test_parse_framings);
    T_RUN(test_parse_hostile);
    T_RUN(test_multipart);
    T_RUN(test_strerror);
    return t_summary("test_http_client");
}
