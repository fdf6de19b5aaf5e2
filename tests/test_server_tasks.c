/*
 * tests/test_server_tasks.c: task adapters over HTTP: generation, the caches, routes, bad task
 * text, restarts, a new hypernetwork, admin flush, kill -9 during generation.
 */
#include "tests/tserver.h"

/* The shared daemon without a hypernetwork (test_tasks_without_hypernet). */
static void test_start(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(ts_start_shared("tasks") == 0, "the daemon did not start");
}

/* ---- task adapters ---- */

static char g_hn_random[PATH_MAX]; /* random hypernetwork (non-zero adapters), seed 1 */
static char g_hn_zero[PATH_MAX];   /* zero-initialised hypernetwork (delta W = 0) */
static daemon_proc g_t;            /* a daemon with --hypernet */
static int g_t_up;                 /* g_t is ready */
static char g_t_state[PATH_MAX];   /* its state directory */
static char g_ad_id[65];           /* adapter id of "Segment the dog" under g_hn_random */
static json_t *g_plain_point;      /* masks of the point request without a task */
static json_t *g_plain_free;       /* masks of everything mode without a task */

#define TASK "Segment the dog"
/* the admin token of the daemons here (listing adapters needs it) */
static const ts_extra g_admin = {.headers = "Authorization: Bearer s3cret\r\n"};
#define ADMIN (&g_admin)

/* Everything mode's defaults for these daemons (a task alone means
 * everything mode): a 3x3 grid, every mask kept, so that it stays quick on
 * the CPU; the CLI gets the same as flags. */
#define EVERYTHING_SMALL                                                                           \
    "{\"points_per_side\":3,\"pred_iou_thresh\":0,\"stability_score_thresh\":0,"                   \
    "\"box_nms_thresh\":1}"
#define EVERYTHING_SMALL_FLAGS                                                                     \
    "--points-per-side 3 --pred-iou-thresh 0 --stability-score-thresh 0 --box-nms-thresh 1"

static int t_daemon_start(daemon_proc *d, const char *state, const char *hypernet)
{
    /* --text-model takes what `tasam hypernet init` takes: here "hashed" */
    const char *args[] = {"--hypernet",
                          hypernet,
                          "--text-model",
                          "hashed",
                          "--admin-token",
                          "s3cret",
                          "--everything-defaults",
                          EVERYTHING_SMALL,
                          NULL};
    int rc = daemon_start(d, state, 1, args);
    if (rc != 0)
        show_log(d);
    return rc;
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
             prompt_free ? EVERYTHING_SMALL_FLAGS : "--point 400,294,1 --single-mask", hypernet,
             task, out, logp);
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
    T_REQUIRE(ts_write_hypernet(g_hn_random, 1, 1) == 0, "hypernet init: %s", eng_last_error());
    T_REQUIRE(ts_write_hypernet(g_hn_zero, 1, 0) == 0, "hypernet init: %s", eng_last_error());
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
        /* a text model name that is not in models/ stops it too, saying where it looked */
        snprintf(cmd, sizeof cmd,
                 "timeout 60 '%s' --checkpoint '%s' --device cpu --listen 127.0.0.1:0 "
                 "--state-dir '%s/state-badtm' --hypernet '%s' --text-model no-such-model "
                 ">'%s' 2>&1",
                 g_tasamd, t_fixture("sam_tiny.safetensors"), g_tmp, g_hn_zero, logp);
        rc = system(cmd);
        s = (char *)t_read_file(logp, &n);
        T_CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1 && s &&
                    memmem(s, n, "models/no-such-model", 20),
                "--text-model no-such-model: exit %d: %.*s", WIFEXITED(rc) ? WEXITSTATUS(rc) : -1,
                s ? (int)n : 0, s ? s : "");
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
    g_plain_point = ts_seg(g_t.port, NULL, 0, &st);
    T_CHECK(st == 200, "plain point request %d", st);
    g_plain_free = ts_seg(g_t.port, NULL, 1, &st);
    T_CHECK(st == 200, "plain everything request %d", st);
}

#define NEED_TASKS()                                                                               \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        if (!g_t_up)                                                                               \
            T_SKIP("the daemon with --hypernet did not start");                                    \
    } while (0)

static void test_tasks_segment(void)
{
    int st;
    NEED_TASKS();
    json_t *r1 = ts_seg(g_t.port, TASK, 0, &st);
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
    json_t *r2 = ts_seg(g_t.port, "  segment   THE dog ", 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r2), "cache-memory"), "second: %d %s", st,
            adapter_source(r2));
    T_CHECK(!strcmp(adapter_id_of(r2), g_ad_id), "second id");
    T_CHECK(ts_same_masks(r1, r2), "the cached adapter gives other masks");
    T_CHECK(g_plain_point && !ts_same_masks(r1, g_plain_point),
            "masks with a random hypernetwork's task equal the masks without a task");
    /* a task alone: everything mode under the adapter (3x3 grid, all kept) */
    json_t *f = ts_seg(g_t.port, TASK, 1, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(f, "masks")) == 27, "task alone %d", st);
    T_CHECK(!strcmp(adapter_source(f), "cache-memory"), "task alone: source %s", adapter_source(f));
    T_CHECK(g_plain_free && !ts_same_masks(f, g_plain_free),
            "everything mode unchanged by a random hypernetwork's task");
    /* multipart with a `task` part */
    ts_extra form = {
        .form = {{.name = "image", .file = g_dog_path, .filename = "dog.jpg"},
                 {.name = "task", .data = TASK},
                 {.name = "request", .data = "{\"points\":[[400,294,1]],\"multimask\":false}"}}};
    json_t *mp = http_json(g_t.port, "POST", "/v1/segment", NULL, NULL, &form, &st);
    T_CHECK(st == 200 && ts_same_masks(mp, r1), "multipart task part: %d", st);
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
        T_CHECK(c && ts_same_masks(r1, c), "masks differ from `tasam segment --hypernet --task`");
        T_CHECK(c && !strcmp(json_string_value(json_object_get(json_object_get(c, "adapter"), "id"))
                                 ?: "",
                             g_ad_id),
                "CLI adapter id");
        json_decref(c);
        c = cli_segment(g_hn_random, TASK, 1);
        T_CHECK(c && ts_same_masks(f, c), "a task alone: masks differ from the CLI's");
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
    T_CHECK(st == 200 &&
                !strcmp(json_string_value(json_object_get(r, "source")) ?: "", "generated"),
            "POST /v1/adapters: %d", st);
    char id2[65] = "";
    snprintf(id2, sizeof id2, "%s", json_string_value(json_object_get(r, "id")) ?: "");
    json_decref(r);
    r = http_json(p, "POST", "/v1/adapters", "application/json", path, NULL, &st);
    T_CHECK(st == 200 &&
                !strcmp(json_string_value(json_object_get(r, "source")) ?: "", "cache-memory"),
            "second POST: %d %s", st, json_string_value(json_object_get(r, "source")));
    json_decref(r);
    /* list, paged */
    r = http_json(p, "GET", "/v1/adapters", NULL, NULL, ADMIN, &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(r, "adapters")) == 2 &&
                json_integer_value(json_object_get(r, "total")) == 2 &&
                json_is_null(json_object_get(r, "next_after")),
            "list: %d", st);
    json_decref(r);
    r = http_json(p, "GET", "/v1/adapters?limit=1", NULL, NULL, ADMIN, &st);
    const char *next = json_string_value(json_object_get(r, "next_after"));
    T_CHECK(st == 200 && json_array_size(json_object_get(r, "adapters")) == 1 && next, "page 1: %d",
            st);
    const char *first =
        json_string_value(json_object_get(json_array_get(json_object_get(r, "adapters"), 0), "id"));
    snprintf(url, sizeof url, "/v1/adapters?limit=1&after=%s", next ? next : "x");
    json_t *r2 = http_json(p, "GET", url, NULL, NULL, ADMIN, &st);
    char second[65] = "";
    snprintf(
        second, sizeof second, "%s",
        json_string_value(json_object_get(json_array_get(json_object_get(r2, "adapters"), 0), "id"))
            ?: "");
    T_CHECK(st == 200 && second[0] && first && strcmp(first, second) < 0 &&
                json_is_null(json_object_get(r2, "next_after")),
            "page 2 (after): %d", st);
    json_decref(r2);
    r2 = http_json(p, "GET", "/v1/adapters?limit=1&offset=1", NULL, NULL, ADMIN, &st);
    const char *third = json_string_value(
        json_object_get(json_array_get(json_object_get(r2, "adapters"), 0), "id"));
    T_CHECK(st == 200 && third && !strcmp(third, second), "page 2 (offset): %d", st);
    json_decref(r2);
    json_decref(r);
    expect_error(p, "GET", "/v1/adapters?limit=0", NULL, NULL, ADMIN, 400, "limit", "limit 0");
    expect_error(p, "GET", "/v1/adapters?after=zz", NULL, NULL, ADMIN, 400, "after", "bad after");
    expect_error(p, "GET", "/v1/adapters?limit=2&bogus=1", NULL, NULL, ADMIN, 400, "bogus",
                 "unknown query argument");
    /* metadata and weights by id */
    snprintf(url, sizeof url, "/v1/adapters/%s", g_ad_id);
    r = http_json(p, "GET", url, NULL, NULL, NULL, &st);
    T_CHECK(st == 200 &&
                !strcmp(json_string_value(json_object_get(r, "task_normalized")) ?: "",
                        "segment the dog") &&
                json_is_true(json_object_get(r, "current")),
            "GET /v1/adapters/{id}: %d", st);
    json_decref(r);
    snprintf(url, sizeof url, "/v1/adapters/%064d", 0);
    expect_error(p, "GET", url, NULL, NULL, NULL, 404, "id", "absent adapter id");
    expect_error(p, "GET", "/v1/adapters/123", NULL, NULL, NULL, 400, "id", "short adapter id");
    snprintf(url, sizeof url, "/v1/adapters/%s/weights", g_ad_id);
    hc_response wr;
    st = http_full(p, "GET", url, NULL, NULL, NULL, &wr);
    T_CHECK(st == 200, "weights: %d", st);
    const char *wct = hc_response_header(&wr, "Content-Type");
    T_CHECK(wct && !strcmp(wct, "application/octet-stream"), "weights Content-Type %s",
            wct ? wct : "(none)");
    char *w = wr.body;
    size_t wn = wr.len;
    wr.body = NULL;
    hc_response_free(&wr);
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
    char path[PATH_MAX];
    NEED_TASKS();
    int p = g_t.port;
    const char *J = "application/json";
    static const char *const raw[] = {
        "{\"task\":\"\"}",                        /* empty */
        "{\"task\":\" \\t\\n \"}",                /* whitespace only */
        "{\"task\":\"segment \\ud800 the dog\"}", /* a lone high surrogate */
        "{\"task\":\"\\udc00\"}",                 /* a lone low surrogate */
        "{\"task\":\"segment\\u0000 the dog\"}",  /* NUL */
        "{\"task\":\"seg\xff"
        "ment\"}", /* a raw byte that is not UTF-8 */
        "{\"task\":\"seg\xc0\xaf"
        "ment\"}",                  /* an overlong form */
        "{\"task\":\"a\\u0007b\"}", /* a control character */
        "{\"task\":7}",             /* not a string */
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
        expect_error(p, "POST", "/v1/adapters", J, path, NULL, 400, "task",
                     "100 KB task (adapters)");
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
    ts_extra rawtask = {.form = {{.name = "image", .file = g_dog_path, .filename = "dog.jpg"},
                                 {.name = "task", .file = tfile}}};
    expect_error(p, "POST", "/v1/segment", NULL, NULL, &rawtask, 400, "task", "multipart raw task");
    write_file(tfile,
               "{\"task\":\"seg\xfe"
               "ment\"}",
               strlen("{\"task\":\"seg\xfe"
                      "ment\"}"));
    ts_extra rawreq = {.form = {{.name = "image", .file = g_dog_path, .filename = "dog.jpg"},
                                {.name = "request", .file = tfile, .type = "application/json"}}};
    expect_error(p, "POST", "/v1/segment", NULL, NULL, &rawreq, 400, "task",
                 "multipart request JSON with a raw byte");
    write_file(tfile, "the\x00dog", 7);
    expect_error(p, "POST", "/v1/segment", NULL, NULL, &rawtask, 400, "task", "multipart NUL task");
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
    json_t *r = ts_seg(g_t.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r), "cache-disk"), "after a restart: %d %s", st,
            adapter_source(r));
    T_CHECK(!strcmp(adapter_id_of(r), g_ad_id), "id after restart");
    json_t *r2 = ts_seg(g_t.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r2), "cache-memory"), "then: %s",
            adapter_source(r2));
    T_CHECK(ts_same_masks(r, r2) && !ts_same_masks(r, g_plain_point),
            "masks from the disk adapter");
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
    json_t *r = ts_seg(g_t.port, TASK, 0, &st);
    T_CHECK(st == 200 && !strcmp(adapter_source(r), "generated"), "new hypernet: %d %s", st,
            adapter_source(r));
    T_CHECK(adapter_id_of(r)[0] && strcmp(adapter_id_of(r), g_ad_id) != 0,
            "the new hypernetwork reuses the old id");
    T_CHECK(g_plain_point && ts_same_masks(r, g_plain_point),
            "a zero-initialised hypernetwork changed the masks");
    json_decref(r);
    r = ts_seg(g_t.port, TASK, 1, &st);
    T_CHECK(st == 200 && g_plain_free && ts_same_masks(r, g_plain_free),
            "zero hypernet: everything mode changed by a task");
    json_decref(r);
    /* the old rows stay listed, marked not current */
    char url[128];
    snprintf(url, sizeof url, "/v1/adapters/%s", g_ad_id);
    r = http_json(g_t.port, "GET", url, NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && json_is_false(json_object_get(r, "current")), "old row: %d", st);
    json_decref(r);
    r = http_json(g_t.port, "GET", "/v1/adapters", NULL, NULL, ADMIN, &st);
    T_CHECK(json_integer_value(json_object_get(r, "total")) == 3, "3 rows over two hypernets");
    json_decref(r);
}

static void test_tasks_admin_flush(void)
{
    int st;
    NEED_TASKS();
    int p = g_t.port;
    hc_response ar;
    st = http_full(p, "DELETE", "/admin/adapters", NULL, NULL, NULL, &ar);
    const char *chal = hc_response_header(&ar, "WWW-Authenticate");
    T_CHECK(st == 401 && chal && !strncmp(chal, "Bearer", 6), "no token: %d", st);
    hc_response_free(&ar);
    static const ts_extra wrong = {.headers = "Authorization: Bearer s3creT\r\n"},
                          longer = {.headers = "Authorization: Bearer s3cret0\r\n"},
                          basic = {.headers = "Authorization: Basic czNjcmV0\r\n"},
                          right = {.headers = "Authorization: Bearer s3cret\r\n"};
    expect_error(p, "DELETE", "/admin/adapters", NULL, NULL, &wrong, 403, "", "wrong token");
    expect_error(p, "DELETE", "/admin/adapters", NULL, NULL, &longer, 403, "", "longer token");
    expect_error(p, "DELETE", "/admin/adapters", NULL, NULL, &basic, 401, "", "not a bearer token");
    json_t *r = http_json(p, "GET", "/v1/adapters", NULL, NULL, &right, &st);
    T_CHECK(json_integer_value(json_object_get(r, "total")) == 3, "a refused flush flushed");
    json_decref(r);
    r = http_json(p, "DELETE", "/admin/adapters", NULL, NULL, &right, &st);
    json_t *f = json_object_get(r, "flushed");
    T_CHECK(st == 200 && json_integer_value(json_object_get(f, "disk")) == 3 &&
                json_integer_value(json_object_get(f, "memory")) == 1,
            "flush: %d", st);
    json_decref(r);
    r = http_json(p, "GET", "/v1/adapters", NULL, NULL, ADMIN, &st);
    T_CHECK(st == 200 && json_integer_value(json_object_get(r, "total")) == 0 &&
                json_array_size(json_object_get(r, "adapters")) == 0,
            "rows after the flush");
    json_decref(r);
    char *m = get_metrics(p);
    T_CHECK(m && metric(m, "tasam_adapters_resident") == 0, "resident after the flush");
    free(m);
    r = ts_seg(g_t.port, TASK, 0, &st);
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
            json_t *r =
                http_json(d.port, "POST", "/v1/adapters", "application/json", path, NULL, &st);
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
    (void)argc;
    if (ts_init(argv[0])) {
        printf("test_server_tasks: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    T_RUN(test_start);
    T_RUN(test_tasks_without_hypernet);
    T_RUN(test_tasks_start);
    T_RUN(test_tasks_segment);
    T_RUN(test_tasks_routes);
    T_RUN(test_tasks_bad_text);
    T_RUN(test_tasks_restart);
    T_RUN(test_tasks_new_hypernet);
    T_RUN(test_tasks_admin_flush);
    T_RUN(test_tasks_kill9_during_generation);
    if (g_t.pid)
        daemon_kill9(&g_t);
    json_decref(g_plain_point);
    json_decref(g_plain_free);
    ts_cleanup();
    return t_summary("test_server_tasks");
}
