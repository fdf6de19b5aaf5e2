/*
 * tests/test_server_train.c: training jobs and the hot swap of the
 * hypernetwork, over HTTP against the real daemon.
 *
 * Two trainers are used. The job supervisor's own tests run this binary as
 * the trainer (tasamd --trainer <this binary>): called as `<this> run ...`
 * it speaks the `tasam-train run` contract (progress events on
 * --progress-fd, the output written atomically with version + 1, SIGTERM ->
 * "cancelled" and exit 3) and, chosen by --seed, misbehaves in the ways a
 * real trainer can: an error, a malformed or endless progress line, death
 * by SIGKILL, silence, ignoring SIGTERM, the publish gate saying no. The
 * end-to-end tests run the real `tasam-train run` on a tiny synthetic set:
 * a job under a loop of concurrent segment requests that must never fail
 * nor mix versions, cancel, kill -9 of the trainer, restart, rollback.
 */
#include <sys/resource.h>

#include "tests/tserver.h"

#define TOKEN      "s3cret"
#define TASK       "segment the dog"
#define FAKE_OK    1001 /* success: a few quick steps, a validation, the output */
#define FAKE_ERR   1002 /* an "error" event, exit 1 */
#define FAKE_BAD   1003 /* a progress line that is not JSON, then it hangs */
#define FAKE_LONG  1004 /* a progress line without end, then it hangs */
#define FAKE_KILL  1005 /* SIGKILL to itself after a step (as the OOM killer would) */
#define FAKE_SLOW  1006 /* 100 ms a step: for cancel, shutdown and restart */
#define FAKE_DEAF  1007 /* ignores SIGTERM */
#define FAKE_GATE  1008 /* the publish gate refuses: done, published false */
#define FAKE_MUTE  1009 /* exits 0 without a final event */
#define FAKE_ELSE  1010 /* reports a result somewhere it was not told to write */
#define FAKE_STALL 1011 /* one step, then silence */

static const ts_extra g_auth = {.headers = "Authorization: Bearer " TOKEN "\r\n"};
static const ts_extra g_wrong = {.headers = "Authorization: Bearer wrong\r\n"};
#define ADMIN_AUTH (&g_auth)

/* ---- the fake trainer ---- */

static volatile sig_atomic_t g_term; /* SIGTERM arrived */

static void fake_on_term(int sig)
{
    (void)sig;
    g_term = 1;
}

/* Contract: `<this> run ...` as tasam-train run would, misbehaving as --seed
 * says. Exits through _exit (no leak report can change the status). */
static int fake_trainer(int argc, char **argv)
{
    const char *init = NULL, *out = NULL;
    long steps = 5, seed = 0, fd = -1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--publish-if-better"))
            continue;
        if (!strcmp(a, "--init"))
            init = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--steps"))
            steps = atol(v);
        else if (!strcmp(a, "--seed"))
            seed = atol(v);
        else if (!strcmp(a, "--progress-fd"))
            fd = atol(v);
        i++;
    }
    FILE *pf = fd >= 0 ? fdopen((int)fd, "w") : NULL;
    if (!pf || !init || !out) {
        fprintf(stderr, "fake trainer: usage\n");
        _exit(2);
    }
    setvbuf(pf, NULL, _IOLBF, 0);
    signal(SIGTERM, seed == FAKE_DEAF ? SIG_IGN : fake_on_term);
    hn_params *p = NULL;
    char version[HN_NAME_MAX], id[HN_ID_LEN + 1];
    if (hn_params_read(&p, init, version) != 0) {
        fprintf(pf, "{\"event\":\"error\",\"message\":\"cannot read --init: %s\"}\n",
                eng_last_error());
        _exit(1);
    }
    hn_params_id(p, id);
    fprintf(stderr, "fake trainer: seed %ld, %ld steps from version %s\n", seed, steps, version);
    fprintf(pf,
            "{\"event\":\"start\",\"steps\":%ld,\"batch\":1,\"train_images\":4,\"val_images\":2,"
            "\"init\":{\"id\":\"%s\",\"version\":\"%s\"},\"out\":\"%s\",\"new_key\":[1,2]}\n",
            steps, id, version, out);
    if (seed == FAKE_BAD) {
        fprintf(pf, "{\"event\":\"step\", this is not json\n");
        sleep(60);
        _exit(0);
    }
    if (seed == FAKE_LONG) {
        for (int i = 0; i < 100000; i++)
            fputc('x', pf);
        fflush(pf);
        sleep(60);
        _exit(0);
    }
    long delay_us = seed == FAKE_SLOW || seed == FAKE_DEAF ? 100000 : 2000;
    for (long s = 1; s <= steps; s++) {
        if (g_term) {
            fprintf(stderr, "fake trainer: SIGTERM at step %ld\n", s);
            fprintf(pf, "{\"event\":\"error\",\"message\":\"cancelled\"}\n");
            _exit(3);
        }
        fprintf(pf,
                "{\"event\":\"step\",\"step\":%ld,\"steps\":%ld,\"loss\":%.4f,\"focal\":0.1,"
                "\"dice\":0.2,\"iou_mse\":0.03,\"lr\":0.001,\"samples_per_s\":12.5,\"eta_s\":%.1f}"
                "\n",
                s, steps, 1.0 / (double)s, (double)(steps - s) * 0.1);
        if (s == 1)
            fprintf(stderr, "fake trainer: first step done\n");
        if (s == 1 && seed == FAKE_KILL) {
            fprintf(stderr, "fake trainer: about to be killed\n");
            kill(getpid(), SIGKILL);
        }
        if (s == 1 && seed == FAKE_STALL)
            sleep(60);
        if (s == (steps + 1) / 2)
            fprintf(pf,
                    "{\"event\":\"val\",\"step\":%ld,\"metrics\":{\"miou\":0.42,\"ap\":0.3,"
                    "\"seen\":{\"miou\":0.5}}}\n",
                    s);
        usleep((useconds_t)delay_us);
    }
    if (seed == FAKE_ERR) {
        fprintf(stderr, "fake trainer: the data is bad\n");
        fprintf(pf, "{\"event\":\"error\",\"message\":\"fake failure: the data is bad\"}\n");
        _exit(1);
    }
    if (seed == FAKE_MUTE)
        _exit(0);
    if (seed == FAKE_GATE) {
        fprintf(pf, "{\"event\":\"done\",\"published\":false,\"reason\":\"validation got worse "
                    "(miou 0.40 < 0.42)\"}\n");
        _exit(0);
    }
    /* the result: the same network with its B heads scaled, version + 1 */
    for (int s = 0; s < HN_SHAPES; s++) {
        int o, in;
        hn_shape(s, &o, &in);
        size_t n = (size_t)o * (size_t)p->cfg.rank;
        for (size_t k = 0; p->bb[s] && k < n; k++)
            p->bb[s][k] = p->bb[s][k] * 1.5f + 0.01f;
    }
    char nv[32];
    snprintf(nv, sizeof nv, "%ld", atol(version) + 1);
    if (hn_params_write(p, out, nv, id) != 0) {
        fprintf(pf, "{\"event\":\"error\",\"message\":\"cannot write --out: %s\"}\n",
                eng_last_error());
        _exit(1);
    }
    fprintf(pf,
            "{\"event\":\"done\",\"out\":\"%s%s\",\"id\":\"%s\",\"version\":\"%s\",\"published\":"
            "true}\n",
            out, seed == FAKE_ELSE ? ".elsewhere" : "", id, nv);
    hn_params_destroy(p);
    _exit(0);
}

/* ---- helpers ---- */

static char g_data[PATH_MAX];    /* --train-data-dir: synth/train, synth/val, evil links */
static char g_hn[PATH_MAX];      /* the shared hypernetwork file of the fake-trainer daemon */
static char g_self[PATH_MAX];    /* this binary (the fake trainer) */
static char g_trainer[PATH_MAX]; /* the real tasam-train, "" when absent */
static int g_real_run;           /* tasam-train has `run` */

/* An admin request: status, and the body as JSON (NULL when not JSON). */
static json_t *admin(int port, const char *method, const char *path, json_t *body, int *status)
{
    char file[PATH_MAX] = "";
    if (body) {
        tmp_name(file, sizeof file, ".json");
        json_dump_file(body, file, JSON_COMPACT);
        json_decref(body);
    }
    json_t *r = http_json(port, method, path, body ? "application/json" : NULL, body ? file : NULL,
                          ADMIN_AUTH, status);
    if (file[0])
        unlink(file);
    return r;
}

/* POST /admin/train; the job id into id (65 bytes) on 202. */
static int submit(int port, json_t *req, char *id)
{
    int st;
    json_t *r = admin(port, "POST", "/admin/train", req, &st);
    const char *s = json_string_value(json_object_get(r, "id"));
    snprintf(id, 65, "%s", st == 202 && s ? s : "");
    json_decref(r);
    return st;
}

static json_t *job_get(int port, const char *id)
{
    char path[128];
    int st;
    snprintf(path, sizeof path, "/admin/train/%s", id);
    json_t *r = admin(port, "GET", path, NULL, &st);
    if (st != 200) {
        json_decref(r);
        return NULL;
    }
    return r;
}

static const char *state_of(const json_t *job)
{
    const char *s = json_string_value(json_object_get(job, "state"));
    return s ? s : "(none)";
}

/* Poll the job until its state is one of `states` ("a|b|c") or `cond`
 * (may be NULL) holds; NULL on timeout. */
static json_t *wait_job(int port, const char *id, const char *states, double timeout,
                        int (*cond)(const json_t *))
{
    double t0 = now_s();
    while (now_s() - t0 < timeout) {
        json_t *j = job_get(port, id);
        if (j) {
            char want[128];
            snprintf(want, sizeof want, "|%s|", states);
            char have[40];
            snprintf(have, sizeof have, "|%s|", state_of(j));
            if (strstr(want, have) || (cond && cond(j)))
                return j;
            json_decref(j);
        }
        usleep(50000);
    }
    return NULL;
}

static int has_stepped(const json_t *j)
{
    return !strcmp(state_of(j), "running") && json_integer_value(json_object_get(j, "step")) > 0;
}

/* The active hypernetwork of a daemon (from /v1/info): 0 with id and version. */
static int active_hn(int port, char *id, char *version)
{
    int st;
    json_t *r = http_json(port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    json_t *hn = json_object_get(r, "hypernetwork");
    const char *i = json_string_value(json_object_get(hn, "id"));
    const char *v = json_string_value(json_object_get(hn, "version"));
    int rc = st == 200 && i && v ? 0 : -1;
    if (!rc) {
        snprintf(id, 65, "%s", i);
        snprintf(version, 64, "%s", v);
    }
    json_decref(r);
    return rc;
}

static const char *hn_of(const json_t *seg)
{
    const char *s =
        json_string_value(json_object_get(json_object_get(seg, "adapter"), "hypernet_id"));
    return s ? s : "";
}

/* Start a daemon with the admin token, --hypernet hn and the extra args. */
static int start_daemon(daemon_proc *d, const char *state, const char *hn, const char *const *extra)
{
    const char *args[40];
    int n = 0;
    args[n++] = "--hypernet";
    args[n++] = hn;
    args[n++] = "--admin-token";
    args[n++] = TOKEN;
    for (int i = 0; extra && extra[i] && n < 38; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    int rc = daemon_start(d, state, 1, args);
    if (rc)
        show_log(d);
    return rc;
}

/* 1 when process pid exists (and is not a zombie). */
static int alive(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* The nice value of process pid (field 19 of /proc/pid/stat), or -100. */
static int nice_of(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -100;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')');
    int field = 2, val = -100;
    for (; p && *p; p++)
        if (*p == ' ' && ++field == 19) {
            val = atoi(p + 1);
            break;
        }
    return val;
}

/* ---- setup ---- */

static daemon_proc g_f; /* the fake-trainer daemon */
static int g_f_up;
static char g_f_state[PATH_MAX];

static const char *const g_f_args[] = {"--trainer",
                                       g_self,
                                       "--train-data-dir",
                                       g_data,
                                       "--train-queue-depth",
                                       "2",
                                       "--train-stop-timeout-ms",
                                       "700",
                                       "--train-stall-timeout-ms",
                                       "1500",
                                       "--train-nice",
                                       "7",
                                       "--hypernet-poll-ms",
                                       "200",
                                       NULL};

static void test_start(void)
{
    char cmd[3 * PATH_MAX], out[4096], link[PATH_MAX];
    T_NEED_FIXTURES();
    snprintf(g_data, sizeof g_data, "%s/data", g_tmp);
    T_REQUIRE(mkdir(g_data, 0755) == 0, "mkdir %s", g_data);
    if (g_trainer[0]) {
        snprintf(cmd, sizeof cmd,
                 "'%s' synth --out '%s/synth' --seed 1 --train-images 4 --val-images 2", g_trainer,
                 g_data);
        T_REQUIRE(t_run_cmd(cmd, out, sizeof out) == 0, "tasam-train synth: %s", out);
    } else {
        /* without tasam-train: folders that pass the checks (the fake reads nothing) */
        snprintf(cmd, sizeof cmd,
                 "mkdir -p '%s/synth/train/images' '%s/synth/val/images' && echo '{}' > "
                 "'%s/synth/train/instances.json' && echo '{}' > '%s/synth/val/instances.json'",
                 g_data, g_data, g_data, g_data);
        T_REQUIRE(system(cmd) == 0, "making the data folder");
    }
    /* ways out of the data folder */
    snprintf(link, sizeof link, "%s/evil", g_data);
    T_REQUIRE(symlink(g_tmp, link) == 0, "symlink");
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/outside/images' && echo '{}' > '%s/outside/instances.json' && "
             "mkdir -p '%s/leaky' && ln -s '%s/outside/instances.json' "
             "'%s/leaky/instances.json'",
             g_tmp, g_tmp, g_data, g_tmp, g_data);
    T_REQUIRE(system(cmd) == 0, "making the leaky dataset");
    snprintf(g_hn, sizeof g_hn, "%s/shared/hypernet.safetensors", g_tmp);
    snprintf(cmd, sizeof cmd, "%s/shared", g_tmp);
    T_REQUIRE(mkdir(cmd, 0755) == 0, "mkdir shared");
    T_REQUIRE(ts_write_hypernet_h(g_hn, 3, 1, 32) == 0, "hypernet init: %s", eng_last_error());
    snprintf(g_f_state, sizeof g_f_state, "%s/state-fake", g_tmp);
    T_REQUIRE(start_daemon(&g_f, g_f_state, g_hn, g_f_args) == 0, "the fake-trainer daemon");
    g_f_up = 1;
}

#define NEED_F()                                                                                   \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        if (!g_f_up)                                                                               \
            T_SKIP("the daemon did not start");                                                    \
    } while (0)

/* ---- the routes' guards ---- */

static void test_train_auth(void)
{
    NEED_F();
    static const struct {
        const char *method, *path;
    } routes[] = {{"POST", "/admin/train"},
                  {"GET", "/admin/train"},
                  {"GET", "/admin/train/0123456789abcdef"},
                  {"DELETE", "/admin/train/0123456789abcdef"},
                  {"GET", "/admin/train/0123456789abcdef/log"},
                  {"GET", "/admin/hypernet"},
                  {"POST", "/admin/hypernet/rollback"}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        char what[128];
        snprintf(what, sizeof what, "%s %s without a token", routes[i].method, routes[i].path);
        expect_error(g_f.port, routes[i].method, routes[i].path, NULL, NULL, NULL, 401, NULL, what);
        snprintf(what, sizeof what, "%s %s with a wrong token", routes[i].method, routes[i].path);
        expect_error(g_f.port, routes[i].method, routes[i].path, NULL, NULL, &g_wrong, 403, NULL,
                     what);
    }
    expect_error(g_f.port, "PUT", "/admin/train", NULL, NULL, ADMIN_AUTH, 405, NULL,
                 "PUT /admin/train");
    expect_error(g_f.port, "GET", "/admin/hypernet/rollback", NULL, NULL, ADMIN_AUTH, 405, NULL,
                 "GET rollback");
}

static void test_train_bad_requests(void)
{
    NEED_F();
    static const struct {
        const char *body, *field;
    } bad[] = {
        {"{\"data\":\"../data/synth/train\"}", "data"},
        {"{\"data\":\"synth/../../x\"}", "data"},
        {"{\"data\":\"/etc\"}", "data"},
        {"{\"data\":\"evil\"}", "data"},
        {"{\"data\":\"evil/state-fake\"}", "data"},
        {"{\"data\":\"leaky\"}", "data"},
        {"{\"data\":\"synth/train\",\"val\":\"evil\"}", "val"},
        {"{\"data\":\"nothing/here\"}", "data"},
        {"{\"data\":\"synth\"}", "data"},
        {"{\"data\":\"\"}", "data"},
        {"{\"data\":\"synth/train\\n\"}", "data"},
        {"{\"data\":7}", "data"},
        {"{}", "data"},
        {"{\"data\":\"synth/train\",\"steps\":0}", "steps"},
        {"{\"data\":\"synth/train\",\"steps\":\"5\"}", "steps"},
        {"{\"data\":\"synth/train\",\"steps\":2.5}", "steps"},
        {"{\"data\":\"synth/train\",\"batch\":-1}", "batch"},
        {"{\"data\":\"synth/train\",\"lr\":0}", "lr"},
        {"{\"data\":\"synth/train\",\"lr\":1e308}", "lr"},
        {"{\"data\":\"synth/train\",\"steps\":5,\"warmup\":6}", "warmup"},
        {"{\"data\":\"synth/train\",\"publish_if_better\":true}", "publish_if_better"},
        {"{\"data\":\"synth/train\",\"publish_if_better\":1}", "publish_if_better"},
        {"{\"data\":\"synth/train\",\"threads\":64}", "threads"},
        {"{\"data\":\"synth/train\",\"data\":\"synth/train\"}", ""},
        {"[\"synth/train\"]", ""},
        {"{\"data\":", ""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char f[PATH_MAX], what[160];
        tmp_name(f, sizeof f, ".json");
        write_file(f, bad[i].body, strlen(bad[i].body));
        snprintf(what, sizeof what, "POST /admin/train %s", bad[i].body);
        expect_error(g_f.port, "POST", "/admin/train", "application/json", f, ADMIN_AUTH, 400,
                     bad[i].field, what);
        unlink(f);
    }
    char f[PATH_MAX];
    tmp_name(f, sizeof f, ".json");
    write_file(f, "{\"data\":\"synth/train\"}", 22);
    expect_error(g_f.port, "POST", "/admin/train", "text/plain", f, ADMIN_AUTH, 415, NULL,
                 "a text/plain job");
    unlink(f);
    expect_error(g_f.port, "GET", "/admin/train/0123456789abcdef", NULL, NULL, ADMIN_AUTH, 404,
                 "id", "an unknown job");
    expect_error(g_f.port, "GET", "/admin/train/nothex", NULL, NULL, ADMIN_AUTH, 400, "id",
                 "a bad id");
    expect_error(g_f.port, "DELETE", "/admin/train/0123456789abcdef", NULL, NULL, ADMIN_AUTH, 404,
                 "id", "cancel an unknown job");
    expect_error(g_f.port, "GET", "/admin/train?state=sleeping", NULL, NULL, ADMIN_AUTH, 400,
                 "state", "a bad state filter");
    expect_error(g_f.port, "GET", "/admin/train?limit=0", NULL, NULL, ADMIN_AUTH, 400, "limit",
                 "a bad limit");
    /* nothing was queued by any of it */
    int st;
    json_t *l = admin(g_f.port, "GET", "/admin/train", NULL, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(l, "jobs")) == 0,
            "jobs after bad requests: %zu", json_array_size(json_object_get(l, "jobs")));
    json_decref(l);
}

static void test_train_disabled(void)
{
    daemon_proc d;
    char state[PATH_MAX], f[PATH_MAX];
    int st;
    NEED_F();
    snprintf(state, sizeof state, "%s/state-notrain", g_tmp);
    T_REQUIRE(start_daemon(&d, state, g_hn, NULL) == 0, "a daemon without --train-data-dir");
    tmp_name(f, sizeof f, ".json");
    write_file(f, "{\"data\":\"synth/train\"}", 22);
    expect_error(d.port, "POST", "/admin/train", "application/json", f, ADMIN_AUTH, 403, NULL,
                 "training without --train-data-dir");
    unlink(f);
    T_CHECK(daemon_stop(&d) == 0, "clean stop");
    /* --train-data-dir needs --hypernet; a missing folder is an error */
    char cmd[4 * PATH_MAX], out[2048];
    snprintf(cmd, sizeof cmd,
             "timeout 60 '%s' --checkpoint '%s' --train-data-dir '%s' --state-dir '%s/st-x'",
             g_tasamd, t_fixture("sam_tiny.safetensors"), g_data, g_tmp);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "--hypernet"),
            "--train-data-dir without --hypernet: %s", out);
    snprintf(cmd, sizeof cmd,
             "timeout 60 '%s' --checkpoint '%s' --hypernet '%s' --train-data-dir '%s/nope' "
             "--listen 127.0.0.1:0 --state-dir '%s/st-y'",
             g_tasamd, t_fixture("sam_tiny.safetensors"), g_hn, g_tmp, g_tmp);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 1 && strstr(out, "train-data-dir"),
            "a missing --train-data-dir: %s", out);
    /* a trainer that cannot be executed fails its job, not the daemon */
    static const char *const nobin[] = {"--trainer", "/nonexistent/tasam-train", "--train-data-dir",
                                        g_data, NULL};
    char id[65];
    snprintf(state, sizeof state, "%s/state-nobin", g_tmp);
    T_REQUIRE(start_daemon(&d, state, g_hn, nobin) == 0, "a daemon with a missing trainer");
    T_REQUIRE(submit(d.port, json_pack("{s:s}", "data", "synth/train"), id) == 202, "job");
    json_t *j = wait_job(d.port, id, "succeeded|failed|cancelled", 30, NULL);
    T_CHECK(j && !strcmp(state_of(j), "failed") &&
                strstr(json_string_value(json_object_get(j, "error")) ?: "",
                       "cannot start the trainer"),
            "a missing trainer: %s", j ? json_string_value(json_object_get(j, "error")) : "?");
    json_decref(j);
    json_t *r = ts_seg(d.port, TASK, 0, &st);
    T_CHECK(st == 200, "the daemon serves: %d", st);
    json_decref(r);
    T_CHECK(daemon_stop(&d) == 0, "clean stop");
}

/* ---- the supervisor, with the fake trainer ---- */

static json_t *g_ref_old; /* the task's masks under the first hypernetwork */
static char g_old_id[65], g_old_version[64];

/* Requests looping across a swap. */
typedef struct loop_ctl {
    int port;                /* daemon */
    int stop;                /* set to end the loop (atomic) */
    pthread_mutex_t mu;      /* guards below */
    int sent, failed;        /* requests, non-200 answers */
    int n_old, n_new, mixed; /* answers by version; answers whose masks match neither */
    int n_other;             /* answers so far not from the old version (as they arrive) */
    const char *old_id;      /* the version before */
    char new_id[65];         /* the version after, once known */
    json_t *ref_old;         /* masks before */
    json_t *answers;         /* every answer (array), checked once the new masks are known */
} loop_ctl;

static void *loop_main(void *arg)
{
    loop_ctl *c = arg;
    while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
        int st;
        json_t *r = ts_seg(c->port, TASK, 0, &st);
        pthread_mutex_lock(&c->mu);
        c->sent++;
        if (st != 200) {
            c->failed++;
            fprintf(stderr, "  a request across the swap answered %d\n", st);
            json_decref(r);
        } else {
            c->n_other += strcmp(hn_of(r), c->old_id) != 0;
            json_array_append_new(c->answers, r);
        }
        pthread_mutex_unlock(&c->mu);
    }
    return NULL;
}

/* Contract: starts n (<= 4) threads sending task requests to port in a loop;
 * the answers before the swap are expected to be ref_old's (version old_id). */
static void loop_start(loop_ctl *c, pthread_t *th, int n, int port, const char *old_id,
                       json_t *ref_old)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->port = port;
    c->old_id = old_id;
    c->ref_old = ref_old;
    c->answers = json_array();
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, loop_main, c);
}

/* Contract: stops the loop; with wait_new, once two answers came from
 * another version than the old one (or after a minute: the check then says
 * so). */
static void loop_stop(loop_ctl *c, pthread_t *th, int n, int wait_new)
{
    double t0 = now_s();
    while (wait_new) {
        pthread_mutex_lock(&c->mu);
        int other = c->n_other;
        pthread_mutex_unlock(&c->mu);
        if (other >= 2 || now_s() - t0 > 60)
            break;
        usleep(50000);
    }
    __atomic_store_n(&c->stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static void loop_free(loop_ctl *c)
{
    json_decref(c->answers);
    pthread_mutex_destroy(&c->mu);
}

/* Contract: every answer carries the old or the new version's id and
 * exactly that version's masks. */
static void loop_check(loop_ctl *c, const json_t *ref_new, const char *what)
{
    for (size_t i = 0; i < json_array_size(c->answers); i++) {
        const json_t *r = json_array_get(c->answers, i);
        const char *id = hn_of(r);
        if (!strcmp(id, c->old_id) && ts_same_masks(r, c->ref_old))
            c->n_old++;
        else if (!strcmp(id, c->new_id) && ts_same_masks(r, ref_new))
            c->n_new++;
        else
            c->mixed++;
    }
    T_CHECK(c->failed == 0, "%s: %d of %d requests across the swap failed", what, c->failed,
            c->sent);
    T_CHECK(c->mixed == 0, "%s: %d answers match neither version's masks", what, c->mixed);
    T_CHECK(c->n_new > 0, "%s: no answer came from the new version (%d old)", what, c->n_old);
    fprintf(stderr, "  %s: %d requests across the swap: %d old, %d new, 0 failed\n", what, c->sent,
            c->n_old, c->n_new);
}

static void test_train_fake_success(void)
{
    char id[65], nid[65], nver[64];
    int st;
    NEED_F();
    T_REQUIRE(active_hn(g_f.port, g_old_id, g_old_version) == 0, "info");
    g_ref_old = ts_seg(g_f.port, TASK, 0, &st);
    T_REQUIRE(st == 200 && !strcmp(hn_of(g_ref_old), g_old_id), "the task before training");

    loop_ctl c;
    pthread_t th[3];
    loop_start(&c, th, 3, g_f.port, g_old_id, g_ref_old);
    usleep(300000);
    json_t *req = json_pack("{s:s,s:s,s:i,s:i,s:i}", "data", "synth/train", "val", "synth/val",
                            "steps", 300, "batch", 2, "seed", FAKE_OK);
    T_CHECK(submit(g_f.port, req, id) == 202, "POST /admin/train");
    json_t *j = wait_job(g_f.port, id, "succeeded|failed|cancelled", 60, NULL);
    loop_stop(&c, th, 3, j && !strcmp(state_of(j), "succeeded"));
    T_REQUIRE(j, "the job did not end");
    T_CHECK(!strcmp(state_of(j), "succeeded"), "state %s: %s", state_of(j),
            json_string_value(json_object_get(j, "error")) ?: "");
    json_t *hn = json_object_get(j, "hypernetwork");
    T_REQUIRE(active_hn(g_f.port, nid, nver) == 0, "info after");
    T_CHECK(!strcmp(nver, "1") && strcmp(nid, g_old_id), "version %s after training", nver);
    T_CHECK(!strcmp(json_string_value(json_object_get(hn, "id")) ?: "", nid) &&
                !strcmp(json_string_value(json_object_get(hn, "version")) ?: "", "1"),
            "the job names the published hypernetwork");
    T_CHECK(json_integer_value(json_object_get(j, "step")) == 300 &&
                json_integer_value(json_object_get(j, "steps")) == 300,
            "step/steps");
    T_CHECK(json_is_number(json_object_get(j, "loss")) &&
                json_real_value(json_object_get(j, "samples_per_s")) == 12.5 &&
                json_is_number(json_object_get(j, "eta_s")),
            "loss, samples/s, ETA");
    T_CHECK(json_real_value(json_object_get(
                json_object_get(json_object_get(j, "validation"), "metrics"), "miou")) == 0.42,
            "the validation metrics");
    T_CHECK(json_integer_value(json_object_get(j, "train_images")) == 4, "train_images");
    T_CHECK(!strcmp(json_string_value(json_object_get(json_object_get(j, "init"), "id")) ?: "",
                    g_old_id),
            "init id");
    T_CHECK(json_is_true(json_object_get(j, "published")) &&
                json_is_null(json_object_get(j, "error")),
            "published, no error");
    json_decref(j);

    json_t *ref_new = ts_seg(g_f.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(hn_of(ref_new), nid), "the task after training");
    T_CHECK(!ts_same_masks(ref_new, g_ref_old), "the task's masks did not change");
    snprintf(c.new_id, sizeof c.new_id, "%s", nid);
    loop_check(&c, ref_new, "fake trainer");
    json_decref(ref_new);
    loop_free(&c);

    /* published: the shared file holds the new version */
    hn_params *p = NULL;
    char v[HN_NAME_MAX], fid[65] = "";
    if (hn_params_read(&p, g_hn, v) == 0)
        hn_params_id(p, fid);
    hn_params_destroy(p);
    T_CHECK(!strcmp(fid, nid) && !strcmp(v, "1"), "the shared file holds %s", v);
    /* history and metrics */
    json_t *h = admin(g_f.port, "GET", "/admin/hypernet", NULL, &st);
    json_t *hist = json_object_get(h, "history");
    T_CHECK(
        st == 200 && json_array_size(hist) == 2 &&
            !strcmp(json_string_value(json_object_get(json_array_get(hist, 0), "source")) ?: "",
                    "job") &&
            !strcmp(json_string_value(json_object_get(json_array_get(hist, 0), "job")) ?: "", id),
        "the history names the job");
    json_decref(h);
    char *m = get_metrics(g_f.port);
    T_CHECK(m && metric(m, "tasam_hypernet_swaps_total{result=\"ok\"}") == 1, "swap count");
    T_CHECK(m && metric(m, "tasam_hypernet_version") == 1, "active version metric");
    T_CHECK(m && metric(m, "tasam_train_jobs{state=\"succeeded\"}") == 1, "jobs by state");
    T_CHECK(m && metric(m, "tasam_hypernets_loaded") == 1,
            "the old version is freed once no request uses it (%g loaded)",
            m ? metric(m, "tasam_hypernets_loaded") : -1);
    T_CHECK(log_contains(&g_f, "is no longer used; freed"), "no log line of the old version freed");
    char series[160];
    snprintf(series, sizeof series, "tasam_hypernet_info{id=\"%s\",version=\"1\"}", nid);
    T_CHECK(m && metric(m, series) == 1, "the info metric");
    free(m);
    /* the log */
    char path[128], *log = NULL;
    size_t n;
    snprintf(path, sizeof path, "/admin/train/%s/log?lines=50", id);
    T_CHECK(http(g_f.port, "GET", path, NULL, NULL, ADMIN_AUTH, &log, &n) == 200 && log &&
                strstr(log, "fake trainer: first step done") && strstr(log, "--progress-fd 3"),
            "the job's log");
    free(log);
}

/* A job with the fake behaving as `seed`; the ended job's JSON. */
static json_t *fake_job(int seed, const char *states, double timeout)
{
    char id[65];
    json_t *req =
        json_pack("{s:s,s:i,s:i,s:i}", "data", "synth/train", "steps", 6, "batch", 1, "seed", seed);
    if (submit(g_f.port, req, id) != 202)
        return NULL;
    return wait_job(g_f.port, id, states, timeout, NULL);
}

static void test_train_fake_failures(void)
{
    NEED_F();
    char vid[65], vver[64];
    static const struct {
        int seed;
        const char *state, *needle;
        int exit_status, sig;
    } cases[] = {
        {FAKE_ERR, "failed", "fake failure: the data is bad", 1, -1},
        {FAKE_BAD, "failed", "malformed progress line", -1, 9},
        {FAKE_LONG, "failed", "longer than 65536 bytes", -1, 9},
        {FAKE_KILL, "failed", "signal 9", -1, 9},
        {FAKE_MUTE, "failed", "without reporting a result", 0, -1},
        {FAKE_ELSE, "failed", "not at", 0, -1},
        {FAKE_STALL, "failed", "no progress from the trainer", -1, 9},
        {FAKE_GATE, "succeeded", NULL, 0, -1},
    };
    T_REQUIRE(active_hn(g_f.port, vid, vver) == 0, "info");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = fake_job(cases[i].seed, "succeeded|failed|cancelled", 60);
        T_CHECK(j, "seed %d: the job did not end", cases[i].seed);
        if (!j)
            continue;
        const char *err = json_string_value(json_object_get(j, "error"));
        T_CHECK(!strcmp(state_of(j), cases[i].state), "seed %d: state %s (%s)", cases[i].seed,
                state_of(j), err ? err : "");
        if (cases[i].needle)
            T_CHECK(err && strstr(err, cases[i].needle), "seed %d: error '%s'", cases[i].seed,
                    err ? err : "(none)");
        json_t *es = json_object_get(j, "exit_status"), *sg = json_object_get(j, "signal");
        T_CHECK(cases[i].exit_status < 0 ? json_is_null(es)
                                         : json_integer_value(es) == cases[i].exit_status,
                "seed %d: exit status", cases[i].seed);
        T_CHECK(cases[i].sig < 0 ? json_is_null(sg) : json_integer_value(sg) == cases[i].sig,
                "seed %d: signal", cases[i].seed);
        if (cases[i].seed == FAKE_KILL)
            T_CHECK(err && strstr(err, "about to be killed"), "the last log lines in the error: %s",
                    err ? err : "");
        if (cases[i].seed == FAKE_GATE)
            T_CHECK(json_is_false(json_object_get(j, "published")) &&
                        strstr(json_string_value(json_object_get(j, "reason")) ?: "",
                               "validation got worse") &&
                        json_is_null(json_object_get(j, "hypernetwork")),
                    "the gate's reason");
        json_decref(j);
    }
    char id[65], ver[64];
    T_CHECK(active_hn(g_f.port, id, ver) == 0 && !strcmp(id, vid) && !strcmp(ver, vver),
            "a failed job changed the active version to %s", ver);
    int st;
    json_t *r = ts_seg(g_f.port, TASK, 0, &st);
    T_CHECK(st == 200, "the daemon serves after the failures: %d", st);
    json_decref(r);
}

static int nice_seen;

static int running_with_pid(const json_t *j)
{
    long pid = (long)json_integer_value(json_object_get(j, "pid"));
    if (!has_stepped(j) || pid <= 0)
        return 0;
    nice_seen = nice_of(pid);
    return 1;
}

static void test_train_fake_cancel_and_queue(void)
{
    char a[65], b[65], c[65], d[65], vid[65], vver[64];
    NEED_F();
    T_REQUIRE(active_hn(g_f.port, vid, vver) == 0, "info");
    json_t *slow =
        json_pack("{s:s,s:i,s:i}", "data", "synth/train", "steps", 100000, "seed", FAKE_SLOW);
    T_REQUIRE(submit(g_f.port, json_deep_copy(slow), a) == 202, "job a");
    json_t *j = wait_job(g_f.port, a, "succeeded|failed|cancelled", 30, running_with_pid);
    T_REQUIRE(j && has_stepped(j), "job a runs");
    T_CHECK(submit(g_f.port, json_deep_copy(slow), b) == 202, "job b (queued)");
    T_CHECK(submit(g_f.port, json_deep_copy(slow), c) == 202, "job c (queued)");
    T_CHECK(submit(g_f.port, json_deep_copy(slow), d) == 429, "job d: the queue of 2 is full");
    json_decref(slow);
    long pid = (long)json_integer_value(json_object_get(j, "pid"));
    T_CHECK(nice_seen == 7, "the trainer runs at nice %d, want 7 (train-nice)", nice_seen);
    json_decref(j);
    j = job_get(g_f.port, b);
    T_CHECK(j && !strcmp(state_of(j), "queued"), "b queued: %s", j ? state_of(j) : "?");
    json_decref(j);
    /* a queued job is cancelled at once */
    char path[128];
    int st;
    snprintf(path, sizeof path, "/admin/train/%s", b);
    j = admin(g_f.port, "DELETE", path, NULL, &st);
    T_CHECK(st == 200 && !strcmp(state_of(j), "cancelled"), "cancel queued b: %d %s", st,
            state_of(j));
    json_decref(j);
    j = admin(g_f.port, "DELETE", path, NULL, &st);
    T_CHECK(st == 409, "cancelling b again: %d", st);
    json_decref(j);
    /* the running one stops within seconds */
    snprintf(path, sizeof path, "/admin/train/%s", a);
    j = admin(g_f.port, "DELETE", path, NULL, &st);
    T_CHECK(st == 202 && json_is_true(json_object_get(j, "cancel_requested")),
            "cancel running a: %d", st);
    json_decref(j);
    double t0 = now_s();
    j = wait_job(g_f.port, a, "succeeded|failed|cancelled", 10, NULL);
    T_CHECK(j && !strcmp(state_of(j), "cancelled"), "a: %s", j ? state_of(j) : "timeout");
    T_CHECK(j && json_integer_value(json_object_get(j, "exit_status")) == 3, "a exited 3");
    T_CHECK(now_s() - t0 < 5, "the cancel took %.1f s", now_s() - t0);
    T_CHECK(!alive(pid), "the trainer is gone");
    json_decref(j);
    /* c runs next: cancel it too; the version never changed */
    j = wait_job(g_f.port, c, "succeeded|failed|cancelled", 30, has_stepped);
    T_CHECK(j && has_stepped(j), "c runs after a");
    json_decref(j);
    snprintf(path, sizeof path, "/admin/train/%s", c);
    json_decref(admin(g_f.port, "DELETE", path, NULL, &st));
    json_decref(wait_job(g_f.port, c, "succeeded|failed|cancelled", 10, NULL));
    char id[65], ver[64];
    T_CHECK(active_hn(g_f.port, id, ver) == 0 && !strcmp(id, vid), "a cancel published");
    /* the list: newest first, filtered */
    json_t *l = admin(g_f.port, "GET", "/admin/train?state=cancelled&limit=2", NULL, &st);
    json_t *jobs = json_object_get(l, "jobs");
    T_CHECK(
        st == 200 && json_array_size(jobs) == 2 &&
            !strcmp(json_string_value(json_object_get(json_array_get(jobs, 0), "id")) ?: "", c) &&
            json_is_integer(json_object_get(l, "next_before")),
        "GET /admin/train?state=cancelled&limit=2");
    json_decref(l);
}

static void test_train_fake_deaf_trainer(void)
{
    char a[65], path[128];
    int st;
    NEED_F();
    json_t *req =
        json_pack("{s:s,s:i,s:i}", "data", "synth/train", "steps", 100000, "seed", FAKE_DEAF);
    T_REQUIRE(submit(g_f.port, req, a) == 202, "job");
    json_decref(wait_job(g_f.port, a, "succeeded|failed|cancelled", 30, has_stepped));
    snprintf(path, sizeof path, "/admin/train/%s", a);
    json_decref(admin(g_f.port, "DELETE", path, NULL, &st));
    T_CHECK(st == 202, "cancel: %d", st);
    json_t *j = wait_job(g_f.port, a, "succeeded|failed|cancelled", 10, NULL);
    T_CHECK(j && !strcmp(state_of(j), "cancelled") &&
                json_integer_value(json_object_get(j, "signal")) == 9,
            "a trainer ignoring SIGTERM is killed after train-stop-timeout-ms: %s",
            j ? state_of(j) : "timeout");
    json_decref(j);
}

/* kill -9 of the daemon mid-job; a queued job survives the restart. */
static void test_train_fake_daemon_crash(void)
{
    char a[65], b[65];
    NEED_F();
    json_t *req =
        json_pack("{s:s,s:i,s:i}", "data", "synth/train", "steps", 100000, "seed", FAKE_SLOW);
    T_REQUIRE(submit(g_f.port, req, a) == 202, "job a");
    T_REQUIRE(submit(g_f.port,
                     json_pack("{s:s,s:i,s:i}", "data", "synth/train", "steps", 3, "seed", FAKE_OK),
                     b) == 202,
              "job b");
    json_t *j = wait_job(g_f.port, a, "succeeded|failed|cancelled", 30, has_stepped);
    T_REQUIRE(j && has_stepped(j), "a runs");
    long pid = (long)json_integer_value(json_object_get(j, "pid"));
    json_decref(j);
    daemon_kill9(&g_f);
    g_f_up = 0;
    T_REQUIRE(start_daemon(&g_f, g_f_state, g_hn, g_f_args) == 0, "restart");
    g_f_up = 1;
    j = job_get(g_f.port, a);
    T_CHECK(j && !strcmp(state_of(j), "failed") &&
                strstr(json_string_value(json_object_get(j, "error")) ?: "", "tasamd stopped"),
            "a running job at a crash is failed with why: %s",
            j ? json_string_value(json_object_get(j, "error")) : "");
    json_decref(j);
    double t0 = now_s();
    while (alive(pid) && now_s() - t0 < 10)
        usleep(50000);
    T_CHECK(!alive(pid), "the trainer left behind was stopped");
    j = wait_job(g_f.port, b, "succeeded|failed|cancelled", 60, NULL);
    T_CHECK(j && !strcmp(state_of(j), "succeeded"), "the queued job ran after the restart: %s",
            j ? state_of(j) : "timeout");
    json_decref(j);
}

/* SIGTERM while a job runs: the trainer is stopped, the daemon exits 0. */
static void test_train_fake_shutdown(void)
{
    char a[65];
    NEED_F();
    json_t *req =
        json_pack("{s:s,s:i,s:i}", "data", "synth/train", "steps", 100000, "seed", FAKE_SLOW);
    T_REQUIRE(submit(g_f.port, req, a) == 202, "job");
    json_t *j = wait_job(g_f.port, a, "succeeded|failed|cancelled", 30, has_stepped);
    T_REQUIRE(j && has_stepped(j), "it runs");
    long pid = (long)json_integer_value(json_object_get(j, "pid"));
    json_decref(j);
    double t0 = now_s();
    T_CHECK(daemon_stop(&g_f) == 0, "SIGTERM: exit 0");
    g_f_up = 0;
    T_CHECK(now_s() - t0 < 10, "the stop took %.1f s", now_s() - t0);
    T_CHECK(!alive(pid), "the trainer is gone");
    T_REQUIRE(start_daemon(&g_f, g_f_state, g_hn, g_f_args) == 0, "restart");
    g_f_up = 1;
    j = job_get(g_f.port, a);
    T_CHECK(j && !strcmp(state_of(j), "failed") &&
                strstr(json_string_value(json_object_get(j, "error")) ?: "", "interrupted"),
            "the job is failed as interrupted: %s", j ? state_of(j) : "?");
    json_decref(j);
}

/* Two replicas share the hypernetwork file: one trains, the other follows;
 * a rollback on the first reaches the second too. */
/* A disk that fails with EIO under train.db at start is not corruption:
 * tasamd refuses to start (exit 1, saying why) and leaves the file, with its
 * records, where it is; once the disk works it starts on the same file. The
 * shared open once moved any file it could not read aside, so a passing I/O
 * error lost every job record. */
static void test_train_db_io_error(void)
{
    char state[PATH_MAX], db[PATH_MAX], so[PATH_MAX], ctl[PATH_MAX], hn[PATH_MAX];
    char cmd[5 * PATH_MAX];
    char out[4096];
    daemon_proc d;
    struct stat st;
    NEED_F();
    snprintf(so, sizeof so, "%s/faultfs.so", g_test_dir);
    if (access(so, R_OK) != 0)
        T_SKIP("%s is not built (make %s)", so, so);
    snprintf(state, sizeof state, "%s/state-tdb-eio", g_tmp);
    snprintf(db, sizeof db, "%s/train.db", state);
    snprintf(hn, sizeof hn, "%s/hn-tdb-eio.safetensors", g_tmp);
    T_REQUIRE(ts_write_hypernet_h(hn, 3, 1, 32) == 0, "hypernet init: %s", eng_last_error());
    T_REQUIRE(start_daemon(&d, state, hn, NULL) == 0, "first start");
    T_CHECK(daemon_stop(&d) == 0, "stop");
    T_REQUIRE(stat(db, &st) == 0 && st.st_size > 0, "no train.db after the first start");
    tmp_name(ctl, sizeof ctl, ".fault");
    FILE *f = fopen(ctl, "w");
    T_REQUIRE(f && fputs("eio", f) >= 0 && fclose(f) == 0, "fault control file");
    snprintf(cmd, sizeof cmd,
             "TASAM_FAULTFS='%s' TASAM_FAULTFS_MATCH=train.db LD_PRELOAD='%s' timeout 60 '%s' "
             "--checkpoint '%s' --hypernet '%s' --state-dir '%s' --listen 127.0.0.1:0 "
             "--device cpu",
             ctl, so, g_tasamd, t_fixture("sam_tiny.safetensors"), hn, state);
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "train.db"), "start with train.db failing: exit %d:\n%s", rc,
            out);
    int aside = 0;
    DIR *dir = opendir(state);
    for (struct dirent *e; dir && (e = readdir(dir));)
        aside += strncmp(e->d_name, "train.db.corrupt-", 17) == 0;
    if (dir)
        closedir(dir);
    T_CHECK(aside == 0 && stat(db, &st) == 0 && st.st_size > 0,
            "a train.db that only failed to read was moved aside (%d files)", aside);
    unlink(ctl);
    T_CHECK(start_daemon(&d, state, hn, NULL) == 0, "start once the disk works");
    T_CHECK(daemon_stop(&d) == 0, "stop");
}

static void test_train_fleet_follows(void)
{
    daemon_proc b;
    char state[PATH_MAX], a_id[65], a_ver[64], b_id[65], b_ver[64], job[65];
    static const char *const b_args[] = {"--hypernet-poll-ms", "200", NULL};
    NEED_F();
    snprintf(state, sizeof state, "%s/state-replica", g_tmp);
    T_REQUIRE(start_daemon(&b, state, g_hn, b_args) == 0, "replica b");
    T_REQUIRE(active_hn(g_f.port, a_id, a_ver) == 0 && active_hn(b.port, b_id, b_ver) == 0, "info");
    T_CHECK(!strcmp(a_id, b_id), "b starts on a's version");
    json_t *req = json_pack("{s:s,s:i,s:i}", "data", "synth/train", "steps", 3, "seed", FAKE_OK);
    T_REQUIRE(submit(g_f.port, req, job) == 202, "train on a");
    json_t *j = wait_job(g_f.port, job, "succeeded|failed|cancelled", 60, NULL);
    T_REQUIRE(j && !strcmp(state_of(j), "succeeded"), "the job on a: %s",
              j ? state_of(j) : "timeout");
    json_decref(j);
    T_REQUIRE(active_hn(g_f.port, a_id, a_ver) == 0, "a's info");
    double t0 = now_s();
    while (now_s() - t0 < 20 && active_hn(b.port, b_id, b_ver) == 0 && strcmp(a_id, b_id))
        usleep(100000);
    T_CHECK(!strcmp(a_id, b_id) && !strcmp(a_ver, b_ver),
            "replica b follows a's new version %s (b has %s)", a_ver, b_ver);
    /* the rollback on a is published too */
    int st;
    json_t *r = admin(g_f.port, "POST", "/admin/hypernet/rollback", NULL, &st);
    T_CHECK(st == 200 && json_is_true(json_object_get(r, "published")), "rollback on a: %d", st);
    json_decref(r);
    T_REQUIRE(active_hn(g_f.port, a_id, a_ver) == 0, "a's info");
    t0 = now_s();
    while (now_s() - t0 < 20 && active_hn(b.port, b_id, b_ver) == 0 && strcmp(a_id, b_id))
        usleep(100000);
    T_CHECK(!strcmp(a_id, b_id), "replica b follows a's rollback to version %s", a_ver);
    /* a file that is not a hypernetwork is refused; b keeps serving */
    char bad[PATH_MAX];
    snprintf(bad, sizeof bad, "%s/shared/.bad", g_tmp);
    write_file(bad, "garbage", 7);
    T_CHECK(rename(bad, g_hn) == 0, "rename garbage over the shared file");
    kill(b.pid, SIGHUP);
    usleep(1500000);
    T_CHECK(active_hn(b.port, b_id, b_ver) == 0 && !strcmp(a_id, b_id),
            "b kept its version after a bad file");
    json_t *s = ts_seg(b.port, TASK, 0, &st);
    T_CHECK(st == 200, "b serves: %d", st);
    json_decref(s);
    char *m = get_metrics(b.port);
    T_CHECK(m && metric(m, "tasam_hypernet_swaps_total{result=\"failed\"}") >= 1,
            "the refusal is counted");
    T_CHECK(m && metric(m, "tasam_hypernet_swaps_total{result=\"ok\"}") == 2,
            "b swapped twice (follow, rollback)");
    free(m);
    T_CHECK(daemon_stop(&b) == 0, "b stops cleanly");
}

/* ---- the real trainer ---- */

static daemon_proc g_r; /* the daemon running the real tasam-train */
static int g_r_up;
static char g_r_state[PATH_MAX];
static char g_r_hn[PATH_MAX];
static json_t *g_r_before; /* the task's masks before training */
static char g_r_v0[65], g_r_v0ver[64], g_r_v1[65], g_r_v1ver[64];

static const char *const g_r_args[] = {
    "--train-data-dir", g_data, "--train-threads", "1", "--train-stop-timeout-ms", "5000", NULL};

#define NEED_REAL()                                                                                \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        if (!g_real_run)                                                                           \
            T_SKIP("tasam-train has no `run` command in this build");                              \
        if (!g_r_up)                                                                               \
            T_SKIP("the daemon did not start");                                                    \
    } while (0)

static void test_real_start(void)
{
    int st;
    T_NEED_FIXTURES();
    if (!g_real_run)
        T_SKIP("tasam-train has no `run` command in this build");
    snprintf(g_r_hn, sizeof g_r_hn, "%s/hn-real.safetensors", g_tmp);
    T_REQUIRE(ts_write_hypernet_h(g_r_hn, 5, 1, 32) == 0, "hypernet init");
    snprintf(g_r_state, sizeof g_r_state, "%s/state-real", g_tmp);
    T_REQUIRE(start_daemon(&g_r, g_r_state, g_r_hn, g_r_args) == 0, "the real-trainer daemon");
    g_r_up = 1;
    T_REQUIRE(active_hn(g_r.port, g_r_v0, g_r_v0ver) == 0, "info");
    g_r_before = ts_seg(g_r.port, TASK, 0, &st);
    T_CHECK(st == 200, "the task before training");
}

static void test_real_train_under_load(void)
{
    char id[65];
    int st;
    NEED_REAL();
    loop_ctl c;
    pthread_t th[3];
    loop_start(&c, th, 3, g_r.port, g_r_v0, g_r_before);
    json_t *req = json_pack("{s:s,s:s,s:i,s:i,s:f,s:i}", "data", "synth/train", "val", "synth/val",
                            "steps", 4, "batch", 2, "lr", 0.05, "seed", 1);
    T_CHECK(submit(g_r.port, req, id) == 202, "POST /admin/train");
    json_t *j = wait_job(g_r.port, id, "running|succeeded|failed|cancelled", 60, NULL);
    T_CHECK(j && strcmp(state_of(j), "queued"), "queued -> %s", j ? state_of(j) : "timeout");
    json_decref(j);
    j = wait_job(g_r.port, id, "succeeded|failed|cancelled", 300, has_stepped);
    T_CHECK(j && (has_stepped(j) || !strcmp(state_of(j), "succeeded")), "running with step > 0");
    json_decref(j);
    j = wait_job(g_r.port, id, "succeeded|failed|cancelled", 300, NULL);
    loop_stop(&c, th, 3, j && !strcmp(state_of(j), "succeeded"));
    T_REQUIRE(j, "the job did not end");
    T_CHECK(!strcmp(state_of(j), "succeeded"), "state %s: %s", state_of(j),
            json_string_value(json_object_get(j, "error")) ?: "");
    json_decref(j);
    T_REQUIRE(active_hn(g_r.port, g_r_v1, g_r_v1ver) == 0, "info after");
    T_CHECK(strcmp(g_r_v1, g_r_v0) && atoi(g_r_v1ver) == atoi(g_r_v0ver) + 1, "version %s -> %s",
            g_r_v0ver, g_r_v1ver);
    json_t *after = ts_seg(g_r.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(hn_of(after), g_r_v1), "the task after training");
    T_CHECK(!ts_same_masks(after, g_r_before), "the task's masks did not change");
    snprintf(c.new_id, sizeof c.new_id, "%s", g_r_v1);
    loop_check(&c, after, "real trainer");
    json_decref(after);
    loop_free(&c);
}

static void test_real_cancel(void)
{
    char id[65], path[128], v[65], ver[64];
    int st;
    NEED_REAL();
    json_t *req = json_pack("{s:s,s:i,s:i}", "data", "synth/train", "steps", 100000, "batch", 1);
    T_REQUIRE(submit(g_r.port, req, id) == 202, "job");
    json_t *j = wait_job(g_r.port, id, "succeeded|failed|cancelled", 300, has_stepped);
    T_REQUIRE(j && has_stepped(j), "it runs: %s", j ? state_of(j) : "timeout");
    json_decref(j);
    snprintf(path, sizeof path, "/admin/train/%s", id);
    json_decref(admin(g_r.port, "DELETE", path, NULL, &st));
    T_CHECK(st == 202, "DELETE: %d", st);
    double t0 = now_s();
    j = wait_job(g_r.port, id, "succeeded|failed|cancelled", 30, NULL);
    T_CHECK(j && !strcmp(state_of(j), "cancelled") &&
                json_integer_value(json_object_get(j, "exit_status")) == 3,
            "cancelled with exit 3: %s", j ? state_of(j) : "timeout");
    fprintf(stderr, "  the real trainer stopped %.1f s after the cancel\n", now_s() - t0);
    json_decref(j);
    T_CHECK(active_hn(g_r.port, v, ver) == 0 && !strcmp(v, g_r_v1), "nothing was published");
}

static void test_real_kill9_trainer(void)
{
    char id[65], v[65], ver[64];
    int st;
    NEED_REAL();
    json_t *req = json_pack("{s:s,s:i,s:i}", "data", "synth/train", "steps", 100000, "batch", 1);
    T_REQUIRE(submit(g_r.port, req, id) == 202, "job");
    json_t *j = wait_job(g_r.port, id, "succeeded|failed|cancelled", 300, has_stepped);
    T_REQUIRE(j && has_stepped(j), "it runs");
    long pid = (long)json_integer_value(json_object_get(j, "pid"));
    json_decref(j);
    T_REQUIRE(pid > 0 && kill((pid_t)pid, SIGKILL) == 0, "kill -9 %ld", pid);
    j = wait_job(g_r.port, id, "succeeded|failed|cancelled", 30, NULL);
    const char *err = j ? json_string_value(json_object_get(j, "error")) : NULL;
    T_CHECK(j && !strcmp(state_of(j), "failed") &&
                json_integer_value(json_object_get(j, "signal")) == 9 && err &&
                strstr(err, "signal 9") && strstr(err, "last lines of the log"),
            "kill -9: %s: %s", j ? state_of(j) : "timeout", err ? err : "");
    json_decref(j);
    json_t *r = ts_seg(g_r.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(hn_of(r), g_r_v1), "the daemon still serves: %d", st);
    json_decref(r);
    T_CHECK(active_hn(g_r.port, v, ver) == 0 && !strcmp(v, g_r_v1), "the version is unchanged");
}

static void test_real_restart_and_rollback(void)
{
    char v[65], ver[64];
    int st;
    NEED_REAL();
    T_CHECK(daemon_stop(&g_r) == 0, "clean stop");
    g_r_up = 0;
    T_REQUIRE(start_daemon(&g_r, g_r_state, g_r_hn, g_r_args) == 0, "restart");
    g_r_up = 1;
    T_CHECK(active_hn(g_r.port, v, ver) == 0 && !strcmp(v, g_r_v1) && !strcmp(ver, g_r_v1ver),
            "the restart keeps version %s (has %s)", g_r_v1ver, ver);
    json_t *r = admin(g_r.port, "POST", "/admin/hypernet/rollback", NULL, &st);
    T_CHECK(st == 200 &&
                !strcmp(json_string_value(json_object_get(json_object_get(r, "hypernetwork"), "id"))
                            ?: "",
                        g_r_v0),
            "rollback: %d", st);
    json_decref(r);
    T_CHECK(active_hn(g_r.port, v, ver) == 0 && !strcmp(v, g_r_v0) && !strcmp(ver, g_r_v0ver),
            "version %s after the rollback", ver);
    json_t *s = ts_seg(g_r.port, TASK, 0, &st);
    T_CHECK(st == 200 && ts_same_masks(s, g_r_before),
            "the rollback restores the old masks exactly");
    json_decref(s);
    expect_error(g_r.port, "POST", "/admin/hypernet/rollback", NULL, NULL, ADMIN_AUTH, 409, NULL,
                 "a second rollback has nothing to go back to");
}

static void test_end(void)
{
    if (g_f.pid)
        T_CHECK(daemon_stop(&g_f) == 0, "the fake-trainer daemon stops cleanly");
    if (g_r.pid)
        T_CHECK(daemon_stop(&g_r) == 0, "the real-trainer daemon stops cleanly");
    json_decref(g_ref_old);
    json_decref(g_r_before);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "run"))
        return fake_trainer(argc, argv);
    if (ts_init(argv[0]) != 0) {
        printf("test_server_train: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    if (!realpath(argv[0], g_self))
        snprintf(g_self, sizeof g_self, "%s", argv[0]);
    /* the real trainer: beside tasamd */
    {
        char cand[PATH_MAX], out[4096], cmd[PATH_MAX + 64];
        snprintf(cand, sizeof cand, "%s", g_tasamd);
        char *slash = strrchr(cand, '/');
        if (slash) {
            snprintf(slash + 1, sizeof cand - (size_t)(slash + 1 - cand), "tasam-train");
            if (access(cand, X_OK) == 0) {
                snprintf(g_trainer, sizeof g_trainer, "%s", cand);
                snprintf(cmd, sizeof cmd, "'%s' run --help", cand);
                g_real_run = t_run_cmd(cmd, out, sizeof out) == 0;
            }
        }
    }
    T_RUN(test_start);
    T_RUN(test_train_auth);
    T_RUN(test_train_bad_requests);
    T_RUN(test_train_disabled);
    T_RUN(test_train_fake_success);
    T_RUN(test_train_fake_failures);
    T_RUN(test_train_fake_cancel_and_queue);
    T_RUN(test_train_fake_deaf_trainer);
    T_RUN(test_train_fake_daemon_crash);
    T_RUN(test_train_fake_shutdown);
    T_RUN(test_train_fleet_follows);
    T_RUN(test_train_db_io_error);
    T_RUN(test_real_start);
    T_RUN(test_real_train_under_load);
    T_RUN(test_real_cancel);
    T_RUN(test_real_kill9_trainer);
    T_RUN(test_real_restart_and_rollback);
    T_RUN(test_end);
    ts_cleanup();
    return t_summary("test_server_train");
}
