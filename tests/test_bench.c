/*
 * tests/test_bench.c: build/bench/tasam-bench against tiny HTTP servers in
 * this process, checking what it reports with --json against what the
 * servers saw and against wrk.
 *
 * The server (one thread, poll over 127.0.0.1 port 0) answers
 * /v1/embeddings and /healthz with canned JSON and each /v1/segment with the
 * next entry of a script: keep-alive JSON with Content-Length, chunked with
 * an extension and a trailer, 503/429/504, a close mid-body, garbage, a 200
 * without masks, Connection: close, an absurd Content-Length or chunk size,
 * a silent server and a keep-alive connection closed while idle. So each
 * line of the bench's report is tied to a known cause. It also checks every
 * image request it gets (X-Tasam-Image-Id against the image's SHA-256 or
 * the image_id, points inside the image, the everything field, tasks) and
 * can stall once, like a server pausing, to show what an open loop sees and
 * a closed loop hides. A second server (a thread per connection, each
 * answer after a fixed sleep) is the known delay that tasam-bench and wrk
 * both measure.
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
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "engine/image.h"
#include "engine/sha256.h"
#include "server/base64.h"
#include "tests/harness.h"

static char g_bench[PATH_MAX];
static char g_image[PATH_MAX]; /* a small file to send as the "image" */
static char g_png[PATH_MAX];   /* a real PNG (64x48) */
static char g_tmpdir[64];      /* mkdtemp folder for this run */

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
    R_404_ID,     /* 404 naming image_id: this replica does not hold the image */
} reply_kind;

#define MAX_CLIENTS 80
#define CLIENT_BUF  (1 << 20)

typedef struct {
    int fd;
    char *buf; /* CLIENT_BUF bytes */
    size_t len;
} client;

/* What the scripted server checked in the image requests it got. */
typedef struct {
    atomic_int with_image, with_id; /* bodies carrying image / image_id */
    atomic_int header_ok, header_bad, header_missing;
    atomic_int variants;            /* images whose SHA-256 is not the file's */
    atomic_int variant_same_pixels; /* ... that decode to the file's pixels */
    atomic_int points_in, points_out;
    atomic_int everything, everything_ok, with_task, task_ok;
} seen;

typedef struct {
    int lfd, port;
    int stop_pipe[2];
    pthread_t tid;
    const reply_kind *script;
    int script_len;
    int stall_at, stall_ms; /* the segment request with this index waits stall_ms first */
    int all_status;         /* >0: every request (any path) gets this status */
    atomic_int accepted, segments, embeddings, healthz;
    char last_segment_body[4096]; /* written by the server thread, read after stop */
    char file_sha[65];            /* SHA-256 of the --image file, for the checks */
    eng_image file_pixels;        /* its pixels when it decodes */
    const char *want_everything;  /* the everything value expected, as compact JSON */
    seen seen;
    client cl[MAX_CLIENTS];
} server;

static const char SEG_JSON[] =
    "{\"image_id\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\","
    "\"width\":4,\"height\":3,\"multimask\":false,\"masks\":[{\"prompt\":0,"
    "\"rle\":{\"size\":[3,4],\"counts\":\"0<\"},\"bbox\":[0,0,1,1],\"area\":1,"
    "\"predicted_iou\":0.9,\"stability_score\":0.9}],\"timings_ms\":{\"decode\":0.0,"
    "\"queue\":0.5,\"encode\":0.0,\"decode_masks\":5.0,\"postprocess\":1.0,\"total\":7.0},"
    "\"cache\":{\"embedding\":\"hit\",\"tier\":\"memory\"}}";
#define STUB_ID "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

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

/* Answers alternate between two instance names, as two replicas would. */
static void reply_json(int fd, int status, const char *reason, const char *body, int close_hdr)
{
    static atomic_int n;
    char head[512];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "X-Tasam-Instance: stub-%c\r\nContent-Length: %zu\r\n%s\r\n",
                     status, reason, atomic_fetch_add(&n, 1) % 2 ? 'b' : 'a', strlen(body),
                     close_hdr ? "Connection: close\r\n" : "");
    send_str(fd, head, (size_t)h);
    send_str(fd, body, strlen(body));
}

/* The value of header `name` in the head (case-sensitive, as tasam-bench
 * writes it) into out; 0 when absent. */
static int header(const char *head, size_t hl, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = memmem(head, hl, name, nl);
    if (!p || p[nl] != ':')
        return 0;
    p += nl + 1;
    while (*p == ' ')
        p++;
    size_t k = 0;
    while (p < head + hl && *p != '\r' && k + 1 < n)
        out[k++] = *p++;
    out[k] = '\0';
    return 1;
}

/* Check an image request's body and header; counts go to s->seen. */
static void check_image_request(server *s, const char *head, size_t hl, const char *body,
                                size_t len, int segment)
{
    seen *v = &s->seen;
    json_t *b = json_loadb(body, len, 0, NULL);
    const char *img = json_string_value(json_object_get(b, "image"));
    const char *id = json_string_value(json_object_get(b, "image_id"));
    char hdr[128], want[65] = "";
    if (img) {
        atomic_fetch_add(&v->with_image, 1);
        uint8_t *bytes = NULL, d[32];
        size_t n = 0;
        if (srv_base64_decode(img, strlen(img), &bytes, &n) == 0) {
            eng_sha256(bytes, n, d);
            eng_sha256_hex(d, want);
            if (strcmp(want, s->file_sha) != 0) {
                atomic_fetch_add(&v->variants, 1);
                eng_image im;
                if (s->file_pixels.rgb && eng_image_decode(bytes, n, 1 << 24, &im) == 0) {
                    if (im.w == s->file_pixels.w && im.h == s->file_pixels.h &&
                        !memcmp(im.rgb, s->file_pixels.rgb, (size_t)im.w * im.h * 3))
                        atomic_fetch_add(&v->variant_same_pixels, 1);
                    eng_image_free(&im);
                }
            }
        }
        free(bytes);
    } else if (id) {
        atomic_fetch_add(&v->with_id, 1);
        snprintf(want, sizeof want, "%s", id);
    }
    if (!header(head, hl, "X-Tasam-Image-Id", hdr, sizeof hdr))
        atomic_fetch_add(&v->header_missing, 1);
    else if (want[0] && !strcmp(hdr, want))
        atomic_fetch_add(&v->header_ok, 1);
    else
        atomic_fetch_add(&v->header_bad, 1);
    if (segment) {
        json_t *pts = json_object_get(b, "points"), *ev = json_object_get(b, "everything");
        size_t i;
        json_t *p;
        json_array_foreach(pts, i, p)
        {
            json_int_t x = json_integer_value(json_array_get(p, 0));
            json_int_t y = json_integer_value(json_array_get(p, 1));
            /* The stub's /v1/embeddings says 64x48. */
            if (x >= 0 && x < 64 && y >= 0 && y < 48)
                atomic_fetch_add(&v->points_in, 1);
            else
                atomic_fetch_add(&v->points_out, 1);
        }
        if (ev) {
            atomic_fetch_add(&v->everything, 1);
            char *e = json_dumps(ev, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
            if (e && s->want_everything && !strcmp(e, s->want_everything) && !pts &&
                !json_object_get(b, "boxes"))
                atomic_fetch_add(&v->everything_ok, 1);
            free(e);
        }
        const char *task = json_string_value(json_object_get(b, "task"));
        if (task) {
            atomic_fetch_add(&v->with_task, 1);
            if (!strcmp(task, "find the cat") || !strcmp(task, "segment every cup"))
                atomic_fetch_add(&v->task_ok, 1);
        }
    }
    json_decref(b);
}

/* Answer one request; returns 1 to close the connection afterwards. */
static int answer(server *s, int fd, const char *path, const char *head, size_t hl,
                  const char *body, size_t body_len)
{
    static const char err503[] =
        "{\"error\":{\"code\":503,\"message\":\"loading\",\"field\":\"\"}}";
    if (s->all_status) {
        reply_json(fd, s->all_status, "Status", err503, 0);
        return 0;
    }
    if (!strcmp(path, "/v1/embeddings")) {
        atomic_fetch_add(&s->embeddings, 1);
        check_image_request(s, head, hl, body, body_len, 0);
        reply_json(fd, 200, "OK", "{\"image_id\":\"" STUB_ID "\",\"width\":64,\"height\":48}", 0);
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
    check_image_request(s, head, hl, body, body_len, 1);
    if (s->stall_ms && i == s->stall_at)
        nanosleep(&(struct timespec){s->stall_ms / 1000, (s->stall_ms % 1000) * 1000000L}, NULL);
    switch (s->script[i % s->script_len]) {
    case R_OK_CL:
        reply_json(fd, 200, "OK", SEG_JSON, 0);
        return 0;
    case R_OK_CHUNKED: {
        static const char h[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n";
        char out[4096];
        size_t len = strlen(SEG_JSON), half = len / 2;
        int k = snprintf(out, sizeof out,
                         "%s%zx;ext=1\r\n%.*s\r\n%zX\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n", h, half,
                         (int)half, SEG_JSON, len - half, SEG_JSON + half);
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
    case R_404_ID:
        reply_json(fd, 404, "Not Found",
                   "{\"error\":{\"code\":404,\"message\":\"no cached embedding\","
                   "\"field\":\"image_id\"}}",
                   0);
        return 0;
    }
    return 1;
}

/* Handle every complete request in c's buffer; returns 1 to close. */
static int serve_buffer(server *s, client *c)
{
    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end)
            return c->len == CLIENT_BUF; /* a head this large is not ours */
        size_t head = (size_t)(end - c->buf) + 4;
        size_t clen = 0;
        char *cl = memmem(c->buf, head, "Content-Length: ", 16);
        if (cl)
            clen = strtoul(cl + 16, NULL, 10);
        if (clen > CLIENT_BUF - head)
            return 1;
        if (c->len < head + clen)
            return 0;
        char path[256] = "";
        sscanf(c->buf, "%*s %255s", path);
        int close_it = answer(s, c->fd, path, c->buf, head, c->buf + head, clen);
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
                /* Answers are written in pieces: without this, Nagle holds
                 * the second piece for the client's delayed ACK (40 ms). */
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                atomic_fetch_add(&s->accepted, 1);
                int slot = -1;
                for (int i = 0; i < MAX_CLIENTS && slot < 0; i++)
                    if (s->cl[i].fd < 0)
                        slot = i;
                if (slot < 0 || (!s->cl[slot].buf && !(s->cl[slot].buf = malloc(CLIENT_BUF)))) {
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
            ssize_t r = recv(c->fd, c->buf + c->len, CLIENT_BUF - c->len, 0);
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

/* A listening loopback socket on a free port. */
static int listen_any(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* The scripted server; `image` (may be NULL) is the file the bench will
 * send, whose SHA-256 and pixels the checks compare with. Set stall_*,
 * all_status and want_everything before the first request. */
static server *server_start(const reply_kind *script, int script_len, const char *image)
{
    server *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    for (int i = 0; i < MAX_CLIENTS; i++)
        s->cl[i].fd = -1;
    s->script = script;
    s->script_len = script_len;
    if (image) {
        size_t n;
        uint8_t *b = t_read_file(image, &n), d[32];
        if (b) {
            eng_sha256(b, n, d);
            eng_sha256_hex(d, s->file_sha);
            if (eng_image_decode(b, n, 1 << 24, &s->file_pixels) != 0)
                memset(&s->file_pixels, 0, sizeof s->file_pixels);
        }
        free(b);
    }
    s->lfd = listen_any(&s->port);
    if (s->lfd < 0 || pipe(s->stop_pipe) != 0) {
        if (s->lfd >= 0)
            close(s->lfd);
        free(s);
        return NULL;
    }
    if (pthread_create(&s->tid, NULL, server_main, s) != 0) {
        close(s->lfd);
        close(s->stop_pipe[0]);
        close(s->stop_pipe[1]);
        free(s);
        return NULL;
    }
    return s;
}

/* Stops the thread (its counters stay readable); server_free after. */
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

static void server_free(server *s)
{
    if (!s)
        return;
    server_stop(s);
    for (int i = 0; i < MAX_CLIENTS; i++)
        free(s->cl[i].buf);
    eng_image_free(&s->file_pixels);
    free(s);
}

/* ---- the fixed-delay server ---------------------------------------------- */

/* Every request on every connection is answered after delay_ms, from a
 * thread per connection: n connections in flight see n requests per
 * delay_ms, whatever the client. */
typedef struct {
    int lfd, port, delay_ms;
    pthread_t tid;
    atomic_int stop, answered;
    atomic_int live; /* connection threads still running */
} delay_server;

typedef struct {
    delay_server *d;
    int fd;
} delay_conn;

static void *delay_conn_main(void *arg)
{
    delay_conn *dc = arg;
    delay_server *d = dc->d;
    char buf[16384];
    size_t len = 0;
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                               "Content-Length: 15\r\n\r\n{\"status\":\"ok\"}";
    while (!atomic_load(&d->stop)) {
        struct pollfd p = {.fd = dc->fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        ssize_t r = recv(dc->fd, buf + len, sizeof buf - len, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
        char *end;
        while ((end = memmem(buf, len, "\r\n\r\n", 4)) != NULL) { /* GETs only: no bodies */
            size_t used = (size_t)(end - buf) + 4;
            nanosleep(&(struct timespec){0, d->delay_ms * 1000000L}, NULL);
            send_str(dc->fd, resp, sizeof resp - 1);
            atomic_fetch_add(&d->answered, 1);
            memmove(buf, buf + used, len - used);
            len -= used;
        }
        if (len == sizeof buf)
            break;
    }
    close(dc->fd);
    free(dc);
    atomic_fetch_sub(&d->live, 1);
    return NULL;
}

static void *delay_main(void *arg)
{
    delay_server *d = arg;
    while (!atomic_load(&d->stop)) {
        struct pollfd p = {.fd = d->lfd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int fd = accept(d->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        delay_conn *dc = malloc(sizeof *dc);
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (dc) {
            dc->d = d;
            dc->fd = fd;
            atomic_fetch_add(&d->live, 1);
        }
        if (!dc || pthread_create(&t, &at, delay_conn_main, dc) != 0) {
            if (dc)
                atomic_fetch_sub(&d->live, 1);
            close(fd);
            free(dc);
        }
        pthread_attr_destroy(&at);
    }
    return NULL;
}

static delay_server *delay_start(int delay_ms)
{
    delay_server *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->delay_ms = delay_ms;
    d->lfd = listen_any(&d->port);
    if (d->lfd < 0 || pthread_create(&d->tid, NULL, delay_main, d) != 0) {
        if (d->lfd >= 0)
            close(d->lfd);
        free(d);
        return NULL;
    }
    return d;
}

/* Stops accepting, waits for the (detached) connection threads, which see
 * the stop flag within 200 ms, and frees d. */
static void delay_stop(delay_server *d)
{
    if (!d)
        return;
    atomic_store(&d->stop, 1);
    pthread_join(d->tid, NULL);
    close(d->lfd);
    for (int i = 0; i < 500 && atomic_load(&d->live) > 0; i++)
        usleep(10000);
    if (atomic_load(&d->live) == 0)
        free(d);
}

/* ---- running programs ---------------------------------------------------- */

/* Run argv (NULL-terminated), collect stdout for at most `limit` seconds
 * (then kill it: a hung program is a failure, not a hung test run).
 * Returns stdout (malloc'd, NUL-terminated) and the exit status. */
static char *run_capture(const char *const *argv, double limit, int *status)
{
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
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    if (pid < 0) {
        close(pfd[0]);
        return NULL;
    }
    char *out = NULL;
    size_t len = 0, cap = 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double deadline = ts.tv_sec + ts.tv_nsec * 1e-9 + limit;
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
    if (out)
        out[len] = '\0';
    return out;
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
    char *out = run_capture(argv, 20, status);
    json_t *j = out ? json_loads(out, 0, NULL) : NULL;
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
    json_t *v = json_object_get(j, a);
    if (b)
        v = json_object_get(v, b);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

#define NEED_BENCH()                                                                               \
    do {                                                                                           \
        if (access(g_bench, X_OK) != 0)                                                            \
            T_SKIP("%s not built (make build/bench/tasam-bench, or SAN=1 "                         \
                   "build/asan/bench/tasam-bench)",                                                \
                   g_bench);                                                                       \
    } while (0)

/* ---- the report against the scripted server ------------------------------ */

static void test_keepalive_content_length(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, g_image);
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
            "unstaged p50 %g, want 7 - 0.5 - 5 - 1", jreal(j, "server_unstaged_ms", "p50"));
    double p50 = jreal(j, "p50_ms", NULL), mn = jreal(j, "min_ms", NULL),
           mx = jreal(j, "max_ms", NULL), p99 = jreal(j, "p99_ms", NULL);
    T_CHECK(mn >= 0 && mn <= p50 && p50 <= p99 && p99 <= mx, "latencies out of order %g %g %g %g",
            mn, p50, p99, mx);
    T_CHECK(jint(j, "cache_hits", NULL) == 40, "cache hits %ld", jint(j, "cache_hits", NULL));
    /* The stub alternates instance names over every answer it sends,
     * /v1/embeddings and warm-up included: 43 in all. */
    long a = jint(j, "instances", "stub-a"), b = jint(j, "instances", "stub-b");
    T_CHECK(a + b == 40 && labs(a - b) <= 2, "instances a %ld b %ld", a, b);
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
    /* The header names the image: the file's SHA-256 when its bytes are
     * sent (/v1/embeddings), the image_id otherwise. */
    T_CHECK(atomic_load(&s->seen.header_ok) == 43 && atomic_load(&s->seen.header_bad) == 0 &&
                atomic_load(&s->seen.header_missing) == 0,
            "X-Tasam-Image-Id: %d right, %d wrong, %d missing", atomic_load(&s->seen.header_ok),
            atomic_load(&s->seen.header_bad), atomic_load(&s->seen.header_missing));
    server_free(s);
}

static void test_chunked(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CHUNKED};
    server *s = server_start(script, 1, NULL);
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
    server_free(s);
}

/* Every failure kind once, in order, on one connection. */
static void test_mixed_failures(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {
        R_OK_CL,    R_503,        R_429,     R_504,        R_CLOSE_MID,  R_GARBAGE, R_INVALID,
        R_OK_CLOSE, R_OK_CHUNKED, R_HUGE_CL, R_HUGE_CHUNK, R_IDLE_CLOSE, R_OK_CL};
    int n = (int)(sizeof script / sizeof *script);
    server *s = server_start(script, n, NULL);
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
            "status 200 %ld, want 5 (the one without masks is invalid_body)",
            jint(j, "status", "200"));
    T_CHECK(jint(j, "status", "503") == 1, "503: %ld", jint(j, "status", "503"));
    T_CHECK(jint(j, "status", "429") == 1, "429: %ld", jint(j, "status", "429"));
    T_CHECK(jint(j, "status", "504") == 1, "504: %ld", jint(j, "status", "504"));
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
    server_free(s);
}

static void test_timeout(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_SILENT};
    server *s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--requests", "2", "--timeout", "0.3",
                          "--json", NULL);
    T_CHECK(st == 1, "exit %d", st);
    T_CHECK(jint(j, "transport_errors", "timeout") == 2, "timeout %ld, want 2",
            jint(j, "transport_errors", "timeout"));
    T_CHECK(jint(j, "ok", NULL) == 0, "ok %ld", jint(j, "ok", NULL));
    json_decref(j);
    server_free(s);
}

/* --duration, --route healthz, several threads: every request the server
 * answered is counted once. */
static void test_healthz_duration(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--route", "healthz", "--duration", "0.5", "--concurrency",
                          "3", "--json", NULL);
    T_CHECK(st == 0, "exit %d", st);
    long n = jint(j, "requests", NULL);
    T_CHECK(n > 10 && jint(j, "ok", NULL) == n, "requests %ld ok %ld", n, jint(j, "ok", NULL));
    double d = jreal(j, "duration_s", NULL);
    T_CHECK(d >= 0.45 && d < 3, "duration %g s", d);
    T_CHECK(fabs(jreal(j, "throughput", NULL) - n / d) < 0.01 * n / d + 1, "throughput %g, %ld/%g",
            jreal(j, "throughput", NULL), n, d);
    json_decref(j);
    server_stop(s);
    T_CHECK(atomic_load(&s->healthz) == n, "server answered %d, bench counted %ld",
            atomic_load(&s->healthz), n);
    T_CHECK(atomic_load(&s->embeddings) == 0, "healthz must not fetch an image_id");
    server_free(s);
}

/* --no-cache: the image travels in every request, with the prompt options. */
static void test_no_cache_body(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, g_image);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--no-cache", "--points",
                          "1.5,2,1;3,4,0", "--boxes", "0,0,3,2", "--multimask=false", "--output",
                          "png", "--requests", "3", "--json", NULL);
    T_CHECK(st == 0 && jint(j, "ok", NULL) == 3, "exit %d ok %ld", st, jint(j, "ok", NULL));
    json_decref(j);
    server_stop(s);
    T_CHECK(atomic_load(&s->embeddings) == 1, "the image was not registered once");
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
    T_CHECK(atomic_load(&s->seen.header_ok) == 4 && atomic_load(&s->seen.header_bad) == 0,
            "X-Tasam-Image-Id: %d right, %d wrong (want the file's SHA-256)",
            atomic_load(&s->seen.header_ok), atomic_load(&s->seen.header_bad));
    json_decref(b);
    server_free(s);
}

/* A 404 for image_id (a replica without the image, behind a proxy): the
 * request goes again with the image and counts once, as a success; with
 * --no-resend it is a failure. */
static void test_resend_on_404(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_404_ID, R_OK_CL};
    server *s = server_start(script, 2, g_image);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--points", "1,1,1", "--requests", "5",
                          "--json", NULL);
    T_CHECK(st == 0 && jint(j, "ok", NULL) == 5 && jint(j, "resent_with_image", NULL) == 5,
            "exit %d, ok %ld, resent %ld", st, jint(j, "ok", NULL),
            jint(j, "resent_with_image", NULL));
    json_decref(j);
    server_stop(s);
    /* 5 by id, answered 404; the same 5 with the image; and the image's
     * registration at /v1/embeddings. */
    T_CHECK(atomic_load(&s->segments) == 10 && atomic_load(&s->seen.with_image) == 6 &&
                atomic_load(&s->seen.with_id) == 5,
            "server: %d segment posts, %d with the image (+1 registration), %d by id",
            atomic_load(&s->segments), atomic_load(&s->seen.with_image),
            atomic_load(&s->seen.with_id));
    T_CHECK(atomic_load(&s->seen.header_bad) == 0, "a resent request's header is wrong");
    server_free(s);

    s = server_start(script, 2, g_image);
    T_REQUIRE(s, "cannot start the test server");
    j = run_bench(s->port, &st, "--image", g_image, "--points", "1,1,1", "--requests", "4",
                  "--no-resend", "--json", NULL);
    T_CHECK(st == 1 && jint(j, "status", "404") == 2 && jint(j, "ok", NULL) == 2,
            "--no-resend: exit %d, 404s %ld", st, jint(j, "status", "404"));
    json_decref(j);
    server_free(s);
}

/* ---- workload mix -------------------------------------------------------- */

/* A mix of every kind, tasks on half, misses on half, on a real PNG: the
 * counts the bench reports match what the server got, every header names
 * the image sent, every miss is a new image with the file's pixels. */
static void mix_run(const char *image, int n_req)
{
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, image);
    T_REQUIRE(s, "cannot start the test server");
    s->want_everything = "{\"points_per_side\":8,\"pred_iou_thresh\":0.5}";
    char nreq[16];
    snprintf(nreq, sizeof nreq, "%d", n_req);
    int st;
    json_t *j = run_bench(s->port, &st, "--image", image, "--mix",
                          "segment=2,everything=1,embeddings=1,healthz=1", "--miss-ratio", "0.5",
                          "--task", "find the cat", "--task", "segment every cup", "--task-ratio",
                          "0.5", "--everything", "{\"pred_iou_thresh\":0.5,\"points_per_side\":8}",
                          "--requests", nreq, "--concurrency", "2", "--seed", "7", "--json", NULL);
    T_CHECK(st == 0, "exit %d", st);
    T_REQUIRE(j, "no JSON");
    long seg = jint(json_object_get(j, "kinds"), "segment", "requests"),
         ev = jint(json_object_get(j, "kinds"), "everything", "requests"),
         em = jint(json_object_get(j, "kinds"), "embeddings", "requests"),
         hz = jint(json_object_get(j, "kinds"), "healthz", "requests");
    T_CHECK(seg + ev + em + hz == n_req, "kinds %ld+%ld+%ld+%ld != %d", seg, ev, em, hz, n_req);
    /* weights 2:1:1:1 of n_req: each count within 5 sigma of its mean */
    double p[4] = {0.4, 0.2, 0.2, 0.2};
    long got[4] = {seg, ev, em, hz};
    for (int k = 0; k < 4; k++) {
        double mean = n_req * p[k], sd = sqrt(n_req * p[k] * (1 - p[k]));
        T_CHECK(fabs(got[k] - mean) <= 5 * sd, "kind %d: %ld requests, expected %.0f", k, got[k],
                mean);
    }
    json_decref(j);
    server_stop(s);
    seen *v = &s->seen;
    T_CHECK(atomic_load(&s->segments) == seg + ev, "server: %d segment posts, bench %ld + %ld",
            atomic_load(&s->segments), seg, ev);
    T_CHECK(atomic_load(&s->embeddings) == em + 1, "server: %d embeddings posts, bench %ld + 1",
            atomic_load(&s->embeddings), em);
    T_CHECK(atomic_load(&s->healthz) == hz, "server: %d healthz, bench %ld",
            atomic_load(&s->healthz), hz);
    T_CHECK(atomic_load(&v->everything) == ev && atomic_load(&v->everything_ok) == ev,
            "everything: %d requests, %d as given, bench %ld", atomic_load(&v->everything),
            atomic_load(&v->everything_ok), ev);
    T_CHECK(atomic_load(&v->header_bad) == 0 && atomic_load(&v->header_missing) == 0 &&
                atomic_load(&v->header_ok) == seg + ev + em + 1,
            "X-Tasam-Image-Id: %d right, %d wrong, %d missing", atomic_load(&v->header_ok),
            atomic_load(&v->header_bad), atomic_load(&v->header_missing));
    T_CHECK(atomic_load(&v->points_out) == 0 && atomic_load(&v->points_in) > 0,
            "random points: %d inside the 64x48 image, %d outside", atomic_load(&v->points_in),
            atomic_load(&v->points_out));
    int img = (int)(seg + ev + em), var = atomic_load(&v->variants);
    T_CHECK(fabs(var - 0.5 * img) <= 5 * sqrt(img * 0.25) && var > 0,
            "%d cache-miss variants of %d image requests, expected half", var, img);
    T_CHECK(atomic_load(&v->variant_same_pixels) == var,
            "%d of %d variants decode to the file's pixels", atomic_load(&v->variant_same_pixels),
            var);
    int tasks = atomic_load(&v->with_task);
    T_CHECK(atomic_load(&v->task_ok) == tasks &&
                fabs(tasks - 0.5 * (seg + ev)) <= 5 * sqrt((seg + ev) * 0.25),
            "%d tasks (%d known) on %ld segment+everything requests", tasks,
            atomic_load(&v->task_ok), seg + ev);
    server_free(s);
}

/* --variants 4: four registered images made of one file, each its pixels
 * under another SHA-256. */
static void test_variants(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, g_png);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_png, "--variants", "4", "--requests", "8",
                          "--json", NULL);
    T_CHECK(st == 0 && jint(j, "images", NULL) == 4 && jint(j, "ok", NULL) == 8,
            "exit %d, %ld images, %ld ok", st, jint(j, "images", NULL), jint(j, "ok", NULL));
    json_decref(j);
    server_stop(s);
    T_CHECK(atomic_load(&s->embeddings) == 4 && atomic_load(&s->seen.variants) == 3 &&
                atomic_load(&s->seen.variant_same_pixels) == 3 &&
                atomic_load(&s->seen.header_ok) == 12,
            "registered %d, variants %d (%d same pixels), headers ok %d",
            atomic_load(&s->embeddings), atomic_load(&s->seen.variants),
            atomic_load(&s->seen.variant_same_pixels), atomic_load(&s->seen.header_ok));
    server_free(s);
    /* A file that is neither JPEG nor PNG cannot have variants: usage. */
    char gif[PATH_MAX];
    snprintf(gif, sizeof gif, "%s/v.gif", g_tmpdir);
    FILE *f = fopen(gif, "wb");
    if (f) {
        fputs("GIF89a and so on", f);
        fclose(f);
    }
    s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    j = run_bench(s->port, &st, "--image", gif, "--variants", "2", "--requests", "1", NULL);
    T_CHECK(st == 2, "--variants of a GIF: exit %d, want 2", st);
    json_decref(j);
    server_free(s);
}

static void test_mix_png(void)
{
    NEED_BENCH();
    mix_run(g_png, 300);
}

static void test_mix_jpeg(void)
{
    NEED_BENCH();
    T_NEED_FIXTURES();
    mix_run(t_fixture("images/dog.jpg"), 60);
}

/* ---- open loop, sweeps, plots --------------------------------------------- */

/* Constant arrivals at 200/s for 1 s: exactly 200 requests at 200/s. */
static void test_open_loop_rate(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    int st;
    json_t *j = run_bench(s->port, &st, "--route", "healthz", "--rate", "200", "--arrivals",
                          "constant", "--duration", "1", "--json", NULL);
    T_CHECK(st == 0, "exit %d", st);
    T_CHECK(jint(j, "requests", NULL) == 200 && jint(j, "ok", NULL) == 200, "requests %ld ok %ld",
            jint(j, "requests", NULL), jint(j, "ok", NULL));
    double ar = jreal(j, "achieved_rate", NULL);
    T_CHECK(ar > 180 && ar <= 201, "achieved rate %g, want 200", ar);
    const char *mode = json_string_value(json_object_get(j, "mode"));
    T_CHECK(mode && !strcmp(mode, "open"), "mode %s", mode ? mode : "(none)");
    json_decref(j);
    server_stop(s);
    T_CHECK(atomic_load(&s->healthz) == 200, "server answered %d", atomic_load(&s->healthz));
    server_free(s);
}

/*
 * The server stalls 600 ms once, 0.3 s in. Open loop at 100/s: every
 * request scheduled during the stall waits for it, so p90 and p99 show it.
 * Closed loop, one connection: only the one request in flight waits, the
 * client sends nothing meanwhile, and p99 hides it (coordinated omission).
 */
static void test_coordinated_omission(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    s->stall_at = 30;
    s->stall_ms = 600;
    int st;
    json_t *j = run_bench(s->port, &st, "--image", g_image, "--points", "1,1,1", "--rate", "100",
                          "--arrivals", "constant", "--requests", "150", "--json", NULL);
    T_CHECK(st == 0, "open loop: exit %d", st);
    double p90 = jreal(j, "p90_ms", NULL), p99 = jreal(j, "p99_ms", NULL),
           p50 = jreal(j, "p50_ms", NULL);
    /* ~60 of 150 arrivals fall in the stall, their waits spread over 0-600 ms */
    T_CHECK(p99 > 450 && p90 > 150 && p50 < 100, "open loop p50 %g p90 %g p99 %g ms", p50, p90,
            p99);
    T_CHECK(jint(j, "late_sends", NULL) >= 0, "no late_sends");
    json_decref(j);
    server_free(s);

    s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    s->stall_at = 30;
    s->stall_ms = 600;
    j = run_bench(s->port, &st, "--image", g_image, "--points", "1,1,1", "--concurrency", "1",
                  "--requests", "150", "--json", NULL);
    T_CHECK(st == 0, "closed loop: exit %d", st);
    double cp99 = jreal(j, "p99_ms", NULL), cmax = jreal(j, "max_ms", NULL);
    T_CHECK(cmax > 550 && cp99 < 150, "closed loop p99 %g max %g ms: the stall is one sample", cp99,
            cmax);
    json_decref(j);
    server_free(s);
}

/* 1 when `path` is well-formed XML (python3's parser), -1 when python3 is
 * absent. */
static int xml_ok(const char *path)
{
    const char *argv[] = {"python3", "-c",
                          "import sys, xml.dom.minidom as m; d = m.parse(sys.argv[1]); "
                          "sys.exit(0 if d.documentElement.tagName == 'svg' else 1)",
                          path, NULL};
    int st;
    char *out = run_capture(argv, 20, &st);
    free(out);
    return st == 127 ? -1 : st == 0;
}

/* Count occurrences of needle in the file; points of the first polyline
 * in *npts. */
static int svg_count(const char *path, const char *needle, int *npts)
{
    size_t n;
    char *s = (char *)t_read_file(path, &n), *b;
    int c = 0;
    *npts = 0;
    if (!s || !(b = realloc(s, n + 1))) {
        free(s);
        return -1;
    }
    b[n] = '\0';
    for (char *p = b; (p = strstr(p, needle)); p++)
        c++;
    char *pl = strstr(b, "points=\"");
    if (pl) {
        pl += 8;
        for (; *pl && *pl != '"'; pl++)
            *npts += *pl == ',';
    }
    free(b);
    return c;
}

static void test_sweep_and_plot(void)
{
    NEED_BENCH();
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    char svg[PATH_MAX];
    snprintf(svg, sizeof svg, "%s/sweep.svg", g_tmpdir);
    int st;
    json_t *j = run_bench(s->port, &st, "--route", "healthz", "--sweep", "rate=50,100,200",
                          "--arrivals", "constant", "--duration", "0.5", "--json", "--plot", svg,
                          "--title", "3 < 4 & \"x\"", NULL);
    T_CHECK(st == 0, "exit %d", st);
    json_t *steps = json_object_get(j, "steps");
    T_REQUIRE(json_array_size(steps) == 3, "%zu steps", json_array_size(steps));
    static const double rate[] = {50, 100, 200};
    for (size_t i = 0; i < 3; i++) {
        json_t *x = json_array_get(steps, i);
        T_CHECK(jreal(x, "rate", NULL) == rate[i] && jint(x, "requests", NULL) == rate[i] / 2 &&
                    jint(x, "ok", NULL) == rate[i] / 2,
                "step %zu: rate %g requests %ld", i, jreal(x, "rate", NULL),
                jint(x, "requests", NULL));
        T_CHECK(jreal(x, "p50_ms", NULL) <= jreal(x, "p99_9_ms", NULL), "step %zu order", i);
    }
    T_CHECK(json_is_null(json_object_get(j, "stopped")), "stopped early");
    json_decref(j);
    int npts;
    T_CHECK(svg_count(svg, "<polyline", &npts) == 4 && npts == 3,
            "plot: want 4 polylines (p50 p90 p99 p99.9) of 3 points, first has %d", npts);
    int x = xml_ok(svg);
    T_CHECK(x != 0, "%s is not well-formed SVG", svg);
    T_CHECK(svg_count(svg, "3 &lt; 4 &amp; &quot;x&quot;", &npts) == 2, "title not escaped");
    server_free(s);

    /* A single run plots the latency by percentile; --save writes the JSON
     * while the text report goes to stdout. */
    s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    char saved[PATH_MAX];
    snprintf(saved, sizeof saved, "%s/saved.json", g_tmpdir);
    j = run_bench(s->port, &st, "--route", "healthz", "--requests", "50", "--plot", svg, "--save",
                  saved, NULL);
    T_CHECK(st == 0 && !j && svg_count(svg, "<polyline", &npts) == 1 && npts == 10,
            "spectrum plot: exit %d, %d points", st, npts);
    json_decref(j);
    json_t *sj = json_load_file(saved, 0, NULL);
    T_CHECK(jint(sj, "requests", NULL) == 50 && jint(sj, "ok", NULL) == 50, "--save: %ld requests",
            jint(sj, "requests", NULL));
    json_decref(sj);
    server_free(s);

    /* Every answer a 503: the sweep stops after its first step. */
    s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    s->all_status = 503;
    j = run_bench(s->port, &st, "--route", "healthz", "--sweep", "rate=20,40,80", "--duration",
                  "0.3", "--json", NULL);
    T_CHECK(st == 1, "exit %d", st);
    const char *why = json_string_value(json_object_get(j, "stopped"));
    T_CHECK(json_array_size(json_object_get(j, "steps")) == 1 && why && strstr(why, "errors"),
            "stopped: %s after %zu steps", why ? why : "(null)",
            json_array_size(json_object_get(j, "steps")));
    json_decref(j);
    server_free(s);
}

/* ---- against wrk and a known delay ----------------------------------------- */

/* wrk's "Requests/sec:" and its 50% latency (ms); 0 when absent. */
static int parse_wrk(const char *out, double *rps, double *p50)
{
    const char *r = strstr(out, "Requests/sec:"), *l = strstr(out, "     50%");
    if (!r || !l)
        return 0;
    *rps = atof(r + 13);
    char unit[8] = "";
    double v = 0;
    if (sscanf(l + 8, "%lf%7s", &v, unit) != 2)
        return 0;
    *p50 = !strcmp(unit, "us") ? v / 1000 : !strcmp(unit, "s") ? v * 1000 : v;
    return 1;
}

static int have_wrk(void)
{
    const char *argv[] = {"sh", "-c", "command -v wrk", NULL};
    int st;
    free(run_capture(argv, 10, &st));
    return st == 0;
}

/* 20 ms per answer, 4 connections: 200 answers/s at p50 20 ms, which both
 * tasam-bench and wrk must report within 20% of each other (and of the
 * known figures). */
static void test_agrees_with_wrk(void)
{
    NEED_BENCH();
    if (!have_wrk())
        T_SKIP("wrk is not installed (make deps installs it)");
    delay_server *d = delay_start(20);
    T_REQUIRE(d, "cannot start the fixed-delay server");
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", d->port);
    const char *wargv[] = {"wrk", "-t", "2", "-c", "4", "-d", "2s", "--latency", url, NULL};
    int st;
    char *wout = run_capture(wargv, 20, &st);
    double wrps = 0, wp50 = 0;
    T_CHECK(st == 0 && wout && parse_wrk(wout, &wrps, &wp50), "wrk exit %d: %s", st,
            wout ? wout : "");
    free(wout);
    json_t *j = run_bench(d->port, &st, "--route", "healthz", "--concurrency", "4", "--duration",
                          "2", "--json", NULL);
    T_CHECK(st == 0, "tasam-bench exit %d", st);
    double brps = jreal(j, "throughput", NULL), bp50 = jreal(j, "p50_ms", NULL);
    json_decref(j);
    fprintf(stderr, "  wrk: %.1f req/s, p50 %.2f ms; tasam-bench: %.1f req/s, p50 %.2f ms\n", wrps,
            wp50, brps, bp50);
    T_CHECK(fabs(brps - wrps) <= 0.2 * wrps, "throughput: tasam-bench %g, wrk %g", brps, wrps);
    T_CHECK(fabs(bp50 - wp50) <= 0.2 * wp50, "p50: tasam-bench %g ms, wrk %g ms", bp50, wp50);
    T_CHECK(bp50 >= 20 && bp50 <= 24 && brps >= 160 && brps <= 200,
            "tasam-bench against the known 20 ms x 4 connections: %g req/s, p50 %g ms", brps, bp50);
    /* Open loop well under capacity: the rate asked for, and the delay. */
    j = run_bench(d->port, &st, "--route", "healthz", "--rate", "100", "--arrivals", "constant",
                  "--duration", "2", "--connections", "16", "--json", NULL);
    T_CHECK(st == 0 && jint(j, "requests", NULL) == 200, "open loop: exit %d, %ld requests", st,
            jint(j, "requests", NULL));
    double op50 = jreal(j, "p50_ms", NULL), oar = jreal(j, "achieved_rate", NULL);
    T_CHECK(op50 >= 20 && op50 <= 24 && fabs(oar - 100) <= 10,
            "open loop at 100/s: p50 %g ms, achieved %g/s", op50, oar);
    json_decref(j);
    delay_stop(d);
}

/* --stop-p99 ends a sweep whose first step is already too slow. */
static void test_stop_p99(void)
{
    NEED_BENCH();
    delay_server *d = delay_start(20);
    T_REQUIRE(d, "cannot start the fixed-delay server");
    int st;
    json_t *j = run_bench(d->port, &st, "--route", "healthz", "--sweep", "concurrency=1,2,4",
                          "--duration", "0.3", "--stop-p99", "5", "--json", NULL);
    T_CHECK(st == 0, "exit %d", st);
    const char *why = json_string_value(json_object_get(j, "stopped"));
    T_CHECK(json_array_size(json_object_get(j, "steps")) == 1 && why && strstr(why, "p99"),
            "stopped: %s", why ? why : "(null)");
    T_CHECK(jint(json_array_get(json_object_get(j, "steps"), 0), "connections", NULL) == 1,
            "first step's connections");
    json_decref(j);
    delay_stop(d);
}

/* ---- usage ---------------------------------------------------------------- */

static void test_usage_and_refused(void)
{
    NEED_BENCH();
    int st;
    json_t *j;
    char cmd[PATH_MAX + 256];
    snprintf(cmd, sizeof cmd, "'%s' --help >/dev/null 2>&1", g_bench);
    st = system(cmd);
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "--help exit %d", st);
    static const char *const bad[] = {
        "--concurrency 0",
        "--requests 1000001",
        "--duration 3601",
        "--url https://x:1",
        "--url http://[::1",
        "--url http://h:99999",
        "--route nope",
        "--points 1,2",
        "--boxes '1,2,3,4;5,6,7,8'",
        "--output jpeg",
        "--bogus",
        "--route segment",
        "--route healthz --points 1,2,1",
        "--rate 0",
        "--rate 10 --concurrency 2",
        "--connections 4",
        "--sweep rate=",
        "--sweep rate=10,,20",
        "--sweep qps=10",
        "--sweep concurrency=1.5",
        "--sweep rate=10 --rate 5",
        "--stop-p99 10",
        "--mix segment=0",
        "--mix segment=1,bogus=2",
        "--mix segment",
        "--miss-ratio 1.5",
        "--task-ratio 0.5",
        "--everything true",
        "--mix everything=1 --everything 3",
        "--mix everything=1 --everything {",
        "--requests 5 --duration 1",
        "--arrivals uniform",
        "--route healthz --image /dev/null",
        "--variants 0",
        "--route healthz --title x",
        "--variants 5 --image a --image b --variants 1025",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        /* --image is given where the option under test is not about it. */
        snprintf(cmd, sizeof cmd, "'%s' %s %s --quiet >/dev/null 2>&1", g_bench, bad[i],
                 strstr(bad[i], "route") || strstr(bad[i], "image") ? "" : "--image /dev/null");
        st = system(cmd);
        T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "`%s` exit %d, want 2", bad[i],
                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    /* --miss-ratio on a file that is neither JPEG nor PNG: usage (2). */
    static const reply_kind script[] = {R_OK_CL};
    server *s = server_start(script, 1, NULL);
    T_REQUIRE(s, "cannot start the test server");
    char fake[PATH_MAX];
    snprintf(fake, sizeof fake, "%s/not-an-image.bin", g_tmpdir);
    FILE *f = fopen(fake, "wb");
    if (f) {
        fputs("GIF89a and so on", f);
        fclose(f);
    }
    j = run_bench(s->port, &st, "--image", fake, "--miss-ratio", "0.5", "--requests", "2", NULL);
    T_CHECK(st == 2, "--miss-ratio with a GIF: exit %d, want 2", st);
    json_decref(j);
    server_free(s);
    /* A port nobody listens on: every request is a counted connect error. */
    int port;
    int fd = listen_any(&port);
    T_REQUIRE(fd >= 0, "cannot find a free port");
    close(fd);
    j = run_bench(port, &st, "--route", "healthz", "--requests", "3", "--json", NULL);
    T_CHECK(st == 1, "exit %d", st);
    T_CHECK(jint(j, "transport_errors", "connect") == 3, "connect errors %ld",
            jint(j, "transport_errors", "connect"));
    json_decref(j);
    /* The image_id fetch failing is a setup error (3), not a run. */
    j = run_bench(port, &st, "--image", g_image, "--requests", "3", "--json", NULL);
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
    snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/tasam-test-bench-XXXXXX");
    if (!mkdtemp(g_tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(g_image, sizeof g_image, "%s/fake.jpg", g_tmpdir);
    FILE *f = fopen(g_image, "wb");
    if (f) {
        fputs("\xff\xd8 not really a JPEG: the fake server never decodes it", f);
        fclose(f);
    }
    /* A real 64x48 PNG of noise for the cache-miss variants. */
    snprintf(g_png, sizeof g_png, "%s/noise.png", g_tmpdir);
    uint8_t pix[64 * 48 * 3];
    for (size_t i = 0; i < sizeof pix; i++)
        pix[i] = (uint8_t)(i * 2654435761u >> 13);
    if (eng_png_write(g_png, pix, 64, 48, 3) != 0)
        fprintf(stderr, "test_bench: cannot write %s\n", g_png);
    if (access(g_bench, X_OK) != 0)
        fprintf(stderr,
                "test_bench: %s is not built, so these tests skip "
                "(make build/bench/tasam-bench to run them)\n",
                g_bench);
    T_RUN(test_keepalive_content_length);
    T_RUN(test_chunked);
    T_RUN(test_mixed_failures);
    T_RUN(test_timeout);
    T_RUN(test_healthz_duration);
    T_RUN(test_no_cache_body);
    T_RUN(test_resend_on_404);
    T_RUN(test_variants);
    T_RUN(test_mix_png);
    T_RUN(test_mix_jpeg);
    T_RUN(test_open_loop_rate);
    T_RUN(test_coordinated_omission);
    T_RUN(test_sweep_and_plot);
    T_RUN(test_agrees_with_wrk);
    T_RUN(test_stop_p99);
    T_RUN(test_usage_and_refused);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "test_bench: cannot remove %s\n", g_tmpdir);
    return t_summary("test_bench");
}
