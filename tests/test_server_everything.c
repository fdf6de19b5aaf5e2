/*
 * tests/test_server_everything.c: segment everything over HTTP: every
 * golden_amg_tiny case (the official SamAutomaticMaskGenerator) within the
 * fixture tolerances, from the image and from its image_id; a task alone as
 * everything mode (a zero hypernetwork gives plain everything mode exactly,
 * a random one changes it); explicit grids; png and polygon output; bad
 * parameters answered 400 naming the field; a huge grid stopped by the
 * deadline (504) with the daemon healthy after; the mask-memory bound (413);
 * a bad everything-defaults option refused at start.
 */
#include "tests/tserver.h"

#include "tests/amg_case.h"

static char g_hn_zero[PATH_MAX];   /* zero-initialised hypernetwork (delta W = 0) */
static char g_hn_random[PATH_MAX]; /* random hypernetwork (adapters change the masks) */
static daemon_proc g_z;            /* --hypernet zero */
static daemon_proc g_r;            /* --hypernet random */
static int g_z_up, g_r_up;
static json_t *g_cases;        /* golden_amg_tiny cases */
static eng_ckpt *g_amg_golden; /* golden_amg_tiny.safetensors */

/* Small defaults, so that a task alone stays quick on the CPU: a 3x3 grid
 * and every mask kept (the fixture model's IoU predictions are low). */
#define SMALL_DEFAULTS                                                                             \
    "{\"points_per_side\": 3, \"pred_iou_thresh\": 0, \"stability_score_thresh\": 0, "             \
    "\"box_nms_thresh\": 1}"

#define TASK "segment every dog"

static int write_hypernet(const char *path, int random)
{
    hn_hypernet_config cfg;
    hn_hypernet_config_default(&cfg);
    snprintf(cfg.text_model, sizeof cfg.text_model, "hashed-%d", cfg.text_dim);
    return hn_hypernet_init(path, &cfg, 1, random);
}

static int start_with(daemon_proc *d, const char *name, const char *const *extra)
{
    char state[PATH_MAX];
    const char *args[32];
    int n = 0;
    snprintf(state, sizeof state, "%s/state-%s", g_tmp, name);
    for (int i = 0; extra && extra[i] && n < 30; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    int rc = daemon_start(d, state, 1, args);
    if (rc)
        show_log(d);
    return rc;
}

static void test_start(void)
{
    T_NEED_FIXTURES();
    snprintf(g_hn_zero, sizeof g_hn_zero, "%s/hn-zero.safetensors", g_tmp);
    snprintf(g_hn_random, sizeof g_hn_random, "%s/hn-random.safetensors", g_tmp);
    T_REQUIRE(write_hypernet(g_hn_zero, 0) == 0 && write_hypernet(g_hn_random, 1) == 0,
              "hypernet init: %s", eng_last_error());
    g_cases = amg_cases_load();
    T_REQUIRE(g_cases &&
                  eng_ckpt_open(&g_amg_golden, t_fixture("golden_amg_tiny.safetensors")) == 0,
              "golden_amg_tiny: %s", eng_last_error());
    /* a long deadline: under the sanitizers on a busy machine a fixture case
     * can take longer than the default 30 s */
    const char *z[] = {
        "--hypernet", g_hn_zero, "--everything-defaults", SMALL_DEFAULTS, "--request-timeout-ms",
        "900000",     NULL};
    T_REQUIRE(start_with(&g_z, "zero", z) == 0, "the daemon with a zero hypernetwork");
    g_z_up = 1;
    const char *r[] = {
        "--hypernet", g_hn_random, "--everything-defaults", SMALL_DEFAULTS, "--request-timeout-ms",
        "900000",     NULL};
    T_REQUIRE(start_with(&g_r, "random", r) == 0, "the daemon with a random hypernetwork");
    g_r_up = 1;
}

#define NEED(up)                                                                                   \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        if (!(up))                                                                                 \
            T_SKIP("the daemon did not start");                                                    \
    } while (0)

/* POST /v1/segment with the dog image (or image_id when not NULL) and the
 * members of `extra` (stolen). */
static json_t *post(int port, const char *image_id, json_t *extra, int *status)
{
    char path[PATH_MAX];
    if (image_id)
        json_object_set_new(extra, "image_id", json_string(image_id));
    write_request(path, sizeof path, image_id ? NULL : g_dog_b64, extra);
    /* (the client's own limit raised to the daemons' deadline, as above) */
    static const ts_extra slow = {.timeout_s = 900};
    json_t *r = http_json(port, "POST", "/v1/segment", "application/json", path, &slow, status);
    unlink(path);
    return r;
}

/* Check a response's masks against golden case c. */
static void check_case(const json_t *resp, const json_t *c)
{
    int n = 0;
    amg_rec *recs = amg_recs_from_json(json_object_get(resp, "masks"), &n);
    T_CHECK(recs, "%s: the masks are malformed", json_string_value(json_object_get(c, "name")));
    if (recs)
        amg_case_check(c, g_amg_golden, recs, n);
    amg_recs_free(recs, n);
}

static void test_fixture_cases(void)
{
    NEED(g_z_up);
    char image_id[65] = "";
    for (size_t i = 0; i < json_array_size(g_cases); i++) {
        const json_t *c = json_array_get(g_cases, i);
        int st;
        json_t *r =
            post(g_z.port, NULL, json_pack("{s:O}", "everything", json_object_get(c, "args")), &st);
        T_CHECK(st == 200, "%s: status %d", json_string_value(json_object_get(c, "name")), st);
        if (st == 200) {
            check_case(r, c);
            T_CHECK(!strcmp(json_string_value(json_object_get(r, "mode")) ?: "", "everything"),
                    "mode");
            T_CHECK(json_is_object(json_object_get(r, "everything_stats")), "everything_stats");
            snprintf(image_id, sizeof image_id, "%s",
                     json_string_value(json_object_get(r, "image_id")) ?: "");
        }
        json_decref(r);
    }
    /* the cached embedding alone (no crop layers): the same answer */
    for (size_t i = 0; i < json_array_size(g_cases) && image_id[0]; i++) {
        const json_t *c = json_array_get(g_cases, i), *args = json_object_get(c, "args");
        if (strcmp(json_string_value(json_object_get(c, "name")) ?: "", "grid4_thresh"))
            continue;
        int st;
        json_t *r = post(g_z.port, image_id, json_pack("{s:O}", "everything", args), &st);
        T_CHECK(st == 200 && !strcmp(json_string_value(
                                         json_object_get(json_object_get(r, "cache"), "embedding"))
                                         ?: "",
                                     "hit"),
                "image_id: status %d", st);
        if (st == 200)
            check_case(r, c);
        json_decref(r);
    }
}

/* 1 when two answers carry the same masks: RLE, scores and points. */
static int same_masks(const json_t *a, const json_t *b)
{
    const json_t *ma = json_object_get(a, "masks"), *mb = json_object_get(b, "masks");
    if (!json_is_array(ma) || json_array_size(ma) != json_array_size(mb))
        return 0;
    for (size_t i = 0; i < json_array_size(ma); i++) {
        const json_t *x = json_array_get(ma, i), *y = json_array_get(mb, i);
        static const char *const keys[] = {"rle",          "predicted_iou", "stability_score",
                                           "point_coords", "bbox",          NULL};
        for (int k = 0; keys[k]; k++)
            if (!json_equal(json_object_get(x, keys[k]), json_object_get(y, keys[k])))
                return 0;
    }
    return 1;
}

static void test_task_alone(void)
{
    NEED(g_z_up && g_r_up);
    int st;
    /* no task: `everything: true` takes the daemon's defaults (3x3, all kept) */
    json_t *plain = post(g_z.port, NULL, json_pack("{s:b}", "everything", 1), &st);
    T_REQUIRE(st == 200, "everything: true: %d", st);
    T_CHECK(json_array_size(json_object_get(plain, "masks")) == 27 &&
                json_integer_value(
                    json_object_get(json_object_get(plain, "everything"), "points_per_side")) == 3,
            "3x3 grid, 3 masks each, all kept: %zu masks",
            json_array_size(json_object_get(plain, "masks")));
    /* a task alone is everything mode under its adapter: zero adapter, the
     * same masks exactly */
    json_t *zt = post(g_z.port, NULL, json_pack("{s:s}", "task", TASK), &st);
    T_CHECK(st == 200 &&
                !strcmp(json_string_value(json_object_get(zt, "mode")) ?: "", "everything"),
            "task alone: %d", st);
    T_CHECK(json_is_object(json_object_get(zt, "adapter")), "the adapter is named");
    T_CHECK(same_masks(plain, zt), "a zero hypernetwork's task changed everything mode");
    /* multipart with a task part, and `everything` given with the task */
    ts_extra form = {.form = {{.name = "image", .file = g_dog_path, .filename = "dog.jpg"},
                              {.name = "task", .data = TASK}},
                     .timeout_s = 900};
    json_t *mp = http_json(g_z.port, "POST", "/v1/segment", NULL, NULL, &form, &st);
    T_CHECK(st == 200 && same_masks(plain, mp), "multipart task alone: %d", st);
    json_decref(mp);
    json_t *zt2 =
        post(g_z.port, NULL,
             json_pack("{s:s,s:{s:i}}", "task", TASK, "everything", "points_per_side", 2), &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(zt2, "masks")) == 12,
            "task + everything {points_per_side 2}: %d, %zu masks", st,
            json_array_size(json_object_get(zt2, "masks")));
    json_decref(zt2);
    /* everything: false turns it off: the adapted prompt-free output */
    json_t *pf = post(g_z.port, NULL, json_pack("{s:s,s:b}", "task", TASK, "everything", 0), &st);
    T_CHECK(st == 200 && json_array_size(json_object_get(pf, "masks")) == 3 &&
                !json_object_get(pf, "mode"),
            "everything: false: %d", st);
    json_decref(pf);

    /* a random hypernetwork's adapter changes what is found */
    json_t *rplain = post(g_r.port, NULL, json_pack("{s:b}", "everything", 1), &st);
    T_CHECK(st == 200 && same_masks(plain, rplain), "no task: the same on both daemons");
    json_t *rt = post(g_r.port, NULL, json_pack("{s:s}", "task", TASK), &st);
    T_CHECK(st == 200 && json_is_array(json_object_get(rt, "masks")), "random task: %d", st);
    T_CHECK(!same_masks(rplain, rt), "a random hypernetwork's task left everything mode unchanged");
    /* ranked by the adapted IoU head: predicted_iou never increases */
    const json_t *m = json_object_get(rt, "masks");
    int sorted = 1;
    for (size_t i = 1; i < json_array_size(m); i++)
        sorted &= json_number_value(json_object_get(json_array_get(m, i - 1), "predicted_iou")) >=
                  json_number_value(json_object_get(json_array_get(m, i), "predicted_iou"));
    T_CHECK(sorted, "masks ranked by the adapted predicted IoU");
    json_decref(rplain);
    json_decref(rt);
    json_decref(plain);
    json_decref(zt);
}

static void test_grids_and_outputs(void)
{
    NEED(g_z_up);
    int st;
    /* an explicit grid: two points, in image pixels in the answer */
    json_t *r = post(g_z.port, NULL,
                     json_pack("{s:{s:[[[f,f],[f,f]]]}}", "everything", "point_grids", 0.125, 0.125,
                               0.875, 0.875),
                     &st);
    const json_t *m = json_object_get(r, "masks");
    T_CHECK(st == 200 && json_array_size(m) == 6, "point_grids: %d, %zu masks", st,
            json_array_size(m));
    int seen[2] = {0, 0};
    for (size_t i = 0; i < json_array_size(m); i++) {
        const json_t *pc = json_array_get(json_object_get(json_array_get(m, i), "point_coords"), 0);
        double x = json_number_value(json_array_get(pc, 0)),
               y = json_number_value(json_array_get(pc, 1));
        seen[0] += x == 100.0 && y == 66.75;
        seen[1] += x == 700.0 && y == 467.25;
    }
    T_CHECK(seen[0] == 3 && seen[1] == 3, "point_coords (100, 66.75) and (700, 467.25)");
    T_CHECK(json_is_null(json_object_get(json_object_get(r, "everything"), "points_per_side")),
            "points_per_side null with grids");
    json_decref(r);
    /* png and polygon output carry the same masks in other encodings */
    json_t *rle =
        post(g_z.port, NULL, json_pack("{s:{s:i}}", "everything", "points_per_side", 1), &st);
    json_t *png =
        post(g_z.port, NULL,
             json_pack("{s:{s:i},s:s}", "everything", "points_per_side", 1, "output", "png"), &st);
    const json_t *p0 = json_array_get(json_object_get(png, "masks"), 0);
    T_CHECK(
        st == 200 && json_array_size(json_object_get(png, "masks")) == 3 &&
            json_is_string(json_object_get(p0, "png")) && !json_object_get(p0, "rle") &&
            json_equal(json_object_get(p0, "bbox"),
                       json_object_get(json_array_get(json_object_get(rle, "masks"), 0), "bbox")),
        "png output: %d", st);
    json_t *poly = post(
        g_z.port, NULL,
        json_pack("{s:{s:i},s:s}", "everything", "points_per_side", 1, "output", "polygon"), &st);
    T_CHECK(st == 200 && json_is_array(json_object_get(
                             json_array_get(json_object_get(poly, "masks"), 0), "polygons")),
            "polygon output: %d", st);
    json_decref(rle);
    json_decref(png);
    json_decref(poly);
}

static void test_bad_parameters(void)
{
    NEED(g_z_up);
    struct {
        const char *body; /* members besides the image */
        const char *field;
    } cases[] = {
        {"{\"everything\": {\"points_per_side\": 0}}", "everything.points_per_side"},
        {"{\"everything\": {\"points_per_side\": 129}}", "everything.points_per_side"},
        {"{\"everything\": {\"points_per_side\": 3.5}}", "everything.points_per_side"},
        {"{\"everything\": {\"points_per_side\": \"32\"}}", "everything.points_per_side"},
        {"{\"everything\": {\"points_per_batch\": 0}}", "everything.points_per_batch"},
        {"{\"everything\": {\"points_per_batch\": 257}}", "everything.points_per_batch"},
        {"{\"everything\": {\"pred_iou_thresh\": 1.5}}", "everything.pred_iou_thresh"},
        {"{\"everything\": {\"stability_score_thresh\": null}}",
         "everything.stability_score_thresh"},
        {"{\"everything\": {\"stability_score_offset\": -1}}", "everything.stability_score_offset"},
        {"{\"everything\": {\"box_nms_thresh\": 2}}", "everything.box_nms_thresh"},
        {"{\"everything\": {\"crop_n_layers\": 5}}", "everything.crop_n_layers"},
        {"{\"everything\": {\"crop_nms_thresh\": -0.5}}", "everything.crop_nms_thresh"},
        {"{\"everything\": {\"crop_overlap_ratio\": 1}}", "everything.crop_overlap_ratio"},
        {"{\"everything\": {\"crop_n_points_downscale_factor\": 0}}",
         "everything.crop_n_points_downscale_factor"},
        {"{\"everything\": {\"points_per_side\": 2, \"crop_n_layers\": 1, "
         "\"crop_n_points_downscale_factor\": 4}}",
         "everything.crop_n_points_downscale_factor"},
        {"{\"everything\": {\"min_mask_region_area\": -3}}", "everything.min_mask_region_area"},
        {"{\"everything\": {\"point_grid\": []}}", "everything.point_grid"},
        {"{\"everything\": {\"point_grids\": [[[0.5]]]}}", "everything.point_grids[0][0]"},
        {"{\"everything\": {\"point_grids\": [[[0.5, 1.5]]]}}", "everything.point_grids[0][0]"},
        {"{\"everything\": {\"point_grids\": []}}", "everything.point_grids"},
        {"{\"everything\": {\"point_grids\": [[[0.5, 0.5]]], \"crop_n_layers\": 1}}",
         "everything.point_grids"},
        {"{\"everything\": {\"point_grids\": [[[0.5, 0.5]]], \"points_per_side\": 4}}",
         "everything.point_grids"},
        {"{\"everything\": \"yes\"}", "everything"},
        {"{\"everything\": 1}", "everything"},
        {"{\"everything\": true, \"points\": [[10, 10, 1]]}", "everything"},
        {"{\"everything\": true, \"multimask\": false}", "multimask"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_error_t e;
        json_t *o = json_loads(cases[i].body, 0, &e);
        T_REQUIRE(o, "case %zu: %s", i, e.text);
        char path[PATH_MAX];
        write_request(path, sizeof path, g_dog_b64, o);
        expect_error(g_z.port, "POST", "/v1/segment", "application/json", path, NULL, 400,
                     cases[i].field, cases[i].body);
        unlink(path);
    }
    /* crop layers need the pixels, not only the image_id */
    int st;
    json_t *r =
        post(g_z.port, NULL, json_pack("{s:{s:i}}", "everything", "points_per_side", 1), &st);
    const char *id = json_string_value(json_object_get(r, "image_id"));
    char path[PATH_MAX];
    T_REQUIRE(st == 200 && id, "status %d", st);
    write_request(path, sizeof path, NULL,
                  json_pack("{s:s,s:{s:i}}", "image_id", id, "everything", "crop_n_layers", 1));
    expect_error(g_z.port, "POST", "/v1/segment", "application/json", path, NULL, 400,
                 "everything.crop_n_layers", "crop layers from an image_id");
    unlink(path);
    json_decref(r);
}

/* A grid far beyond the deadline: 504 in about the deadline, the daemon
 * healthy after; a grid whose masks outgrow max-mask-bytes: 413. */
static void test_deadline_and_limits(void)
{
    NEED(1);
    daemon_proc d;
    const char *args[] = {"--request-timeout-ms", "3000", "--max-mask-bytes", "1MiB", NULL};
    T_REQUIRE(start_with(&d, "deadline", args) == 0, "start");
    int st;
    double t0 = now_s();
    json_t *r =
        post(d.port, NULL, json_pack("{s:{s:i}}", "everything", "points_per_side", 128), &st);
    double took = now_s() - t0;
    const json_t *e = json_object_get(r, "error");
    T_CHECK(st == 504 &&
                !strcmp(json_string_value(json_object_get(e, "field")) ?: "", "everything"),
            "128x128 grid: status %d", st);
    T_CHECK(took < 30, "answered in %.1f s (deadline 3 s)", took);
    json_decref(r);
    T_CHECK(http(d.port, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL) == 200 &&
                http(d.port, "GET", "/readyz", NULL, NULL, NULL, NULL, NULL) == 200,
            "healthy after the deadline");
    r = post(d.port, NULL, json_pack("{s:{s:i}}", "everything", "points_per_side", 1), &st);
    T_CHECK(st == 200, "a small grid after it: %d", st);
    json_decref(r);
    /* every mask kept, salt-and-pepper RLE: over 1 MiB after a few prompts */
    r = post(d.port, NULL,
             json_pack("{s:{s:i,s:f,s:f}}", "everything", "points_per_side", 8, "pred_iou_thresh",
                       0.0, "stability_score_thresh", 0.0),
             &st);
    e = json_object_get(r, "error");
    T_CHECK(st == 413 &&
                strstr(json_string_value(json_object_get(e, "message")) ?: "", "max_mask_bytes"),
            "mask bytes: %d", st);
    json_decref(r);
    char *m = get_metrics(d.port);
    T_CHECK(m && metric(m, "tasam_deadline_expired_total") >= 1, "deadline metric");
    free(m);
    T_CHECK(daemon_stop(&d) == 0, "clean stop");
}

static void test_bad_defaults_refused(void)
{
    NEED(1);
    char cmd[3 * PATH_MAX], logp[PATH_MAX];
    size_t n;
    tmp_name(logp, sizeof logp, ".log");
    snprintf(cmd, sizeof cmd,
             "timeout 60 '%s' --checkpoint '%s' --device cpu --listen 127.0.0.1:0 --state-dir "
             "'%s/state-bad' --everything-defaults '{\"points_per_side\": 0}' >'%s' 2>&1",
             g_tasamd, t_fixture("sam_tiny.safetensors"), g_tmp, logp);
    int rc = system(cmd);
    char *s = (char *)t_read_file(logp, &n);
    T_CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 2 && s && memmem(s, n, "everything-defaults", 19) &&
                memmem(s, n, "points_per_side", 15),
            "a bad everything-defaults: exit %d", WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
    free(s);
}

static void test_stop(void)
{
    NEED(g_z_up || g_r_up);
    if (g_z_up)
        T_CHECK(daemon_stop(&g_z) == 0, "zero: clean stop");
    if (g_r_up)
        T_CHECK(daemon_stop(&g_r) == 0, "random: clean stop");
    g_z_up = g_r_up = 0;
}

int main(int argc, char **argv)
{
    (void)argc;
    if (ts_init(argv[0])) {
        printf("test_server_everything: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    T_RUN(test_start);
    T_RUN(test_fixture_cases);
    T_RUN(test_task_alone);
    T_RUN(test_grids_and_outputs);
    T_RUN(test_bad_parameters);
    T_RUN(test_deadline_and_limits);
    T_RUN(test_bad_defaults_refused);
    T_RUN(test_stop);
    if (g_z.pid)
        daemon_kill9(&g_z);
    if (g_r.pid)
        daemon_kill9(&g_r);
    json_decref(g_cases);
    eng_ckpt_close(g_amg_golden);
    ts_cleanup();
    return t_summary("test_server_everything");
}
