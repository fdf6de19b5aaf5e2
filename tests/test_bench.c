/*
 * tests/test_bench.c: build/bench/tasam-bench against a tiny scripted HTTP
 * server in this process, checking the counts it reports with --json.
 *
 * The server (one thread, poll over 127.0.0.1 port 0) answers
 * /v1/embeddings and /healthz with canned JSON and each /v1/segment with the
 * next entry of a script: keep-alive JSON with Content-Length, chunked with
 * an extension and a trailer, 503/429/504, a close mid-body, garbage, a 200
 * without masks, Connection: close, an absurd Content-Length or chunk size,
 * a silent server and a keep-alive connection closed while idle. So each
 * line of the bench's report is tied to a known cause.
 *
 * The bench is found at argv[0]/../../bench/tasam-bench (build/bench or
 * build/asan/bench). tests/run.sh builds only the test binaries, so every
 * test skips with a message when it has not been built.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "tests/harness.h"

static char g_bench[PATH_MAX];
static char g_image[PATH_MAX]; /* a small file to send as the "image" */

/* What the server does with one /v1/segment request. */
typedef enum {
    R_OK_CL,      /* 200, JSON, Content-Length, keep-alive */
    R_OK_CHUNKED, /* 200, chunked with an extension and a trailer */
    R_503,
    R_429,
    R_504,
    R_CLOSE_MID,  /* headers promise 1000 bytes, 10 come, then close */
    R_GARBAGE,    /* not HTTP, then close */
    R_INVALID,    /* 200 whose JSON has no masks */
    R_OK_CLOSE,   /* 200 with Connection: close, then close */
    R_HUGE_CL,    /* Content-Length of 100 GB */
    R_HUGE_CHUNK, /* a chunk of 2^60 bytes */
    R_SILENT,     /* never answers */
    R_IDLE_CLOSE, /* 200 keep-alive, then the server closes anyway */
} reply_kind;

#define MAX_CLIENTS 32

typedef struct {
    int fd;
    char buf[65536];
    size_t len;
} client;

typedef struct {
    int lfd, port;
    int stop_pipe[2];
    pthread_t tid;
    const reply_kind *script;
    int script_len;
    atomic_int accepted, segments, embeddings, healthz;
    char last_segment_body[4096]; /* written by the server thread, read after stop */
    client cl[MAX_CLIENTS];
} server;

static const char SEG_JSON[] =
    "{\"image_id\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\","
    "\"width\":4,\"height\":3,\"multimask\":false,\"masks\":[{\"prompt\":0,"
    "\"rle\":{\"size\":[3,4],\"counts\":\"0<\"},\"bbox\":[0,0,1,1],\"area\":1,"
    "\"predicted_iou\":0.9,\"stability_score\":0.9}],\"timings_ms\":{\"decode\":0.0,"
    "\"queue\":0.5,\"encode\":0.0,\"decode_masks\":5.0,\"postprocess\":1.0,\"total\":7.0},"
    "\"cache\":{\"embedding\":\"hit\",\"tier\":\"memory\"}}";

static void send_str(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void reply_json(int fd, int status, const char *reason, const char *body, int close_hdr)
{
    char head[512];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     status, reason, strlen(body), close_hdr ? "Connection: close\r\n" : "");
    send_str(fd, head, (size_t)h);
    send_str(fd, body, strlen(body));
}

/* Answer one request; returns 1 to close the connection afterwards. */
static int answer(server *s, int fd, const char *path, const char *body, size_t body_len)
{
    if (!strcmp(path, "/v1/embeddings")) {
        atomic_fetch_add(&s->embeddings, 1);
        reply_json(
            fd, 200, "OK",
            "{\"image_id\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}",
            0);
        return 0;
    }
    if (!strcmp(path, "/healthz")) {
        atomic_fetch_add(&s->healthz, 1);
        reply_json(fd, 200, "OK", "{\"status\":\"ok\"}", 0);
        return 0;
    }
    if (strcmp(path, "/v1/segment") != 0) {
        reply_json(fd, 404, "Not Found",
                   "{\"error\":{\"code\":404,\"message\":\"no\",\"field\":\"\"}}", 0);
        return 0;
    }
    int i = atomic_fetch_add(&s->segments, 1);
    size_t n =
        body_len < sizeof s->last_segment_body - 1 ? body_len : sizeof s->last_segment_body - 1;
    memcpy(s->last_segment_body, body, n);
    s->last_segment_body[n] = '\0';
    static const char err503[] =
        "{\"error\":{\"code\":503,\"message\":\"loading\",\"field\":\"\"}}";
    switch (s->script[i % s->script_len]) {
    case R_OK_CL:
        reply_json(fd, 200, "OK", SEG_JSON, 0);
        return 0;
    case R_OK_CHUNKED: {
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n";
        char out[4096];
        size_t len = strlen(SEG_JSON), half = len / 2;
        int k = snprintf(out, sizeof out,
                         "%s%zx;ext=1\r\n%.*s\r\n%zX\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n", head,
                         half, (int)half, SEG_JSON, len - half, SEG_JSON + half);
        send_str(fd, out, (size_t)k);
        return 0;
    }
    case R_503:
        reply_json(fd, 503, "Service Unavailable", err503, 0);
        return 0;
    case R_429:
        reply_json(fd, 429, "Too Many Requests", err503, 0);
        return 0;
    case R_504:
        reply_json(fd, 504, "Gateway Timeout", err503, 0);
        return 0;
    case R_CLOSE_MID: {
        static const char m[] = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"masks\":[";
        send_str(fd, m, sizeof m - 1);
        return 1;
    }
    case R_GARBAGE: {
        static const char g[] = "SSH-2.0-OpenSSH_9.6\r\n\x01\x02\xff\r\n\r\n";
        send_str(fd, g, sizeof g - 1);
        return 1;
    }
    case R_INVALID:
        reply_json(fd, 200, "OK", "{\"nomasks\":true}", 0);
        return 0;
    case R_OK_CLOSE:
        reply_json(fd, 200, "OK", SEG_JSON, 1);
        return 1;
    case R_HUGE_CL: {
        static const char m[] = "HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n{";
        send_str(fd, m, sizeof m - 1);
        return 1;
    }
    case R_HUGE_CHUNK: {
        static const char m[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "1000000000000000\r\n{";
        send_str(fd, m, sizeof m - 1);
        return 1;
    }
    case R_SILENT:
        return 0;
    case R_IDLE_CLOSE:
        reply_json(fd, 200, "OK", SEG_JSON, 0);
        return 1;
    }
    return 1;
}

/* Handle every complete request in c's buffer; returns 1 to close. */
static int serve_buffer(server *s, client *c)
{
    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end)
            return c->len == sizeof c->buf; /* a head this large is not ours */
        size_t head = (size_t)(end - c->buf) + 4;
        size_t clen = 0;
        char *cl = memmem(c->buf, head, "Content-Length: ", 16);
        if (cl)
            clen = strtoul(cl + 16, NULL, 10);
        if (clen > sizeof c->buf - head)
            return 1;
        if (c->len < head + clen)
            return 0;
        char path[256] = "";
        sscanf(c->buf, "%*s %255s", path);
        int close_it = answer(s, c->fd, path, c->buf + head, clen);
        memmove(c->buf, c->buf + head + clen, c->len - head - clen);
        c->len -= head + clen;
        if (close_it)
            return 1;
    }
}

static void *server_main(void *arg)
{
    server *s = arg;
    for (;;) {
        struct pollfd p[MAX_CLIENTS + 2];
        int idx[MAX_CLIENTS + 2];
        int n = 0;
        p[n++] = (struct pollfd){.fd = s->stop_pipe[0], .events = POLLIN};
        p[n++] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
        for (int i = 0; i < MAX_CLIENTS; i++)
            if (s->cl[i].fd >= 0) {
                idx[n] = i;
                p[n++] = (struct pollfd){.fd = s->cl[i].fd, .events = POLLIN};
            }
        if (poll(p, (nfds_t)n, 1000) < 0 && errno != EINTR)
            break;
        if (p[0].revents)
            break;
        if (p[1].revents & POLLIN) {
            int fd = accept(s->lfd, NULL, NULL);
            if (fd >= 0) {
                atomic_fetch_add(&s->accepted, 1);
                int slot = -1;
                for (int i = 0; i < MAX_CLIENTS && slot < 0; i++)
                    if (s->cl[i].fd < 0)
                        slot = i;
                if (slot < 0) {
                    close(fd);
                } else {
                    s->cl[slot].fd = fd;
                    s->cl[slot].len = 0;
                }
            }
        }
        for (int k = 2; k < n; k++) {
            if (!p[k].revents)
                continue;
            client *c = &s->cl[idx[k]];
            ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
            if (r <= 0 || (c->len += (size_t)r, serve_buffer(s, c))) {
                close(c->fd);
                c->fd = -1;
            }
        }
    }
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (s->cl[i].fd >= 0)
            close(s->cl[i].fd);
    return NULL;
}

static server *server_start(const reply_kind *script, int script_len)
{
    server *s = calloc(1, sizeof *s);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (!s)
        return NULL;
    for (int i = 0; i < MAX_CLIENTS; i++)
        s->cl[i].fd = -1;
    s->script = script;
    s->script_len = script_len;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(s->lfd, 64) != 0 || getsockname(s->lfd, (struct sockaddr *)&a, &al) != 0 ||
        pipe(s->stop_pipe) != 0) {
        if (s->lfd >= 0)
            close(s->lfd);
        free(s);
        return NULL;
    }
    s->port = ntohs(a.sin_port);
    if (pthread_create(&s->tid, NULL, server_main, s) != 0) {
        close(s->lfd);
        close(s->stop_pipe[0]);
        close(s->stop_pipe[1]);
        free(s);
        return NULL;
    }
    return s;
}

/* Stops the thread (its counters stay readable); free(s) after. */
static void server_stop(server *s)
{
    if (!s || s->lfd < 0)
        return;
    if (write(s->stop_pipe[1], "x", 1) != 1)
        perror("write");
    pthread_join(s->tid, NULL);
    close(s->lfd);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    s->lfd = -1;
}

/* Run the bench with args (NULL-terminated) and --url pointing at port;
 * returns its --json answer parsed (NULL if none) and its exit status. */
static json_t *run_bench(int port, int *status, const char *arg0, ...)
{
    const char *argv[64];
    char url[64];
    int n = 0;
    va_list ap;
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    argv[n++] = g_bench;
    argv[n++] = "--url";
    argv[n++] = url;
    argv[n++] = "--quiet";
    va_start(ap, arg0);
    for (const char *a = arg0; a && n < 62; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;

    int pfd[2];
    *status = -1;
    if (pipe(pfd) != 0)
        return NULL;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        int dn = open("/dev/null", O_WRONLY);
        if (dn >= 0 && !getenv("TEST_BENCH_VERBOSE"))
            dup2(dn, 2);
        execv(g_bench, (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    if (pid < 0) {
        close(pfd[0]);
        return NULL;
    }
    /* Read everything, but never wait more than 8 s: a hung bench is a
     * failure, not a hung test run. */
    char *out = NULL;
    size_t len = 0, cap = 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double deadline = ts.tv_sec + ts.tv_nsec * 1e-9 + 8.0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double left = deadline - (ts.tv_sec + ts.tv_nsec * 1e-9);
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)(left * 1000) + 1) == 0) {
            kill(pid, SIGKILL);
            break;
        }
        if (len + 4096 > cap) {
            char *nb = realloc(out, cap = cap * 2 + 8192);
            if (!nb)
                break;
            out = nb;
        }
        ssize_t r = read(pfd[0], out + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    json_t *j = out ? json_loadb(out, len, 0, NULL) : NULL;
    free(out);
    return j;
}

static long jint(json_t *j, const char *a, const char *b)
{
    json_t *v = json_object_get(j, a);
    if (b)
        v = json_object_get(v, b);
    return json_is_integer(v) ? (long)json_integer_value(v) : -1;
}

static double jreal(json_t *j, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(j, a), b);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

#define NEED_BENCH()                                                                               \
    do {                                                                                           \
        if (access(g_bench, X_OK) != 0)                                                            \
            T_SKIP("%s not built (make build/bench/tasam-bench, or SAN=1 "                         \
                   "build/asan/bench/tasam-bench)",                                                \
                   g_bench);                                                                       \
    } while (0)

static void test_keepalive_content_length(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--points", "1,2,1", "--concurrency",
                          "2", "--requests", "40", "--warmup", "2", "--json", NULL);
    T_CHECK(st == 0, "exit %d", st);
    T_CHECK(j, "no JSON on stdout");
    T_CHECK(jint(j, "requests", NULL) == 40, "requests %ld", jint(j, "requests", NULL));
    T_CHECK(jint(j, "ok", NULL) == 40, "ok %ld", jint(j, "ok", NULL));
    T_CHECK(jint(j, "errors", NULL) == 0, "errors %ld", jint(j, "errors", NULL));
    T_CHECK(jint(j, "status", "200") == 40, "status 200: %ld", jint(j, "status", "200"));
    T_CHECK(fabs(jreal(j, "server_p50_ms", "decode_masks") - 5.0) < 1e-9, "decode_masks p50 %g",
            jreal(j, "server_p50_ms", "decode_masks"));
    T_CHECK(fabs(jreal(j, "server_p50_ms", "total") - 7.0) < 1e-9, "total p50 %g",
            jreal(j, "server_p50_ms", "total"));
    T_CHECK(fabs(jreal(j, "server_unstaged_ms", "p50") - 0.5) < 1e-6,
            "unstaged p50 %g, want "
            "7 - 0.5 - 5 - 1",
            jreal(j, "server_unstaged_ms", "p50"));
    double p50 = jreal(j, "latency_ms", "p50"), mn = jreal(j, "latency_ms", "min"),
           mx = jreal(j, "latency_ms", "max"), p99 = jreal(j, "latency_ms", "p99");
    T_CHECK(mn >= 0 && mn <= p50 && p50 <= p99 && p99 <= mx, "latencies out of order %g %g %g %g",
            mn, p50, p99, mx);
    json_decref(j);
    server_stop(s);
    /* One connection for the image_id, then one per thread, kept alive. */
    T_CHECK(atomic_load(&s->accepted) == 3, "%d connections, want 3", atomic_load(&s->accepted));
    T_CHECK(atomic_load(&s->embeddings) == 1, "%d embeddings requests",
            atomic_load(&s->embeddings));
    T_CHECK(atomic_load(&s->segments) == 42, "%d segment requests (40 + 2 warm-up)",
            atomic_load(&s->segments));
    T_CHECK(strstr(s->last_segment_body, "\"image_id\":\"0123") &&
                strstr(s->last_segment_body, "\"points\":[[1,2,1]]"),
            "segment body: %s", s->last_segment_body);
    free(s);
}

static void test_chunked(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CHUNKED};
    server *s = server_start(script, 1);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--requests", "10", "--json", NULL);
    T_CHECK(st == 0, "exit %d", st);
    T_CHECK(jint(j, "ok", NULL) == 10 && jint(j, "errors", NULL) == 0, "ok %ld errors %ld",
            jint(j, "ok", NULL), jint(j, "errors", NULL));
    T_CHECK(fabs(jreal(j, "server_p50_ms", "queue") - 0.5) < 1e-9, "queue p50 %g",
            jreal(j, "server_p50_ms", "queue"));
    json_decref(j);
    server_stop(s);
    T_CHECK(atomic_load(&s->accepted) == 2, "%d connections, want 2 (chunked keeps alive)",
            atomic_load(&s->accepted));
    free(s);
}

/* Every failure kind once, in order, on one connection. */
static void test_mixed_failures(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {
        R_OK_CL,    R_503,        R_429,     R_504,        R_CLOSE_MID,  R_GARBAGE, R_INVALID,
        R_OK_CLOSE, R_OK_CHUNKED, R_HUGE_CL, R_HUGE_CHUNK, R_IDLE_CLOSE, R_OK_CL};
    int n = (int)(sizeof script / sizeof *script);
    server *s = server_start(script, n);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    char nreq[16];
    snprintf(nreq, sizeof nreq, "%d", n);
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--requests", nreq, "--json", NULL);
    T_CHECK(st == 1, "exit %d, want 1 (some requests failed)", st);
    T_REQUIRE(j, "no JSON on stdout");
    T_CHECK(jint(j, "requests", NULL) == n, "requests %ld", jint(j, "requests", NULL));
    T_CHECK(jint(j, "ok", NULL) == 5, "ok %ld, want 5", jint(j, "ok", NULL));
    T_CHECK(jint(j, "errors", NULL) == 8, "errors %ld, want 8", jint(j, "errors", NULL));
    T_CHECK(jint(j, "status", "200") == 5,
            "status 200 %ld, want 5 (the one without masks is "
            "invalid_body)",
            jint(j, "status", "200"));
    T_CHECK(jint(j, "status_503", NULL) == 1, "503: %ld", jint(j, "status_503", NULL));
    T_CHECK(jint(j, "status_429", NULL) == 1, "429: %ld", jint(j, "status_429", NULL));
    T_CHECK(jint(j, "status_504", NULL) == 1, "504: %ld", jint(j, "status_504", NULL));
    T_CHECK(jint(j, "transport_errors", "closed") == 1, "closed %ld",
            jint(j, "transport_errors", "closed"));
    T_CHECK(jint(j, "transport_errors", "malformed") == 1, "malformed %ld",
            jint(j, "transport_errors", "malformed"));
    T_CHECK(jint(j, "transport_errors", "invalid_body") == 1, "invalid_body %ld",
            jint(j, "transport_errors", "invalid_body"));
    T_CHECK(jint(j, "transport_errors", "too_large") == 2, "too_large %ld",
            jint(j, "transport_errors", "too_large"));
    T_CHECK(jint(j, "transport_errors", "timeout") == 0, "timeout %ld",
            jint(j, "transport_errors", "timeout"));
    T_CHECK(jint(j, "reconnects", NULL) == 1, "reconnects %ld, want 1 (idle close)",
            jint(j, "reconnects", NULL));
    json_decref(j);
    server_stop(s);
    T_CHECK(atomic_load(&s->segments) == n, "server saw %d segment requests, want %d",
            atomic_load(&s->segments), n);
    free(s);
}

static void test_timeout(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_SILENT};
    server *s = server_start(script, 1);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--requests", "2", "--timeout", "0.3",
                          "--json", NULL);
    T_CHECK(st == 1, "exit %d", st);
    T_CHECK(jint(j, "transport_errors", "timeout") == 2, "timeout %ld, want 2",
            jint(j, "transport_errors", "timeout"));
    T_CHECK(jint(j, "ok", NULL) == 0, "ok %ld", jint(j, "ok", NULL));
    json_decref(j);
    server_stop(s);
    free(s);
}

/* --duration, --route healthz, several threads: every request the server
 * answered is counted once. */
static void test_healthz_duration(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--route", "healthz", "--duration", "0.5", "--concurrency",
                          "3", "--json", NULL);
    T_CHECK(st == 0, "exit %d", st);
    long n = jint(j, "requests", NULL);
    T_CHECK(n > 10 && jint(j, "ok", NULL) == n, "requests %ld ok %ld", n, jint(j, "ok", NULL));
    double d = json_number_value(json_object_get(j, "duration_s"));
    T_CHECK(d >= 0.45 && d < 3, "duration %g s", d);
    T_CHECK(json_number_value(json_object_get(j, "throughput_rps")) > 0, "no throughput");
    json_decref(j);
    server_stop(s);
    T_CHECK(atomic_load(&s->healthz) == n, "server answered %d, bench counted %ld",
            atomic_load(&s->healthz), n);
    T_CHECK(atomic_load(&s->embeddings) == 0, "healthz must not fetch an image_id");
    free(s);
}

/* --no-cache: the image travels in every request, with the prompt options. */
static void test_no_cache_body(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--no-cache", "--points",
                          "1.5,2,1;3,4,0", "--boxes", "0,0,3,2", "--multimask=false", "--output",
                          "png", "--requests", "3", "--json", NULL);
    T_CHECK(st == 0 && jint(j, "ok", NULL) == 3, "exit %d ok %ld", st, jint(j, "ok", NULL));
    json_decref(j);
    server_stop(s);
    T_CHECK(atomic_load(&s->embeddings) == 0, "--no-cache fetched an image_id");
    json_t *b = json_loads(s->last_segment_body, 0, NULL);
    T_CHECK(b && json_is_string(json_object_get(b, "image")) && !json_object_get(b, "image_id"),
            "body: %s", s->last_segment_body);
    T_CHECK(json_is_false(json_object_get(b, "multimask")), "multimask not false");
    const char *out = json_string_value(json_object_get(b, "output"));
    T_CHECK(out && !strcmp(out, "png"), "output %s", out ? out : "(none)");
    json_t *pts = json_object_get(b, "points");
    T_CHECK(json_array_size(pts) == 2 &&
                json_number_value(json_array_get(json_array_get(pts, 0), 0)) == 1.5 &&
                json_integer_value(json_array_get(json_array_get(pts, 1), 2)) == 0,
            "points: %s", s->last_segment_body);
    T_CHECK(json_array_size(json_array_get(json_object_get(b, "boxes"), 0)) == 4, "boxes");
    json_decref(b);
    free(s);
}

static void test_usage_and_refused(void)
{
    NEED_BENCH();
    int st;
    json_t *j;
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "'%s' --help >/dev/null 2>&1", g_bench);
    st = system(cmd);
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "--help exit %d", st);
    static const char *const bad[] = {
        "--concurrency 0",   "--requests 1000001", "--duration 3601",
        "--url https://x:1", "--url http://[::1",  "--url http://h:99999",
        "--route nope",      "--points 1,2",       "--output jpeg",
        "--bogus",           "--route segment",    "--route healthz --points 1,2,1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        /* --image is given where the option under test is not about it. */
        snprintf(cmd, sizeof cmd, "'%s' %s %s --quiet >/dev/null 2>&1", g_bench, bad[i],
                 strstr(bad[i], "route") ? "" : "--image /dev/null");
        st = system(cmd);
        T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "`%s` exit %d, want 2", bad[i],
                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    /* A port nobody listens on: every request is a counted connect error. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    T_REQUIRE(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
                  getsockname(fd, (struct sockaddr *)&a, &al) == 0,
              "cannot find a free port");
    close(fd);
    j = run_bench(ntohs(a.sin_port), &st, "--route", "healthz", "--requests", "3", "--json", NULL);
    T_CHECK(st == 1, "exit %d", st);
    T_CHECK(jint(j, "transport_errors", "connect") == 3, "connect errors %ld",
            jint(j, "transport_errors", "connect"));
    json_decref(j);
    /* The image_id fetch failing is a setup error (3), not a run. */
    j = run_bench(ntohs(a.sin_port), &st, "--image", g_image, "--requests", "3", "--json", NULL);
    T_CHECK(st == 3, "exit %d, want 3", st);
    json_decref(j);
}

int main(int argc, char **argv)
{
    char self[PATH_MAX], real[PATH_MAX];
    (void)argc;
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(g_bench, sizeof g_bench, "%s/../bench/tasam-bench", dirname(self));
    if (realpath(g_bench, real))
        snprintf(g_bench, sizeof g_bench, "%s", real);
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_image, sizeof g_image, "/tmp/tasam-test-bench-%d.jpg", (int)getpid());
    FILE *f = fopen(g_image, "wb");
    if (f) {
        fputs("\xff\xd8 not really a JPEG: the fake server never decodes it", f);
        fclose(f);
    }
    if (access(g_bench, X_OK) != 0)
        fprintf(stderr,
                "test_bench: %s is not built; tests/run.sh builds only tests, so these "
                "skip (make build/bench/tasam-bench to run them)\n",
                g_bench);
    T_RUN(test_keepalive_content_length);
    T_RUN(test_chunked);
    T_RUN(test_mixed_failures);
    T_RUN(test_timeout);
    T_RUN(test_healthz_duration);
    T_RUN(test_no_cache_body);
    T_RUN(test_usage_and_refused);
    unlink(g_image);
    return t_summary("test_bench");
}
