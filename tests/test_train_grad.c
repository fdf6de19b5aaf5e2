/*
 * tests/test_train_grad.c: `tasam-train grad` as a user runs it on the
 * fixture training golden (golden_train_tiny.*): its dump compared tensor
 * by tensor with the fixture (loss relative 1e-4, logits 2e-3, IoU 1e-3,
 * each gradient relative L2 1e-3), --check, and the exit status and
 * message of bad invocations and hostile case files; the case parser on
 * malformed JSON, each error naming its field.
 */
#include "harness.h"
#include "tdata.h"

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/sam.h"
#include "train/gradcheck.h"

static char prog[4096];

static float *read_f32(const eng_ckpt *c, const char *name, size_t n)
{
    const eng_ckpt_tensor *t = eng_ckpt_find(c, name);
    if (!t || (size_t)t->numel != n)
        return NULL;
    float *f = malloc(n * sizeof *f);
    if (eng_ckpt_read_f32(c, t, f)) {
        free(f);
        return NULL;
    }
    return f;
}

static double read_f64_1(const eng_ckpt *c, const char *name)
{
    const eng_ckpt_tensor *t = eng_ckpt_find(c, name);
    double v = NAN;
    if (t && t->numel == 1 && t->dtype == ENG_F64)
        memcpy(&v, t->data, sizeof v);
    return v;
}

static void test_dump_matches_fixture(void)
{
    T_NEED_FIXTURES();
    char cmd[8192], out[65536], dump[512];
    snprintf(dump, sizeof dump, "%s", td_path("grad.safetensors"));
    char ck[1024], gold[1024], cases[1024];
    snprintf(ck, sizeof ck, "%s", t_fixture("sam_tiny.safetensors"));
    snprintf(gold, sizeof gold, "%s", t_fixture("golden_train_tiny.safetensors"));
    snprintf(cases, sizeof cases, "%s", t_fixture("golden_train_tiny.json"));
    snprintf(cmd, sizeof cmd, "%s grad --checkpoint %s --golden %s --cases %s --dump %s --check",
             prog, ck, gold, cases, dump);
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "exit %d:\n%s", rc, out);
    T_CHECK(strstr(out, "pos_point") && strstr(out, "target_mask2") &&
                !strstr(out, "OUT OF TOLERANCE"),
            "report:\n%s", out);
    eng_ckpt *d = NULL, *g = NULL;
    tr_gc_cases *cs = NULL;
    T_REQUIRE(eng_ckpt_open(&d, dump) == 0 && eng_ckpt_open(&g, gold) == 0 &&
                  tr_gc_cases_load(cases, &cs) == 0,
              "%s", eng_last_error());
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    size_t n_grad_dump = 0, n_grad_ref = 0;
    for (size_t i = 0; i < eng_ckpt_count(d); i++)
        n_grad_dump += strstr(eng_ckpt_at(d, i)->name, ".grad_") != NULL;
    for (size_t i = 0; i < eng_ckpt_count(g); i++)
        n_grad_ref += strstr(eng_ckpt_at(g, i)->name, ".grad_") != NULL;
    T_CHECK(n_grad_dump == n_grad_ref && n_grad_ref > 0, "%zu gradient tensors, the fixture %zu",
            n_grad_dump, n_grad_ref);
    for (int c = 0; c < cs->n; c++) {
        const char *cn = cs->cases[c].name;
        char nm[256];
        snprintf(nm, sizeof nm, "%s.loss", cn);
        double l = read_f64_1(d, nm), lr = read_f64_1(g, nm);
        T_CHECK(fabs(l - lr) <= 1e-4 * fabs(lr), "%s: loss %.9g, fixture %.9g", cn, l, lr);
        const char *parts[4] = {"focal", "dice", "iou_mse", "actual_iou"};
        for (int k = 0; k < 4; k++) {
            snprintf(nm, sizeof nm, "%s.%s", cn, parts[k]);
            float *a = read_f32(d, nm, 3), *b = read_f32(g, nm, 3);
            T_CHECK(a && b && t_max_abs_diff(a, b, 3, NULL) <= 1e-4, "%s", nm);
            free(a), free(b);
        }
        snprintf(nm, sizeof nm, "%s.low_res_logits", cn);
        float *a = read_f32(d, nm, 3 * ENG_SAM_LOWRES_FLOATS);
        float *b = read_f32(g, nm, 3 * ENG_SAM_LOWRES_FLOATS);
        T_CHECK(a && b && t_max_abs_diff(a, b, 3 * ENG_SAM_LOWRES_FLOATS, NULL) <= 2e-3, "%s", nm);
        free(a), free(b);
        snprintf(nm, sizeof nm, "%s.iou_predictions", cn);
        a = read_f32(d, nm, 3);
        b = read_f32(g, nm, 3);
        T_CHECK(a && b && t_max_abs_diff(a, b, 3, NULL) <= 1e-3, "%s", nm);
        free(a), free(b);
        for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++)
            for (int k = 0; k < 2; k++) {
                size_t n = (size_t)cs->rank * (k ? tg[i].out : tg[i].in);
                snprintf(nm, sizeof nm, "%s.%s.grad_%c", cn, tg[i].name, k ? 'B' : 'A');
                float *gd = read_f32(d, nm, n), *gr = read_f32(g, nm, n);
                T_CHECK(!gd == !gr, "%s: in the dump %d, in the fixture %d", nm, gd != NULL,
                        gr != NULL);
                if (gd && gr)
                    T_CHECK(tr_rel_l2(gd, gr, n) <= 1e-3, "%s: relative L2 error %.3g", nm,
                            tr_rel_l2(gd, gr, n));
                free(gd), free(gr);
            }
    }
    eng_ckpt_close(d);
    eng_ckpt_close(g);
    tr_gc_cases_free(cs);
}

static void test_bad_invocations(void)
{
    char cmd[8192], out[16384], p[512];
    int rc = t_run_cmd(prog, out, sizeof out);
    T_CHECK(rc == 2 && strstr(out, "grad"), "no command: exit %d", rc);
    snprintf(cmd, sizeof cmd, "%s grad --help", prog);
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 0 && strstr(out, "--checkpoint") && strstr(out, "example"), "--help: %d", rc);
    snprintf(cmd, sizeof cmd, "%s grad --checkpoint x", prog);
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 2 && strstr(out, "required"), "missing options: exit %d: %s", rc, out);
    snprintf(cmd, sizeof cmd, "%s grad --frobnicate", prog);
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 2 && strstr(out, "--frobnicate"), "unknown option: exit %d: %s", rc, out);
    snprintf(cmd, sizeof cmd, "%s grad --threads 0 --checkpoint a --golden b --cases c", prog);
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 2 && strstr(out, "--threads"), "--threads 0: exit %d: %s", rc, out);
    snprintf(cmd, sizeof cmd, "%s grad --checkpoint a --golden b --cases %s", prog,
             td_path("none.json"));
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "none.json"), "missing cases file: exit %d: %s", rc, out);
    T_NEED_FIXTURES();
    char ck[1024], gold[1024];
    snprintf(ck, sizeof ck, "%s", t_fixture("sam_tiny.safetensors"));
    snprintf(gold, sizeof gold, "%s", t_fixture("golden_train_tiny.safetensors"));
    /* a case whose tensors the golden lacks */
    snprintf(p, sizeof p, "%s", td_path("other.json"));
    td_write(p, "{\"image_size\": [534, 800], \"rank\": 4, \"alpha\": 8, \"cases\": "
                "[{\"name\": \"nosuch\", \"prompt\": {\"points\": [[1, 2]], \"labels\": [1]}}]}");
    snprintf(cmd, sizeof cmd, "%s grad --checkpoint %s --golden %s --cases %s", prog, ck, gold, p);
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "nosuch.target"), "unknown case: exit %d: %s", rc, out);
    /* the rank of the file disagrees with the golden's factors */
    td_write(p, "{\"image_size\": [534, 800], \"rank\": 2, \"alpha\": 8, \"cases\": "
                "[{\"name\": \"pos_point\", \"prompt\": {\"points\": [[1, 2]], \"labels\": "
                "[1]}}]}");
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "pos_point") && strstr(out, "lora_A"),
            "rank mismatch: exit %d: %s", rc, out);
    /* a golden without an embedding (the SAM checkpoint itself) */
    snprintf(cmd, sizeof cmd, "%s grad --checkpoint %s --golden %s --cases %s", prog, ck, ck,
             t_fixture("golden_train_tiny.json"));
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "image_embedding"), "golden without embedding: exit %d: %s", rc,
            out);
}

/* Malformed case files: each error names what is wrong. */
static void test_parser(void)
{
    static const struct {
        const char *json, *expect;
    } bad[] = {
        {"[1, 2]", "not a JSON object"},
        {"{\"rank\": 4, \"alpha\": 8, \"cases\": []}", "image_size"},
        {"{\"image_size\": [0, 5], \"rank\": 4, \"alpha\": 8, \"cases\": []}", "image_size"},
        {"{\"image_size\": [5, 5], \"rank\": 40, \"alpha\": 8, \"cases\": []}", "rank"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": -1, \"cases\": []}", "alpha"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": []}", "cases"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [3]}", "cases[0]"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a b\", "
         "\"prompt\": {}}]}",
         "cases[0].name"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a\"}]}",
         "prompt"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a\", "
         "\"prompt\": {\"points\": [[1, 2]], \"labels\": []}}]}",
         "same length"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a\", "
         "\"prompt\": {\"points\": [[1]], \"labels\": [1]}}]}",
         "points[0]"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a\", "
         "\"prompt\": {\"points\": [[1, 2]], \"labels\": [7]}}]}",
         "labels[0]"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a\", "
         "\"prompt\": {\"box\": [1, 2, 3]}}]}",
         "box"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a\", "
         "\"prompt\": {}, \"best\": 5}]}",
         "best"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a\", "
         "\"prompt\": {}}, {\"name\": \"a\", \"prompt\": {}}]}",
         "repeats"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"rank\": 2, \"cases\": []}",
         "duplicate"},
        {"{\"image_size\": [5, 5], \"rank\": 4, \"alpha\": 8, \"cases\": [{\"name\": \"a\", "
         "\"prompt\": {\"points\": [[1, 1e300]], \"labels\": [1]}}]}",
         "points[0]"},
        {"{\"image_size\": [5, 5", "line 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tr_gc_cases *c = NULL;
        int rc = tr_gc_cases_parse(bad[i].json, strlen(bad[i].json), "t.json", &c);
        T_CHECK(rc != 0 && !c && strstr(eng_last_error(), bad[i].expect) &&
                    strstr(eng_last_error(), "t.json"),
                "input %zu: rc %d, message '%s' (expected to mention '%s')", i, rc,
                eng_last_error(), bad[i].expect);
        tr_gc_cases_free(c);
    }
    const char *good = "{\"image_size\": [534, 800], \"rank\": 2, \"alpha\": 4, \"cases\": "
                       "[{\"name\": \"x-1\", \"prompt\": {\"points\": [[1.5, 2], [3, 4]], "
                       "\"labels\": [1, 0], \"box\": [0, 0, 10, 10]}, \"best\": 1, \"loss\": 2.5}, "
                       "{\"name\": \"none\", \"prompt\": {}}]}";
    tr_gc_cases *c = NULL;
    T_REQUIRE(tr_gc_cases_parse(good, strlen(good), "good", &c) == 0, "%s", eng_last_error());
    T_CHECK(c->n == 2 && c->img_w == 800 && c->img_h == 534 && c->rank == 2 && c->alpha == 4,
            "header");
    T_CHECK(c->cases[0].n_points == 2 && c->cases[0].points[0] == 1.5f &&
                c->cases[0].labels[1] == 0 && c->cases[0].has_box && c->cases[0].box[2] == 10 &&
                c->cases[0].ref_best == 1 && c->cases[0].ref_loss == 2.5,
            "case 0");
    T_CHECK(c->cases[1].n_points == 0 && !c->cases[1].has_box && c->cases[1].ref_best == -1 &&
                isnan(c->cases[1].ref_loss),
            "case 1");
    tr_gc_cases_free(c);
}

int main(int argc, char **argv)
{
    (void)argc;
    td_sibling(argv[0], "tasam-train", prog, sizeof prog);
    if (td_init("grad")) {
        perror("mkdtemp");
        return 1;
    }
    T_RUN(test_dump_matches_fixture);
    T_RUN(test_bad_invocations);
    T_RUN(test_parser);
    td_cleanup();
    return t_summary("test_train_grad");
}
