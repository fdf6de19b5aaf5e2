/*
 * tests/tserver.h: what the tests of the real daemon share (header-only, as
 * tests/harness.h): temp files, HTTP requests (the shared client of
 * clients/http_client.h; raw sockets where a request must be malformed),
 * starting and stopping tasamd
 * on a loopback port, request bodies, the golden comparison, and the setup
 * every tests/test_server*.c main runs (ts_init / ts_cleanup).
 *
 * The daemon binary is found next to the test's build folder
 * (argv[0]/../../tasamd: build/tasamd or build/asan/tasamd). Tests that need
 * the fixture model skip when ../shared/fixtures is absent. Each daemon gets
 * a fresh state directory under a temporary folder; every daemon started is
 * stopped (SIGTERM, expecting exit 0) or killed by the test that started it.
 */
#ifndef TASAM_TESTS_TSERVER_H
#define TASAM_TESTS_TSERVER_H

/* Paths are built in fixed buffers from a short temp folder name; GCC's
 * truncation analysis cannot see that bound. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

#include <arpa/inet.h>
#include <ctype.h>
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
#include "clients/http_client.h"
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
static char g_test_dir[PATH_MAX]; /* the folder of the test binary (build/tests) */
static int g_files;               /* counter for temp file names */
static pthread_mutex_t g_files_mu = PTHREAD_MUTEX_INITIALIZER;

/* A running daemon. */
typedef struct daemon_proc {
    pid_t pid;            /* child pid, 0 when not running */
    int port;             /* bound port */
    char state[PATH_MAX]; /* state dir */
    char log[PATH_MAX];   /* stderr log */
} daemon_proc;

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void tmp_name(char *out, size_t n, const char *suffix)
{
    pthread_mutex_lock(&g_files_mu);
    int k = g_files++;
    pthread_mutex_unlock(&g_files_mu);
    snprintf(out, n, "%s/f%d%s", g_tmp, k, suffix);
}

static inline int write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(buf, 1, len, f);
    fclose(f);
    return w == len ? 0 : -1;
}

/* One multipart/form-data part of a test request. */
typedef struct ts_part {
    const char *name;     /* form field */
    const char *file;     /* the part's bytes from this file, or NULL for data */
    const char *filename; /* filename="..." (a file upload), or NULL */
    const char *data;     /* NUL-terminated bytes when file is NULL */
    const char *type;     /* the part's Content-Type, or NULL */
} ts_part;

/* What a test request may add beyond a method, path and body file. */
typedef struct ts_extra {
    const char *headers; /* header lines, each "Name: value\r\n", or NULL */
    int chunked;         /* 1: send the body with Transfer-Encoding: chunked */
    ts_part form[4];     /* multipart parts (the body), up to the first NULL name */
    int timeout_s;       /* seconds to wait for the answer (0: 120) */
} ts_extra;

/*
 * One HTTP request to the daemon on 127.0.0.1:port with the shared client
 * (clients/http_client.h). `data_file` (may be NULL) is the body with
 * Content-Type `ctype`, or x->form a multipart body. The response lands in
 * *resp (hc_response_free it). Returns the status, or 0 when no response
 * came (connect, send, timeout after x->timeout_s or 120 s, malformed
 * answer).
 */
static inline int http_full(int port, const char *method, const char *path, const char *ctype,
                            const char *data_file, const ts_extra *x, hc_response *resp)
{
    hc_target t;
    hc_conn c;
    uint8_t *files[4] = {0}, *data = NULL;
    char *mp = NULL, *req = NULL, mct[128], err[128];
    size_t dlen = 0, rl = 0;
    int status = 0;
    hc_response_init(resp);
    hc_conn_init(&c);
    if (hc_target_loopback(&t, port) != 0)
        return 0;
    if (data_file && !(data = t_read_file(data_file, &dlen)))
        goto out;
    if (x && x->form[0].name) {
        hc_part parts[4];
        int n = 0;
        for (; n < 4 && x->form[n].name; n++) {
            const ts_part *f = &x->form[n];
            size_t len = f->data ? strlen(f->data) : 0;
            if (f->file && !(files[n] = t_read_file(f->file, &len)))
                goto out;
            parts[n] = (hc_part){.name = f->name,
                                 .filename = f->filename,
                                 .content_type = f->type,
                                 .data = f->file ? (const void *)files[n] : f->data,
                                 .len = len};
        }
        if (hc_multipart_build(parts, n, &mp, &dlen, mct, sizeof mct, err, sizeof err) != 0)
            goto out;
        ctype = mct;
    }
    hc_request rq = {.method = method,
                     .path = path,
                     .headers = x ? x->headers : NULL,
                     .content_type = ctype,
                     .body = mp ? (const void *)mp : data,
                     .body_len = dlen,
                     .chunked = x ? x->chunked : 0};
    if (hc_request_build(&t, &rq, &req, &rl) == 0 &&
        hc_exchange(&c, &t, req, rl, resp, x && x->timeout_s > 0 ? x->timeout_s : 120, NULL) == 0)
        status = resp->status;
out:
    for (int i = 0; i < 4; i++)
        free(files[i]);
    free(data);
    free(mp);
    free(req);
    hc_conn_free(&c);
    hc_target_free(&t);
    return status;
}

/* http_full, keeping only the body: when body != NULL it gets the
 * response body (malloc'd, NUL-terminated; NULL when none came). */
static inline int http(int port, const char *method, const char *path, const char *ctype,
                       const char *data_file, const ts_extra *x, char **body, size_t *blen)
{
    hc_response r;
    int st = http_full(port, method, path, ctype, data_file, x, &r);
    if (body) {
        *body = st ? r.body : NULL;
        if (blen)
            *blen = st ? r.len : 0;
        if (st)
            r.body = NULL;
    }
    hc_response_free(&r);
    return st;
}

static inline json_t *http_json(int port, const char *method, const char *path, const char *ctype,
                                const char *data_file, const ts_extra *x, int *status)
{
    char *b = NULL;
    size_t n = 0;
    *status = http(port, method, path, ctype, data_file, x, &b, &n);
    json_t *j = b ? json_loadb(b, n, 0, NULL) : NULL;
    free(b);
    return j;
}

/* 1 when `prog` is on the PATH (tools some tests need: haproxy, curl). */
static inline int ts_have(const char *prog)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v '%s' >/dev/null 2>&1", prog);
    return system(cmd) == 0;
}

/* Wait for a file to hold a port number. */
static inline int read_port(const char *path, double timeout)
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
static inline int daemon_start(daemon_proc *d, const char *state, int wait_ready,
                               const char *const *args)
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
    /* an instrumented build (make test-tsan) runs the model 10-20 times
     * slower: deadlines to match, before the test's own options (which win) */
    if (getenv("TASAM_TEST_SLOW")) {
        argv[n++] = "--request-timeout-ms";
        argv[n++] = "600000";
    }
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
static inline int daemon_stop(daemon_proc *d)
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

static inline void daemon_kill9(daemon_proc *d)
{
    int st;
    if (!d->pid)
        return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &st, 0);
    d->pid = 0;
}

static inline int log_contains(const daemon_proc *d, const char *needle)
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

static inline void show_log(const daemon_proc *d)
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
static inline void write_request(char *path, size_t n, const char *image_b64, json_t *extra)
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
static inline char *make_png(unsigned seed, char *path, size_t n)
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
static inline double agree(const json_t *rle, const char *name, int k)
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
    if (m && eng_rle_from_string(counts, strlen(counts), h, w, &r) == 0 &&
        eng_rle_decode(&r, m) == 0) {
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
static inline json_t *case_request(const json_t *c)
{
    json_t *o = json_object();
    const json_t *pc = json_object_get(c, "point_coords"), *pl = json_object_get(c, "point_labels");
    if (pc) {
        json_t *pts = json_array();
        for (size_t i = 0; i < json_array_size(pc); i++)
            json_array_append_new(
                pts, json_pack("[O,O,O]", json_array_get(json_array_get(pc, i), 0),
                               json_array_get(json_array_get(pc, i), 1), json_array_get(pl, i)));
        json_object_set_new(o, "points", pts);
    }
    if (json_object_get(c, "box"))
        json_object_set_new(o, "boxes", json_pack("[O]", json_object_get(c, "box")));
    if (json_object_get(c, "boxes"))
        json_object_set(o, "boxes", json_object_get(c, "boxes"));
    json_object_set(o, "multimask", json_object_get(c, "multimask_output"));
    return o;
}

/* PyTorch's F.interpolate(mode="bilinear", align_corners=False) source
 * index for output o of `out` samples from `in`, written out here so the
 * reference below shares no code with the engine. */
static inline void ref_src(int in, int out, int o, int *i0, int *i1, float *l)
{
    float src = (float)in / (float)out * ((float)o + 0.5f) - 0.5f;
    if (src < 0)
        src = 0;
    int i = (int)src;
    if (i > in - 1)
        i = in - 1;
    *i0 = i;
    *i1 = i < in - 1 ? i + 1 : i;
    *l = src - (float)i;
}

/* One bilinear resize of the top-left ch x cw crop of x (row stride xw) to
 * oh x ow. */
static inline void ref_resize(float *y, int oh, int ow, const float *x, int xw, int ch, int cw)
{
    for (int r = 0; r < oh; r++) {
        int a0, a1, b0, b1;
        float ly, lx;
        ref_src(ch, oh, r, &a0, &a1, &ly);
        for (int c = 0; c < ow; c++) {
            ref_src(cw, ow, c, &b0, &b1, &lx);
            float top = (1 - lx) * x[a0 * xw + b0] + lx * x[a0 * xw + b1];
            float bot = (1 - lx) * x[a1 * xw + b0] + lx * x[a1 * xw + b1];
            y[r * ow + c] = (1 - ly) * top + ly * bot;
        }
    }
}

/* Reference values of golden mask k of case `name` (dog.jpg, 800x534
 * resized to 1024x684): the predicted IoU from CASE.iou_predictions, and
 * SAM's stability score from CASE.low_res_logits, upscaled as the
 * reference's postprocess_masks does (bilinear to 1024x1024, crop to
 * 684x1024, bilinear to 534x800) and counted as
 * calculate_stability_score(threshold 0, offset 1) does: |x > 1| / |x > -1|.
 * *agree_px gets the fraction of pixels where x > 0 agrees with CASE.masks,
 * which checks this reference upscale against PyTorch's. 0, or -1. */
static inline int ref_mask_scores(const char *name, int k, double *iou, double *stability,
                                  double *agree_px)
{
    char tn[128];
    snprintf(tn, sizeof tn, "%s.low_res_logits", name);
    const eng_ckpt_tensor *tl = eng_ckpt_find(g_golden, tn);
    snprintf(tn, sizeof tn, "%s.iou_predictions", name);
    const eng_ckpt_tensor *ti = eng_ckpt_find(g_golden, tn);
    snprintf(tn, sizeof tn, "%s.masks", name);
    const eng_ckpt_tensor *tm = eng_ckpt_find(g_golden, tn);
    const int L = 256, S = 1024, IH = 684, OH = 534, OW = 800;
    if (!tl || !ti || !tm || (int64_t)(k + 1) * L * L > tl->numel || k >= ti->numel ||
        (int64_t)(k + 1) * OH * OW > tm->numel)
        return -1;
    float *lo = malloc((size_t)tl->numel * sizeof(float)), *io = malloc(ti->numel * sizeof(float));
    float *up = malloc((size_t)IH * S * sizeof(float)),
          *x = malloc((size_t)OH * OW * sizeof(float));
    int rc = -1;
    if (lo && io && up && x && eng_ckpt_read_f32(g_golden, tl, lo) == 0 &&
        eng_ckpt_read_f32(g_golden, ti, io) == 0) {
        /* rows 0..683 of the 1024x1024 upscale are the crop */
        float *full = malloc((size_t)S * S * sizeof(float));
        if (full) {
            ref_resize(full, S, S, lo + (size_t)k * L * L, L, L, L);
            memcpy(up, full, (size_t)IH * S * sizeof(float));
            free(full);
            ref_resize(x, OH, OW, up, S, IH, S);
            const uint8_t *g = (const uint8_t *)tm->data + (size_t)k * OH * OW;
            size_t inter = 0, uni = 0, same = 0;
            for (size_t i = 0; i < (size_t)OH * OW; i++) {
                inter += x[i] > 1.0f;
                uni += x[i] > -1.0f;
                same += (x[i] > 0.0f) == (g[i] != 0);
            }
            *stability = uni ? (double)inter / (double)uni : 0.0;
            *iou = io[k];
            *agree_px = (double)same / ((double)OH * OW);
            rc = 0;
        }
    }
    free(lo), free(io), free(up), free(x);
    return rc;
}

/* Check a segment response against the goldens of case `name`: each
 * mask's pixels (99.9%), its predicted_iou and its stability_score (1e-3,
 * the fixtures' tolerance; see ref_mask_scores). */
static inline int check_masks(const json_t *resp, const char *name, int n_prompts, int per_prompt)
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
        const json_t *m = json_array_get(masks, i);
        double a = agree(json_object_get(m, "rle"), tname, (int)i), iou = 0, st = 0, ref_agree = 0;
        if (a < 0.999) {
            fprintf(stderr, "  %s mask %zu: %.5f of pixels agree with the golden\n", name, i, a);
            ok = 0;
        }
        if (ref_mask_scores(name, (int)i, &iou, &st, &ref_agree) != 0 || ref_agree < 0.999) {
            fprintf(stderr, "  %s mask %zu: no reference scores (upscale agrees on %.5f)\n", name,
                    i, ref_agree);
            ok = 0;
            continue;
        }
        double gi = json_number_value(json_object_get(m, "predicted_iou"));
        double gs = json_number_value(json_object_get(m, "stability_score"));
        if (fabs(gi - iou) > 1e-3 || fabs(gs - st) > 1e-3) {
            fprintf(stderr,
                    "  %s mask %zu: predicted_iou %.5f (golden %.5f), stability_score %.5f "
                    "(reference %.5f)\n",
                    name, i, gi, iou, gs, st);
            ok = 0;
        }
    }
    return ok;
}

/* ---- task requests ---- */

/* Contract: writes a hypernetwork for the hashed text embedding (hidden
 * width `hidden`, 0 for the default). */
static inline int ts_write_hypernet_h(const char *path, uint64_t seed, int random, int hidden)
{
    hn_hypernet_config cfg;
    hn_hypernet_config_default(&cfg);
    snprintf(cfg.text_model, sizeof cfg.text_model, "hashed-%d", cfg.text_dim);
    if (hidden > 0)
        cfg.hidden = hidden;
    return hn_hypernet_init(path, &cfg, seed, random);
}

static inline int ts_write_hypernet(const char *path, uint64_t seed, int random)
{
    return ts_write_hypernet_h(path, seed, random, 0);
}

/* The dog's point request (one mask) or one without a prompt (everything
 * mode: a task alone, or `everything: true` without a task), with `task`
 * when not NULL (the JSON body goes to a temp file). */
static inline json_t *ts_seg(int port, const char *task, int prompt_free, int *status)
{
    char path[PATH_MAX];
    json_t *o = prompt_free ? json_object()
                            : json_pack("{s:[[i,i,i]],s:b}", "points", 400, 294, 1, "multimask", 0);
    if (task)
        json_object_set_new(o, "task", json_string(task));
    else if (prompt_free)
        json_object_set_new(o, "everything", json_true());
    write_request(path, sizeof path, g_dog_b64, o);
    json_t *r = http_json(port, "POST", "/v1/segment", "application/json", path, NULL, status);
    unlink(path);
    return r;
}

/* 1 when two responses carry the same masks (RLE counts, one by one). */
static inline int ts_same_masks(const json_t *a, const json_t *b)
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

/* ---- the shared daemon ---- */

static daemon_proc g_d; /* started by test_start, used by most tests */
static int g_up;        /* g_d is ready */

#define NEED_DAEMON()                                                                              \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        if (!g_up)                                                                                 \
            T_SKIP("the daemon did not start");                                                    \
    } while (0)

/* ---- metrics and error checks ---- */

/* Value of a metric line "name{labels} value" or "name value"; -1 if absent. */
static inline double metric(const char *text, const char *series)
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

static inline char *get_metrics(int port)
{
    char *b = NULL;
    size_t n;
    if (http(port, "GET", "/metrics", NULL, NULL, NULL, &b, &n) != 200) {
        free(b);
        return NULL;
    }
    return b;
}

/* Expect `status` with the error JSON (and `field` when non-NULL). */
static inline void expect_error(int port, const char *method, const char *path, const char *ctype,
                                const char *file, const ts_extra *extra, int status,
                                const char *field, const char *what)
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
static inline int raw_status(int port, const char *req, size_t len)
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

static inline int count_corrupt_files(const char *state)
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

static inline int quick_check(const char *state)
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

/* ---- concurrent clients ---- */

typedef struct client {
    int port;            /* daemon */
    const char *route;   /* path */
    char file[PATH_MAX]; /* body */
    int status;          /* answer */
    json_t *resp;        /* parsed body */
} client;

static inline void *client_main(void *arg)
{
    client *c = arg;
    c->resp = http_json(c->port, "POST", c->route, "application/json", c->file, NULL, &c->status);
    return NULL;
}

static inline void run_clients(client *cl, int n)
{
    pthread_t th[64];
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

/* ---- setup and teardown of a test binary ---- */

/* Find tasamd and tasam beside argv0's build folder, make the temp folder,
 * load dog.jpg and the goldens. Returns 0, or 1 when the daemon binary is
 * missing (the caller reports one failure and exits). */
static inline int ts_init(const char *argv0)
{
    char self[PATH_MAX];
    snprintf(self, sizeof self, "%s", argv0);
    char *dir = dirname(self);
    snprintf(g_test_dir, sizeof g_test_dir, "%s", dir);
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
    return 0;
}

/* Kill what is left of the shared daemon, free the globals, remove the temp
 * folder (kept with TASAM_KEEP_TMP=1). */
static inline void ts_cleanup(void)
{
    if (g_d.pid)
        daemon_kill9(&g_d);
    eng_ckpt_close(g_golden);
    free(g_dog_b64);
    free((void *)g_dog_path);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (!getenv("TASAM_KEEP_TMP") && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_tmp);
}

/* Start the shared daemon g_d with a small encoder batch and wait for it. */
static inline int ts_start_shared(const char *name)
{
    char state[PATH_MAX];
    snprintf(state, sizeof state, "%s/state-shared-%s", g_tmp, name);
    static const char *const args[] = {"--max-batch", "4", "--batch-wait-ms", "20", NULL};
    int rc = daemon_start(&g_d, state, 1, args);
    if (rc)
        show_log(&g_d);
    g_up = rc == 0;
    return rc;
}

#endif
