/*
 * train/cmd_grad.c: `tasam-train grad`: recompute every case of a training
 * golden (loss, logits, IoU predictions, LoRA gradients) with the engine's
 * training path, compare with the golden's own results where it has them,
 * and dump what was computed in the golden's layout.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"
#include "engine/sam_train.h"
#include "train/gradcheck.h"
#include "train/io.h"
#include "train/train.h"

/* The fixture's tolerances for an fp32 implementation. */
#define TOL_LOSS   1e-4 /* relative */
#define TOL_LOGITS 2e-3 /* max |diff| */
#define TOL_IOU    1e-3 /* max |diff| */
#define TOL_GRAD   1e-3 /* relative L2 per tensor */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tasam-train grad --checkpoint CK --golden FILE.safetensors --cases FILE.json\n"
            "                        [--dump OUT.safetensors] [--check] [--threads N]\n"
            "\n"
            "Recompute every case of a training golden with the engine's training path (the\n"
            "LoRA-adapted mask decoder's forward and backward on the CPU, fp32): the loss (20\n"
            "focal + dice on the best of the 3 multimask outputs + IoU-prediction MSE), the\n"
            "low-res logits, the IoU predictions and d loss / d A, d B of every adapted layer.\n"
            "\n"
            "  --checkpoint CK   SAM checkpoint (.pth or safetensors) the golden was made with\n"
            "  --golden FILE     image_embedding, per case CASE.target and\n"
            "                    CASE.<layer>.lora_A / .lora_B (layers without them are not\n"
            "                    adapted); reference results, when present, are compared\n"
            "  --cases FILE      the JSON: image_size [h, w], rank, alpha, and cases with their\n"
            "                    prompts (points, labels, box) in original-image pixels\n"
            "  --dump OUT        write CASE.loss, .focal, .dice, .iou_mse, .actual_iou (F64),\n"
            "                    CASE.low_res_logits [3,256,256], .iou_predictions [3] and\n"
            "                    CASE.<layer>.grad_A [r,in], .grad_B [out,r] (F32)\n"
            "  --check           exit 1 unless every reference result is within the fixture's\n"
            "                    tolerances (loss 1e-4 relative, logits 2e-3, IoU 1e-3, each\n"
            "                    gradient 1e-3 relative L2)\n"
            "  --threads N       CPU threads (default: all cores)\n"
            "\n"
            "Prints one line per case: loss, best mask, and against the reference (when the\n"
            "golden has one) the loss's relative error, logits and IoU max |diff| and the worst\n"
            "gradient's relative L2 error.\n"
            "\n"
            "example (the repository's fixtures):\n"
            "  build/tasam-train grad --checkpoint ../shared/fixtures/sam_tiny.safetensors \\\n"
            "      --golden ../shared/fixtures/golden_train_tiny.safetensors \\\n"
            "      --cases ../shared/fixtures/golden_train_tiny.json --dump out/grad.safetensors "
            "--check\n");
}

/* A reference tensor of n values as f32, NULL when the golden lacks it (or
 * has it with another size: reported by the caller as missing). */
static float *ref_tensor(const eng_ckpt *g, const char *name, size_t n)
{
    const eng_ckpt_tensor *t = eng_ckpt_find(g, name);
    if (!t || t->numel != (int64_t)n || t->dtype == ENG_U8)
        return NULL;
    float *f = malloc(n * sizeof *f);
    if (f && eng_ckpt_read_f32(g, t, f)) {
        free(f);
        return NULL;
    }
    return f;
}

/* Dump entries: names and data kept alive until the write. */
typedef struct {
    eng_st_entry *e;
    size_t n, cap;
    char **names;
    double **f64;
    size_t nf;
} dump_t;

static int dump_add(dump_t *d, const char *name, eng_dtype dt, int ndim, const int64_t *shape,
                    const void *data)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 256;
        eng_st_entry *e = realloc(d->e, cap * sizeof *e);
        char **nm = e ? realloc(d->names, cap * sizeof *nm) : NULL;
        if (e)
            d->e = e;
        if (nm)
            d->names = nm;
        if (!e || !nm)
            return eng_error(ENG_ENOMEM, "out of memory");
        d->cap = cap;
    }
    char *nm = strdup(name);
    if (!nm)
        return eng_error(ENG_ENOMEM, "out of memory");
    eng_st_entry *e = &d->e[d->n];
    memset(e, 0, sizeof *e);
    d->names[d->n++] = nm;
    e->name = nm;
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->data = data;
    return 0;
}

/* n doubles copied into storage the dump owns. */
static int dump_f64(dump_t *d, const char *name, const double *v, int64_t n)
{
    double **f = realloc(d->f64, (d->nf + 1) * sizeof *f);
    if (!f)
        return eng_error(ENG_ENOMEM, "out of memory");
    d->f64 = f;
    if (!(f[d->nf] = malloc((size_t)n * sizeof(double))))
        return eng_error(ENG_ENOMEM, "out of memory");
    memcpy(f[d->nf], v, (size_t)n * sizeof(double));
    return dump_add(d, name, ENG_F64, 1, &n, f[d->nf++]);
}

static void dump_free(dump_t *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->names[i]);
    for (size_t i = 0; i < d->nf; i++)
        free(d->f64[i]);
    free(d->names);
    free(d->f64);
    free(d->e);
}

/* One case's lines into the dump. */
static int dump_case(dump_t *d, const tr_gc_case *c, const tr_gc_result *r, int rank)
{
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    char nm[256];
    int rc = 0;
    double loss = r->parts.loss;
#define NM(fmt, ...) (snprintf(nm, sizeof nm, fmt, __VA_ARGS__), nm)
    rc = rc ? rc : dump_f64(d, NM("%s.loss", c->name), &loss, 1);
    rc = rc ? rc : dump_f64(d, NM("%s.focal", c->name), r->parts.focal, 3);
    rc = rc ? rc : dump_f64(d, NM("%s.dice", c->name), r->parts.dice, 3);
    rc = rc ? rc : dump_f64(d, NM("%s.iou_mse", c->name), r->parts.iou_mse, 3);
    rc = rc ? rc : dump_f64(d, NM("%s.actual_iou", c->name), r->parts.actual_iou, 3);
    rc = rc ? rc
            : dump_add(d, NM("%s.low_res_logits", c->name), ENG_F32, 3,
                       (int64_t[]){3, ENG_SAM_LOWRES, ENG_SAM_LOWRES}, r->logits);
    rc = rc ? rc
            : dump_add(d, NM("%s.iou_predictions", c->name), ENG_F32, 1, (int64_t[]){3}, r->iou);
    for (int i = 0; i < ENG_SAM_LORA_TARGETS && !rc; i++) {
        if (!r->adapted[i])
            continue;
        rc = dump_add(d, NM("%s.%s.grad_A", c->name, tg[i].name), ENG_F32, 2,
                      (int64_t[]){rank, tg[i].in}, r->grad_A[i]);
        if (!rc)
            rc = dump_add(d, NM("%s.%s.grad_B", c->name, tg[i].name), ENG_F32, 2,
                          (int64_t[]){tg[i].out, rank}, r->grad_B[i]);
    }
#undef NM
    return rc;
}

/* Compare a case with the golden's references; prints its line and
 * returns 1 when a reference is out of tolerance. */
static int report_case(const eng_ckpt *g, const tr_gc_case *c, const tr_gc_result *r, int rank)
{
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    char nm[256];
    int bad = 0;
    printf("%-20s loss %.7f  best %d", c->name, r->parts.loss, r->parts.best);
    snprintf(nm, sizeof nm, "%s.loss", c->name);
    const eng_ckpt_tensor *lt = eng_ckpt_find(g, nm);
    double ref_loss = c->ref_loss;
    if (lt && lt->numel == 1 && lt->dtype == ENG_F64) /* in full precision */
        memcpy(&ref_loss, lt->data, sizeof ref_loss);
    else if (lt && lt->numel == 1) {
        float *f = ref_tensor(g, nm, 1);
        ref_loss = f ? f[0] : ref_loss;
        free(f);
    }
    if (!isnan(ref_loss)) {
        double e = fabs(r->parts.loss - ref_loss) / fmax(fabs(ref_loss), 1e-30);
        bad |= !(e <= TOL_LOSS);
        printf("  loss rel %.1e", e);
    }
    if (c->ref_best >= 0 && c->ref_best != r->parts.best) {
        bad = 1;
        printf("  (reference best %d)", c->ref_best);
    }
    snprintf(nm, sizeof nm, "%s.low_res_logits", c->name);
    float *lg = ref_tensor(g, nm, 3 * (size_t)ENG_SAM_LOWRES_FLOATS);
    if (lg) {
        double e = 0;
        for (size_t i = 0; i < 3 * (size_t)ENG_SAM_LOWRES_FLOATS; i++)
            e = fmax(e, fabs((double)r->logits[i] - lg[i]));
        bad |= !(e <= TOL_LOGITS);
        printf("  logits %.1e", e);
    }
    snprintf(nm, sizeof nm, "%s.iou_predictions", c->name);
    float *iou = ref_tensor(g, nm, 3);
    if (iou) {
        double e = 0;
        for (int i = 0; i < 3; i++)
            e = fmax(e, fabs((double)r->iou[i] - iou[i]));
        bad |= !(e <= TOL_IOU);
        printf("  iou %.1e", e);
    }
    double worst = -1;
    int wi = -1, n_ref = 0;
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        if (!r->adapted[i])
            continue;
        size_t na = (size_t)rank * tg[i].in, nb = (size_t)rank * tg[i].out;
        snprintf(nm, sizeof nm, "%s.%s.grad_A", c->name, tg[i].name);
        float *ga = ref_tensor(g, nm, na);
        snprintf(nm, sizeof nm, "%s.%s.grad_B", c->name, tg[i].name);
        float *gb = ref_tensor(g, nm, nb);
        if (ga && gb) {
            n_ref++;
            double e = fmax(tr_rel_l2(r->grad_A[i], ga, na), tr_rel_l2(r->grad_B[i], gb, nb));
            bad |= !(e <= TOL_GRAD);
            if (!(e <= worst)) {
                worst = e;
                wi = i;
            }
        }
        free(ga);
        free(gb);
    }
    if (n_ref)
        printf("  gradients (%d layers) worst %.1e %s", n_ref, worst, tg[wi].name);
    printf("%s\n", bad ? "  OUT OF TOLERANCE" : "");
    free(lg);
    free(iou);
    return bad;
}

int tr_cmd_grad(int argc, char **argv)
{
    const char *ckpt = NULL, *golden_path = NULL, *cases_path = NULL, *dump_path = NULL;
    const char *threads_s = NULL;
    int check = 0, threads = 0;
    const tr_opt opts[] = {{"--checkpoint", &ckpt, NULL},
                           {"--golden", &golden_path, NULL},
                           {"--cases", &cases_path, NULL},
                           {"--dump", &dump_path, NULL},
                           {"--threads", &threads_s, NULL},
                           {"--check", NULL, &check},
                           {NULL, NULL, NULL}};
    int prc = tr_opts_parse("grad", argc, argv, opts);
    if (prc == 1)
        usage(stdout);
    if (prc)
        return prc == 1 ? 0 : 2;
    long long nt = 0;
    if (threads_s && tr_parse_int(threads_s, 1, 1024, &nt)) {
        fprintf(stderr, "tasam-train grad: --threads must be 1..1024\n");
        return 2;
    }
    threads = (int)nt;
    if (!ckpt || !golden_path || !cases_path) {
        fprintf(stderr, "tasam-train grad: --checkpoint, --golden and --cases are required\n");
        usage(stderr);
        return 2;
    }
    tr_gc_cases *cs = NULL;
    eng_ckpt *g = NULL;
    eng_backend *be = NULL;
    eng_sam *m = NULL;
    eng_sam_train *t = NULL;
    dump_t d = {0};
    tr_gc_result *res = NULL;
    int rc = tr_gc_cases_load(cases_path, &cs), bad = 0;
    if (!rc)
        rc = eng_ckpt_open(&g, golden_path);
    if (!rc)
        rc = eng_backend_cpu_create(&be, threads);
    int max_points = 16;
    for (int i = 0; cs && i < cs->n; i++)
        max_points = cs->cases[i].n_points > max_points ? cs->cases[i].n_points : max_points;
    eng_sam_options opt = {.max_points = max_points};
    if (!rc)
        rc = eng_sam_load(&m, ckpt, be, &opt);
    if (!rc)
        rc = eng_sam_train_create(&t, m, cs->rank);
    if (!rc && !(res = calloc((size_t)cs->n, sizeof *res)))
        rc = eng_error(ENG_ENOMEM, "out of memory");
    if (!rc)
        fprintf(stderr, "tasam-train grad: %d cases, rank %d, alpha %g, on %s\n", cs->n, cs->rank,
                (double)cs->alpha, eng_backend_describe(be));
    for (int i = 0; !rc && i < cs->n; i++) {
        if (!(rc = tr_gc_run(t, g, cs, i, &res[i])))
            bad |= report_case(g, &cs->cases[i], &res[i], cs->rank);
        if (!rc && dump_path)
            rc = dump_case(&d, &cs->cases[i], &res[i], cs->rank);
    }
    if (!rc && dump_path) {
        const char *meta[] = {"format", "tasam-train-grad", "checkpoint", ckpt,
                              "cases",  cases_path};
        rc = eng_safetensors_write(dump_path, d.e, d.n, meta, 3);
        if (!rc)
            fprintf(stderr, "tasam-train grad: wrote %zu tensors to %s\n", d.n, dump_path);
    }
    if (rc)
        fprintf(stderr, "tasam-train grad: %s\n", eng_last_error());
    else if (check && bad)
        fprintf(stderr, "tasam-train grad: results out of the fixture's tolerances\n");
    for (int i = 0; res && i < cs->n; i++)
        tr_gc_result_free(&res[i]);
    free(res);
    dump_free(&d);
    eng_sam_train_destroy(t);
    eng_sam_destroy(m);
    eng_backend_destroy(be);
    eng_ckpt_close(g);
    tr_gc_cases_free(cs);
    return rc ? 1 : (check && bad) ? 1 : 0;
}
