/*
 * bench/hostile_bench.c: the red-team measurements of tasamd under
 * hostile load, on a daemon it starts itself (loopback, the fixture model
 * on the CPU unless told otherwise):
 *
 *   polygon:   POST /v1/segment for an 1800x1200 image (by image_id) with
 *              64 full-image boxes, three masks each, as polygons: one
 *              request, then `concurrent` at once. Reports each answer's
 *              status and bytes, and the daemon's resident memory idle,
 *              at its peak (sampled every 10 ms) and 3 s after.
 *   slowloris: `attack` connections from `addrs` loopback addresses
 *              (127.0.0.2, .3, ...) each send a header byte every
 *              `interval` seconds and reconnect when answered or closed,
 *              for `duration` seconds, while GET /healthz is probed from
 *              127.0.0.1 every 100 ms. Reports the probes' latency (p50,
 *              p99, max) and failures, and how the attack was answered.
 *
 *   hostile_bench [--tasamd build/tasamd] [--checkpoint FILE]
 *                 [--scenario polygon|slowloris|all] [--boxes 64]
 *                 [--concurrent 3] [--attack 515] [--addrs 1] [--interval 10]
 *                 [--duration 30] [-- DAEMON-OPTION...]
 *
 * Options after `--` go to tasamd (e.g. --max-response-bytes 1GiB). Prints
 * the machine first: figures compare only on the same machine.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/image.h"
#include "tests/rawhttp.h"

typedef struct opts {
    const char *tasamd, *checkpoint, *scenario;
    int boxes, concurrent, attack, addrs;
    double interval, duration;
    const char *daemon_args[32];
    int n_daemon_args;
} opts;

typedef struct tasamd_proc {
    pid_t pid;
    int port;
    char dir[128];
} tasamd_proc;

/* Contract: starts tasamd on a free loopback port in a fresh state folder
 * and waits for /readyz. 0 or -1. */
static int daemon_start(tasamd_proc *d, const opts *o)
{
    char portfile[192], log[192], state[192];
    const char *argv[48];
    int n = 0;
    snprintf(d->dir, sizeof d->dir, "/tmp/tasam-hostile-bench-XXXXXX");
    if (!mkdtemp(d->dir))
        return -1;
    snprintf(portfile, sizeof portfile, "%s/port", d->dir);
    snprintf(log, sizeof log, "%s/tasamd.log", d->dir);
    snprintf(state, sizeof state, "%s/state", d->dir);
    argv[n++] = o->tasamd;
    argv[n++] = "--checkpoint";
    argv[n++] = o->checkpoint;
    argv[n++] = "--device";
    argv[n++] = "cpu";
    argv[n++] = "--listen";
    argv[n++] = "127.0.0.1:0";
    argv[n++] = "--port-file";
    argv[n++] = portfile;
    argv[n++] = "--state-dir";
    argv[n++] = state;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    for (int i = 0; i < o->n_daemon_args; i++)
        argv[n++] = o->daemon_args[i];
    argv[n] = NULL;
    d->pid = fork();
    if (d->pid < 0)
        return -1;
    if (d->pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        execv(o->tasamd, (char *const *)argv);
        _exit(127);
    }
    double t0 = raw_now();
    while (raw_now() - t0 < 60) {
        FILE *f = fopen(portfile, "r");
        if (f) {
            if (fscanf(f, "%d", &d->port) != 1)
                d->port = 0;
            fclose(f);
        }
        if (d->port > 0) {
            raw_reply r;
            const char req[] = "GET /readyz HTTP/1.1\r\nHost: b\r\n\r\n";
            raw_request(d->port, NULL, req, sizeof req - 1, 2, &r);
            raw_reply_free(&r);
            if (r.status == 200)
                return 0;
        }
        usleep(100000);
    }
    fprintf(stderr, "hostile_bench: tasamd did not become ready (see %s)\n", log);
    return -1;
}

static void daemon_stop(tasamd_proc *d)
{
    char cmd[160];
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        waitpid(d->pid, NULL, 0);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "hostile_bench: could not remove %s\n", d->dir);
}

/* ---- polygon ---- */

typedef struct shot {
    int port;
    const char *req;
    size_t len;
    raw_reply r;
} shot;

static void *shot_main(void *arg)
{
    shot *s = arg;
    raw_request(s->port, NULL, s->req, s->len, 1800, &s->r);
    return NULL;
}

/* Contract: runs n requests at once while sampling the daemon's memory. */
static void burst(const tasamd_proc *d, const char *req, size_t len, int n)
{
    shot *s = calloc((size_t)n, sizeof *s);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    long idle = raw_rss_kb(d->pid), peak = idle;
    double t0 = raw_now();
    for (int i = 0; i < n; i++) {
        s[i].port = d->port;
        s[i].req = req;
        s[i].len = len;
        pthread_create(&th[i], NULL, shot_main, &s[i]);
    }
    for (;;) {
        long k = raw_rss_kb(d->pid);
        peak = k > peak ? k : peak;
        int done = 1;
        for (int i = 0; i < n; i++)
            done &= s[i].r.secs > 0 || s[i].r.status != 0;
        if (done)
            break;
        usleep(10000);
    }
    double dt = raw_now() - t0;
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    sleep(3);
    long after = raw_rss_kb(d->pid);
    printf("  %d at once: %.1f s;", n, dt);
    for (int i = 0; i < n; i++) {
        printf(" %d (%.1f MB)", s[i].r.status, (double)s[i].r.len / 1e6);
        raw_reply_free(&s[i].r);
    }
    printf("\n  memory: idle %.0f MB, peak %.0f MB (+%.0f), 3 s after %.0f MB (+%.0f)\n",
           idle / 1024.0, peak / 1024.0, (peak - idle) / 1024.0, after / 1024.0,
           (after - idle) / 1024.0);
    fflush(stdout);
    free(s);
    free(th);
}

static int polygon(const opts *o)
{
    tasamd_proc d;
    if (daemon_start(&d, o) != 0)
        return 1;
    int w = 1800, h = 1200;
    uint8_t *pix = raw_squares_rgb(w, h), *png = NULL;
    size_t plen = 0, len;
    if (!pix || eng_png_encode(pix, w, h, 3, &png, &plen) != 0)
        return 1;
    char *req = raw_image_post("/v1/embeddings", png, plen, &len);
    raw_reply r;
    raw_request(d.port, NULL, req, len, 300, &r);
    const char *id = strstr(r.body, "\"image_id\":\"");
    char image_id[65] = "";
    if (id)
        snprintf(image_id, sizeof image_id, "%.64s", id + 12);
    raw_reply_free(&r);
    free(req);
    free(png);
    free(pix);
    if (!image_id[0]) {
        fprintf(stderr, "hostile_bench: the upload failed\n");
        daemon_stop(&d);
        return 1;
    }
    /* the request: 64 full-image boxes as polygons, 1.4 KB */
    size_t cap = 256 + (size_t)o->boxes * 24;
    char *body = malloc(cap);
    int n =
        snprintf(body, cap, "{\"image_id\":\"%s\",\"output\":\"polygon\",\"boxes\":[", image_id);
    for (int i = 0; i < o->boxes; i++)
        n += snprintf(body + n, cap - (size_t)n, "%s[0,0,%d,%d]", i ? "," : "", w, h);
    snprintf(body + n, cap - (size_t)n, "]}");
    req = raw_json_post("/v1/segment", body, NULL, &len);
    printf("== polygon: %d boxes x 3 masks of %dx%d as polygons (request %zu bytes)\n", o->boxes, w,
           h, strlen(body));
    fflush(stdout);
    burst(&d, req, len, 1);
    burst(&d, req, len, o->concurrent);
    free(req);
    free(body);
    daemon_stop(&d);
    return 0;
}

/* ---- slowloris ---- */

typedef struct attack {
    const opts *o;
    int port;
    volatile int stop;
    long opened, answered[6]; /* answers: 408, 429, 503, other, closed without one, refused */
} attack;

static void *attack_main(void *arg)
{
    attack *a = arg;
    int n = a->o->attack;
    int *fds = malloc((size_t)n * sizeof *fds);
    double *next = malloc((size_t)n * sizeof *next);
    for (int i = 0; i < n; i++)
        fds[i] = -1;
    while (!a->stop) {
        double now = raw_now();
        for (int i = 0; i < n && !a->stop; i++) {
            if (fds[i] < 0) {
                char src[32];
                snprintf(src, sizeof src, "127.0.0.%d", 2 + i % a->o->addrs);
                fds[i] = raw_connect(a->port, src);
                if (fds[i] < 0) {
                    a->answered[5]++;
                    continue;
                }
                a->opened++;
                raw_send_all(fds[i], "GET /healthz HTTP/1.1\r\nHost: b\r\nX-Slow: ", 40);
                fcntl(fds[i], F_SETFL, O_NONBLOCK);
                next[i] = now + a->o->interval;
            }
            char buf[256];
            ssize_t k = recv(fds[i], buf, sizeof buf - 1, 0);
            if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) || k > 12) {
                int st = k > 12 ? atoi(buf + 9) : 0;
                a->answered[st == 408 ? 0 : st == 429 ? 1 : st == 503 ? 2 : st ? 3 : 4]++;
                close(fds[i]);
                fds[i] = -1; /* a persistent attacker comes back */
                continue;
            }
            if (now >= next[i]) {
                send(fds[i], "a", 1, MSG_NOSIGNAL);
                next[i] = now + a->o->interval;
            }
        }
        usleep(20000);
    }
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(fds);
    free(next);
    return NULL;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static int slowloris(const opts *o)
{
    tasamd_proc d;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)o->attack + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (daemon_start(&d, o) != 0)
        return 1;
    attack a = {.o = o, .port = d.port};
    pthread_t th;
    printf("== slowloris: %d connections from %d address%s, a header byte every %.0f s, %.0f s\n",
           o->attack, o->addrs, o->addrs == 1 ? "" : "es", o->interval, o->duration);
    fflush(stdout);
    pthread_create(&th, NULL, attack_main, &a);
    size_t cap = (size_t)(o->duration * 10) + 16, n = 0;
    double *lat = malloc(cap * sizeof *lat);
    int fails = 0, codes[600] = {0};
    double t0 = raw_now();
    while (raw_now() - t0 < o->duration && n < cap) {
        raw_reply r;
        const char req[] = "GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n";
        raw_request(d.port, "127.0.0.1", req, sizeof req - 1, 2.0, &r);
        if (r.status == 200)
            lat[n++] = r.secs * 1e3;
        else
            fails++;
        if (r.status > 0 && r.status < 600)
            codes[r.status]++;
        raw_reply_free(&r);
        usleep(100000);
    }
    a.stop = 1;
    pthread_join(th, NULL);
    qsort(lat, n, sizeof *lat, cmp_double);
    printf("  /healthz: %zu ok, %d failed", n, fails);
    for (int c = 300; c < 600; c++)
        if (codes[c])
            printf(" (%d x %d)", codes[c], c);
    if (n)
        printf("; latency p50 %.1f ms, p99 %.1f ms, max %.1f ms", lat[n / 2],
               lat[(size_t)((double)(n - 1) * 0.99)], lat[n - 1]);
    printf("\n  attack: %ld connections opened; answered 408 x %ld, 429 x %ld, 503 x %ld, other x "
           "%ld, closed x %ld; %ld connects refused\n",
           a.opened, a.answered[0], a.answered[1], a.answered[2], a.answered[3], a.answered[4],
           a.answered[5]);
    fflush(stdout);
    free(lat);
    daemon_stop(&d);
    return 0;
}

int main(int argc, char **argv)
{
    opts o = {.tasamd = "build/tasamd",
              .checkpoint = "../shared/fixtures/sam_tiny.safetensors",
              .scenario = "all",
              .boxes = 64,
              .concurrent = 3,
              .attack = 515,
              .addrs = 1,
              .interval = 10,
              .duration = 30};
    const char *fx = getenv("TASAM_FIXTURES");
    static char ck[512];
    if (fx) {
        snprintf(ck, sizeof ck, "%s/sam_tiny.safetensors", fx);
        o.checkpoint = ck;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--")) {
            for (i++; i < argc && o.n_daemon_args < 31; i++)
                o.daemon_args[o.n_daemon_args++] = argv[i];
            break;
        }
        if (!v || (strcmp(a, "--tasamd") && strcmp(a, "--checkpoint") && strcmp(a, "--scenario") &&
                   strcmp(a, "--boxes") && strcmp(a, "--concurrent") && strcmp(a, "--attack") &&
                   strcmp(a, "--addrs") && strcmp(a, "--interval") && strcmp(a, "--duration"))) {
            fprintf(stderr,
                    "usage: %s [--tasamd PATH] [--checkpoint FILE] [--scenario "
                    "polygon|slowloris|all] [--boxes N] [--concurrent N] [--attack N] [--addrs N] "
                    "[--interval S] [--duration S] [-- DAEMON-OPTION...]\n",
                    argv[0]);
            return 2;
        }
        i++;
        if (!strcmp(a, "--tasamd"))
            o.tasamd = v;
        else if (!strcmp(a, "--checkpoint"))
            o.checkpoint = v;
        else if (!strcmp(a, "--scenario"))
            o.scenario = v;
        else if (!strcmp(a, "--boxes"))
            o.boxes = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(a, "--concurrent"))
            o.concurrent = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(a, "--attack"))
            o.attack = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(a, "--addrs"))
            o.addrs = atoi(v) > 0 && atoi(v) < 250 ? atoi(v) : 1;
        else if (!strcmp(a, "--interval"))
            o.interval = atof(v) > 0 ? atof(v) : 1;
        else
            o.duration = atof(v) > 0 ? atof(v) : 1;
    }
    signal(SIGPIPE, SIG_IGN);
    char model[256] = "";
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = 0;
            break;
        }
    if (f)
        fclose(f);
    printf("machine: %ld cores, %s\n", sysconf(_SC_NPROCESSORS_ONLN), model);
    int rc = 0;
    if (!strcmp(o.scenario, "polygon") || !strcmp(o.scenario, "all"))
        rc |= polygon(&o);
    if (!strcmp(o.scenario, "slowloris") || !strcmp(o.scenario, "all"))
        rc |= slowloris(&o);
    return rc;
}
