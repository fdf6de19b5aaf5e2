/*
 * bench/tasam-bench/main.c: the bundled HTTP load tester for tasamd (and for
 * a fleet of them behind HAProxy): options, the steps of a sweep, main. The
 * other parts are listed in tb.h.
 *
 *   build/bench/tasam-bench --url http://HOST:PORT [workload] [load shape] [output]
 *
 * Two load shapes:
 *   closed loop  --concurrency N: N connections, each sends its next request
 *                when the last one answered. Latency is send to answer. This
 *                measures capacity, but a stalled server also stalls the
 *                client, so slow periods are under-sampled.
 *   open loop    --rate R: arrivals are scheduled in advance (Poisson or
 *                evenly spaced) and latency runs from the *scheduled* send
 *                time, so a request that had to wait for a free connection
 *                or a stalled server counts all of its wait (no coordinated
 *                omission). --connections bounds the requests in flight.
 * --sweep rate=... or concurrency=... runs one step per value and prints a
 * row per step, stopping when errors or p99 pass a bound.
 *
 * The workload is a mix of request kinds (segment with point or box
 * prompts, everything mode, embeddings, healthz) over a set of images, with
 * a chosen fraction of cache misses (an image variant the server has never
 * seen: the same pixels with a unique comment, so the encoder runs) and of
 * requests carrying a task. Every image request sends X-Tasam-Image-Id (the
 * SHA-256 of the image bytes) so a consistent-hashing proxy can route it.
 *
 * Requests are built before their send time and sent with the shared
 * client (clients/http_client.h): plain sockets, keep-alive, one
 * connection per worker thread. Every 200 is checked (a fast wrong answer
 * must not count as throughput).
 *
 * A benchmark, never a test: it reports and asserts nothing about speed.
 * Exit status: 0 every measured request succeeded, 1 some failed (they are
 * in the report), 2 bad usage, 3 setup failed (image, address, image_id).
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <getopt.h>
#include <signal.h>

#include "bench/tasam-bench/tb.h"

static void on_sigint(int sig)
{
    (void)sig;
    tb_stop = 1;
}

/* ---- options ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: tasam-bench [options]\n"
        "HTTP load tester for tasamd and fleets of it (keep-alive, one connection per thread).\n"
        "\n"
        "target:\n"
        "  --url http://HOST:PORT     server or proxy (default http://127.0.0.1:8080)\n"
        "load shape (closed loop unless --rate):\n"
        "  --concurrency N            closed loop: N connections, each sends when the last\n"
        "                             answer came (default 1)\n"
        "  --rate R                   open loop: R requests/s scheduled in advance; latency runs\n"
        "                             from the scheduled send (no coordinated omission)\n"
        "  --arrivals poisson|constant  open-loop arrival process (default poisson)\n"
        "  --connections N            open loop: most requests in flight (default 64)\n"
        "  --requests N | --duration S  measured requests or seconds per step (default 100 req)\n"
        "  --warmup N                 unmeasured requests first (default 0)\n"
        "  --timeout S                per request: connect, send and answer (default 60)\n"
        "  --sweep rate=A,B,...|concurrency=A,B,...  one step per value (at most %d)\n"
        "  --stop-p99 MS              sweep: stop after a step whose p99 passes MS (default off)\n"
        "  --stop-errors F            sweep: stop after a step whose failed fraction passes F\n"
        "                             (default 0.01)\n"
        "workload:\n"
        "  --mix K=W,...              request kinds and weights: segment, everything, embeddings,\n"
        "                             healthz (default segment=1)\n"
        "  --route K                  the same as --mix K=1\n"
        "  --image FILE               JPEG/PNG (repeat for a set, up to %d); each is POSTed once\n"
        "                             to /v1/embeddings and later requests send its image_id\n"
        "  --variants N               make N distinct images of each file (its pixels under N\n"
        "                             names), all registered: a larger set of cached images\n"
        "  --miss-ratio F             fraction of image requests that send a never-seen variant\n"
        "                             (same pixels, unique comment): a cache miss (default 0)\n"
        "  --no-cache                 hits send the image bytes instead of image_id\n"
        "  --points \"x,y,l;...\"       one prompt's points (repeat for a set; l 1 foreground)\n"
        "  --boxes \"x0,y0,x1,y1\"      one box prompt (repeat for a set); without points or\n"
        "                             boxes, each segment request has a random point\n"
        "  --task TEXT                a task (repeat for a set); --task-ratio F of segment and\n"
        "                             everything requests carry one (default 1)\n"
        "  --everything JSON          the everything field: true (default) or an object of\n"
        "                             the generator's parameters\n"
        "  --multimask[=true|false]   send multimask (default: the server's default)\n"
        "  --output rle|png|polygon   mask encoding (default: the server's, rle)\n"
        "  --no-id-header             do not send X-Tasam-Image-Id\n"
        "  --no-resend                a 404 for an image_id is a failure (by default the request\n"
        "                             is sent again with the image, as a client behind a proxy\n"
        "                             must when a replica is new or replaced; both count)\n"
        "  --seed N                   the workload's and arrivals' random seed (default 1)\n"
        "output:\n"
        "  --json                     every figure as JSON on stdout\n"
        "  --save FILE                the same JSON into FILE, with the text report on stdout\n"
        "  --title TEXT               the plot's title\n"
        "  --plot FILE.svg            latency percentiles vs the swept value, or (one run) the\n"
        "                             latency by percentile\n"
        "  --quiet                    no progress on stderr\n"
        "Latency percentiles are over successful requests; failures are counted by status and\n"
        "by transport failure (a 200 whose body is not the route's JSON is invalid_body).\n"
        "X-Tasam-Instance answers are counted per replica, cache hits from the answers.\n"
        "Exit: 0 all succeeded, 1 some failed, 2 usage, 3 setup failed.\n",
        MAX_STEPS, MAX_LIST);
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

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int kind_index(const char *s, size_t n)
{
    for (int k = 0; k < NKIND; k++)
        if (strlen(tb_kind_names[k]) == n && !strncmp(tb_kind_names[k], s, n))
            return k;
    return -1;
}

/* "segment=8,everything=1" */
static int parse_mix(const char *s, options *o)
{
    memset(o->mix, 0, sizeof o->mix);
    while (*s) {
        const char *eq = strchr(s, '='), *comma = strchr(s, ',');
        if (!eq || (comma && comma < eq))
            return -1;
        int k = kind_index(s, (size_t)(eq - s));
        char num[32];
        size_t nl = comma ? (size_t)(comma - eq - 1) : strlen(eq + 1);
        if (k < 0 || nl == 0 || nl >= sizeof num)
            return -1;
        memcpy(num, eq + 1, nl);
        num[nl] = '\0';
        if (parse_num(num, 0, 1e6, &o->mix[k]))
            return -1;
        s = comma ? comma + 1 : eq + 1 + nl;
    }
    double sum = 0;
    for (int k = 0; k < NKIND; k++)
        sum += o->mix[k];
    return sum > 0 ? 0 : -1;
}

/* "rate=10,20,50" or "concurrency=1,2,4" */
static int parse_sweep(const char *s, options *o)
{
    const char *v;
    if (!strncmp(s, "rate=", 5)) {
        o->sweep = SWEEP_RATE;
        v = s + 5;
    } else if (!strncmp(s, "concurrency=", 12)) {
        o->sweep = SWEEP_CONCURRENCY;
        v = s + 12;
    } else {
        return -1;
    }
    o->n_steps = 0;
    while (*v) {
        char num[32];
        const char *comma = strchr(v, ',');
        size_t nl = comma ? (size_t)(comma - v) : strlen(v);
        if (nl == 0 || nl >= sizeof num || o->n_steps == MAX_STEPS)
            return -1;
        memcpy(num, v, nl);
        num[nl] = '\0';
        double x;
        if (o->sweep == SWEEP_RATE ? parse_num(num, 1e-3, MAX_RATE, &x)
                                   : parse_num(num, 1, MAX_CONCURRENCY, &x))
            return -1;
        if (o->sweep == SWEEP_CONCURRENCY && x != floor(x))
            return -1;
        o->steps[o->n_steps++] = x;
        v = comma ? comma + 1 : v + nl;
        if (comma && !*v)
            return -1;
    }
    return o->n_steps ? 0 : -1;
}

static int add_list(const char **list, int *n, const char *v)
{
    if (*n >= MAX_LIST)
        return -1;
    list[(*n)++] = v;
    return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a bad option (message printed). */
static int parse_args(int argc, char **argv, options *o)
{
    enum {
        O_URL = 256,
        O_ROUTE,
        O_MIX,
        O_IMAGE,
        O_MISS,
        O_VARIANTS,
        O_NOCACHE,
        O_POINTS,
        O_BOXES,
        O_TASK,
        O_TASKR,
        O_EVERY,
        O_MULTI,
        O_OUTPUT,
        O_NOIDH,
        O_NORESEND,
        O_CONC,
        O_CONNS,
        O_RATE,
        O_ARR,
        O_REQ,
        O_DUR,
        O_WARM,
        O_TIMEOUT,
        O_SWEEP,
        O_STOPP99,
        O_STOPERR,
        O_SEED,
        O_JSON,
        O_PLOT,
        O_SAVE,
        O_TITLE,
        O_QUIET,
        O_HELP
    };
    static const struct option lo[] = {{"url", required_argument, 0, O_URL},
                                       {"route", required_argument, 0, O_ROUTE},
                                       {"mix", required_argument, 0, O_MIX},
                                       {"image", required_argument, 0, O_IMAGE},
                                       {"miss-ratio", required_argument, 0, O_MISS},
                                       {"variants", required_argument, 0, O_VARIANTS},
                                       {"no-cache", no_argument, 0, O_NOCACHE},
                                       {"points", required_argument, 0, O_POINTS},
                                       {"boxes", required_argument, 0, O_BOXES},
                                       {"task", required_argument, 0, O_TASK},
                                       {"task-ratio", required_argument, 0, O_TASKR},
                                       {"everything", required_argument, 0, O_EVERY},
                                       {"multimask", optional_argument, 0, O_MULTI},
                                       {"output", required_argument, 0, O_OUTPUT},
                                       {"no-id-header", no_argument, 0, O_NOIDH},
                                       {"no-resend", no_argument, 0, O_NORESEND},
                                       {"concurrency", required_argument, 0, O_CONC},
                                       {"connections", required_argument, 0, O_CONNS},
                                       {"rate", required_argument, 0, O_RATE},
                                       {"arrivals", required_argument, 0, O_ARR},
                                       {"requests", required_argument, 0, O_REQ},
                                       {"duration", required_argument, 0, O_DUR},
                                       {"warmup", required_argument, 0, O_WARM},
                                       {"timeout", required_argument, 0, O_TIMEOUT},
                                       {"sweep", required_argument, 0, O_SWEEP},
                                       {"stop-p99", required_argument, 0, O_STOPP99},
                                       {"stop-errors", required_argument, 0, O_STOPERR},
                                       {"seed", required_argument, 0, O_SEED},
                                       {"json", no_argument, 0, O_JSON},
                                       {"plot", required_argument, 0, O_PLOT},
                                       {"save", required_argument, 0, O_SAVE},
                                       {"title", required_argument, 0, O_TITLE},
                                       {"quiet", no_argument, 0, O_QUIET},
                                       {"help", no_argument, 0, O_HELP},
                                       {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    snprintf(o->url, sizeof o->url, "http://127.0.0.1:8080");
    o->multimask = -1;
    o->concurrency = 1;
    o->connections = 64;
    o->timeout_s = 60;
    o->task_ratio = -1;
    o->stop_errors = 0.01;
    o->seed = 1;
    o->variants = 1;
    int mix_given = 0, conc_given = 0, conns_given = 0;
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
        case O_ROUTE: {
            int k = kind_index(a, strlen(a));
            if (k < 0 || mix_given)
                goto bad;
            memset(o->mix, 0, sizeof o->mix);
            o->mix[k] = 1;
            mix_given = 1;
            break;
        }
        case O_MIX:
            if (mix_given || parse_mix(a, o))
                goto bad;
            mix_given = 1;
            break;
        case O_IMAGE:
            if (add_list(o->images, &o->n_images, a))
                goto bad;
            break;
        case O_MISS:
            if (parse_num(a, 0, 1, &o->miss_ratio))
                goto bad;
            break;
        case O_VARIANTS:
            if (parse_long(a, 1, MAX_IMAGES, &v))
                goto bad;
            o->variants = (int)v;
            break;
        case O_NOCACHE:
            o->no_cache = 1;
            break;
        case O_POINTS:
            if (add_list(o->points, &o->n_points, a))
                goto bad;
            break;
        case O_BOXES:
            if (add_list(o->boxes, &o->n_boxes, a))
                goto bad;
            break;
        case O_TASK:
            if (!*a || add_list(o->tasks, &o->n_tasks, a))
                goto bad;
            break;
        case O_TASKR:
            if (parse_num(a, 0, 1, &o->task_ratio))
                goto bad;
            break;
        case O_EVERY:
            o->everything = a;
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
        case O_NOIDH:
            o->no_id_header = 1;
            break;
        case O_NORESEND:
            o->no_resend = 1;
            break;
        case O_CONC:
            if (parse_long(a, 1, MAX_CONCURRENCY, &v))
                goto bad;
            o->concurrency = (int)v;
            conc_given = 1;
            break;
        case O_CONNS:
            if (parse_long(a, 1, MAX_CONCURRENCY, &v))
                goto bad;
            o->connections = (int)v;
            conns_given = 1;
            break;
        case O_RATE:
            if (parse_num(a, 1e-3, MAX_RATE, &o->rate))
                goto bad;
            break;
        case O_ARR:
            if (!strcmp(a, "poisson"))
                o->arrivals = ARR_POISSON;
            else if (!strcmp(a, "constant"))
                o->arrivals = ARR_CONSTANT;
            else
                goto bad;
            break;
        case O_REQ:
            if (parse_long(a, 1, MAX_REQUESTS, &o->requests))
                goto bad;
            break;
        case O_DUR:
            if (parse_num(a, 0.001, MAX_DURATION_S, &o->duration))
                goto bad;
            break;
        case O_WARM:
            if (parse_long(a, 0, MAX_REQUESTS, &o->warmup))
                goto bad;
            break;
        case O_TIMEOUT:
            if (parse_num(a, 0.001, 3600, &o->timeout_s))
                goto bad;
            break;
        case O_SWEEP:
            if (parse_sweep(a, o))
                goto bad;
            break;
        case O_STOPP99:
            if (parse_num(a, 0.001, 1e9, &o->stop_p99_ms))
                goto bad;
            break;
        case O_STOPERR:
            if (parse_num(a, 0, 1, &o->stop_errors))
                goto bad;
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(a, &end, 10);
            if (end == a || *end || errno || *a == '-')
                goto bad;
            o->seed = s;
            break;
        }
        case O_JSON:
            o->json = 1;
            break;
        case O_PLOT:
            if (!*a)
                goto bad;
            o->plot = a;
            break;
        case O_SAVE:
            if (!*a)
                goto bad;
            o->save = a;
            break;
        case O_TITLE:
            if (strlen(a) > 200)
                goto bad;
            o->title = a;
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
    if (!mix_given)
        o->mix[K_SEGMENT] = 1;
    if (o->requests == 0 && o->duration == 0)
        o->requests = 100;
    const char *why = NULL;
    int images = o->mix[K_SEGMENT] + o->mix[K_EVERYTHING] + o->mix[K_EMBEDDINGS] > 0;
    if (o->requests && o->duration)
        why = "give --requests or --duration, not both";
    else if (images && !o->n_images)
        why = "the mix sends images: give --image FILE";
    else if (!o->mix[K_SEGMENT] && (o->n_points || o->n_boxes))
        why = "--points and --boxes apply to segment requests: the mix has none";
    else if (!(o->mix[K_SEGMENT] + o->mix[K_EVERYTHING]) &&
             (o->n_tasks || o->multimask >= 0 || o->output))
        why = "--task, --multimask and --output apply to segment and everything requests";
    else if (!images && (o->no_cache || o->miss_ratio > 0 || o->n_images || o->variants > 1))
        why = "--image, --variants, --no-cache and --miss-ratio need a mix with image requests";
    else if (o->n_images * o->variants > MAX_IMAGES)
        why = "too many images: --image files x --variants is at most 1024";
    else if (o->task_ratio >= 0 && !o->n_tasks)
        why = "--task-ratio needs --task";
    else if (o->everything && !o->mix[K_EVERYTHING])
        why = "--everything needs everything requests in the mix (--mix everything=1)";
    else if (o->sweep == SWEEP_RATE && (o->rate > 0 || conc_given))
        why = "--sweep rate= sets the rate: drop --rate and --concurrency";
    else if (o->sweep == SWEEP_CONCURRENCY && (o->rate > 0 || conc_given || conns_given))
        why = "--sweep concurrency= is a closed loop: drop --rate, --concurrency, --connections";
    else if (o->rate > 0 && conc_given)
        why = "--rate is an open loop: use --connections (requests in flight), not --concurrency";
    else if (o->rate == 0 && o->sweep != SWEEP_RATE && conns_given)
        why = "--connections applies to the open loop (--rate or --sweep rate=)";
    else if (!o->sweep && (o->stop_p99_ms > 0))
        why = "--stop-p99 applies to --sweep";
    else if (o->title && !o->plot)
        why = "--title names the --plot";
    if (why) {
        fprintf(stderr, "tasam-bench: %s\n", why);
        return 2;
    }
    return 0;
}

/* ---- main --------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options o;
    hc_target t;
    static workload w; /* ~200 KB: not on the stack */
    char err[1024] = "";
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    if (hc_target_init(&t, o.url, err, sizeof err) != 0) {
        fprintf(stderr, "tasam-bench: --url: %s\n", err);
        return 2;
    }
    rc = tb_workload_init(&o, &t, &w, err, sizeof err);
    if (rc) {
        fprintf(stderr, "tasam-bench: %s\n", err[0] ? err : "setup failed");
        tb_workload_free(&w);
        hc_target_free(&t);
        return rc;
    }
    int nsteps = o.sweep ? o.n_steps : 1;
    stats *st = calloc((size_t)nsteps, sizeof *st);
    if (!st) {
        fprintf(stderr, "tasam-bench: out of memory\n");
        tb_workload_free(&w);
        hc_target_free(&t);
        return 3;
    }
    int done = 0, failed = 0;
    char stopped[256] = "";
    if (o.sweep && !o.json)
        tb_print_row_head(&o);
    for (int i = 0; i < nsteps && !tb_stop; i++) {
        double rate = o.sweep == SWEEP_RATE ? o.steps[i] : o.rate;
        int nw = o.sweep == SWEEP_CONCURRENCY ? (int)o.steps[i]
                 : rate > 0                   ? o.connections
                                              : o.concurrency;
        if (tb_run_step(&o, &w, &t, i, rate, nw, i == 0 ? o.warmup : 0, &st[i]) != 0) {
            failed = 1;
            break;
        }
        st[i].x = o.sweep == SWEEP_RATE ? rate : nw;
        done++;
        failed |= st[i].errors > 0 || st[i].oom;
        if (o.sweep && !o.json) {
            tb_print_row(&st[i]);
            fflush(stdout);
        }
        double frac = st[i].n ? (double)st[i].errors / st[i].n : 0;
        if (o.sweep && i + 1 < nsteps) {
            if (frac > o.stop_errors)
                snprintf(stopped, sizeof stopped, "errors %.1f%% > %.1f%% at %s=%g", frac * 100,
                         o.stop_errors * 100, o.sweep == SWEEP_RATE ? "rate" : "concurrency",
                         st[i].x);
            else if (o.stop_p99_ms > 0 && !(st[i].lat[2] <= o.stop_p99_ms))
                snprintf(stopped, sizeof stopped, "p99 %.1f ms > %.1f ms at %s=%g", st[i].lat[2],
                         o.stop_p99_ms, o.sweep == SWEEP_RATE ? "rate" : "concurrency", st[i].x);
            if (stopped[0])
                break;
        }
    }
    if (done && (o.json || o.save)) {
        json_t *j = json_object();
        json_object_set_new(j, "url", json_string(o.url));
        json_object_set_new(j, "mode",
                            json_string(o.rate > 0 || o.sweep == SWEEP_RATE ? "open" : "closed"));
        if (o.rate > 0 || o.sweep == SWEEP_RATE)
            json_object_set_new(j, "arrivals",
                                json_string(o.arrivals == ARR_POISSON ? "poisson" : "constant"));
        json_t *mix = json_object();
        for (int k = 0; k < NKIND; k++)
            if (o.mix[k] > 0)
                json_object_set_new(mix, tb_kind_names[k], json_real(o.mix[k]));
        json_object_set_new(j, "mix", mix);
        json_object_set_new(j, "miss_ratio", json_real(o.miss_ratio));
        json_object_set_new(j, "images", json_integer(w.n_img));
        json_object_set_new(j, "warmup", json_integer(o.warmup));
        json_object_set_new(j, "seed", json_integer((json_int_t)o.seed));
        if (o.sweep) {
            json_object_set_new(j, "sweep",
                                json_string(o.sweep == SWEEP_RATE ? "rate" : "concurrency"));
            json_t *steps = json_array();
            for (int i = 0; i < done; i++)
                json_array_append_new(steps, tb_stats_json(&st[i], 0));
            json_object_set_new(j, "steps", steps);
            json_object_set_new(j, "stopped", stopped[0] ? json_string(stopped) : json_null());
        } else {
            json_t *one = tb_stats_json(&st[0], 1);
            json_object_update(j, one);
            json_decref(one);
        }
        if (o.json) {
            json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
            fputc('\n', stdout);
        }
        if (o.save && json_dump_file(j, o.save, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) != 0) {
            fprintf(stderr, "tasam-bench: cannot write --save %s\n", o.save);
            failed = 1;
        }
        json_decref(j);
    }
    if (done && !o.json && !o.sweep)
        tb_print_run(&o, &st[0]);
    else if (!o.json && stopped[0])
        printf("stopped: %s\n", stopped);
    if (done && o.plot && tb_plot(&o, st, done) != 0) {
        fprintf(stderr, "tasam-bench: cannot write --plot %s: %s\n", o.plot, strerror(errno));
        failed = 1;
    }
    if (tb_stop && !o.json)
        printf("(interrupted)\n");
    fflush(stdout);
    free(st);
    tb_workload_free(&w);
    hc_target_free(&t);
    return !done ? 3 : failed ? 1 : 0;
}
