/*
 * tests/test_server_units.c: tasamd's pieces without HTTP: the option
 * table (flags, file, environment), request validation, the multipart
 * parser (including mutated inputs), task text, the embedding cache
 * (checksums, budget, schema file agreement), the adapter rows (budget,
 * checksums, paging, flush), the in-place schema upgrade and the metrics
 * text.
 */
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "server/base64.h"
#include "server/cache.h"
#include "server/config.h"
#include "server/log.h"
#include "server/metrics.h"
#include "engine/error.h"
#include "server/error.h"
#include "server/request.h"
#include "server/scheduler.h"
#include "tests/harness.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

const char *srv__cache_migration(int v);

static char g_tmp[256];

static int load(srv_config *c, char *err, const char *const *args)
{
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)"tasamd";
    for (int i = 0; args[i]; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    FILE *null = fopen("/dev/null", "w");
    int rc = srv_config_load(c, n, argv, null, err, 512);
    fclose(null);
    return rc;
}

static void test_config_layers(void)
{
    srv_config c;
    char err[512], path[512];
    snprintf(path, sizeof path, "%s/t.conf", g_tmp);
    FILE *f = fopen(path, "w");
    fprintf(f, "# comment\ncheckpoint = /x.pth\nqueue-depth = 7   # inline\nmax-batch = 3\n"
               "max-body-bytes = \"2MiB\"\nlog-level = error\n");
    fclose(f);
    setenv("TASAMD_MAX_BATCH", "5", 1);
    const char *args[] = {"--config", path, "--batch-wait-ms=9", "--cache-bytes", "1G", NULL};
    T_REQUIRE(load(&c, err, args) == 0, "load: %s", err);
    T_CHECK(srv_config_int(&c, SRV_OPT_QUEUE_DEPTH) == 7, "file value");
    T_CHECK(srv_config_int(&c, SRV_OPT_MAX_BATCH) == 5, "env beats file");
    T_CHECK(srv_config_int(&c, SRV_OPT_BATCH_WAIT_MS) == 9, "--name=value");
    T_CHECK(srv_config_int(&c, SRV_OPT_CACHE_BYTES) == 1073741824LL, "1G bytes");
    T_CHECK(srv_config_int(&c, SRV_OPT_MAX_BODY_BYTES) == 2097152, "quoted 2MiB");
    T_CHECK(srv_config_int(&c, SRV_OPT_MAX_PIXELS) == 40000000, "default 40M pixels");
    T_CHECK(!strcmp(srv_config_str(&c, SRV_OPT_LISTEN), "127.0.0.1:8080"), "default listen");
    json_t *j = srv_config_to_json(&c);
    T_CHECK(json_integer_value(json_object_get(j, "queue-depth")) == 7, "json");
    T_CHECK(json_is_null(json_object_get(j, "admin-token")), "secret shown as null when unset");
    json_decref(j);
    /* reload: mutable changes apply, immutable ones do not */
    f = fopen(path, "w");
    fprintf(f, "checkpoint = /x.pth\nqueue-depth = 11\nmax-batch = 3\nlog-level = error\n");
    fclose(f);
    unsetenv("TASAMD_MAX_BATCH");
    T_CHECK(srv_config_reload(&c, err, sizeof err) == 0, "reload: %s", err);
    T_CHECK(srv_config_int(&c, SRV_OPT_QUEUE_DEPTH) == 11, "reloaded queue-depth");
    T_CHECK(srv_config_int(&c, SRV_OPT_MAX_BATCH) == 5, "max-batch is not runtime-mutable");
    srv_config_free(&c);
    srv_log_set_level(SRV_LOG_LEVEL_ERROR);
}

static void test_config_errors(void)
{
    srv_config c;
    char err[512];
    static const char *const cases[][4] = {
        {"--checkpoint", "x", "--threads", "0"},
        {"--checkpoint", "x", "--max-body-bytes", "-5"},
        {"--checkpoint", "x", "--max-pixels", "99999999999999999999"},
        {"--checkpoint", "x", "--log-level", "loud"},
        {"--checkpoint", "x", "--listen", "1.2.3.4"},
        {"--checkpoint", "x", "--nope", "1"},
    };
    static const char *const names[] = {"threads",   "max-body-bytes", "max-pixels",
                                        "log-level", "listen",         "nope"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[] = {cases[i][0], cases[i][1], cases[i][2], cases[i][3], NULL};
        err[0] = 0;
        T_CHECK(load(&c, err, args) < 0, "case %zu accepted", i);
        T_CHECK(strstr(err, names[i]) != NULL, "error '%s' does not name %s", err, names[i]);
    }
    const char *only[] = {"--checkpoint", NULL};
    T_CHECK(load(&c, err, only) < 0 && strstr(err, "needs a value"), "missing value: %s", err);
    const char *help[] = {"--help", NULL};
    T_CHECK(load(&c, err, help) == 1, "--help returns 1");
    int64_t v;
    T_CHECK(srv_config_parse_value(SRV_OPT_CACHE_BYTES, "3KiB", &v, err, sizeof err) == 0 &&
                v == 3072,
            "3KiB");
    T_CHECK(srv_config_parse_value(SRV_OPT_MAX_PIXELS, "2k", &v, err, sizeof err) == 0 && v == 2000,
            "2k");
}

static const srv_limits LIM = {16, 64, NULL};

static int parse(const char *json, srv_request *r, srv_error *e)
{
    return srv_request_parse("application/json", (const uint8_t *)json, strlen(json),
                             SRV_KIND_SEGMENT, &LIM, r, e);
}

static void test_request_validation(void)
{
    srv_request r;
    srv_error e;
    srv_prompts p;
    /* "iVBO" is valid base64 (3 bytes); the image is not decoded here */
    T_REQUIRE(parse("{\"image\":\"iVBO\",\"points\":[[1,2,1],[3.5,4,0]],\"multimask\":false}", &r,
                    &e) == 0,
              "valid: %s", e.message);
    T_CHECK(r.n_points == 2 && r.labels[1] == 0 && r.points[2] == 3.5f && !r.multimask, "fields");
    T_CHECK(srv_request_prompts(&r, 10, 10, &p, &e) == 0 && p.n == 1 && p.p[0].n_points == 2,
            "prompts");
    srv_prompts_free(&p);
    T_CHECK(srv_request_prompts(&r, 3, 3, &p, &e) != 0 && !strcmp(e.field, "points[1]"),
            "range check names points[1]: %s", e.field);
    srv_request_free(&r);

    T_REQUIRE(parse("{\"image\":\"iVBO\",\"boxes\":[[0,0,5,5],[1,1,2,2],[0,0,0,0]]}", &r, &e) == 0,
              "boxes: %s", e.message);
    T_CHECK(srv_request_prompts(&r, 10, 10, &p, &e) == 0 && p.n == 3 && p.p[2].has_box,
            "3 prompts");
    srv_prompts_free(&p);
    srv_request_free(&r);

    static const char *const bad[][2] = {
        {"[]", ""},
        {"{\"image\":\"iVBO\",\"image\":\"iVBO\"}", ""},
        {"{\"image\":\"iVBO\",\"extra\":1}", "extra"},
        {"{\"image\":\"iVBO\",\"points\":[[1,2]]}", "points[0]"},
        {"{\"image\":\"iVBO\",\"points\":[[1,2,1.0]]}", "points[0]"},
        /* SAM's labels 2 and 3 are box corners, made from `boxes`, never
         * given as points; -1 is its padding point */
        {"{\"image\":\"iVBO\",\"points\":[[1,2,2]]}", "points[0]"},
        {"{\"image\":\"iVBO\",\"points\":[[1,2,1],[1,2,3]]}", "points[1]"},
        {"{\"image\":\"iVBO\",\"points\":[[1,2,-1]]}", "points[0]"},
        {"{\"image\":\"iVBO\",\"points\":{}}", "points"},
        {"{\"image\":\"iVBO\",\"points\":[[1e39,2,1]]}", "points[0]"}, /* inf as a float */
        {"{\"image\":\"iVBO\",\"boxes\":[[-1e300,0,1,1]]}", "boxes[0]"},
        {"{\"image\":\"iVBO\",\"boxes\":[[5,0,1,1]]}", "boxes[0]"},
        {"{\"image\":\"iVBO\",\"boxes\":[[0,0,1,\"a\"]]}", "boxes[0]"},
        {"{\"image\":\"iVB\"}", "image"},
        {"{\"image\":\"\"}", "image"},
        {"{\"image\":7}", "image"},
        {"{\"image\":\"iVBO\",\"image_id\":\""
         "0000000000000000000000000000000000000000000000000000000000000000\"}",
         "image_id"},
        {"{\"image_id\":\"zz\"}", "image_id"},
        {"{\"image\":\"iVBO\",\"task\":3}", "task"},
        {"{\"image\":\"iVBO\",\"task\":\"a\\u0000b\"}", "task"},
        {"{\"image\":\"iVBO\",\"task\":\"a\\ud800b\"}", "task"},
        {"{\"image\":\"iVBO\",\"task\":\"\\udc00\"}", "task"},
        {"{\"image\":\"iVBO\",\"task\":\"a\xff\"}", "task"},
        {"{\"image\":\"iVBO\",\"task\":\"a\tb\"}", "task"},
        {"{\"image\":\"iVBO\",\"task\":\"   \"}", "task"},
        {"{\"image\":\"iVBO\",\"task\":\"\"}", "task"},
        {"{\"image\":\"iVBO\",\"output\":\"rle\\u0000x\"}", "output"},
        {"{\"image\":\"iVBO\",\"output\":\"\\ud800\"}", "output"},
        {"{\"image\":\"iVBO\",\"output\":\"RLE\"}", "output"},
        {"{}", "image"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i][0], &r, &e);
        T_CHECK(rc != 0 && e.status == 400, "accepted: %s", bad[i][0]);
        if (rc != 0)
            T_CHECK(!strcmp(e.field, bad[i][1]), "%s: field '%s', want '%s'", bad[i][0], e.field,
                    bad[i][1]);
        else
            srv_request_free(&r);
    }
    /* 17 points > max-points */
    char buf[1024] = "{\"image\":\"iVBO\",\"points\":[";
    for (int i = 0; i < 17; i++)
        strcat(buf, i ? ",[1,1,1]" : "[1,1,1]");
    strcat(buf, "]}");
    T_CHECK(parse(buf, &r, &e) != 0 && !strcmp(e.field, "points"), "too many points");
    T_CHECK(srv_request_parse("text/csv", (const uint8_t *)"a", 1, SRV_KIND_SEGMENT, &LIM, &r,
                              &e) != 0 &&
                e.status == 415,
            "415 for text/csv");
    T_CHECK(srv_utf8_valid("h\xc3\xa9", 3) && !srv_utf8_valid("\xc0\xaf", 2) &&
                !srv_utf8_valid("\xed\xa0\x80", 3) && !srv_utf8_valid("a\0b", 3),
            "utf8");
}

/* Every engine code against the status table of server/error.h, written
 * out by hand. */
static void test_error_status(void)
{
    static const int want[][3] = {
        /* engine code, client input, server */
        {ENG_EINVAL, 400, 500},    {ENG_ENOMEM, 503, 503},  {ENG_EIO, 400, 500},
        {ENG_EFORMAT, 400, 500},   {ENG_EUNSUP, 415, 500},  {ENG_ELIMIT, 413, 500},
        {ENG_ENOTFOUND, 400, 500}, {ENG_EDEVICE, 500, 500}, {ENG_ESHAPE, 400, 500},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int in = srv_status_of(want[i][0], SRV_BLAME_INPUT);
        int sv = srv_status_of(want[i][0], SRV_BLAME_SERVER);
        T_CHECK(in == want[i][1] && sv == want[i][2], "%s: %d/%d, want %d/%d",
                eng_strerror(want[i][0]), in, sv, want[i][1], want[i][2]);
    }
    srv_error e;
    eng_error(ENG_ELIMIT, "9000x9000 is over the limit");
    T_CHECK(srv_fail_eng(&e, ENG_ELIMIT, SRV_BLAME_INPUT, "image", "image %d", 2) == -1 &&
                e.status == 413 && !strcmp(e.field, "image") &&
                !strcmp(e.message, "image 2: 9000x9000 is over the limit"),
            "srv_fail_eng: %d %s '%s'", e.status, e.field, e.message);
}

/* A done callback that counts stopped jobs. */
static void count_done(srv_job *j, void *arg)
{
    int *n = arg;
    T_CHECK(j->status == 503 && j->err.status == 503, "stopped job: %d", j->status);
    (*n)++;
}

/* queue-depth N: exactly N jobs queue, the N+1th is 429 (the bound counts
 * N, not N-1 or N+1); before the model is ready and after a stop, 503. No
 * worker thread runs, so nothing leaves the queue. */
static void test_queue_bound(void)
{
    for (int n = 1; n <= 3; n++) {
        srv_config cfg;
        srv_metrics m;
        srv_sched s;
        srv_error e;
        srv_job jobs[5];
        char err[512], depth[8];
        int done = 0;
        snprintf(depth, sizeof depth, "%d", n);
        const char *args[] = {"--checkpoint", "/x.pth", "--queue-depth", depth, NULL};
        T_REQUIRE(load(&cfg, err, args) == 0, "config: %s", err);
        srv_log_set_level(SRV_LOG_LEVEL_ERROR);
        srv_metrics_init(&m);
        srv_sched_init(&s, &cfg, NULL, &m, NULL, NULL);
        memset(jobs, 0, sizeof jobs);
        for (int i = 0; i <= n; i++) {
            jobs[i].done = count_done;
            jobs[i].done_arg = &done;
        }
        memset(&e, 0, sizeof e);
        T_CHECK(srv_sched_submit(&s, &jobs[0], &e) == -1 && e.status == 503,
                "submit before the model is ready: %d", e.status);
        s.ready = 1;
        for (int i = 0; i < n; i++)
            T_CHECK(srv_sched_submit(&s, &jobs[i], &e) == 0, "depth %d: job %d refused (%d %s)", n,
                    i + 1, e.status, e.message);
        T_CHECK(srv_sched_pending(&s) == n, "pending %d, want %d", srv_sched_pending(&s), n);
        memset(&e, 0, sizeof e);
        T_CHECK(srv_sched_submit(&s, &jobs[n], &e) == -1 && e.status == 429,
                "depth %d: job %d got %d, want 429", n, n + 1, e.status);
        T_CHECK(m.rejected_queue_full == 1, "rejections counted: %llu",
                (unsigned long long)m.rejected_queue_full);
        T_CHECK(m.queue_depth == n, "queue depth gauge %lld", (long long)m.queue_depth);
        srv_sched_stop(&s, 0);
        T_CHECK(done == n, "stop completed %d of %d queued jobs", done, n);
        T_CHECK(srv_sched_submit(&s, &jobs[n], &e) == -1 && e.status == 503, "after stop: %d",
                e.status);
        srv_sched_destroy(&s);
        srv_config_free(&cfg);
    }
}

static const char MP[] = "--XyZ\r\n"
                         "Content-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                         "Content-Type: image/png\r\n\r\n"
                         "\x89PNG\r\n--X not the boundary\r\n"
                         "\r\n--XyZ\r\n"
                         "Content-Disposition: form-data; name=\"request\"\r\n\r\n"
                         "{\"multimask\":false}"
                         "\r\n--XyZ--\r\n";

static void test_multipart(void)
{
    srv_part parts[SRV_MULTIPART_MAX_PARTS];
    srv_error e;
    const char *ct = "multipart/form-data; boundary=XyZ";
    int n = srv_multipart_parse(ct, (const uint8_t *)MP, sizeof MP - 1, parts,
                                SRV_MULTIPART_MAX_PARTS, &e);
    T_REQUIRE(n == 2, "parts %d (%s)", n, e.message);
    T_CHECK(!strcmp(parts[0].name, "image") && !strcmp(parts[0].filename, "a.png") &&
                parts[0].len == 28 && !memcmp(parts[0].data, "\x89PNG", 4),
            "image part (%zu bytes)", parts[0].len);
    T_CHECK(!strcmp(parts[1].name, "request") && parts[1].len == 19, "request part");
    srv_request r;
    T_CHECK(srv_request_parse(ct, (const uint8_t *)MP, sizeof MP - 1, SRV_KIND_SEGMENT, &LIM, &r,
                              &e) == 0 &&
                r.image_len == 28 && !r.multimask && !r.image_owned,
            "multipart request: %s", e.message);
    srv_request_free(&r);
    T_CHECK(srv_multipart_parse("multipart/form-data", (const uint8_t *)MP, sizeof MP - 1, parts, 8,
                                &e) < 0,
            "no boundary");
    /* every truncation and many byte flips: never a crash, parts stay inside */
    uint8_t buf[sizeof MP];
    unsigned s = 12345;
    for (size_t cut = 0; cut < sizeof MP - 1; cut++) {
        n = srv_multipart_parse(ct, (const uint8_t *)MP, cut, parts, 8, &e);
        for (int i = 0; i < n; i++)
            T_CHECK(parts[i].data >= (const uint8_t *)MP &&
                        parts[i].data + parts[i].len <= (const uint8_t *)MP + cut,
                    "part outside the body at cut %zu", cut);
    }
    for (int it = 0; it < 20000; it++) {
        memcpy(buf, MP, sizeof MP);
        for (int k = 0; k < 3; k++) {
            s = s * 1103515245u + 12345u;
            buf[(s >> 8) % (sizeof MP - 1)] = (uint8_t)(s >> 20);
        }
        n = srv_multipart_parse(ct, buf, sizeof MP - 1, parts, 8, &e);
        for (int i = 0; i < n; i++)
            if (parts[i].data < buf || parts[i].data + parts[i].len > buf + sizeof MP - 1)
                T_CHECK(0, "part outside the body");
        if (srv_request_parse(ct, buf, sizeof MP - 1, SRV_KIND_SEGMENT, &LIM, &r, &e) == 0)
            srv_request_free(&r);
    }
}

/* Normalise SQL text: drop comments and whitespace. */
static void squash(const char *in, char *out, size_t n)
{
    size_t k = 0;
    for (const char *p = in; *p && k + 1 < n; p++) {
        if (p[0] == '-' && p[1] == '-') {
            while (*p && *p != '\n')
                p++;
            if (!*p)
                break;
            continue;
        }
        if (*p != ' ' && *p != '\n' && *p != '\t')
            out[k++] = *p;
    }
    out[k] = 0;
}

static void test_schema_file_matches(void)
{
    size_t n;
    char *sql = (char *)t_read_file("schema/cache.sql", &n);
    T_REQUIRE(sql, "schema/cache.sql not readable (run from the repository root)");
    char *b = realloc(sql, n + 1);
    b[n] = 0;
    for (int v = 1; srv__cache_migration(v); v++) {
        char mark[32], want[8192], got[8192];
        snprintf(mark, sizeof mark, "-- migration %d\n", v);
        char *start = strstr(b, mark);
        T_REQUIRE(start, "schema/cache.sql lacks '-- migration %d'", v);
        start += strlen(mark);
        char *end = strstr(start, "-- migration ");
        char *block = strndup(start, end ? (size_t)(end - start) : strlen(start));
        squash(block, want, sizeof want);
        squash(srv__cache_migration(v), got, sizeof got);
        T_CHECK(!strcmp(want, got), "migration %d differs between schema/cache.sql and cache.c", v);
        free(block);
    }
    free(b);
}

static void test_cache(void)
{
    char dir[512], err[512];
    srv_cache *c;
    srv_metrics m;
    const size_t F = 1024; /* small embeddings for the test */
    float *e1 = malloc(F * sizeof(float)), *e2 = malloc(F * sizeof(float));
    for (size_t i = 0; i < F; i++) {
        e1[i] = (float)i;
        e2[i] = -(float)i;
    }
    srv_metrics_init(&m);
    snprintf(dir, sizeof dir, "%s/cache1", g_tmp);
    /* budget: two entries; one memory slot */
    T_REQUIRE(
        srv_cache_open(&c, dir, F, (int64_t)(2 * F * sizeof(float)), 1, &m, err, sizeof err) == 0,
        "open: %s", err);
    srv_cache *c2;
    T_CHECK(srv_cache_open(&c2, dir, F, 1 << 20, 1, NULL, err, sizeof err) < 0 &&
                strstr(err, "in use"),
            "second open of the same state dir: %s", err);
    const char *A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const char *B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const char *C = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    const float *got;
    int w, h;
    srv_cache_tier tier;
    T_CHECK(srv_cache_get(c, A, &got, &w, &h, &tier) == 1, "miss before set_model");
    srv_cache_set_model(c, "test-model", "fp32");
    T_CHECK(srv_cache_put(c, A, e1, 30, 20) == 0, "put A");
    T_CHECK(srv_cache_put(c, B, e2, 31, 21) == 0, "put B");
    /* A left the single memory slot: a disk hit with the right content */
    T_CHECK(srv_cache_get(c, A, &got, &w, &h, &tier) == 0 && tier == SRV_TIER_DISK && w == 30 &&
                h == 20 && got[5] == 5.0f,
            "A from disk");
    T_CHECK(srv_cache_get(c, A, &got, &w, &h, &tier) == 0 && tier == SRV_TIER_MEMORY,
            "A from memory");
    /* C evicts the least recently used (B) from disk */
    T_CHECK(srv_cache_put(c, C, e1, 1, 1) == 0, "put C");
    srv_cache_meta meta;
    T_CHECK(srv_cache_meta_get(c, B, &meta) == 1, "B evicted");
    T_CHECK(srv_cache_meta_get(c, A, &meta) == 0 && meta.hits == 2, "A kept, hits %lld",
            (long long)meta.hits);
    T_CHECK(m.cache_evictions == 1, "evictions %llu", (unsigned long long)m.cache_evictions);
    srv_cache_close(c);

    /* corrupt A's blob behind the cache's back: dropped on read */
    char db[600];
    sqlite3 *s;
    snprintf(db, sizeof db, "%s/cache.db", dir);
    T_REQUIRE(sqlite3_open(db, &s) == SQLITE_OK, "sqlite open");
    T_CHECK(sqlite3_exec(s,
                         "UPDATE embedding_blob SET data = zeroblob(4096) WHERE embedding_id = "
                         "(SELECT id FROM embedding WHERE image_sha256 LIKE 'aaaa%')",
                         NULL, NULL, NULL) == SQLITE_OK,
            "corrupt");
    sqlite3_close(s);
    T_REQUIRE(srv_cache_open(&c, dir, F, 1 << 20, 0, &m, err, sizeof err) == 0, "reopen: %s", err);
    srv_cache_set_model(c, "test-model", "fp32");
    T_CHECK(srv_cache_get(c, A, &got, &w, &h, &tier) == 1, "corrupt row served");
    T_CHECK(m.cache_corrupt == 1, "corrupt not counted");
    T_CHECK(srv_cache_meta_get(c, A, &meta) == 1, "corrupt row not dropped");
    T_CHECK(srv_cache_get(c, C, &got, &w, &h, &tier) == 0 && got[7] == 7.0f, "C intact");
    /* peek answers a hit as get does: 0 with the size; a miss 1 */
    w = h = 0;
    T_CHECK(srv_cache_peek(c, C, &w, &h) == 0 && w == 1 && h == 1, "peek C: %dx%d", w, h);
    T_CHECK(srv_cache_peek(c, B, &w, &h) == 1, "peek of an absent row is a miss");
    /* another model id does not see C */
    srv_cache_set_model(c, "other-model", "fp32");
    T_CHECK(srv_cache_peek(c, C, &w, &h) == 1, "keyed by model id");
    srv_cache_close(c);
    free(e1);
    free(e2);
}

static void test_request_task(void)
{
    srv_request r;
    srv_error e;
    T_REQUIRE(parse("{\"image\":\"iVBO\",\"task\":\"  Segment  the DOG \"}", &r, &e) == 0,
              "valid task: %s", e.message);
    T_CHECK(r.has_task && r.task_len == 19 && !strcmp(r.task, "  Segment  the DOG "),
            "task kept as given");
    srv_request_free(&r);
    /* POST /v1/adapters: task only */
    const char *ok = "{\"task\":\"find the cat\"}";
    T_CHECK(srv_request_parse("application/json", (const uint8_t *)ok, strlen(ok), SRV_KIND_ADAPTER,
                              &LIM, &r, &e) == 0 &&
                r.has_task,
            "adapters body: %s", e.message);
    srv_request_free(&r);
    static const char *const bad[][2] = {
        {"{}", "task"},
        {"{\"task\":\"x\",\"image\":\"iVBO\"}", "image"},
        {"{\"task\":\"\\ud83d\"}", "task"},
        {"{\"ta\\u0000sk\":\"x\"}", ""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = srv_request_parse("application/json", (const uint8_t *)bad[i][0],
                                   strlen(bad[i][0]), SRV_KIND_ADAPTER, &LIM, &r, &e);
        T_CHECK(rc != 0 && e.status == 400 && !strcmp(e.field, bad[i][1]),
                "%s: rc %d field '%s', want '%s'", bad[i][0], rc, rc ? e.field : "", bad[i][1]);
        if (rc == 0)
            srv_request_free(&r);
    }
    /* a surrogate pair is fine */
    const char *pair = "{\"task\":\"find the \\ud83d\\udc36\"}";
    T_CHECK(srv_request_parse("application/json", (const uint8_t *)pair, strlen(pair),
                              SRV_KIND_ADAPTER, &LIM, &r, &e) == 0,
            "surrogate pair: %s", e.message);
    srv_request_free(&r);
    /* multipart: a `task` part; not twice */
    static const char MP[] = "--XyZ\r\nContent-Disposition: form-data; name=\"image\"; "
                             "filename=\"a.png\"\r\n\r\nPNGDATA\r\n--XyZ\r\nContent-Disposition: "
                             "form-data; name=\"task\"\r\n\r\nfind the dog\r\n--XyZ--\r\n";
    const char *ct = "multipart/form-data; boundary=XyZ";
    T_CHECK(srv_request_parse(ct, (const uint8_t *)MP, sizeof MP - 1, SRV_KIND_SEGMENT, &LIM, &r,
                              &e) == 0 &&
                r.has_task && !strcmp(r.task, "find the dog"),
            "multipart task part: %s", e.message);
    srv_request_free(&r);
    static const char MP2[] = "--XyZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nPNG"
                              "\r\n--XyZ\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\n"
                              "a\r\n--XyZ\r\nContent-Disposition: form-data; name=\"request\"\r\n"
                              "\r\n{\"task\":\"b\"}\r\n--XyZ--\r\n";
    T_CHECK(srv_request_parse(ct, (const uint8_t *)MP2, sizeof MP2 - 1, SRV_KIND_SEGMENT, &LIM, &r,
                              &e) != 0 &&
                !strcmp(e.field, "task"),
            "task twice");
    T_CHECK(srv_request_parse(ct, (const uint8_t *)MP, sizeof MP - 1, SRV_KIND_EMBED, &LIM, &r,
                              &e) != 0 &&
                !strcmp(e.field, "task"),
            "a task part for embeddings");
}

static void ad_meta(srv_adapter_meta *m, char c, const char *task)
{
    memset(m, 0, sizeof *m);
    memset(m->id, c, 64);
    snprintf(m->task, sizeof m->task, "%s", task);
    snprintf(m->task_normalized, sizeof m->task_normalized, "%s", task);
    memset(m->hypernet_id, 'f', 64);
    snprintf(m->hypernet_version, sizeof m->hypernet_version, "7");
    snprintf(m->text_model, sizeof m->text_model, "hashed-384");
    m->rank = 4;
    m->alpha = 8;
}

static void test_adapter_rows(void)
{
    char dir[512], err[512];
    srv_cache *c;
    srv_metrics m;
    srv_adapter_meta a, b, d, got, list[4];
    uint8_t blob[1000], *out = NULL;
    size_t len = 0;
    int n;
    int64_t total;
    for (size_t i = 0; i < sizeof blob; i++)
        blob[i] = (uint8_t)(i * 13 + 1);
    srv_metrics_init(&m);
    snprintf(dir, sizeof dir, "%s/adapters", g_tmp);
    T_REQUIRE(srv_cache_open(&c, dir, 16, 1 << 20, 0, &m, err, sizeof err) == 0, "open: %s", err);
    ad_meta(&a, 'a', "task a");
    ad_meta(&b, 'b', "task b");
    ad_meta(&d, 'd', "task d");
    /* budget 0: the adapter tier is off */
    T_CHECK(srv_cache_adapter_put(c, &a, blob, sizeof blob) == 1, "stored with budget 0");
    T_CHECK(srv_cache_adapter_get(c, a.id, 1, &out, &len, NULL) == 1, "found with budget 0");
    /* room for two */
    srv_cache_set_adapter_budget(c, 2 * (int64_t)sizeof blob + 10);
    T_CHECK(srv_cache_adapter_put(c, &a, blob, sizeof blob) == 0, "put a");
    T_CHECK(srv_cache_adapter_put(c, &b, blob, sizeof blob) == 0, "put b");
    T_CHECK(srv_cache_adapter_get(c, a.id, 1, &out, &len, &got) == 0 && len == sizeof blob &&
                !memcmp(out, blob, len) && got.hits == 1 && !strcmp(got.task, "task a") &&
                got.rank == 4 && got.alpha == 8 && got.bytes == (int64_t)sizeof blob,
            "get a");
    free(out);
    out = NULL;
    /* d evicts the least recently used: b */
    T_CHECK(srv_cache_adapter_put(c, &d, blob, sizeof blob) == 0, "put d");
    T_CHECK(srv_cache_adapter_meta(c, b.id, &got) == 1, "b was not evicted");
    T_CHECK(srv_cache_adapter_meta(c, a.id, &got) == 0 && got.hits == 1,
            "a (used last) was evicted");
    T_CHECK(m.adapter_evictions_disk == 1 && m.adapter_entries_disk == 2 &&
                m.adapter_bytes_disk == 2 * (int64_t)sizeof blob,
            "eviction metrics");
    /* larger than the whole budget: not stored */
    static uint8_t huge[4096];
    T_CHECK(srv_cache_adapter_put(c, &b, huge, sizeof huge) == 1, "huge blob stored");
    /* list, paged by id */
    T_CHECK(srv_cache_adapter_list(c, NULL, 0, 4, list, &n, &total) == 0 && n == 2 && total == 2 &&
                list[0].id[0] == 'a' && list[1].id[0] == 'd',
            "list");
    T_CHECK(srv_cache_adapter_list(c, a.id, 0, 4, list, &n, &total) == 0 && n == 1 &&
                list[0].id[0] == 'd',
            "list after a");
    T_CHECK(srv_cache_adapter_list(c, NULL, 1, 1, list, &n, &total) == 0 && n == 1 &&
                list[0].id[0] == 'd',
            "list offset 1");
    srv_cache_close(c);
    /* a blob changed behind the cache's back is dropped on read */
    char db[600];
    sqlite3 *s;
    snprintf(db, sizeof db, "%s/cache.db", dir);
    T_REQUIRE(sqlite3_open(db, &s) == SQLITE_OK, "sqlite open");
    T_CHECK(sqlite3_exec(s,
                         "UPDATE adapter_blob SET data = zeroblob(1000) WHERE adapter_row = "
                         "(SELECT id FROM adapter WHERE adapter_id LIKE 'dddd%')",
                         NULL, NULL, NULL) == SQLITE_OK,
            "corrupt");
    sqlite3_close(s);
    T_REQUIRE(srv_cache_open(&c, dir, 16, 1 << 20, 0, &m, err, sizeof err) == 0, "reopen: %s", err);
    srv_cache_set_adapter_budget(c, 1 << 20);
    T_CHECK(srv_cache_adapter_get(c, d.id, 1, &out, &len, NULL) == 1, "corrupt adapter served");
    T_CHECK(m.adapter_corrupt == 1, "corrupt adapter not counted");
    T_CHECK(srv_cache_adapter_meta(c, d.id, &got) == 1, "corrupt row kept");
    T_CHECK(srv_cache_adapter_get(c, a.id, 0, &out, &len, &got) == 0 && got.hits == 1,
            "a survives (and no hit counted without touch)");
    free(out);
    srv_cache_adapter_touch(c, a.id);
    T_CHECK(srv_cache_adapter_meta(c, a.id, &got) == 0 && got.hits == 2, "touch");
    T_CHECK(srv_cache_adapter_clear(c) == 1, "clear");
    T_CHECK(srv_cache_adapter_meta(c, a.id, &got) == 1 && m.adapter_entries_disk == 0,
            "rows after clear");
    srv_cache_close(c);
}

/* A version-1 database (embeddings only) is upgraded in place: its rows
 * stay, the adapter tables appear. */
static void test_cache_upgrade_v1(void)
{
    char dir[512], db[600], err[512];
    sqlite3 *s;
    srv_cache *c;
    srv_cache_meta meta;
    srv_adapter_meta a, got;
    uint8_t blob[100] = {1, 2, 3};
    snprintf(dir, sizeof dir, "%s/upgrade", g_tmp);
    mkdir(dir, 0755);
    snprintf(db, sizeof db, "%s/cache.db", dir);
    T_REQUIRE(sqlite3_open(db, &s) == SQLITE_OK, "sqlite open");
    char sql[4096];
    snprintf(sql, sizeof sql,
             "%s PRAGMA user_version=1; PRAGMA application_id=%d; INSERT INTO embedding "
             "(image_sha256, model_id, precision, width, height, bytes, crc32, created, last_used, "
             "hits) VALUES ('%064d', 'm', 'fp32', 3, 4, 64, 0, 1, 2, 5);",
             srv__cache_migration(1), SRV_CACHE_APP_ID, 7);
    T_REQUIRE(sqlite3_exec(s, sql, NULL, NULL, NULL) == SQLITE_OK, "v1 database: %s",
              sqlite3_errmsg(s));
    sqlite3_close(s);
    T_REQUIRE(srv_cache_open(&c, dir, 16, 1 << 20, 0, NULL, err, sizeof err) == 0, "open: %s", err);
    srv_cache_set_model(c, "m", "fp32");
    char sha[65];
    snprintf(sha, sizeof sha, "%064d", 7);
    T_CHECK(srv_cache_meta_get(c, sha, &meta) == 0 && meta.width == 3 && meta.hits == 5,
            "the v1 row is gone after the upgrade");
    srv_cache_set_adapter_budget(c, 1 << 20);
    ad_meta(&a, 'e', "task e");
    T_CHECK(srv_cache_adapter_put(c, &a, blob, sizeof blob) == 0 &&
                srv_cache_adapter_meta(c, a.id, &got) == 0,
            "adapters in an upgraded database");
    srv_cache_close(c);
    T_REQUIRE(sqlite3_open(db, &s) == SQLITE_OK, "sqlite open");
    sqlite3_stmt *st = NULL;
    int ver = -1;
    if (sqlite3_prepare_v2(s, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        ver = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(s);
    T_CHECK(ver == SRV_CACHE_SCHEMA_VERSION && ver == 2, "user_version %d after the upgrade", ver);
}

static void test_metrics_render(void)
{
    srv_metrics m;
    char *t;
    size_t n;
    srv_metrics_init(&m);
    srv_metrics_request(&m, SRV_ROUTE_SEGMENT, 200, 0.003);
    srv_metrics_request(&m, SRV_ROUTE_SEGMENT, 418, 0.5);
    srv_hist_observe(&m.batch_size, 3);
    T_REQUIRE(srv_metrics_render(&m, &t, &n) == 0, "render");
    T_CHECK(strstr(t, "tasam_requests_total{route=\"segment\",code=\"200\"} 1\n") != NULL,
            "200 line");
    T_CHECK(strstr(t, "tasam_requests_total{route=\"segment\",code=\"other\"} 1\n") != NULL,
            "other");
    T_CHECK(
        strstr(t, "tasam_request_duration_seconds_bucket{route=\"segment\",le=\"0.005\"} 1\n") !=
            NULL,
        "cumulative bucket");
    T_CHECK(strstr(t, "tasam_request_duration_seconds_bucket{route=\"segment\",le=\"+Inf\"} 2\n") !=
                NULL,
            "+Inf bucket");
    T_CHECK(strstr(t, "tasam_batch_size_bucket{le=\"3\"} 1\n") &&
                strstr(t, "tasam_batch_size_sum 3.0"),
            "batch histogram");
    T_CHECK(strlen(t) == n && t[n - 1] == '\n', "length");
    free(t);
}

int main(void)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/tasam-test-units-XXXXXX");
    if (!mkdtemp(g_tmp))
        return 1;
    srv_log_set_level(SRV_LOG_LEVEL_ERROR);
    T_RUN(test_config_layers);
    T_RUN(test_config_errors);
    T_RUN(test_request_validation);
    T_RUN(test_error_status);
    T_RUN(test_queue_bound);
    T_RUN(test_multipart);
    T_RUN(test_schema_file_matches);
    T_RUN(test_cache);
    T_RUN(test_request_task);
    T_RUN(test_adapter_rows);
    T_RUN(test_cache_upgrade_v1);
    T_RUN(test_metrics_render);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_tmp);
    return t_summary("test_server_units");
}
