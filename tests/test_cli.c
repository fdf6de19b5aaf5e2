/*
 * tests/test_cli.c: `tasam segment` end to end, as a user runs it: the
 * fixture checkpoint in both formats, a fixture prompt case, --dump checked
 * against the reference goldens, --json RLE decoded back to the dumped masks,
 * --everything on every golden_amg_tiny case, and the exit status and
 * message of bad invocations.
 */
#include "harness.h"

#include <jansson.h>
#include <libgen.h>
#include <unistd.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/rle.h"
#include "tests/amg_case.h"

static char tasam[4096];
static char tmpdir[] = "/tmp/tasam-cli-XXXXXX";

static double agree(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t same = 0;
    for (size_t i = 0; i < n; i++)
        same += (a[i] != 0) == (b[i] != 0);
    return (double)same / (double)n;
}

/* Compare a dump with golden CASE tensors. */
static void check_dump(const char *dump, const char *cname, int C)
{
    eng_ckpt *d = NULL, *g = NULL;
    T_REQUIRE(eng_ckpt_open(&d, dump) == 0, "%s", eng_last_error());
    T_REQUIRE(eng_ckpt_open(&g, t_fixture("golden_tiny.safetensors")) == 0, "%s", eng_last_error());
    const char *names[3] = {"iou_predictions", "low_res_logits", "masks"};
    double tol[2] = {1e-3, 2e-3};
    for (int k = 0; k < 3; k++) {
        char gname[128];
        snprintf(gname, sizeof gname, "%s.%s", cname, names[k]);
        const eng_ckpt_tensor *a = eng_ckpt_find(d, names[k]), *b = eng_ckpt_find(g, gname);
        T_REQUIRE(a && b && a->numel == b->numel, "%s: present with the golden's size", names[k]);
        T_CHECK(a->ndim == b->ndim && !memcmp(a->shape, b->shape, sizeof(int64_t) * a->ndim),
                "%s: golden layout", names[k]);
        if (k < 2) {
            float *x = malloc(a->numel * 4), *y = malloc(b->numel * 4);
            eng_ckpt_read_f32(d, a, x);
            eng_ckpt_read_f32(g, b, y);
            double diff = t_max_abs_diff(x, y, (size_t)a->numel, NULL);
            T_CHECK(diff <= tol[k], "%s max|diff| %g", names[k], diff);
            free(x);
            free(y);
        } else {
            double ag = agree(a->data, b->data, (size_t)a->numel);
            T_CHECK(ag >= 0.999, "masks agree on %.5f", ag);
        }
    }
    const eng_ckpt_tensor *e = eng_ckpt_find(d, "image_embedding"),
                          *ge = eng_ckpt_find(g, "image_embedding");
    T_REQUIRE(e && ge && e->numel == ge->numel, "image_embedding");
    float *x = malloc(e->numel * 4), *y = malloc(e->numel * 4);
    eng_ckpt_read_f32(d, e, x);
    eng_ckpt_read_f32(g, ge, y);
    T_CHECK(t_max_abs_diff(x, y, (size_t)e->numel, NULL) <= 2e-3, "embedding");
    free(x);
    free(y);
    (void)C;
    eng_ckpt_close(d);
    eng_ckpt_close(g);
}

static void segment_case(const char *ckpt_name)
{
    T_NEED_FIXTURES();
    T_REQUIRE(access(tasam, X_OK) == 0, "%s not built", tasam);
    char cmd[32768], out[16384], dump[256], json[256], ck[4096], img[4096];
    snprintf(dump, sizeof dump, "%s/%s.safetensors", tmpdir, ckpt_name);
    snprintf(json, sizeof json, "%s/%s.json", tmpdir, ckpt_name);
    /* t_fixture() returns one static buffer: copy before the next call */
    snprintf(ck, sizeof ck, "%s", t_fixture(ckpt_name));
    snprintf(img, sizeof img, "%s", t_fixture("images/dog.jpg"));
    /* case points3: two positive points, one negative, multimask */
    snprintf(cmd, sizeof cmd,
             "%s segment --device cpu --checkpoint %s --image %s --point 240,213.60000000000002,1 "
             "--point 480,267,1 --point 720,53.400000000000006,0 --dump %s --json %s --png %s/p",
             tasam, ck, img, dump, json, tmpdir);
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "exit %d: %s", rc, out);
    check_dump(dump, "points3", 3);

    /* the JSON's RLE decodes to the dumped masks */
    json_error_t jerr;
    json_t *root = json_load_file(json, 0, &jerr);
    T_REQUIRE(root, "json: %s", jerr.text);
    json_t *masks = json_object_get(root, "masks");
    T_REQUIRE(json_array_size(masks) == 3, "3 masks in the JSON");
    eng_ckpt *d = NULL;
    T_REQUIRE(eng_ckpt_open(&d, dump) == 0, "%s", eng_last_error());
    const eng_ckpt_tensor *mt = eng_ckpt_find(d, "masks");
    uint8_t *dec = malloc(534 * 800);
    for (size_t i = 0; i < 3; i++) {
        json_t *r = json_object_get(json_array_get(masks, i), "rle");
        const char *counts = json_string_value(json_object_get(r, "counts"));
        eng_rle rle = {0};
        T_REQUIRE(counts && eng_rle_from_string(counts, strlen(counts), 534, 800, &rle) == 0,
                  "rle %zu: %s", i, eng_last_error());
        T_CHECK(eng_rle_decode(&rle, dec) == 0, "decode");
        T_CHECK(memcmp(dec, (const uint8_t *)mt->data + i * 534 * 800, 534 * 800) == 0,
                "mask %zu: RLE and dump differ", i);
        T_CHECK(json_integer_value(json_object_get(json_array_get(masks, i), "area")) ==
                    (json_int_t)eng_rle_area(&rle),
                "area");
        eng_rle_free(&rle);
    }
    free(dec);
    eng_ckpt_close(d);
    json_decref(root);
    char png[256];
    snprintf(png, sizeof png, "%s/p_overlay.png", tmpdir);
    T_CHECK(access(png, R_OK) == 0, "overlay PNG written");
}

static void test_segment_pth(void) { segment_case("sam_tiny.pth"); }
static void test_segment_safetensors(void) { segment_case("sam_tiny.safetensors"); }

static void test_batch_of_boxes(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(access(tasam, X_OK) == 0, "%s not built", tasam);
    char cmd[32768], out[16384], dump[256], ck[4096], img[4096];
    snprintf(dump, sizeof dump, "%s/boxes.safetensors", tmpdir);
    snprintf(ck, sizeof ck, "%s", t_fixture("sam_tiny.safetensors"));
    snprintf(img, sizeof img, "%s", t_fixture("images/dog.jpg"));
    snprintf(
        cmd, sizeof cmd,
        "%s segment --device cpu --checkpoint %s --image %s "
        "--box 80,53.400000000000006,320,267 --box 400,106.80000000000001,760,427.20000000000005 "
        "--box 0,320.4,240,534 --box 240,160.2,560,373.79999999999995 --dump %s",
        tasam, ck, img, dump);
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "exit %d: %s", rc, out);
    check_dump(dump, "boxes4", 3);
}

/* `tasam segment --everything` with each fixture case's arguments as flags. */
static void test_everything_cases(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(access(tasam, X_OK) == 0, "%s not built", tasam);
    json_t *cases = amg_cases_load();
    eng_ckpt *golden = NULL;
    T_REQUIRE(cases && json_array_size(cases) >= 4, "golden_amg_tiny.json: no cases");
    T_REQUIRE(eng_ckpt_open(&golden, t_fixture("golden_amg_tiny.safetensors")) == 0, "%s",
              eng_last_error());
    char ck[4096], img[4096];
    snprintf(ck, sizeof ck, "%s", t_fixture("sam_tiny.safetensors"));
    snprintf(img, sizeof img, "%s", t_fixture("images/dog.jpg"));
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        char cmd[32768], out[16384], json[512], flags[4096] = "";
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(c, "args"), k, v)
        {
            char opt[128];
            size_t n = strlen(flags);
            snprintf(opt, sizeof opt, "%s", k);
            for (char *q = opt; *q; q++)
                *q = *q == '_' ? '-' : *q;
            snprintf(flags + n, sizeof flags - n, " --%s %.17g", opt, json_number_value(v));
        }
        snprintf(json, sizeof json, "%s/everything-%s.json", tmpdir, name);
        snprintf(cmd, sizeof cmd,
                 "%s segment --device cpu --checkpoint %s --image %s --everything%s --json %s "
                 "--png %s/ev-%s",
                 tasam, ck, img, flags, json, tmpdir, name);
        int rc = t_run_cmd(cmd, out, sizeof out);
        T_CHECK(rc == 0 && strstr(out, "everything:"), "%s: exit %d: %s", name, rc, out);
        json_error_t jerr;
        json_t *root = json_load_file(json, 0, &jerr);
        T_CHECK(root, "%s: %s", name, jerr.text);
        int n = 0;
        amg_rec *recs = amg_recs_from_json(json_object_get(root, "masks"), &n);
        T_CHECK(recs, "%s: masks malformed", name);
        if (recs)
            amg_case_check(c, golden, recs, n);
        T_CHECK(!strcmp(json_string_value(json_object_get(root, "mode")) ?: "", "everything") &&
                    json_integer_value(
                        json_object_get(json_object_get(root, "everything"), "points_per_side")) ==
                        json_integer_value(
                            json_object_get(json_object_get(c, "args"), "points_per_side")),
                "%s: the parameters are echoed", name);
        char png[1024];
        snprintf(png, sizeof png, "%s/ev-%s_overlay.png", tmpdir, name);
        T_CHECK(access(png, R_OK) == 0, "%s: overlay written", name);
        amg_recs_free(recs, n);
        json_decref(root);
    }
    eng_ckpt_close(golden);
    json_decref(cases);
}

static void test_bad_invocations(void)
{
    T_REQUIRE(access(tasam, X_OK) == 0, "%s not built", tasam);
    char cmd[32768], out[16384];
    struct {
        const char *args;
        int status;
        const char *says;
    } cases[] = {
        {"", 2, "usage"},
        {"frobnicate", 2, "unknown command"},
        {"segment", 2, "--image is required"},
        {"segment --image x.jpg --point 1,2", 2, "X,Y,LABEL"},
        {"segment --image x.jpg --point 1,2,7", 2, "LABEL 0 or 1"},
        {"segment --image x.jpg --box 5,5,1,1", 2, "X0<=X1"},
        {"segment --image x.jpg --bogus", 2, "unknown option"},
        {"segment --device cpu --checkpoint /nonexistent.pth --image x.jpg", 1, "/nonexistent.pth"},
        {"segment --help", 0, "--checkpoint"},
        {"segment --help", 0, "--crop-n-points-downscale-factor N"},
        {"segment --image x.jpg --points-per-side 8", 2, "--points-per-side needs --everything"},
        {"segment --image x.jpg --everything --points-per-side 0", 2, "--points-per-side: "},
        {"segment --image x.jpg --everything --points-per-side 129", 2, "[1, 128]"},
        {"segment --image x.jpg --everything --points-per-batch 300", 2, "--points-per-batch"},
        {"segment --image x.jpg --everything --pred-iou-thresh x", 2, "expected a number"},
        {"segment --image x.jpg --everything --crop-overlap-ratio 1", 2, "--crop-overlap-ratio"},
        {"segment --image x.jpg --everything --point 1,2,1", 2, "drop --point"},
        {"segment --image x.jpg --everything --single-mask", 2, "--single-mask does not apply"},
        {"segment --image x.jpg --everything --point-grids /nonexistent.json", 2,
         "/nonexistent.json"},
        {"segment --image x.jpg --everything --points-per-side 4 --point-grids g.json", 2,
         "not both"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s %s", tasam, cases[i].args);
        int rc = t_run_cmd(cmd, out, sizeof out);
        T_CHECK(rc == cases[i].status, "`tasam %s`: exit %d, want %d", cases[i].args, rc,
                cases[i].status);
        T_CHECK(strstr(out, cases[i].says) != NULL, "`tasam %s` does not say '%s': %s",
                cases[i].args, cases[i].says, out);
    }
    if (t_fixtures()) {
        /* an image that is not one */
        char ck[4096];
        snprintf(ck, sizeof ck, "%s", t_fixture("sam_tiny.safetensors"));
        snprintf(cmd, sizeof cmd, "%s segment --device cpu --checkpoint %s --image %s", tasam, ck,
                 t_fixture("cases.json"));
        int rc = t_run_cmd(cmd, out, sizeof out);
        T_CHECK(rc == 1 && strstr(out, "cases.json"), "non-image: exit %d: %s", rc, out);
    }
}

int main(int argc, char **argv)
{
    /* build/tests/test_cli -> build/tasam */
    char self[4096];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(tasam, sizeof tasam, "%s/../tasam", dirname(self));
    (void)argc;
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    T_RUN(test_segment_pth);
    T_RUN(test_segment_safetensors);
    T_RUN(test_batch_of_boxes);
    T_RUN(test_everything_cases);
    T_RUN(test_bad_invocations);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return t_summary("test_cli");
}
