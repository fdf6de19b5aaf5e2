/*
 * tests/test_server_faults.c: tasamd under load and failure: 50 concurrent clients, kill -9
 * during a burst, a full queue (429), deadlines (504), a corrupt database,
 * SIGHUP.
 */
#include "tests/tserver.h"

static void test_start(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(ts_start_shared("faults") == 0, "the daemon did not start");
    /* dog.jpg cached, as the tests of a fresh daemon's first requests expect */
    char path[PATH_MAX];
    int st;
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:[[i,i,i]]}", "points", 400, 294, 1));
    json_t *r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200, "warm-up request: %d", st);
    json_decref(r);
    unlink(path);
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
            m1 ? metric(m1, "tasam_batch_size_count") : -1,
            m1 ? metric(m1, "tasam_batch_size_sum") : -1);
    free(m1);
    for (int k = 0; k < IMGS; k++)
        free(pngs[k]);
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
            json_t *r =
                http_json(d.port, "POST", "/v1/embeddings", "application/json", path, NULL, &st);
            T_CHECK(st == 200, "request after restart: %d", st);
            const char *c =
                json_string_value(json_object_get(json_object_get(r, "cache"), "embedding"));
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
            T_CHECK(json_integer_value(
                        json_object_get(json_object_get(cl[i].resp, "error"), "code")) == 429,
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
    T_CHECK(json_integer_value(json_object_get(json_object_get(info, "config"), "queue-depth")) ==
                5,
            "file value not applied");
    json_decref(info);
    const char *c2 = "queue-depth = 9\nmax-batch = 3\n";
    write_file(conf, c2, strlen(c2));
    kill(d.pid, SIGHUP);
    usleep(300000);
    info = http_json(d.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    json_t *cfg = json_object_get(info, "config");
    T_CHECK(json_integer_value(json_object_get(cfg, "queue-depth")) == 9,
            "queue-depth not reloaded");
    T_CHECK(json_integer_value(json_object_get(cfg, "max-batch")) == 2,
            "max-batch (not runtime-mutable) changed");
    json_decref(info);
    T_CHECK(log_contains(&d, "needs a restart"), "no restart warning for max-batch");
    T_CHECK(daemon_stop(&d) == 0, "stop");
}

int main(int argc, char **argv)
{
    (void)argc;
    if (ts_init(argv[0])) {
        printf("test_server_faults: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    T_RUN(test_start);
    T_RUN(test_concurrent_50);
    T_RUN(test_kill9_during_burst);
    T_RUN(test_queue_full_429);
    T_RUN(test_deadline_504);
    T_RUN(test_corrupt_db_moved_aside);
    T_RUN(test_sighup_reload);
    ts_cleanup();
    return t_summary("test_server_faults");
}
