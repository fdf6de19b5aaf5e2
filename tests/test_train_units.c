/*
 * tests/test_train_units.c: the pieces of training jobs and the hot swap that
 * need no daemon: the trainer's progress lines, the POST /admin/train body,
 * dataset path confinement, train.db (jobs, the queue bound, the race of a
 * cancel with a start, pruning, the hypernetwork history, a damaged file)
 * and the atomic file writes.
 */
/* Paths are built in fixed buffers from a short temp folder name; GCC's
 * truncation analysis cannot see that bound. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <unistd.h>

#include "server/fileio.h"
#include "server/log.h"
#include "server/sqlite_db.h"
#include "server/train_db.h"
#include "server/train_parse.h"
#include "tests/harness.h"

static char g_dir[64]; /* a temporary folder for this run */

static int tev(const char *line, srv_tevent *ev, char *err)
{
    return srv_tevent_parse(line, strlen(line), ev, err, 256);
}

static void test_progress_lines(void)
{
    static srv_tevent ev;
    char err[256];
    const char *id = "c081b8739a92aa3679b96ee22f040329f97cf06773c49d46e2995861683ed8c8";
    char line[1024];

    T_CHECK(tev("{\"event\":\"start\",\"steps\":60,\"batch\":2,\"train_images\":500,"
                "\"val_images\":100,\"init\":{\"id\":\"c081b8739a92aa3679b96ee22f040329f97cf067"
                "73c49d46e2995861683ed8c8\",\"version\":\"3\"},\"out\":\"/x/hn.safetensors\","
                "\"future\":{\"a\":[1]}}",
                &ev, err) == 0 &&
                ev.type == SRV_TEV_START && ev.steps == 60 && ev.batch == 2 &&
                ev.train_images == 500 && ev.val_images == 100 && !strcmp(ev.init_id, id) &&
                !strcmp(ev.init_version, "3") && !strcmp(ev.path, "/x/hn.safetensors"),
            "start: %s", err);
    T_CHECK(tev("{\"event\":\"step\",\"step\":7,\"steps\":60,\"loss\":0.5,\"focal\":0.1,\"dice\":"
                "0.3,\"iou_mse\":0.1,\"lr\":1e-4,\"samples_per_s\":33,\"eta_s\":12.5}",
                &ev, err) == 0 &&
                ev.type == SRV_TEV_STEP && ev.step == 7 && ev.loss == 0.5 &&
                ev.samples_per_s == 33 && ev.eta_s == 12.5 && ev.lr == 1e-4,
            "step: %s", err);
    T_CHECK(tev("{\"event\":\"step\",\"step\":1}", &ev, err) == 0 && isnan(ev.loss) &&
                ev.steps == -1,
            "a step without the optional numbers");
    T_CHECK(tev("{\"event\":\"val\",\"step\":30,\"metrics\":{\"miou\":0.5,\"seen\":{\"ap\":0.2}}}",
                &ev, err) == 0 &&
                ev.type == SRV_TEV_VAL &&
                !strcmp(ev.val, "{\"step\":30,\"metrics\":{\"miou\":0.5,\"seen\":{\"ap\":0.2}}}"),
            "val: %s", ev.val);
    T_CHECK(tev("{\"event\":\"checkpoint\",\"step\":30,\"path\":\"/c/30\"}", &ev, err) == 0 &&
                ev.type == SRV_TEV_CHECKPOINT && !strcmp(ev.path, "/c/30"),
            "checkpoint");
    snprintf(
        line, sizeof line,
        "{\"event\":\"done\",\"out\":\"/o\",\"id\":\"%s\",\"version\":\"4\",\"published\":true}",
        id);
    T_CHECK(tev(line, &ev, err) == 0 && ev.type == SRV_TEV_DONE && ev.published &&
                !strcmp(ev.id, id) && !strcmp(ev.version, "4") && !strcmp(ev.path, "/o"),
            "done, published");
    T_CHECK(tev("{\"event\":\"done\",\"published\":false,\"reason\":\"val got worse\"}", &ev,
                err) == 0 &&
                !ev.published && !strcmp(ev.text, "val got worse"),
            "done, gate");
    T_CHECK(tev("{\"event\":\"error\",\"message\":\"cancelled\"}", &ev, err) == 0 &&
                ev.type == SRV_TEV_ERROR && !strcmp(ev.text, "cancelled"),
            "error");
    T_CHECK(tev("{\"event\":\"heartbeat\",\"x\":1}", &ev, err) == 0 && ev.type == SRV_TEV_OTHER,
            "an unknown event is ignored");

    static const char *const bad[] = {
        "",
        "not json",
        "[1,2]",
        "{\"steps\":3}",
        "{\"event\":7}",
        "{\"event\":\"step\"}",
        "{\"event\":\"step\",\"step\":-1}",
        "{\"event\":\"step\",\"step\":\"3\"}",
        "{\"event\":\"step\",\"step\":3,\"loss\":\"low\"}",
        "{\"event\":\"val\",\"step\":3,\"metrics\":[1]}",
        "{\"event\":\"done\",\"published\":\"yes\"}",
        "{\"event\":\"done\",\"published\":true,\"version\":\"1\",\"out\":\"/o\"}",
        "{\"event\":\"done\",\"published\":true,\"id\":\"ABC\",\"version\":\"1\",\"out\":\"/o\"}",
        "{\"event\":\"start\",\"init\":\"x\"}",
        "{\"event\":\"error\",\"message\":5}",
        "{\"event\":\"step\",\"step\":1,\"step\":2}",
        "{\"event\":\"start\",\"out\":\"a\\u0000b\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        T_CHECK(tev(bad[i], &ev, err) != 0 && err[0], "accepted: %s", bad[i]);
    }
    /* bounds: a path longer than kept, a line longer than allowed, an error
     * message longer than kept (cut, not refused) */
    char *big = malloc(SRV_TRAIN_LINE_MAX + 64);
    int k = snprintf(big, 64, "{\"event\":\"checkpoint\",\"step\":1,\"path\":\"");
    memset(big + k, 'p', 2000);
    snprintf(big + k + 2000, 16, "\"}");
    T_CHECK(tev(big, &ev, err) != 0, "a 2000-byte path");
    k = snprintf(big, 64, "{\"event\":\"error\",\"message\":\"");
    memset(big + k, 'm', 5000);
    snprintf(big + k + 5000, 16, "\"}");
    T_CHECK(tev(big, &ev, err) == 0 && strlen(ev.text) == sizeof ev.text - 1,
            "a long error message is cut");
    memset(big, ' ', SRV_TRAIN_LINE_MAX + 10);
    memcpy(big, "{\"event\":\"x\"}", 13);
    T_CHECK(srv_tevent_parse(big, SRV_TRAIN_LINE_MAX + 10, &ev, err, sizeof err) != 0,
            "an over-long line");
    free(big);
}

static int req(const char *body, srv_train_req *r, srv_error *e)
{
    return srv_train_req_parse(body, strlen(body), r, e);
}

static void test_request_body(void)
{
    srv_train_req r, r2;
    srv_error e;
    char js[SRV_TJOB_PARAMS];
    T_CHECK(req("{\"data\":\"shapes/train\"}", &r, &e) == 0 && r.steps == 100 && r.batch == 8 &&
                isnan(r.lr) && r.warmup == -1 && r.seed == -1 && !r.val[0],
            "defaults: %s", e.message);
    T_CHECK(req("{\"data\":\"shapes/train\",\"val\":\"shapes/val\",\"steps\":60,\"batch\":2,"
                "\"lr\":0.0003,\"warmup\":5,\"weight_decay\":0.01,\"clip\":1,\"seed\":9,"
                "\"publish_if_better\":true}",
                &r, &e) == 0 &&
                r.steps == 60 && r.lr == 0.0003 && r.warmup == 5 && r.clip == 1 &&
                r.publish_if_better && !strcmp(r.val, "shapes/val"),
            "every field: %s", e.message);
    /* the stored form parses back to the same request */
    T_REQUIRE(srv_train_req_json(&r, js, sizeof js) > 0, "canonical JSON");
    T_CHECK(req(js, &r2, &e) == 0 && r2.steps == r.steps && r2.lr == r.lr &&
                r2.weight_decay == r.weight_decay && r2.seed == r.seed && !strcmp(r2.val, r.val) &&
                r2.publish_if_better,
            "round trip: %s", js);
    T_CHECK(req("{\"data\":\"a\"}", &r, &e) == 0 && srv_train_req_json(&r, js, sizeof js) > 0 &&
                !strstr(js, "val") && req(js, &r2, &e) == 0,
            "round trip without val: %s", js);
    static const struct {
        const char *body, *field;
    } bad[] = {
        {"{\"data\":\"a/../b\"}", "data"},
        {"{\"data\":\"..\"}", "data"},
        {"{\"data\":\"/abs\"}", "data"},
        {"{\"data\":\"a\\u0001\"}", "data"},
        {"{\"data\":\"a\\u0000b\"}", "data"},
        {"{\"data\":\"a\",\"x\":1}", "x"},
        {"{\"data\":\"a\",\"seed\":-1}", "seed"},
        {"{\"data\":\"a\",\"clip\":-1}", "clip"},
        {"{\"data\":\"a\",\"steps\":1e300}", "steps"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        T_CHECK(req(bad[i].body, &r, &e) != 0 && e.status == 400 && !strcmp(e.field, bad[i].field),
                "%s: status %d field '%s'", bad[i].body, e.status, e.field);
    }
    char *longp = malloc(SRV_TRAIN_REL_MAX + 64);
    int k = snprintf(longp, 32, "{\"data\":\"");
    memset(longp + k, 'a', SRV_TRAIN_REL_MAX + 1);
    snprintf(longp + k + SRV_TRAIN_REL_MAX + 1, 8, "\"}");
    T_CHECK(req(longp, &r, &e) != 0 && !strcmp(e.field, "data"), "an over-long path");
    free(longp);
}

static void test_path_confinement(void)
{
    char root[PATH_MAX], real[PATH_MAX], abs[PATH_MAX], cmd[4 * PATH_MAX];
    srv_error e;
    snprintf(root, sizeof root, "%s/root", g_dir);
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/ok/images' '%s/noinst' '%s/out/images' '%s/badimg' && "
             "echo '{}' > '%s/ok/instances.json' && echo '{}' > '%s/out/instances.json' && "
             "echo '{}' > '%s/badimg/instances.json' && ln -s '%s/out' '%s/escape' && "
             "ln -s ok '%s/alias' && ln -s '%s/out/images' '%s/badimg/images' && "
             "mkdir -p '%s/instlink' && ln -s '%s/out/instances.json' '%s/instlink/instances.json'",
             root, root, g_dir, root, root, g_dir, root, g_dir, root, root, g_dir, root, root,
             g_dir, root);
    T_REQUIRE(system(cmd) == 0, "making the tree");
    T_REQUIRE(realpath(root, real), "realpath");
    T_CHECK(srv_train_resolve(real, "ok", "data", abs, sizeof abs, &e) == 0 &&
                !strncmp(abs, real, strlen(real)),
            "ok: %s", e.message);
    T_CHECK(srv_train_resolve(real, "alias", "data", abs, sizeof abs, &e) == 0 &&
                strstr(abs, "/ok"),
            "a symlink inside the root: %s", e.message);
    T_CHECK(srv_train_resolve(real, "./ok/", "data", abs, sizeof abs, &e) == 0, "./ok/");
    static const char *const bad[] = {"escape", "escape/images", "../root/ok", "ok/..",    "/etc",
                                      "noinst", "missing",       "badimg",     "instlink", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        T_CHECK(srv_train_resolve(real, bad[i], "val", abs, sizeof abs, &e) != 0 &&
                    e.status == 400 && !strcmp(e.field, "val"),
                "'%s' was accepted (%s)", bad[i], abs);
    }
}

static void prune_cb(const char *dir, void *arg)
{
    int *n = arg;
    (*n)++;
    (void)dir;
}

static void test_train_db(void)
{
    char state[PATH_MAX], err[512];
    srv_tdb *db = NULL;
    srv_tjob j, g, rows[8];
    int n = 0;
    snprintf(state, sizeof state, "%s/state", g_dir);
    T_REQUIRE(mkdir(state, 0750) == 0, "mkdir");
    T_REQUIRE(srv_tdb_open(&db, state, err, sizeof err) == 0, "open: %s", err);
    for (int i = 0; i < 3; i++) {
        srv_tjob_init(&j);
        snprintf(j.id, sizeof j.id, "%016x", i + 1);
        snprintf(j.params, sizeof j.params, "{\"data\":\"d%d\"}", i);
        snprintf(j.dir, sizeof j.dir, "%s/train/%s", state, j.id);
        j.steps = 10;
        j.created_ms = 1000 + i;
        T_CHECK(srv_tdb_job_insert(db, &j, 2) == (i < 2 ? 0 : 1), "insert %d with a bound of 2", i);
    }
    T_CHECK(srv_tdb_job_next_queued(db, &g) == 0 && !strcmp(g.id, "0000000000000001") &&
                g.seq == 1 && isnan(g.loss) && g.published == -1 && g.exit_status == -1,
            "the oldest queued job, numbers unknown");
    /* a cancel and a start race: only one wins */
    T_CHECK(srv_tdb_job_set_state_if(db, g.id, SRV_TJ_QUEUED, SRV_TJ_RUNNING, 0, NULL) == 0,
            "start");
    T_CHECK(srv_tdb_job_set_state_if(db, g.id, SRV_TJ_QUEUED, SRV_TJ_CANCELLED, 5, NULL) == 1,
            "a cancel after the start loses");
    g.state = SRV_TJ_RUNNING;
    g.step = 4;
    g.loss = 0.25;
    snprintf(g.val, sizeof g.val, "{\"step\":4}");
    g.exit_status = 3;
    T_CHECK(srv_tdb_job_update(db, &g) == 0, "update");
    T_CHECK(srv_tdb_job_get(db, g.id, &j) == 0 && j.state == SRV_TJ_RUNNING && j.step == 4 &&
                j.loss == 0.25 && !strcmp(j.val, "{\"step\":4}") && j.exit_status == 3 &&
                j.term_signal == -1,
            "read back");
    T_CHECK(srv_tdb_job_get(db, "ffffffffffffffff", &j) == 1, "absent");
    T_CHECK(srv_tdb_job_set_state_if(db, "0000000000000002", SRV_TJ_QUEUED, SRV_TJ_CANCELLED, 9,
                                     "x") == 0,
            "cancel the queued one");
    T_CHECK(srv_tdb_job_list(db, -1, 0, rows, 8, &n) == 0 && n == 2 &&
                !strcmp(rows[0].id, "0000000000000002") && rows[0].finished_ms == 9,
            "list, newest first");
    T_CHECK(srv_tdb_job_list(db, SRV_TJ_RUNNING, 0, rows, 8, &n) == 0 && n == 1, "by state");
    T_CHECK(srv_tdb_job_list(db, -1, 2, rows, 8, &n) == 0 && n == 1 && rows[0].seq == 1,
            "before a seq");
    int64_t counts[SRV_TJ_STATES];
    T_CHECK(srv_tdb_job_counts(db, counts) == 0 && counts[SRV_TJ_RUNNING] == 1 &&
                counts[SRV_TJ_CANCELLED] == 1 && counts[SRV_TJ_QUEUED] == 0,
            "counts");
    int gone = 0;
    T_CHECK(srv_tdb_job_prune(db, 0, prune_cb, &gone) == 1 && gone == 1,
            "prune keeps a running job, deletes the finished one");
    /* the hypernetwork history */
    srv_hn_row r, h[4];
    for (int i = 0; i < 3; i++) {
        memset(&r, 0, sizeof r);
        snprintf(r.id, sizeof r.id, "%064d", i);
        snprintf(r.version, sizeof r.version, "%d", i);
        snprintf(r.file, sizeof r.file, "/h/%d", i % 2);
        snprintf(r.source, sizeof r.source, "job");
        r.activated_ms = i;
        T_CHECK(srv_tdb_hn_push(db, &r) == 0 && r.seq == i + 1, "push %d", i);
    }
    T_CHECK(srv_tdb_hn_list(db, h, 4, &n) == 0 && n == 3 && !strcmp(h[0].version, "2") &&
                !h[0].job[0],
            "history newest first");
    T_CHECK(srv_tdb_hn_file_used(db, "/h/0", 1) == 1 && srv_tdb_hn_file_used(db, "/h/1", 2) == 0,
            "file_used");
    T_CHECK(srv_tdb_hn_delete(db, 3) == 0 && srv_tdb_hn_list(db, h, 4, &n) == 0 && n == 2 &&
                !strcmp(h[0].version, "1"),
            "delete");
    char v[80];
    T_CHECK(srv_tdb_meta_get(db, "file_id", v, sizeof v) == 1, "meta absent");
    T_CHECK(srv_tdb_meta_set(db, "file_id", "a") == 0 &&
                srv_tdb_meta_set(db, "file_id", "b") == 0 &&
                srv_tdb_meta_get(db, "file_id", v, sizeof v) == 0 && !strcmp(v, "b"),
            "meta set twice");
    srv_tdb_close(db);
    /* records survive a reopen */
    T_REQUIRE(srv_tdb_open(&db, state, err, sizeof err) == 0, "reopen: %s", err);
    T_CHECK(srv_tdb_job_get(db, "0000000000000001", &j) == 0 && j.step == 4, "after reopen");
    srv_tdb_close(db);
    /* a damaged file is moved aside and a fresh one made */
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/train.db", state);
    FILE *f = fopen(path, "r+b");
    T_REQUIRE(f, "open the file");
    fseek(f, 0, SEEK_SET);
    fwrite("garbage garbage garbage garbage", 1, 31, f);
    fclose(f);
    srv_log_set_level(SRV_LOG_LEVEL_ERROR);
    T_CHECK(srv_tdb_open(&db, state, err, sizeof err) == 0, "open a damaged file: %s", err);
    T_CHECK(db && srv_tdb_job_get(db, "0000000000000001", &j) == 1, "a fresh database");
    srv_tdb_close(db);
    DIR *d = opendir(state);
    struct dirent *de;
    int aside = 0;
    while (d && (de = readdir(d)))
        aside += !strncmp(de->d_name, "train.db.corrupt-", 17);
    if (d)
        closedir(d);
    T_CHECK(aside == 1, "moved aside: %d", aside);
}

static void test_file_io(void)
{
    char path[PATH_MAX], err[256], small[8];
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/io/f.bin", g_dir);
    T_REQUIRE(srv_mkdirs(path) == 0 && rmdir(path) == 0, "mkdirs");
    T_CHECK(srv_file_write_atomic(path, "hello", 5, err, sizeof err) == 0, "write: %s", err);
    T_CHECK(srv_file_write_atomic(path, "bye", 3, err, sizeof err) == 0, "overwrite: %s", err);
    T_CHECK(srv_file_read(path, 100, &buf, &len, err, sizeof err) == 0 && len == 3 &&
                !memcmp(buf, "bye", 3),
            "read back");
    free(buf);
    T_CHECK(srv_file_read(path, 2, &buf, &len, err, sizeof err) != 0 && !buf, "the size cap");
    char dir[PATH_MAX];
    srv_path_dir(path, dir, sizeof dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    int files = 0;
    while (d && (de = readdir(d)))
        files += de->d_name[0] != '.' || strncmp(de->d_name, ".f.bin.tmp", 10) == 0;
    if (d)
        closedir(d);
    T_CHECK(files == 1, "no temporary file left (%d entries)", files);
    T_CHECK(srv_pathf(small, sizeof small, "%s", "12345678") != 0, "truncation is reported");
    T_CHECK(srv_file_write_atomic("/nonexistent-dir/x", "a", 1, err, sizeof err) != 0 && err[0],
            "a write into a missing folder fails with a message");
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/tasam-test-train-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    srv_log_set_level(SRV_LOG_LEVEL_WARN);
    T_RUN(test_progress_lines);
    T_RUN(test_request_body);
    T_RUN(test_path_confinement);
    T_RUN(test_train_db);
    T_RUN(test_file_io);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
    return t_summary("test_train_units");
}
