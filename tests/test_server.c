/*
 * tests/test_server.c: the real tasamd on a loopback port, driven with the
 * curl CLI (and a raw socket where curl would not send what we need).
 *
 * The daemon binary is found next to this test's build folder
 * (argv[0]/../../tasamd: build/tasamd or build/asan/tasamd). Tests that need
 * the fixture model skip when ../shared/fixtures is absent. Each daemon gets
 * a fresh state directory under a temporary folder; every daemon started is
 * stopped (SIGTERM, expecting exit 0) or killed by the test that started it.
 */

/* Paths are built in fixed buffers from a short temp folder name; GCC's
 * truncation analysis cannot see that bound. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "adapters/adapter.h"
#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/rle.h"
#include "engine/sha256.h"
#include "hypernet/hypernet.h"
#include "server/base64.h"
#include "tests/harness.h"

static char g_tasamd[PATH_MAX];   /* the daemon binary */
static char g_tasam[PATH_MAX];    /* the CLI (for agreement checks), "" when absent */
static char g_tmp[256];           /* temp folder for this run */
static int g_files;               /* counter for temp file names */
static pthread_mutex_t g_files_mu = PTHREAD_MUTEX_INITIALIZER;

/* A running daemon. */
typedef struct daemon_proc {
    pid_t pid;            /* child pid, 0 when not running */
    int port;             /* bound port */
    char state[PATH_MAX]; /* state dir */
    char log[PATH_MAX];   /* stderr log */
} daemon_proc;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void tmp_name(char *out, size_t n, const char *suffix)
{
    pthread_mutex_lock(&g_files_mu);
    int k = g_files++;
    pthread_mutex_unlock(&g_files_mu);
    snprintf(out, n, "%s/f%d%s", g_tmp, k, suffix);
}

static int write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(buf, 1, len, f);
    fclose(f);
    return w == len ? 0 : -1;
}

/*
 * One HTTP request with the curl CLI. `data_file` (may be NULL) is the body,
 * `extra` more curl arguments (already quoted). Returns the status (0 when
 * curl failed) and, when body != NULL, the response body (malloc'd).
 */
static int http(int port, const char *method, const char *path, const char *ctype,
                const char *data_file, const char *extra, char **body, size_t *blen)
{
    char out[PATH_MAX], cmd[4 * PATH_MAX], code[16] = "";
    tmp_name(out, sizeof out, ".out");
    snprintf(cmd, sizeof cmd,
             "curl -s -S --max-time 120 -o '%s' -w '%%{http_code}' -X %s %s%s%s %s%s%s %s "
             "'http://127.0.0.1:%d%s' 2>/dev/null",
             out, method, ctype ? "-H 'Content-Type: " : "", ctype ? ctype : "", ctype ? "'" : "",
             data_file ? "--data-binary '@" : "", data_file ? data_file : "", data_file ? "'" : "",
             extra ? extra : "", port, path);
    FILE *p = popen(cmd, "r");
    if (!p)
        return 0;
    if (!fgets(code, sizeof code, p))
        code[0] = 0;
    pclose(p);
    if (body) {
        *body = (char *)t_read_file(out, blen);
        if (*body) {
            char *b = realloc(*body, (blen ? *blen : 0) + 1);
            if (b) {
                b[blen ? *blen : 0] = 0;
                *body = b;
            }
        }
    }
    unlink(out);
    return atoi(code);
}

static json_t *http_json(int port, const char *method, const char *path, const char *ctype,
                         const char *data_file, const char *extra, int *status)
{
    char *b = NULL;
    size_t n = 0;
    *status = http(port, method, path, ctype, data_file, extra, &b, &n);
    json_t *j = b ? json_loadb(b, n, 0, NULL) : NULL;
    free(b);
    return j;
}

/* Wait for a file to hold a port number. */
static int read_port(const char *path, double timeout)
{
    double t0 = now_s();
    while (now_s() - t0 < timeout) {
        size_t n;
        char *s = (char *)t_read_file(path, &n);
        if (s) {
            int p = n > 0 ? atoi(s) : 0;
            free(s);
            if (p > 0)
                return p;
        }
        usleep(20000);
    }
    return 0;
}

/* Start tasamd with the fixture model and args (NULL-terminated). Returns 0
 * once /readyz answers 200 (or, with wait_ready 0, once it listens). */
static int daemon_start(daemon_proc *d, const char *state, int wait_ready, const char *const *args)
{
    char portfile[PATH_MAX];
    const char *argv[64];
    int n = 0;
    char st[PATH_MAX];
    snprintf(st, sizeof st, "%s", state); /* state may alias d->state */
    memset(d, 0, sizeof *d);
    snprintf(d->state, sizeof d->state, "%s", st);
    state = d->state;
    tmp_name(portfile, sizeof portfile, ".port");
    tmp_name(d->log, sizeof d->log, ".log");
    argv[n++] = g_tasamd;
    argv[n++] = "--checkpoint";
    argv[n++] = t_fixture("sam_tiny.safetensors");
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--port-file";
    argv[n++] = portfile;
    argv[n++] = "--state-dir";
    argv[n++] = state;
    argv[n++] = "--device";
    argv[n++] = "cpu";
    for (int i = 0; args && args[i] && n < 62; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char ckpt[PATH_MAX];
    snprintf(ckpt, sizeof ckpt, "%s", argv[2]);
    argv[2] = ckpt;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(g_tasamd, (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    d->port = read_port(portfile, 30);
    if (!d->port)
        return -1;
    if (!wait_ready)
        return 0;
    double t0 = now_s();
    while (now_s() - t0 < 60) {
        if (http(d->port, "GET", "/readyz", NULL, NULL, NULL, NULL, NULL) == 200)
            return 0;
        usleep(50000);
    }
    return -1;
}

/* SIGTERM and wait; returns the exit status (or -1 on timeout/kill). */
static int daemon_stop(daemon_proc *d)
{
    int st;
    if (!d->pid)
        return -1;
    kill(d->pid, SIGTERM);
    double t0 = now_s();
    while (now_s() - t0 < 60) {
        pid_t r = waitpid(d->pid, &st, WNOHANG);
        if (r == d->pid) {
            d->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        usleep(20000);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &st, 0);
    d->pid = 0;
    return -1;
}

static void daemon_kill9(daemon_proc *d)
{
    int st;
    if (!d->pid)
        return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &st, 0);
    d->pid = 0;
}

static int log_contains(const daemon_proc *d, const char *needle)
{
    size_t n;
    char *s = (char *)t_read_file(d->log, &n);
    int found = 0;
    if (s) {
        char *b = realloc(s, n + 1);
        if (b) {
            b[n] = 0;
            found = strstr(b, needle) != NULL;
            s = b;
        }
        free(s);
    }
    return found;
}

static void show_log(const daemon_proc *d)
{
    size_t n;
    char *s = (char *)t_read_file(d->log, &n);
    if (s) {
        fprintf(stderr, "---- %s (last 3000 bytes) ----\n", d->log);
        fwrite(n > 3000 ? s + n - 3000 : s, 1, n > 3000 ? 3000 : n, stderr);
        fprintf(stderr, "----\n");
        free(s);
    }
}

/* ---- request bodies ---- */

static char *g_dog_b64;        /* dog.jpg as base64 */
static const char *g_dog_path; /* path of dog.jpg */

/* Write a JSON request with the dog image plus the members of `extra`
 * (stolen) to a temp file; returns its path (static per call site buffer). */
static void write_request(char *path, size_t n, const char *image_b64, json_t *extra)
{
    json_t *o = extra ? extra : json_object();
    if (image_b64)
        json_object_set_new(o, "image", json_string(image_b64));
    tmp_name(path, n, ".json");
    json_dump_file(o, path, JSON_COMPACT);
    json_decref(o);
}

/* A small random PNG (distinct per seed), written to a temp file and
 * returned as base64 (malloc'd). */
static char *make_png(unsigned seed, char *path, size_t n)
{
    int w = 64 + (int)(seed % 7) * 8, h = 48;
    uint8_t *pix = malloc((size_t)w * h * 3), *png = NULL;
    size_t plen = 0;
    char *b64 = NULL;
    unsigned s = seed * 2654435761u + 1;
    for (int i = 0; i < w * h * 3; i++) {
        s = s * 1103515245u + 12345u;
        pix[i] = (uint8_t)(s >> 16);
    }
    if (eng_png_encode(pix, w, h, 3, &png, &plen) == 0) {
        if (path) {
            tmp_name(path, n, ".png");
            write_file(path, png, plen);
        }
        b64 = srv_base64_encode(png, plen);
    }
    free(pix);
    free(png);
    return b64;
}

/* ---- golden comparison ---- */

static eng_ckpt *g_golden;

/* Fraction of pixels where an RLE mask agrees with golden mask k of
 * tensor `name` ([C,H,W] or [B,C,H,W] flattened), -1 on error. */
static double agree(const json_t *rle, const char *name, int k)
{
    const eng_ckpt_tensor *t = eng_ckpt_find(g_golden, name);
    const json_t *size = json_object_get(rle, "size");
    const char *counts = json_string_value(json_object_get(rle, "counts"));
    if (!t || !size || !counts)
        return -1;
    int h = (int)json_integer_value(json_array_get(size, 0));
    int w = (int)json_integer_value(json_array_get(size, 1));
    if (h != 534 || w != 800 || (size_t)(k + 1) * (size_t)h * w > (size_t)t->numel)
        return -1;
    eng_rle r = {0};
    uint8_t *m = malloc((size_t)h * w);
    double frac = -1;
    if (m && eng_rle_from_string(counts, strlen(counts), h, w, &r) == 0 && eng_rle_decode(&r, m) == 0) {
        const uint8_t *g = (const uint8_t *)t->data + (size_t)k * h * w;
        size_t same = 0;
        for (size_t i = 0; i < (size_t)h * w; i++)
            same += (m[i] != 0) == (g[i] != 0);
        frac = (double)same / ((double)h * w);
    }
    eng_rle_free(&r);
    free(m);
    return frac;
}

/* Build the request for fixture case `c` (cases.json entry). */
static json_t *case_request(const json_t *c)
{
    json_t *o = json_object();
    const json_t *pc = json_object_get(c, "point_coords"), *pl = json_object_get(c, "point_labels");
    if (pc) {
        json_t *pts = json_array();
        for (size_t i = 0; i < json_array_size(pc); i++)
            json_array_append_new(pts, json_pack("[O,O,O]", json_array_get(json_array_get(pc, i), 0),
                                                 json_array_get(json_array_get(pc, i), 1),
                                                 json_array_get(pl, i)));
        json_object_set_new(o, "points", pts);
    }
    if (json_object_get(c, "box"))
        json_object_set_new(o, "boxes", json_pack("[O]", json_object_get(c, "box")));
    if (json_object_get(c, "boxes"))
        json_object_set(o, "boxes", json_object_get(c, "boxes"));
    json_object_set(o, "multimask", json_object_get(c, "multimask_output"));
    return o;
}

/* Check a segment response against the goldens of case `name`. */
static int check_masks(const json_t *resp, const char *name, int n_prompts, int per_prompt)
{
    char tname[128];
    const json_t *masks = json_object_get(resp, "masks");
    int ok = 1;
    snprintf(tname, sizeof tname, "%s.masks", name);
    if ((int)json_array_size(masks) != n_prompts * per_prompt) {
        fprintf(stderr, "  %s: %zu masks, want %d\n", name, json_array_size(masks),
                n_prompts * per_prompt);
        return 0;
    }
    for (size_t i = 0; i < json_array_size(masks); i++) {
        double a = agree(json_object_get(json_array_get(masks, i), "rle"), tname, (int)i);
        if (a < 0.999) {
            fprintf(stderr, "  %s mask %zu: %.5f of pixels agree with the golden\n", name, i, a);
            ok = 0;
        }
    }
    return ok;
}

/* ---- the shared daemon ---- */

static daemon_proc g_d;     /* started by test_start, used by most tests */
static int g_up;            /* g_d is ready */

#define NEED_DAEMON()                                                                             \
    do {                                                                                          \
        T_NEED_FIXTURES();                                                                        \
        if (!g_up)                                                                                \
            T_SKIP("the daemon did not start");                                                   \
    } while (0)

static void test_config_errors(void)
{
    char cmd[PATH_MAX + 256], logp[PATH_MAX];
    static const char *const bad[] = {
        "--checkpoint x --queue-depth 0",      "queue-depth",
        "--checkpoint x --device gpu",         "device",
        "--checkpoint x --bogus 1",            "bogus",
        "--queue-depth 4",                     "checkpoint",
        "--checkpoint x --max-body-bytes 12Q", "max-body-bytes",
        "--checkpoint x --listen nowhere",     "listen",
        "--checkpoint x --device cpu --precision fp16", "precision",
        "--checkpoint x --text-model /tmp",    "text-model",
        "--checkpoint x --adapter-slots -1",   "adapter-slots",
        "--checkpoint x --adapter-merge maybe", "adapter-merge",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i += 2) {
        tmp_name(logp, sizeof logp, ".log");
        snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>&1", g_tasamd, bad[i], logp);
        int st = system(cmd);
        T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "`tasamd %s` exited %d, want 2", bad[i],
                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        size_t n;
        char *s = (char *)t_read_file(logp, &n);
        T_CHECK(s && memmem(s, n, bad[i + 1], strlen(bad[i + 1])), "`tasamd %s` error does not name %s",
                bad[i], bad[i + 1]);
        free(s);
    }
    snprintf(cmd, sizeof cmd, "'%s' --help >'%s' 2>&1", g_tasamd, logp);
    int st = system(cmd);
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "--help exit %d", WEXITSTATUS(st));
    size_t n;
    char *s = (char *)t_read_file(logp, &n);
    T_CHECK(s && memmem(s, n, "--max-body-bytes", 16) && memmem(s, n, "TASAMD_QUEUE_DEPTH", 18),
            "--help lacks options");
    free(s);
}

static void test_start(void)
{
    char state[PATH_MAX];
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-main", g_tmp);
    static const char *const args[] = {"--max-batch", "4", "--batch-wait-ms", "20", NULL};
    int rc = daemon_start(&g_d, state, 0, args);
    T_REQUIRE(rc == 0, "daemon did not start listening");
    /* /healthz answers at once, whatever the model is doing. */
    T_CHECK(http(g_d.port, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL) == 200, "healthz");
    double t0 = now_s();
    int ready = 0;
    while (now_s() - t0 < 60 && !ready) {
        ready = http(g_d.port, "GET", "/readyz", NULL, NULL, NULL, NULL, NULL) == 200;
        if (!ready)
            usleep(50000);
    }
    if (!ready)
        show_log(&g_d);
    T_REQUIRE(ready, "readyz never became 200");
    g_up = 1;
    int st;
    json_t *info = http_json(g_d.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && info, "info %d", st);
    T_CHECK(json_is_true(json_object_get(info, "ready")), "info.ready");
    T_CHECK(json_integer_value(json_object_get(json_object_get(info, "config"), "queue-depth")) == 64,
            "info.config.queue-depth");
    T_CHECK(json_is_string(json_object_get(json_object_get(info, "model"), "model_id")),
            "info.model.model_id");
    json_decref(info);
}

static void test_goldens(void)
{
    size_t n;
    NEED_DAEMON();
    if (!g_golden)
        T_SKIP("golden_tiny.safetensors not readable");
    char *cj = (char *)t_read_file(t_fixture("cases.json"), &n);
    json_t *cases = cj ? json_loadb(cj, n, 0, NULL) : NULL;
    free(cj);
    T_REQUIRE(cases, "cases.json");
    json_t *arr = json_object_get(cases, "cases");
    int first = 1;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *c = json_array_get(arr, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        char path[PATH_MAX];
        int st;
        if (json_object_get(c, "mask_input"))
            continue; /* mask_input is not part of the API yet */
        write_request(path, sizeof path, g_dog_b64, case_request(c));
        json_t *r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
        T_CHECK(st == 200 && r, "case %s: status %d", name, st);
        if (r) {
            int prompts = json_object_get(c, "boxes") ? (int)json_array_size(json_object_get(c, "boxes")) : 1;
            int per = json_is_true(json_object_get(c, "multimask_output")) ? 3 : 1;
            T_CHECK(check_masks(r, name, prompts, per), "case %s: masks differ from the goldens", name);
            T_CHECK(!strcmp(json_string_value(json_object_get(r, "image_id")),
                            "bf76876b90e3ebd521f9882b9177ba8f33e80cb7ec09c630f179b122edd125e1"),
                    "image_id");
            T_CHECK(json_integer_value(json_object_get(r, "width")) == 800 &&
                        json_integer_value(json_object_get(r, "height")) == 534,
                    "size");
            const char *cache = json_string_value(
                json_object_get(json_object_get(r, "cache"), "embedding"));
            T_CHECK(cache && !strcmp(cache, first ? "miss" : "hit"), "case %s: cache %s", name,
                    cache ? cache : "?");
            json_t *m0 = json_array_get(json_object_get(r, "masks"), 0);
            T_CHECK(json_is_array(json_object_get(m0, "bbox")) && json_is_integer(json_object_get(m0, "area")) &&
                        json_is_number(json_object_get(m0, "predicted_iou")) &&
                        json_is_number(json_object_get(m0, "stability_score")),
                    "mask fields");
            T_CHECK(json_is_number(json_object_get(json_object_get(r, "timings_ms"), "total")),
                    "timings");
            first = 0;
        }
        json_decref(r);
        unlink(path);
    }
    json_decref(cases);
}

static void test_multipart_and_outputs(void)
{
    char extra[PATH_MAX + 200];
    int st;
    NEED_DAEMON();
    snprintf(extra, sizeof extra,
             "-F 'image=@%s;type=image/jpeg' -F 'request={\"points\":[[400,293.70000000000005,1]],"
             "\"multimask\":false};type=application/json'",
             g_dog_path);
    json_t *r = http_json(g_d.port, "POST", "/v1/segment", NULL, NULL, extra, &st);
    T_CHECK(st == 200 && r, "multipart status %d", st);
    if (r && g_golden)
        T_CHECK(check_masks(r, "point1_single", 1, 1), "multipart masks differ from the goldens");
    json_decref(r);
    /* multipart without a request part: prompt-free output. */
    snprintf(extra, sizeof extra, "-F 'image=@%s'", g_dog_path);
    r = http_json(g_d.port, "POST", "/v1/segment", NULL, NULL, extra, &st);
    T_CHECK(st == 200 && r, "multipart image only: %d", st);
    if (r && g_golden)
        T_CHECK(check_masks(r, "no_prompt", 1, 3), "no_prompt via multipart");
    json_decref(r);
    /* png and polygon outputs. */
    char path[PATH_MAX];
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[f,f,i]],s:b,s:s}", "points", 400.0, 293.7, 1, "multimask", 0,
                            "output", "png"));
    r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && r, "png output %d", st);
    const char *png = json_string_value(json_object_get(json_array_get(json_object_get(r, "masks"), 0), "png"));
    T_CHECK(png && !strncmp(png, "iVBORw0KGgo", 11), "png output is not a base64 PNG");
    json_decref(r);
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[f,f,i]],s:b,s:s}", "points", 400.0, 293.7, 1, "multimask", 0,
                            "output", "polygon"));
    r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && r, "polygon output %d", st);
    json_t *polys = json_object_get(json_array_get(json_object_get(r, "masks"), 0), "polygons");
    T_CHECK(json_is_array(polys) && json_array_size(polys) >= 1 &&
                json_array_size(json_array_get(polys, 0)) >= 8,
            "polygon output shape");
    json_decref(r);
}

/* Value of a metric line "name{labels} value" or "name value"; -1 if absent. */
static double metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p;) {
        if (!strncmp(p, series, n) && p[n] == ' ')
            return atof(p + n + 1);
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return -1;
}

static char *get_metrics(int port)
{
    char *b = NULL;
    size_t n;
    if (http(port, "GET", "/metrics", NULL, NULL, NULL, &b, &n) != 200) {
        free(b);
        return NULL;
    }
    return b;
}

static void test_cache_hit(void)
{
    char path[PATH_MAX], url[128];
    int st;
    NEED_DAEMON();
    char *m0 = get_metrics(g_d.port);
    T_REQUIRE(m0, "metrics");
    double enc0 = metric(m0, "tasam_images_encoded_total");
    double hits0 = metric(m0, "tasam_cache_hits_total{tier=\"memory\"}");
    free(m0);
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[i,i,i]]}", "points", 100, 100, 1));
    json_t *r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200, "status %d", st);
    const char *c = json_string_value(json_object_get(json_object_get(r, "cache"), "embedding"));
    T_CHECK(c && !strcmp(c, "hit"), "second request for the image is not a hit");
    json_decref(r);
    char *m1 = get_metrics(g_d.port);
    T_REQUIRE(m1, "metrics");
    T_CHECK(metric(m1, "tasam_images_encoded_total") == enc0, "the encoder ran again (%g -> %g)",
            enc0, metric(m1, "tasam_images_encoded_total"));
    T_CHECK(metric(m1, "tasam_cache_hits_total{tier=\"memory\"}") == hits0 + 1, "hit not counted");
    free(m1);
    /* image_id instead of the image. */
    write_request(path, sizeof path, NULL,
                  json_pack("{s:s,s:[[f,f,f,f]],s:b}", "image_id",
                            "bf76876b90e3ebd521f9882b9177ba8f33e80cb7ec09c630f179b122edd125e1",
                            "boxes", 160.0, 80.1, 560.0, 480.6, "multimask", 0));
    r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && r, "image_id request %d", st);
    if (r && g_golden)
        T_CHECK(check_masks(r, "box", 1, 1), "image_id request masks");
    json_decref(r);
    snprintf(url, sizeof url, "/v1/embeddings/%s",
             "bf76876b90e3ebd521f9882b9177ba8f33e80cb7ec09c630f179b122edd125e1");
    r = http_json(g_d.port, "GET", url, NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && json_integer_value(json_object_get(r, "width")) == 800, "GET embedding %d", st);
    T_CHECK(json_integer_value(json_object_get(r, "hits")) >= 1, "hits");
    json_decref(r);
    snprintf(url, sizeof url, "/v1/embeddings/%064d", 0);
    T_CHECK(http(g_d.port, "GET", url, NULL, NULL, NULL, NULL, NULL) == 404, "absent embedding");
    /* POST /v1/embeddings of a cached image: hit, no encode. */
    write_request(path, sizeof path, g_dog_b64, NULL);
    r = http_json(g_d.port, "POST", "/v1/embeddings", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && r, "POST embeddings %d", st);
    c = json_string_value(json_object_get(json_object_get(r, "cache"), "embedding"));
    T_CHECK(c && !strcmp(c, "hit"), "embeddings hit");
    json_decref(r);
}

/* Expect `status` with the error JSON (and `field` when non-NULL). */
static void expect_error(int port, const char *method, const char *path, const char *ctype,
                         const char *file, const char *extra, int status, const char *field,
                         const char *what)
{
    int st;
    json_t *r = http_json(port, method, path, ctype, file, extra, &st);
    json_t *e = json_object_get(r, "error");
    T_CHECK(st == status, "%s: status %d, want %d", what, st, status);
    T_CHECK(e && json_integer_value(json_object_get(e, "code")) == status &&
                json_is_string(json_object_get(e, "message")),
            "%s: no error JSON", what);
    if (field && e) {
        const char *f = json_string_value(json_object_get(e, "field"));
        T_CHECK(f && !strcmp(f, field), "%s: field '%s', want '%s'", what, f ? f : "(none)", field);
    }
    json_decref(r);
}

/* Send raw bytes and read the status code of the answer. */
static int raw_status(int port, const char *req, size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    char buf[256];
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return 0;
    }
    if (write(fd, req, len) != (ssize_t)len) {
        close(fd);
        return 0;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 12)
        return 0;
    buf[n] = 0;
    return atoi(buf + 9);
}

static void test_errors(void)
{
    char path[PATH_MAX], img[PATH_MAX];
    size_t n;
    NEED_DAEMON();
    int p = g_d.port;
    const char *J = "application/json";

    expect_error(p, "GET", "/nope", NULL, NULL, NULL, 404, NULL, "unknown path");
    expect_error(p, "GET", "/v1/segment", NULL, NULL, NULL, 405, NULL, "GET segment");
    expect_error(p, "DELETE", "/healthz", NULL, NULL, NULL, 405, NULL, "DELETE healthz");
    expect_error(p, "GET", "/v1/embeddings/xyz", NULL, NULL, NULL, 400, "id", "bad id");

    /* malformed JSON, unknown field, wrong types */
    tmp_name(path, sizeof path, ".json");
    write_file(path, "{\"image\": ", 10);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "", "malformed JSON");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:i}", "pointz", 1));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "pointz", "unknown field");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "multimask", "yes"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "multimask", "multimask type");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "output", "jpeg"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "output", "output enum");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:[[i,i,i]]}", "points", 900, 10, 1));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "points[0]", "point out of range");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:[[i,i,i]]}", "points", 10, 10, 2));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "points[0]", "bad label");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:[[i,i,i,i]]}", "boxes", 50, 10, 40, 20));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "boxes[0]", "x0 > x1");
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[i,i,i,i],[i,i,i,i]],s:[[i,i,i]]}", "boxes", 1, 1, 5, 5, 2, 2, 6, 6,
                            "points", 3, 3, 1));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "points", "points with 2 boxes");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "mask_input_id", "abc"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "mask_input_id", "mask_input_id");
    write_request(path, sizeof path, NULL, NULL);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "image", "no image");
    write_request(path, sizeof path, "AAAA*AAA", NULL);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "image", "bad base64");
    write_request(path, sizeof path, NULL, json_pack("{s:s}", "image_id", "0123"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "image_id", "short image_id");
    {
        char id[65];
        memset(id, 'a', 64);
        id[64] = 0;
        write_request(path, sizeof path, NULL, json_pack("{s:s}", "image_id", id));
        expect_error(p, "POST", "/v1/segment", J, path, NULL, 404, "image_id", "unknown image_id");
    }
    /* task: validated, then 501 */
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "task", "segment the dog"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 501, "task", "task");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "task", ""));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "task", "empty task");
    {
        char *big = malloc(1100);
        memset(big, 'x', 1099);
        big[1099] = 0;
        write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "task", big));
        free(big);
        expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "task", "long task");
    }
    /* wrong content type */
    write_request(path, sizeof path, g_dog_b64, NULL);
    expect_error(p, "POST", "/v1/segment", "text/plain", path, NULL, 415, NULL, "text/plain");

    /* truncated JPEG -> 400; not an image -> 415 */
    uint8_t *jpg = t_read_file(g_dog_path, &n);
    T_REQUIRE(jpg, "dog.jpg");
    char *b64 = srv_base64_encode(jpg, n / 3);
    write_request(path, sizeof path, b64, NULL);
    free(b64);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "image", "truncated JPEG");
    b64 = srv_base64_encode((const uint8_t *)"GIF89a not really", 17);
    write_request(path, sizeof path, b64, NULL);
    free(b64);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 415, "image", "GIF");
    free(jpg);

    /* PNG bomb: 20000 x 20000 grey (400 Mpx), tiny file */
    {
        int w = 20000, h = 20000;
        uint8_t *pix = calloc((size_t)w, 1), *png = NULL;
        size_t plen = 0;
        /* encode only one row's worth then lie about nothing: a real full
         * image compresses to ~400 KB, build it for real */
        free(pix);
        pix = calloc((size_t)w * h, 1);
        if (pix && eng_png_encode(pix, w, h, 1, &png, &plen) == 0) {
            tmp_name(img, sizeof img, ".png");
            write_file(img, png, plen);
            char extra[PATH_MAX + 32];
            snprintf(extra, sizeof extra, "-F 'image=@%s'", img);
            expect_error(p, "POST", "/v1/segment", NULL, NULL, extra, 413, "image", "PNG bomb");
        } else {
            T_CHECK(0, "could not build the PNG bomb");
        }
        free(pix);
        free(png);
    }
    /* 2 GB Content-Length, nothing sent after the headers */
    const char *big = "POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 2147483648\r\n\r\n";
    T_CHECK(raw_status(p, big, strlen(big)) == 413, "2 GB Content-Length is not 413");
    /* a body over the limit sent chunked (no Content-Length) */
    {
        char *chunk = malloc(40u << 20);
        memset(chunk, 'A', 40u << 20);
        tmp_name(img, sizeof img, ".bin");
        write_file(img, chunk, 40u << 20);
        free(chunk);
        int st = http(p, "POST", "/v1/segment", J, img, "-H 'Transfer-Encoding: chunked'", NULL, NULL);
        T_CHECK(st == 413 || st == 0, "chunked 40 MB body: status %d", st);
        unlink(img);
    }
    /* the daemon is still fine */
    T_CHECK(http(p, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL) == 200, "healthz after errors");
}

static void test_metrics_grammar(void)
{
    NEED_DAEMON();
    char *m = get_metrics(g_d.port);
    T_REQUIRE(m, "metrics");
    int lines = 0, bad = 0;
    for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
        lines++;
        if (line[0] == '#') {
            char name[128], kind[32];
            if (!strncmp(line, "# HELP ", 7))
                continue;
            if (sscanf(line, "# TYPE %127s %31s", name, kind) != 2 ||
                (strcmp(kind, "counter") && strcmp(kind, "gauge") && strcmp(kind, "histogram"))) {
                fprintf(stderr, "  bad comment: %s\n", line);
                bad++;
            }
            continue;
        }
        /* name{labels} value */
        const char *s = line;
        if (!(*s == '_' || *s == ':' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z'))) {
            bad++;
            fprintf(stderr, "  bad name: %s\n", line);
            continue;
        }
        while (*s == '_' || *s == ':' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
               (*s >= '0' && *s <= '9'))
            s++;
        if (*s == '{') {
            s++;
            while (*s && *s != '}') {
                while ((*s >= 'a' && *s <= 'z') || *s == '_')
                    s++;
                if (*s++ != '=' || *s++ != '"') {
                    bad++;
                    break;
                }
                while (*s && *s != '"')
                    s++;
                if (*s++ != '"')
                    break;
                if (*s == ',')
                    s++;
            }
            if (*s != '}') {
                fprintf(stderr, "  bad labels: %s\n", line);
                bad++;
                continue;
            }
            s++;
        }
        char *end;
        if (*s++ != ' ') {
            fprintf(stderr, "  no value: %s\n", line);
            bad++;
            continue;
        }
        strtod(s, &end);
        if (end == s || *end) {
            fprintf(stderr, "  bad value: %s\n", line);
            bad++;
        }
    }
    T_CHECK(bad == 0, "%d bad lines of %d", bad, lines);
    T_CHECK(lines > 50, "only %d lines", lines);
    free(m);
    m = get_metrics(g_d.port);
    T_CHECK(m && strstr(m, "tasam_requests_total{route=\"segment\",code=\"200\"}") &&
                strstr(m, "tasam_request_duration_seconds_bucket{route=\"segment\",le=\"+Inf\"}") &&
                strstr(m, "tasam_batch_size_count") && strstr(m, "tasam_queue_depth") &&
                strstr(m, "tasam_memory_bytes{kind=\"used\"}"),
            "expected series missing");
    free(m);
}

/* ---- concurrency ---- */

typedef struct client {
    int port;               /* daemon */
    const char *route;      /* path */
    char file[PATH_MAX];    /* body */
    int status;             /* answer */
    json_t *resp;           /* parsed body */
} client;

static void *client_main(void *arg)
{
    client *c = arg;
    c->resp = http_json(c->port, "POST", c->route, "application/json", c->file, NULL, &c->status);
    return NULL;
}

static void run_clients(client *cl, int n)
{
    pthread_t th[64];
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static void test_concurrent_50(void)
{
    enum { N = 50, IMGS = 6 };
    client cl[N];
    char *pngs[IMGS];
    NEED_DAEMON();
    char *m0 = get_metrics(g_d.port);
    double enc0 = m0 ? metric(m0, "tasam_images_encoded_total") : -1;
    free(m0);
    for (int k = 0; k < IMGS; k++)
        pngs[k] = make_png(1000 + (unsigned)k, NULL, 0);
    for (int i = 0; i < N; i++) {
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].port = g_d.port;
        if (i % 5 == 0) {
            cl[i].route = "/v1/segment";
            write_request(cl[i].file, sizeof cl[i].file, g_dog_b64,
                          json_pack("{s:[[f,f,i]],s:b}", "points", 400.0, 293.70000000000005, 1,
                                    "multimask", 0));
        } else {
            cl[i].route = "/v1/embeddings";
            write_request(cl[i].file, sizeof cl[i].file, pngs[i % IMGS], NULL);
        }
    }
    double t0 = now_s();
    run_clients(cl, N);
    double dt = now_s() - t0;
    int ok = 0;
    for (int i = 0; i < N; i++) {
        if (cl[i].status == 200) {
            ok++;
            if (i % 5 == 0 && g_golden)
                T_CHECK(check_masks(cl[i].resp, "point1_single", 1, 1), "client %d masks", i);
            if (i % 5 != 0)
                T_CHECK(json_integer_value(json_object_get(cl[i].resp, "height")) == 48,
                        "client %d: wrong image size", i);
        } else {
            fprintf(stderr, "  client %d: status %d\n", i, cl[i].status);
        }
        json_decref(cl[i].resp);
        unlink(cl[i].file);
    }
    T_CHECK(ok == N, "%d of %d clients got 200", ok, N);
    char *m1 = get_metrics(g_d.port);
    double enc1 = m1 ? metric(m1, "tasam_images_encoded_total") : -1;
    T_CHECK(enc1 - enc0 == IMGS, "%g images encoded for %d distinct new images", enc1 - enc0, IMGS);
    fprintf(stderr, "  50 clients in %.2f s; batch histogram count %g, sum %g\n", dt,
            m1 ? metric(m1, "tasam_batch_size_count") : -1, m1 ? metric(m1, "tasam_batch_size_sum") : -1);
    free(m1);
    for (int k = 0; k < IMGS; k++)
        free(pngs[k]);
}

static void test_restart_keeps_cache(void)
{
    int st;
    NEED_DAEMON();
    int rc = daemon_stop(&g_d);
    g_up = 0;
    T_CHECK(rc == 0, "SIGTERM exit status %d", rc);
    T_CHECK(log_contains(&g_d, "shutdown: drained"), "no drain log line");
    rc = daemon_start(&g_d, g_d.state, 1, NULL);
    if (rc != 0)
        show_log(&g_d);
    T_REQUIRE(rc == 0, "restart failed");
    g_up = 1;
    char path[PATH_MAX];
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[f,f,i]],s:b}", "points", 400.0, 293.70000000000005, 1, "multimask", 0));
    json_t *r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200, "status %d", st);
    json_t *c = json_object_get(r, "cache");
    T_CHECK(!strcmp(json_string_value(json_object_get(c, "embedding")) ?: "", "hit") &&
                !strcmp(json_string_value(json_object_get(c, "tier")) ?: "", "disk"),
            "after a restart the embedding is not a disk hit");
    if (r && g_golden)
        T_CHECK(check_masks(r, "point1_single", 1, 1), "masks from the disk cache");
    json_decref(r);
    char *m = get_metrics(g_d.port);
    T_CHECK(m && metric(m, "tasam_images_encoded_total") == 0, "encoder ran after restart");
    free(m);
}

static int count_corrupt_files(const char *state)
{
    DIR *d = opendir(state);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strncmp(e->d_name, "cache.db.corrupt-", 17) == 0;
    if (d)
        closedir(d);
    return n;
}

static int quick_check(const char *state)
{
    char db[PATH_MAX];
    sqlite3 *s = NULL;
    sqlite3_stmt *st = NULL;
    int ok = 0;
    snprintf(db, sizeof db, "%s/cache.db", state);
    if (sqlite3_open_v2(db, &s, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(s, "PRAGMA quick_check", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        ok = !strcmp((const char *)sqlite3_column_text(st, 0), "ok");
    sqlite3_finalize(st);
    sqlite3_close(s);
    return ok;
}

static void test_kill9_during_burst(void)
{
    enum { N = 8 };
    client cl[N];
    char state[PATH_MAX];
    daemon_proc d;
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-kill", g_tmp);
    static const char *const args[] = {"--max-batch", "2", NULL};
    T_REQUIRE(daemon_start(&d, state, 1, args) == 0, "start");
    for (int i = 0; i < N; i++) {
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].port = d.port;
        cl[i].route = "/v1/embeddings";
        char *b = make_png(5000 + (unsigned)i, NULL, 0);
        write_request(cl[i].file, sizeof cl[i].file, b, NULL);
        free(b);
    }
    pthread_t th[N];
    for (int i = 0; i < N; i++)
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    /* Kill while the burst is being encoded and written: as soon as the
     * first embedding is committed. */
    double t0 = now_s();
    while (now_s() - t0 < 60) {
        char *m = get_metrics(d.port);
        double e = m ? metric(m, "tasam_cache_entries") : 0;
        free(m);
        if (e >= 1)
            break;
        usleep(5000);
    }
    daemon_kill9(&d);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        json_decref(cl[i].resp);
        unlink(cl[i].file);
    }
    T_CHECK(quick_check(state), "the cache fails quick_check after kill -9");
    T_REQUIRE(daemon_start(&d, state, 1, args) == 0, "restart after kill -9");
    T_CHECK(count_corrupt_files(state) == 0, "the database was moved aside after kill -9");
    T_CHECK(!log_contains(&d, "moved aside"), "log says moved aside");
    char *m = get_metrics(d.port);
    T_CHECK(m && metric(m, "tasam_cache_entries") >= 1, "no embeddings survived the kill (%g)",
            m ? metric(m, "tasam_cache_entries") : -1);
    free(m);
    /* Every surviving row is served from the cache; the rest are
     * recomputed. */
    int found = 0, hits = 0;
    for (int i = 0; i < N; i++) {
        int st;
        char path[PATH_MAX], url[128], hex[65];
        uint8_t dg[32], *png = NULL;
        size_t plen = 0;
        char *b = make_png(5000 + (unsigned)i, NULL, 0);
        srv_base64_decode(b, strlen(b), &png, &plen);
        eng_sha256(png, plen, dg);
        eng_sha256_hex(dg, hex);
        free(png);
        snprintf(url, sizeof url, "/v1/embeddings/%s", hex);
        int present = http(d.port, "GET", url, NULL, NULL, NULL, NULL, NULL) == 200;
        found += present;
        if (present || i == N - 1) {
            write_request(path, sizeof path, b, NULL);
            json_t *r = http_json(d.port, "POST", "/v1/embeddings", "application/json", path, NULL, &st);
            T_CHECK(st == 200, "request after restart: %d", st);
            const char *c = json_string_value(json_object_get(json_object_get(r, "cache"), "embedding"));
            T_CHECK(c && !strcmp(c, present ? "hit" : "miss"), "image %d: cache %s, row %s", i,
                    c ? c : "?", present ? "present" : "absent");
            hits += present && c && !strcmp(c, "hit");
            json_decref(r);
        }
        free(b);
    }
    T_CHECK(found >= 1, "no embedding survived the kill");
    T_CHECK(hits >= 1, "no embedding written before the kill was served from the cache");
    T_CHECK(daemon_stop(&d) == 0, "stop");
}

static void test_queue_full_429(void)
{
    enum { N = 10 };
    client cl[N];
    char state[PATH_MAX];
    daemon_proc d;
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-q", g_tmp);
    static const char *const args[] = {"--queue-depth", "1", "--max-batch", "1", NULL};
    T_REQUIRE(daemon_start(&d, state, 1, args) == 0, "start");
    for (int i = 0; i < N; i++) {
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].port = d.port;
        cl[i].route = "/v1/embeddings";
        char *b = make_png(7000 + (unsigned)i, NULL, 0);
        write_request(cl[i].file, sizeof cl[i].file, b, NULL);
        free(b);
    }
    run_clients(cl, N);
    int n200 = 0, n429 = 0, other = 0;
    for (int i = 0; i < N; i++) {
        if (cl[i].status == 200)
            n200++;
        else if (cl[i].status == 429) {
            n429++;
            T_CHECK(json_integer_value(json_object_get(json_object_get(cl[i].resp, "error"), "code")) == 429,
                    "429 body");
        } else
            other++;
        json_decref(cl[i].resp);
        unlink(cl[i].file);
    }
    T_CHECK(n429 > 0, "no 429 under a burst with --queue-depth 1 (%d ok)", n200);
    T_CHECK(n200 >= 1, "nothing succeeded");
    T_CHECK(other == 0, "%d answers were neither 200 nor 429", other);
    T_CHECK(daemon_stop(&d) == 0, "stop");
}

static void test_deadline_504(void)
{
    char state[PATH_MAX], path[PATH_MAX];
    daemon_proc d;
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-deadline", g_tmp);
    /* 1 ms from arrival: decoding and resizing the image alone take longer,
     * so the worker finds the deadline passed. */
    static const char *const args[] = {"--request-timeout-ms", "1", NULL};
    T_REQUIRE(daemon_start(&d, state, 1, args) == 0, "start");
    write_request(path, sizeof path, g_dog_b64, NULL);
    expect_error(d.port, "POST", "/v1/segment", "application/json", path, NULL, 504, "",
                 "expired deadline");
    char *m = get_metrics(d.port);
    T_CHECK(m && metric(m, "tasam_deadline_expired_total") >= 1, "504 not counted");
    free(m);
    T_CHECK(daemon_stop(&d) == 0, "stop");
}

static void test_corrupt_db_moved_aside(void)
{
    char state[PATH_MAX], db[PATH_MAX];
    daemon_proc d;
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-corrupt", g_tmp);
    mkdir(state, 0755);
    snprintf(db, sizeof db, "%s/cache.db", state);
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 7 + 3);
    memcpy(junk, "SQLite format 3", 16); /* a header that lies */
    write_file(db, junk, sizeof junk);
    T_REQUIRE(daemon_start(&d, state, 1, NULL) == 0, "start with a corrupt cache");
    T_CHECK(count_corrupt_files(state) == 1, "corrupt database not moved aside");
    T_CHECK(log_contains(&d, "moved aside"), "no log line");
    T_CHECK(quick_check(state), "new database unusable");
    T_CHECK(daemon_stop(&d) == 0, "stop");
    /* a foreign SQLite database (other application) */
    sqlite3 *s;
    snprintf(state, sizeof state, "%s/state-foreign", g_tmp);
    mkdir(state, 0755);
    snprintf(db, sizeof db, "%s/cache.db", state);
    sqlite3_open(db, &s);
    sqlite3_exec(s, "CREATE TABLE t(x); PRAGMA user_version=7;", NULL, NULL, NULL);
    sqlite3_close(s);
    T_REQUIRE(daemon_start(&d, state, 1, NULL) == 0, "start with a foreign database");
    T_CHECK(count_corrupt_files(state) == 1, "foreign database not moved aside");
    T_CHECK(daemon_stop(&d) == 0, "stop");
}

static void test_sighup_reload(void)
{
    char state[PATH_MAX], conf[PATH_MAX];
    daemon_proc d;
    int st;
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-hup", g_tmp);
    tmp_name(conf, sizeof conf, ".conf");
    const char *c1 = "# test\nqueue-depth = 5\nmax-batch = 2\n";
    write_file(conf, c1, strlen(c1));
    const char *const args[] = {"--config", conf, NULL};
    T_REQUIRE(daemon_start(&d, state, 1, args) == 0, "start");
    json_t *info = http_json(d.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    T_CHECK(json_integer_value(json_object_get(json_object_get(info, "config"), "queue-depth")) == 5,
            "file value not applied");
    json_decref(info);
    const char *c2 = "queue-depth = 9\nmax-batch = 3\n";
    write_file(conf, c2, strlen(c2));
    kill(d.pid, SIGHUP);
    usleep(300000);
    info = http_json(d.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    json_t *cfg = json_object_get(info, "config");
    T_CHECK(json_integer_value(json_object_get(cfg, "queue-depth")) == 9, "queue-depth not reloaded");
    T_CHECK(json_integer_value(json_object_get(cfg, "max-batch")) == 2,
            "max-batch (not runtime-mutable) changed");
    json_decref(info);
    T_CHECK(log_contains(&d, "needs a restart"), "no restart warning for max-batch");
    T_CHECK(daemon_stop(&d) == 0, "stop");
}

static void test_stop_main(void)
{
    if (!g_d.pid)
        T_SKIP("no daemon");
    T_CHECK(daemon_stop(&g_d) == 0, "SIGTERM exit status");
    g_up = 0;
}

static void test_systemd_unit(void)
{
    if (system("command -v systemd-analyze >/dev/null 2>&1") != 0)
        T_SKIP("systemd-analyze not installed");
    /* verify needs ExecStart to exist: point a copy at the built binary. */
    char unit[PATH_MAX], cmd[3 * PATH_MAX];
    snprintf(unit, sizeof unit, "%s/tasamd.service", g_tmp);
    snprintf(cmd, sizeof cmd,
             "sed 's#/usr/local/bin/tasamd#%s#' systemd/tasamd.service > '%s' && "
             "systemd-analyze verify '%s'",
             g_tasamd, unit, unit);
    T_CHECK(system(cmd) == 0, "systemd-analyze verify reports problems with tasamd.service");
}


/* ---- task adapters ---- */

static char g_hn_random[PATH_MAX];  /* random hypernetwork (non-zero adapters), seed 1 */
static char g_hn_zero[PATH_MAX];    /* zero-initialised hypernetwork (delta W = 0) */
static daemon_proc g_t;             /* a daemon with --hypernet */
static int g_t_up;                  /* g_t is ready */
static char g_t_state[PATH_MAX];    /* its state directory */
static char g_ad_id[65];            /* adapter id of "Segment the dog" under g_hn_random */
static json_t *g_plain_point;       /* masks of the point request without a task */
static json_t *g_plain_free;        /* masks of the prompt-free request without a task */

#define TASK "Segment the dog"

/* Contract: writes a hypernetwork for the hashed text embedding. */
static int write_hypernet(const char *path, uint64_t seed, int random)
{
    hn_hypernet_config cfg;
    hn_hypernet_config_default(&cfg);
    snprintf(cfg.text_model, sizeof cfg.text_model, "hashed-%d", cfg.text_dim);
    return hn_hypernet_init(path, &cfg, seed, random);
}

static int t_daemon_start(daemon_proc *d, const char *state, const char *hypernet)
{
    const char *args[] = {"--hypernet", hypernet, "--admin-token", "s3cret", NULL};
    int rc = daemon_start(d, state, 1, args);
    if (rc != 0)
        show_log(d);
    return rc;
}

/* The point request (one mask) or the prompt-free one (three masks), with
 * `task` when not NULL (the JSON body goes to a temp file). */
static json_t *seg(int port, const char *task, int prompt_free, int *status)
{
    char path[PATH_MAX];
    json_t *o = prompt_free ? json_object()
                            : json_pack("{s:[[i,i,i]],s:b}", "points", 400, 294, 1, "multimask", 0);
    if (task)
        json_object_set_new(o, "task", json_string(task));
    write_request(path, sizeof path, g_dog_b64, o);
    json_t *r = http_json(port, "POST", "/v1/segment", "application/json", path, NULL, status);
    unlink(path);
    return r;
}

/* 1 when two responses carry the same masks (RLE counts, one by one). */
static int same_masks(const json_t *a, const json_t *b)
{
    const json_t *ma = json_object_get(a, "masks"), *mb = json_object_get(b, "masks");
    if (!json_array_size(ma) || json_array_size(ma) != json_array_size(mb))
        return 0;
    for (size_t i = 0; i < json_array_size(ma); i++) {
        const char *ca = json_string_value(
            json_object_get(json_object_get(json_array_get(ma, i), "rle"), "counts"));
        const char *cb = json_string_value(
            json_object_get(json_object_get(json_array_get(mb, i), "rle"), "counts"));
        if (!ca || !cb || strcmp(ca, cb))
            return 0;
    }
    return 1;
}

static const char *adapter_source(const json_t *r)
{
    const char *s = json_string_value(json_object_get(json_object_get(r, "adapter"), "source"));
    return s ? s : "(none)";
}

static const char *adapter_id_of(const json_t *r)
{
    const char *s = json_string_value(json_object_get(json_object_get(r, "adapter"), "id"));
    return s ? s : "";
}

/* The CLI's answer for the same inputs: `tasam segment --hypernet --task`. */
static json_t *cli_segment(const char *hypernet, const char *task, int prompt_free)
{
    char out[PATH_MAX], logp[PATH_MAX], cmd[5 * PATH_MAX];
    size_t n;
    tmp_name(out, sizeof out, ".json");
    tmp_name(logp, sizeof logp, ".log");
    snprintf(cmd, sizeof cmd,
             "'%s' segment --checkpoint '%s' --device cpu --image '%s' %s --hypernet '%s' "
             "--task '%s' --json '%s' >'%s' 2>&1",
             g_tasam, t_fixture("sam_tiny.safetensors"), g_dog_path,
             prompt_free ? "" : "--point 400,294,1 --single-mask", hypernet, task, out, logp);
    if (system(cmd) != 0)
        return NULL;
    char *s = (char *)t_read_file(out, &n);
    json_t *j = s ? json_loadb(s, n, 0, NULL) : NULL;
    free(s);
    unlink(out);
    unlink(logp);
    return j;
}

static void test_tasks_start(void)
{
    int st;
    T_NEED_FIXTURES();
    snprintf(g_hn_random, sizeof g_hn_random, "%s/hn-random.safetensors", g_tmp);
    snprintf(g_hn_zero, sizeof g_hn_zero, "%s/hn-zero.safetensors", g_tmp);
    T_REQUIRE(write_hypernet(g_hn_random, 1, 1) == 0, "hypernet init: %s", eng_last_error());
    T_REQUIRE(write_hypernet(g_hn_zero, 1, 0) == 0, "hypernet init: %s", eng_last_error());
    snprintf(g_t_state, sizeof g_t_state, "%s/state-tasks", g_tmp);
    /* a hypernetwork that cannot be loaded stops the daemon with a clear message */
    {
        char cmd[3 * PATH_MAX], logp[PATH_MAX], bad[PATH_MAX];
        size_t n;
        tmp_name(logp, sizeof logp, ".log");
        tmp_name(bad, sizeof bad, ".safetensors");
        write_file(bad, "not a hypernetwork", 18);
        snprintf(cmd, sizeof cmd,
                 "timeout 60 '%s' --checkpoint '%s' --device cpu --listen 127.0.0.1:0 "
                 "--state-dir '%s/state-badhn' --hypernet '%s' >'%s' 2>&1",
                 g_tasamd, t_fixture("sam_tiny.safetensors"), g_tmp, bad, logp);
        int rc = system(cmd);
        char *s = (char *)t_read_file(logp, &n);
        T_CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1 && s && memmem(s, n, "hypernetwork", 12),
                "a bad --hypernet: exit %d", WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
        free(s);
    }
    T_REQUIRE(t_daemon_start(&g_t, g_t_state, g_hn_random) == 0, "start with --hypernet");
    g_t_up = 1;
    json_t *info = http_json(g_t.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    json_t *hn = json_object_get(info, "hypernetwork");
    T_CHECK(st == 200 && json_is_true(json_object_get(hn, "available")), "info.hypernetwork");
    const char *id = json_string_value(json_object_get(hn, "id"));
    T_CHECK(id && strlen(id) == 64, "hypernetwork id");
    T_CHECK(!strcmp(json_string_value(json_object_get(hn, "text_model")) ?: "", "hashed-384"),
            "text model");
    T_CHECK(json_integer_value(json_object_get(hn, "rank")) == 4, "rank");
    T_CHECK(!strcmp(json_string_value(json_object_get(hn, "adapters")) ?: "", "unmerged"),
            "unmerged by default");
    if (id)
        T_CHECK(ad_task_id(TASK, strlen(TASK), id, g_ad_id) == 0, "ad_task_id");
    json_decref(info);
    g_plain_point = seg(g_t.port, NULL, 0, &st);
    T_CHECK(st == 200, "plain point request %d", st);
    g_plain_free = seg(g_t.port, NULL, 1, &st);
    T_CHECK(st == 200, "plain prompt-free request %d", st);
}

#define NEED_TASKS()                                                                              \
    do {                                                                                          \
        T_NEED_FIXTURES();                                                                        \
        if (!g_t_up)                                                                              \
            T_SKIP("the daemon with --hypernet did not start");                                   \
    } while (0)

static void test_tasks_segment(void)
{
    int st;
    NEED_TASKS();
    json_t *r1 = seg(g_t.port, TASK, 0, &st);
    T_REQUIRE(st == 200 && r1, "task request %d", st);
    T_CHECK(!strcmp(adapter_source(r1), "generated"), "first: source %s", adapter_source(r1));
    T_CHECK(!strcmp(adapter_id_of(r1), g_ad_id), "adapter id %s, want %s", adapter_id_of(r1),
            g_ad_id);
    json_t *ad = json_object_get(r1, "adapter");
    T_CHECK(!strcmp(json_string_value(json_object_get(ad, "task_normalized")) ?: "",
                    "segment the dog") &&
                json_is_string(json_object_get(ad, "hypernet_id")) &&
                !strcmp(json_string_value(json_object_get(ad, "hypernet_version")) ?: "", "0"),
            "adapter object");
    T_CHECK(json_is_number(json_object_get(json_object_get(r1, "timings_ms"), "adapter")),
            "timings_ms.adapter");
    /* the same task in other spacing and case: the same adapter, from memory */
    json_t *r2 = seg(g_t.port, "  segment   THE dog ", 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r2), "cache-memory"), "second: %d %s", st,
            adapter_source(r2));
    T_CHECK(!strcmp(adapter_id_of(r2), g_ad_id), "second id");
    T_CHECK(same_masks(r1, r2), "the cached adapter gives other masks");
    T_CHECK(g_plain_point && !same_masks(r1, g_plain_point),
            "masks with a random hypernetwork's task equal the masks without a task");
    /* prompt-free: the adapted decoder's own answer */
    json_t *f = seg(g_t.port, TASK, 1, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(f, "masks")) == 3, "prompt-free %d", st);
    T_CHECK(!strcmp(adapter_source(f), "cache-memory"), "prompt-free source %s",
            adapter_source(f));
    T_CHECK(g_plain_free && !same_masks(f, g_plain_free), "prompt-free masks unchanged by task");
    /* multipart with a `task` part */
    char extra[PATH_MAX + 200];
    snprintf(extra, sizeof extra,
             "-F 'image=@%s' -F 'task=" TASK "' -F 'request={\"points\":[[400,294,1]],"
             "\"multimask\":false}'",
             g_dog_path);
    json_t *mp = http_json(g_t.port, "POST", "/v1/segment", NULL, NULL, extra, &st);
    T_CHECK(st == 200 && same_masks(mp, r1), "multipart task part: %d", st);
    json_decref(mp);
    /* the CLI gives the same masks */
    struct stat sa, sb;
    int stale = g_tasam[0] && stat(g_tasam, &sa) == 0 && stat(g_tasamd, &sb) == 0 &&
                sa.st_mtime < sb.st_mtime - 60;
    if (!g_tasam[0] || stale) {
        fprintf(stderr, "  (%s: CLI agreement not checked)\n",
                stale ? "the tasam CLI is older than tasamd" : "no tasam CLI next to tasamd");
    } else {
        json_t *c = cli_segment(g_hn_random, TASK, 0);
        T_CHECK(c && same_masks(r1, c), "masks differ from `tasam segment --hypernet --task`");
        T_CHECK(c && !strcmp(json_string_value(json_object_get(json_object_get(c, "adapter"), "id"))
                                 ?: "",
                             g_ad_id),
                "CLI adapter id");
        json_decref(c);
        c = cli_segment(g_hn_random, TASK, 1);
        T_CHECK(c && same_masks(f, c), "prompt-free masks differ from the CLI's");
        json_decref(c);
    }
    json_decref(r1);
    json_decref(r2);
    json_decref(f);
    char *m = get_metrics(g_t.port);
    T_CHECK(m && metric(m, "tasam_adapter_cache_misses_total") == 1 &&
                metric(m, "tasam_adapter_cache_hits_total{tier=\"memory\"}") >= 3 &&
                metric(m, "tasam_adapters_resident") == 1 &&
                metric(m, "tasam_adapter_generation_seconds_count") == 1 &&
                metric(m, "tasam_adapter_cache_entries") == 1,
            "adapter metrics");
    free(m);
}

static void test_tasks_routes(void)
{
    int st;
    char url[256], path[PATH_MAX];
    NEED_TASKS();
    int p = g_t.port;
    /* lookup by task: present (never generates) */
    json_t *r = http_json(p, "GET", "/v1/adapters?task=segment%20the%20DOG", NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && !strcmp(json_string_value(json_object_get(r, "id")) ?: "", g_ad_id),
            "GET ?task=: %d", st);
    T_CHECK(json_integer_value(json_object_get(r, "hits")) >= 3 &&
                json_integer_value(json_object_get(r, "last_used_ms")) > 0 &&
                json_integer_value(json_object_get(r, "bytes")) > 1000 &&
                !strcmp(json_string_value(json_object_get(r, "task")) ?: "", TASK),
            "metadata");
    json_decref(r);
    expect_error(p, "GET", "/v1/adapters?task=find%20every%20suitcase", NULL, NULL, NULL, 404,
                 "task", "lookup of an absent task");
    r = http_json(p, "GET", "/v1/adapters?task=find%20every%20suitcase", NULL, NULL, NULL, &st);
    json_decref(r);
    char *m = get_metrics(p);
    T_CHECK(m && metric(m, "tasam_adapter_cache_misses_total") == 1, "GET ?task= generated");
    free(m);
    /* POST generates (then finds it) */
    write_request(path, sizeof path, NULL, json_pack("{s:s}", "task", "find every suitcase"));
    r = http_json(p, "POST", "/v1/adapters", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && !strcmp(json_string_value(json_object_get(r, "source")) ?: "", "generated"),
            "POST /v1/adapters: %d", st);
    char id2[65] = "";
    snprintf(id2, sizeof id2, "%s", json_string_value(json_object_get(r, "id")) ?: "");
    json_decref(r);
    r = http_json(p, "POST", "/v1/adapters", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && !strcmp(json_string_value(json_object_get(r, "source")) ?: "",
                                 "cache-memory"),
            "second POST: %d %s", st, json_string_value(json_object_get(r, "source")));
    json_decref(r);
    /* list, paged */
    r = http_json(p, "GET", "/v1/adapters", NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(r, "adapters")) == 2 &&
                json_integer_value(json_object_get(r, "total")) == 2 &&
                json_is_null(json_object_get(r, "next_after")),
            "list: %d", st);
    json_decref(r);
    r = http_json(p, "GET", "/v1/adapters?limit=1", NULL, NULL, NULL, &st);
    const char *next = json_string_value(json_object_get(r, "next_after"));
    T_CHECK(st == 200 && json_array_size(json_object_get(r, "adapters")) == 1 && next,
            "page 1: %d", st);
    const char *first = json_string_value(
        json_object_get(json_array_get(json_object_get(r, "adapters"), 0), "id"));
    snprintf(url, sizeof url, "/v1/adapters?limit=1&after=%s", next ? next : "x");
    json_t *r2 = http_json(p, "GET", url, NULL, NULL, NULL, &st);
    char second[65] = "";
    snprintf(second, sizeof second, "%s",
             json_string_value(
                 json_object_get(json_array_get(json_object_get(r2, "adapters"), 0), "id"))
                 ?: "");
    T_CHECK(st == 200 && second[0] && first && strcmp(first, second) < 0 &&
                json_is_null(json_object_get(r2, "next_after")),
            "page 2 (after): %d", st);
    json_decref(r2);
    r2 = http_json(p, "GET", "/v1/adapters?limit=1&offset=1", NULL, NULL, NULL, &st);
    const char *third = json_string_value(
        json_object_get(json_array_get(json_object_get(r2, "adapters"), 0), "id"));
    T_CHECK(st == 200 && third && !strcmp(third, second), "page 2 (offset): %d", st);
    json_decref(r2);
    json_decref(r);
    expect_error(p, "GET", "/v1/adapters?limit=0", NULL, NULL, NULL, 400, "limit", "limit 0");
    expect_error(p, "GET", "/v1/adapters?after=zz", NULL, NULL, NULL, 400, "after", "bad after");
    expect_error(p, "GET", "/v1/adapters?limit=2&bogus=1", NULL, NULL, NULL, 400, "bogus",
                 "unknown query argument");
    /* metadata and weights by id */
    snprintf(url, sizeof url, "/v1/adapters/%s", g_ad_id);
    r = http_json(p, "GET", url, NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && !strcmp(json_string_value(json_object_get(r, "task_normalized")) ?: "",
                                 "segment the dog") &&
                json_is_true(json_object_get(r, "current")),
            "GET /v1/adapters/{id}: %d", st);
    json_decref(r);
    snprintf(url, sizeof url, "/v1/adapters/%064d", 0);
    expect_error(p, "GET", url, NULL, NULL, NULL, 404, "id", "absent adapter id");
    expect_error(p, "GET", "/v1/adapters/123", NULL, NULL, NULL, 400, "id", "short adapter id");
    snprintf(url, sizeof url, "/v1/adapters/%s/weights", g_ad_id);
    char *w = NULL;
    size_t wn = 0;
    char hdr[PATH_MAX + 8], hfile[PATH_MAX];
    tmp_name(hfile, sizeof hfile, ".hdr");
    snprintf(hdr, sizeof hdr, "-D '%s'", hfile);
    st = http(p, "GET", url, NULL, NULL, hdr, &w, &wn);
    T_CHECK(st == 200, "weights: %d", st);
    size_t hn;
    char *h = (char *)t_read_file(hfile, &hn);
    T_CHECK(h && memmem(h, hn, "application/octet-stream", 24), "weights Content-Type");
    free(h);
    ad_adapter *a = NULL;
    T_CHECK(w && ad_adapter_parse(&a, w, wn, "GET weights") == 0, "weights do not parse: %s",
            eng_last_error());
    if (a) {
        T_CHECK(!strcmp(a->id, g_ad_id) && !strcmp(a->task_normalized, "segment the dog") &&
                    a->rank == 4,
                "parsed adapter fields");
        ad_adapter_destroy(a);
    }
    free(w);
    snprintf(url, sizeof url, "/v1/adapters/%064d/weights", 0);
    expect_error(p, "GET", url, NULL, NULL, NULL, 404, "id", "weights of an absent adapter");
    expect_error(p, "POST", "/v1/adapters/abc", NULL, NULL, NULL, 405, NULL, "POST adapter id");
    expect_error(p, "GET", "/admin/adapters", NULL, NULL, NULL, 405, NULL, "GET admin adapters");
    (void)id2;
}

static void test_tasks_bad_text(void)
{
    char path[PATH_MAX], extra[2 * PATH_MAX];
    NEED_TASKS();
    int p = g_t.port;
    const char *J = "application/json";
    static const char *const raw[] = {
        "{\"task\":\"\"}",                       /* empty */
        "{\"task\":\" \\t\\n \"}",               /* whitespace only */
        "{\"task\":\"segment \\ud800 the dog\"}", /* a lone high surrogate */
        "{\"task\":\"\\udc00\"}",                 /* a lone low surrogate */
        "{\"task\":\"segment\\u0000 the dog\"}",  /* NUL */
        "{\"task\":\"seg\xff" "ment\"}",          /* a raw byte that is not UTF-8 */
        "{\"task\":\"seg\xc0\xaf" "ment\"}",      /* an overlong form */
        "{\"task\":\"a\\u0007b\"}",               /* a control character */
        "{\"task\":7}",                           /* not a string */
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        char what[64];
        tmp_name(path, sizeof path, ".json");
        write_file(path, raw[i], strlen(raw[i]));
        snprintf(what, sizeof what, "POST /v1/adapters bad task %zu", i);
        expect_error(p, "POST", "/v1/adapters", J, path, NULL, 400, "task", what);
        /* the same text in a segment request (the image comes first) */
        json_t *o = json_pack("{s:s}", "image", g_dog_b64);
        char *img = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        size_t il = strlen(img);
        char *body = malloc(il + strlen(raw[i]) + 2);
        memcpy(body, img, il - 1);
        body[il - 1] = ',';
        strcpy(body + il, raw[i] + 1);
        write_file(path, body, strlen(body));
        free(body);
        free(img);
        snprintf(what, sizeof what, "POST /v1/segment bad task %zu", i);
        expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "task", what);
    }
    /* 100 KB of task */
    {
        size_t n = 100 * 1024;
        char *big = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            big[i] = i % 7 == 6 ? ' ' : 'a';
        big[n] = 0;
        write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "task", big));
        expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "task", "100 KB task");
        write_request(path, sizeof path, NULL, json_pack("{s:s}", "task", big));
        expect_error(p, "POST", "/v1/adapters", J, path, NULL, 400, "task", "100 KB task (adapters)");
        free(big);
    }
    write_request(path, sizeof path, NULL, json_object());
    expect_error(p, "POST", "/v1/adapters", J, path, NULL, 400, "task", "no task");
    write_request(path, sizeof path, NULL, json_pack("{s:s,s:s}", "task", "x", "image", "AAAA"));
    expect_error(p, "POST", "/v1/adapters", J, path, NULL, 400, "image", "image in adapters POST");
    /* raw bytes in multipart: a `task` part, and inside the `request` part */
    char tfile[PATH_MAX];
    tmp_name(tfile, sizeof tfile, ".txt");
    write_file(tfile, "seg\xffment the dog", 16);
    snprintf(extra, sizeof extra, "-F 'image=@%s' -F 'task=<%s'", g_dog_path, tfile);
    expect_error(p, "POST", "/v1/segment", NULL, NULL, extra, 400, "task", "multipart raw task");
    write_file(tfile, "{\"task\":\"seg\xfe" "ment\"}", strlen("{\"task\":\"seg\xfe" "ment\"}"));
    snprintf(extra, sizeof extra, "-F 'image=@%s' -F 'request=<%s;type=application/json'",
             g_dog_path, tfile);
    expect_error(p, "POST", "/v1/segment", NULL, NULL, extra, 400, "task",
                 "multipart request JSON with a raw byte");
    write_file(tfile, "the\x00dog", 7);
    snprintf(extra, sizeof extra, "-F 'image=@%s' -F 'task=<%s'", g_dog_path, tfile);
    expect_error(p, "POST", "/v1/segment", NULL, NULL, extra, 400, "task", "multipart NUL task");
    /* the lookup: %FF, %00 and empty */
    expect_error(p, "GET", "/v1/adapters?task=seg%FFment", NULL, NULL, NULL, 400, "task",
                 "GET ?task= with %FF");
    expect_error(p, "GET", "/v1/adapters?task=seg%00ment", NULL, NULL, NULL, 400, "task",
                 "GET ?task= with %00");
    expect_error(p, "GET", "/v1/adapters?task=", NULL, NULL, NULL, 400, "task", "GET ?task= empty");
    /* nothing was generated, and the daemon is fine */
    char *m = get_metrics(p);
    T_CHECK(m && metric(m, "tasam_adapter_cache_misses_total") == 2, "a bad task was generated");
    free(m);
    T_CHECK(http(p, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL) == 200, "healthz");
}

/* Without --hypernet, every task route answers 501 naming the flag. */
static void test_tasks_without_hypernet(void)
{
    char path[PATH_MAX];
    int st;
    NEED_DAEMON();
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "task", TASK));
    json_t *r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    const char *msg = json_string_value(json_object_get(json_object_get(r, "error"), "message"));
    T_CHECK(st == 501 && msg && strstr(msg, "--hypernet FILE"), "segment with task: %d %s", st,
            msg ? msg : "");
    json_decref(r);
    write_request(path, sizeof path, NULL, json_pack("{s:s}", "task", TASK));
    expect_error(g_d.port, "POST", "/v1/adapters", "application/json", path, NULL, 501, "task",
                 "POST /v1/adapters");
    expect_error(g_d.port, "GET", "/v1/adapters?task=x", NULL, NULL, NULL, 501, "task",
                 "GET ?task=");
    json_t *info = http_json(g_d.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    json_t *hn = json_object_get(info, "hypernetwork");
    const char *note = json_string_value(json_object_get(hn, "note"));
    T_CHECK(json_is_false(json_object_get(hn, "available")) && note &&
                strstr(note, "no hypernetwork configured"),
            "info says there is no hypernetwork");
    json_decref(info);
}

static void test_tasks_restart(void)
{
    int st;
    NEED_TASKS();
    T_CHECK(daemon_stop(&g_t) == 0, "stop");
    g_t_up = 0;
    T_REQUIRE(t_daemon_start(&g_t, g_t_state, g_hn_random) == 0, "restart");
    g_t_up = 1;
    /* the adapter comes from disk, then from memory; masks unchanged */
    json_t *r = seg(g_t.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r), "cache-disk"), "after a restart: %d %s", st,
            adapter_source(r));
    T_CHECK(!strcmp(adapter_id_of(r), g_ad_id), "id after restart");
    json_t *r2 = seg(g_t.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r2), "cache-memory"), "then: %s",
            adapter_source(r2));
    T_CHECK(same_masks(r, r2) && !same_masks(r, g_plain_point), "masks from the disk adapter");
    json_decref(r);
    json_decref(r2);
    char *m = get_metrics(g_t.port);
    T_CHECK(m && metric(m, "tasam_adapter_cache_misses_total") == 0 &&
                metric(m, "tasam_adapter_cache_hits_total{tier=\"disk\"}") == 1 &&
                metric(m, "tasam_adapter_cache_entries") == 2,
            "no generation after a restart");
    free(m);
}

static void test_tasks_new_hypernet(void)
{
    int st;
    NEED_TASKS();
    /* another hypernetwork (zero-initialised) on the same state: a miss under a
     * new id, and its adapters leave SAM exactly as it is */
    T_CHECK(daemon_stop(&g_t) == 0, "stop");
    g_t_up = 0;
    T_REQUIRE(t_daemon_start(&g_t, g_t_state, g_hn_zero) == 0, "start with another hypernet");
    g_t_up = 1;
    json_t *r = seg(g_t.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r), "generated"), "new hypernet: %d %s", st,
            adapter_source(r));
    T_CHECK(adapter_id_of(r)[0] && strcmp(adapter_id_of(r), g_ad_id) != 0,
            "the new hypernetwork reuses the old id");
    T_CHECK(g_plain_point && same_masks(r, g_plain_point),
            "a zero-initialised hypernetwork changed the masks");
    json_decref(r);
    r = seg(g_t.port, TASK, 1, &st);
    T_CHECK(st == 200 && g_plain_free && same_masks(r, g_plain_free),
            "zero hypernet: prompt-free masks changed");
    json_decref(r);
    /* the old rows stay listed, marked not current */
    char url[128];
    snprintf(url, sizeof url, "/v1/adapters/%s", g_ad_id);
    r = http_json(g_t.port, "GET", url, NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && json_is_false(json_object_get(r, "current")), "old row: %d", st);
    json_decref(r);
    r = http_json(g_t.port, "GET", "/v1/adapters", NULL, NULL, NULL, &st);
    T_CHECK(json_integer_value(json_object_get(r, "total")) == 3, "3 rows over two hypernets");
    json_decref(r);
}

static void test_tasks_admin_flush(void)
{
    int st;
    NEED_TASKS();
    int p = g_t.port;
    char *b = NULL;
    size_t n;
    char hfile[PATH_MAX], hdr[PATH_MAX + 8];
    tmp_name(hfile, sizeof hfile, ".hdr");
    snprintf(hdr, sizeof hdr, "-D '%s'", hfile);
    st = http(p, "DELETE", "/admin/adapters", NULL, NULL, hdr, &b, &n);
    free(b);
    char *h = (char *)t_read_file(hfile, &n);
    T_CHECK(st == 401 && h && memmem(h, n, "WWW-Authenticate: Bearer", 24), "no token: %d", st);
    free(h);
    expect_error(p, "DELETE", "/admin/adapters", NULL, NULL, "-H 'Authorization: Bearer s3creT'",
                 403, "", "wrong token");
    expect_error(p, "DELETE", "/admin/adapters", NULL, NULL, "-H 'Authorization: Bearer s3cret0'",
                 403, "", "longer token");
    expect_error(p, "DELETE", "/admin/adapters", NULL, NULL, "-H 'Authorization: Basic czNjcmV0'",
                 401, "", "not a bearer token");
    json_t *r = http_json(p, "GET", "/v1/adapters", NULL, NULL, NULL, &st);
    T_CHECK(json_integer_value(json_object_get(r, "total")) == 3, "a refused flush flushed");
    json_decref(r);
    r = http_json(p, "DELETE", "/admin/adapters", NULL, NULL, "-H 'Authorization: Bearer s3cret'",
                  &st);
    json_t *f = json_object_get(r, "flushed");
    T_CHECK(st == 200 && json_integer_value(json_object_get(f, "disk")) == 3 &&
                json_integer_value(json_object_get(f, "memory")) == 1,
            "flush: %d", st);
    json_decref(r);
    r = http_json(p, "GET", "/v1/adapters", NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && json_integer_value(json_object_get(r, "total")) == 0 &&
                json_array_size(json_object_get(r, "adapters")) == 0,
            "rows after the flush");
    json_decref(r);
    char *m = get_metrics(p);
    T_CHECK(m && metric(m, "tasam_adapters_resident") == 0, "resident after the flush");
    free(m);
    r = seg(g_t.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r), "generated"), "after the flush: %s",
            adapter_source(r));
    json_decref(r);
    T_CHECK(daemon_stop(&g_t) == 0, "stop");
    g_t_up = 0;
}

static void test_tasks_kill9_during_generation(void)
{
    enum { N = 24 };
    client cl[N];
    char state[PATH_MAX];
    daemon_proc d;
    T_NEED_FIXTURES();
    if (!g_hn_random[0])
        T_SKIP("no hypernetwork file");
    snprintf(state, sizeof state, "%s/state-tasks-kill", g_tmp);
    T_REQUIRE(t_daemon_start(&d, state, g_hn_random) == 0, "start");
    for (int i = 0; i < N; i++) {
        char task[64];
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].port = d.port;
        cl[i].route = "/v1/adapters";
        snprintf(task, sizeof task, "segment object number %d", i);
        write_request(cl[i].file, sizeof cl[i].file, NULL, json_pack("{s:s}", "task", task));
    }
    pthread_t th[N];
    for (int i = 0; i < N; i++)
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    double t0 = now_s();
    while (now_s() - t0 < 60) {
        char *m = get_metrics(d.port);
        double e = m ? metric(m, "tasam_adapter_cache_entries") : 0;
        free(m);
        if (e >= 1)
            break;
        usleep(2000);
    }
    daemon_kill9(&d);
    int answered = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        answered += cl[i].status == 200;
        json_decref(cl[i].resp);
        unlink(cl[i].file);
    }
    fprintf(stderr, "  %d of %d adapter requests answered before kill -9\n", answered, N);
    T_CHECK(quick_check(state), "the cache fails quick_check after kill -9");
    T_REQUIRE(t_daemon_start(&d, state, g_hn_random) == 0, "restart after kill -9");
    T_CHECK(count_corrupt_files(state) == 0 && !log_contains(&d, "moved aside"),
            "the database was moved aside after kill -9");
    int found = 0;
    for (int i = 0; i < N; i++) {
        char url[160], path[PATH_MAX];
        int st;
        snprintf(url, sizeof url, "/v1/adapters?task=segment%%20object%%20number%%20%d", i);
        json_t *g = http_json(d.port, "GET", url, NULL, NULL, NULL, &st);
        int present = st == 200;
        T_CHECK(st == 200 || st == 404, "lookup %d: %d", i, st);
        found += present;
        if (present) {
            char wurl[160];
            char *w = NULL;
            size_t wn = 0;
            ad_adapter *a = NULL;
            snprintf(wurl, sizeof wurl, "/v1/adapters/%s/weights",
                     json_string_value(json_object_get(g, "id")) ?: "");
            T_CHECK(http(d.port, "GET", wurl, NULL, NULL, NULL, &w, &wn) == 200 &&
                        ad_adapter_parse(&a, w, wn, "weights after kill -9") == 0,
                    "surviving adapter %d does not parse", i);
            ad_adapter_destroy(a);
            free(w);
        }
        json_decref(g);
        if (present || i == N - 1) {
            char task[64];
            snprintf(task, sizeof task, "segment object number %d", i);
            write_request(path, sizeof path, NULL, json_pack("{s:s}", "task", task));
            json_t *r = http_json(d.port, "POST", "/v1/adapters", "application/json", path, NULL,
                                  &st);
            const char *src = json_string_value(json_object_get(r, "source"));
            T_CHECK(st == 200 && src && !strcmp(src, present ? "cache-disk" : "generated"),
                    "adapter %d after restart: %d %s (row %s)", i, st, src ? src : "?",
                    present ? "present" : "absent");
            json_decref(r);
        }
    }
    T_CHECK(found >= 1, "no adapter survived the kill");
    T_CHECK(daemon_stop(&d) == 0, "stop");
}

int main(int argc, char **argv)
{
    char self[PATH_MAX];
    (void)argc;
    snprintf(self, sizeof self, "%s", argv[0]);
    char *dir = dirname(self);
    snprintf(g_tasamd, sizeof g_tasamd, "%s/../tasamd", dir);
    char real[PATH_MAX];
    if (realpath(g_tasamd, real))
        snprintf(g_tasamd, sizeof g_tasamd, "%s", real);
    /* the CLI: beside tasamd, or (sanitizer builds) in the plain build */
    const char *cands[] = {"%s/../tasam", "%s/../../tasam"};
    for (size_t i = 0; i < 2 && !g_tasam[0]; i++) {
        char c[PATH_MAX];
        snprintf(c, sizeof c, cands[i], dir);
        if (realpath(c, real) && access(real, X_OK) == 0)
            snprintf(g_tasam, sizeof g_tasam, "%s", real);
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/tasam-test-server-XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (access(g_tasamd, X_OK) != 0) {
        fprintf(stderr, "tasamd not found at %s (build it first: make %s)\n", g_tasamd, g_tasamd);
        printf("test_server: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    if (t_fixtures()) {
        size_t n;
        g_dog_path = strdup(t_fixture("images/dog.jpg"));
        uint8_t *jpg = t_read_file(g_dog_path, &n);
        if (jpg)
            g_dog_b64 = srv_base64_encode(jpg, n);
        free(jpg);
        if (eng_ckpt_open(&g_golden, t_fixture("golden_tiny.safetensors")) != 0)
            g_golden = NULL;
    }
    T_RUN(test_config_errors);
    T_RUN(test_systemd_unit);
    T_RUN(test_start);
    T_RUN(test_goldens);
    T_RUN(test_multipart_and_outputs);
    T_RUN(test_cache_hit);
    T_RUN(test_errors);
    T_RUN(test_concurrent_50);
    T_RUN(test_metrics_grammar);
    T_RUN(test_tasks_without_hypernet);
    T_RUN(test_restart_keeps_cache);
    T_RUN(test_stop_main);
    T_RUN(test_tasks_start);
    T_RUN(test_tasks_segment);
    T_RUN(test_tasks_routes);
    T_RUN(test_tasks_bad_text);
    T_RUN(test_tasks_restart);
    T_RUN(test_tasks_new_hypernet);
    T_RUN(test_tasks_admin_flush);
    T_RUN(test_tasks_kill9_during_generation);
    T_RUN(test_kill9_during_burst);
    T_RUN(test_queue_full_429);
    T_RUN(test_deadline_504);
    T_RUN(test_corrupt_db_moved_aside);
    T_RUN(test_sighup_reload);
    if (g_d.pid)
        daemon_kill9(&g_d);
    if (g_t.pid)
        daemon_kill9(&g_t);
    json_decref(g_plain_point);
    json_decref(g_plain_free);
    eng_ckpt_close(g_golden);
    free(g_dog_b64);
    free((void *)g_dog_path);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (!getenv("TASAM_KEEP_TMP") && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_tmp);
    return t_summary("test_server");
}
