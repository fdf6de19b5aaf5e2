/*
 * train/run.c: the training loop (run.h).
 *
 * Letters: B examples a step, R refinement rounds, LR = 256 * 256 low-res
 * cells, EMB = 256 * 64 * 64 embedding values.
 */
#include "train/run.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "hypernet/hypernet.h"
#include "train/embed.h"
#include "train/io.h"
#include "train/model.h"
#include "train/progress.h"
#include "train/step.h"
#include "train/tasks.h"

#define LR  ENG_SAM_LOWRES_FLOATS
#define EMB ENG_SAM_EMB_FLOATS

#define RUN_MAX_BATCH     256
#define RUN_MAX_SKIPPED   5 /* consecutive steps with a non-finite gradient before giving up */
#define RUN_PRINT_EVERY_S 1.0
#define RUN_SAMPLE_TRIES  32

void tr_run_config_default(tr_run_config *c)
{
    memset(c, 0, sizeof *c);
    c->device = "auto";
    c->steps = 100;
    c->batch = 8;
    tr_optim_config_default(&c->optim);
    c->optim.warmup = -1; /* min(100, steps / 10), set by tr_run */
    tr_sample_config_default(&c->sample);
    tr_eval_config_default(&c->val_cfg);
    c->val_cfg.ap = 0;
    c->progress_fd = -1;
}

/* Everything a run holds. */
typedef struct run {
    const tr_run_config *c;
    volatile sig_atomic_t *stop;
    int tty;               /* stderr is a terminal: progress lines rewrite themselves */
    tr_optim_config optim; /* c->optim with total and warmup resolved */
    tr_progress *pr;
    tr_curve *curve;
    char svg[4096], state[4096];
    eng_backend *be;
    eng_sam *m;
    hn_params *p, *g;
    char init_id[HN_ID_LEN + 1], init_version[HN_NAME_MAX];
    long long version_in;
    hn_text *text;
    tr_coco *train, *val;
    tr_embed *etrain, *eval;
    tr_tasks *ttrain, *tval;
    tr_step *step;
    tr_adamw *opt;
    json_t *cfg;        /* the result-affecting configuration */
    long step0;         /* steps done when the loop starts (resume) */
    int skipped;        /* consecutive refused updates */
    double base_miou;   /* the initial hypernetwork's validation mIoU (NAN: none) */
    double last_miou;   /* the latest validation's */
    json_t *last_val;   /* its metrics */
    double val_seconds; /* the latest validation's duration */
    /* the batch, [B] each unless said */
    float *emb; /* [B, EMB] */
    eng_sam_imginfo *info;
    tr_example *ex;
    uint8_t *target; /* [B, LR] */
    float *prev;     /* [B, LR]: the previous round's answer (logits) */
    float *low_res;  /* [B, 3, LR] */
    float *iou;      /* [B, 3] */
    int *order;
    uint8_t *active;
    tr_prompt *tp;
    tr_image *ti;
} run;

/* The sums of one step, per example. */
typedef struct run_stats {
    double loss, focal, dice, iou_mse, l2;
    int prompts;
} run_stats;

static double run__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Wrap the current error with a prefix. */
static int run__wrap(int rc, const char *what)
{
    char why[1024];
    snprintf(why, sizeof why, "%s", eng_last_error());
    return eng_error(rc, "%s: %s", what, why);
}

static int run__cancelled(const run *r) { return r->stop && *r->stop; }

/* A number for an event; null where it is not finite (JSON has no NaN). */
static json_t *run__real(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *run__event(const char *name)
{
    json_t *e = json_object();
    json_object_set_new(e, "event", json_string(name));
    return e;
}

/* ---- configuration ---- */

static int run__check(const tr_run_config *c)
{
    if (!c->checkpoint || !c->data || !c->init || !c->out)
        return eng_error(ENG_EINVAL, "--checkpoint, --data, --init and --out are required");
    if (c->steps < 1 || c->steps > 100000000)
        return eng_error(ENG_EINVAL, "--steps must be 1..100000000, not %ld", c->steps);
    if (c->batch < 1 || c->batch > RUN_MAX_BATCH)
        return eng_error(ENG_EINVAL, "--batch must be 1..%d, not %d", RUN_MAX_BATCH, c->batch);
    if (c->refine < 0 || c->refine > TR_MAX_POINTS - 2)
        return eng_error(ENG_EINVAL, "--refine must be 0..%d, not %d", TR_MAX_POINTS - 2,
                         c->refine);
    if (!(c->l2 >= 0 && isfinite(c->l2)))
        return eng_error(ENG_EINVAL, "--l2 must be finite and >= 0");
    if (c->val_every < 0 || c->checkpoint_every < 0)
        return eng_error(ENG_EINVAL, "--val-every and --checkpoint-every must be >= 0");
    if (c->publish_if_better && !c->val)
        return eng_error(ENG_EINVAL, "--publish-if-better needs --val");
    const tr_sample_config *s = &c->sample;
    if (!(s->p_box >= 0 && s->p_box <= 1) ||
        !(s->p_grid >= 0 && s->p_object >= 0 && s->p_grid + s->p_object <= 1) ||
        !(s->p_absent >= 0 && s->p_absent <= 1))
        return eng_error(ENG_EINVAL, "prompt mix: probabilities must be in [0, 1] (grid + "
                                     "object at most 1)");
    return tr_eval_config_check(&c->val_cfg);
}

/* The configuration that decides the result: what a resume must match and
 * what the output's metadata records. */
static int run__config_json(run *r)
{
    const tr_run_config *c = r->c;
    char data_sha[65];
    int rc = tr_sha256_file(r->train->json_path, data_sha);
    if (rc)
        return rc;
    json_t *j = json_object();
    json_object_set_new(j, "model_id", json_string(eng_sam_model_id(r->m)));
    json_object_set_new(j, "data_sha256", json_string(data_sha));
    json_object_set_new(j, "train_images", json_integer(r->train->n_images));
    json_object_set_new(j, "init_id", json_string(r->init_id));
    json_object_set_new(j, "text_model", json_string(r->p->cfg.text_model));
    json_object_set_new(j, "steps", json_integer(c->steps));
    json_object_set_new(j, "batch", json_integer(c->batch));
    json_object_set_new(j, "seed", json_integer((json_int_t)c->seed));
    json_object_set_new(j, "lr", json_real(r->optim.lr));
    json_object_set_new(j, "min_lr_ratio", json_real(r->optim.min_lr_ratio));
    json_object_set_new(j, "warmup", json_integer(r->optim.warmup));
    json_object_set_new(j, "weight_decay", json_real(r->optim.weight_decay));
    json_object_set_new(j, "clip", json_real(r->optim.clip));
    json_object_set_new(j, "beta1", json_real(r->optim.beta1));
    json_object_set_new(j, "beta2", json_real(r->optim.beta2));
    json_object_set_new(j, "eps", json_real(r->optim.eps));
    json_object_set_new(j, "l2", json_real(c->l2));
    json_object_set_new(j, "refine", json_integer(c->refine));
    json_object_set_new(j, "p_box", json_real(c->sample.p_box));
    json_object_set_new(j, "p_grid", json_real(c->sample.p_grid));
    json_object_set_new(j, "p_object", json_real(c->sample.p_object));
    json_object_set_new(j, "p_absent", json_real(c->sample.p_absent));
    json_object_set_new(j, "grid_side", json_integer(c->sample.grid_side));
    json_object_set_new(j, "shuffle_tasks", json_boolean(c->shuffle_tasks));
    json_object_set_new(j, "loss", json_string("20 focal + dice (best of 3) + IoU MSE"));
    r->cfg = j;
    return 0;
}

/* ---- loading ---- */

static void run__embed_progress(void *ctx, int done, int total, double ips)
{
    run *r = ctx;
    json_t *e = run__event("embed");
    json_object_set_new(e, "done", json_integer(done));
    json_object_set_new(e, "total", json_integer(total));
    json_object_set_new(e, "images_per_s", json_real(ips));
    tr_progress_emit(r->pr, e);
    if (!r->c->quiet && (r->tty || done == total))
        fprintf(stderr, "%stasam-train: embedded %d/%d images (%.2f images/s)%s",
                r->tty ? "\r" : "", done, total, ips, done == total ? "\n" : "");
}

/* Compute the embeddings the cache lacks, on the device asked for (the
 * training model, on the CPU, unless a GPU is asked for and usable). */
static int run__fill(run *r)
{
    const int missing = tr_embed_missing(r->etrain) + (r->eval ? tr_embed_missing(r->eval) : 0);
    if (!missing)
        return 0;
    tr_model gm = {0};
    int rc = 0;
    if (strcmp(r->c->device, "cpu")) {
        if ((rc = tr_model_open(&gm, r->c->checkpoint, r->c->device, r->c->threads, 8, 0,
                                r->c->quiet)))
            return run__wrap(rc, "the image encoder's device");
        if (!tr_model_on_gpu(&gm))
            tr_model_close(&gm); /* no GPU: the training model encodes */
    }
    eng_sam *em = gm.m ? gm.m : r->m;
    if (!r->c->quiet)
        fprintf(stderr, "tasam-train: %d images to embed on %s (cached for later runs)\n", missing,
                eng_backend_describe(eng_sam_backend(em)));
    rc = tr_embed_fill(r->etrain, em, gm.m ? 8 : 1, run__embed_progress, r, r->stop);
    if (!rc && r->eval)
        rc = tr_embed_fill(r->eval, em, gm.m ? 8 : 1, run__embed_progress, r, r->stop);
    tr_model_close(&gm);
    return rc;
}

static int run__load(run *r)
{
    const tr_run_config *c = r->c;
    int rc = eng_backend_cpu_create(&r->be, c->threads);
    /* the validation's clicks decode together (one pass shares the image side) */
    eng_sam_options mo = {.max_decode_batch = c->val_cfg.prompts < 16 ? c->val_cfg.prompts : 16};
    if (!rc && (rc = eng_sam_load(&r->m, c->checkpoint, r->be, &mo)))
        return rc;
    if (!rc && (rc = hn_params_read(&r->p, c->init, r->init_version)))
        return rc;
    if (rc)
        return rc;
    hn_params_id(r->p, r->init_id);
    if (tr_parse_int(r->init_version, 0, LLONG_MAX - 1, &r->version_in))
        return eng_error(ENG_EINVAL,
                         "%s: version '%s' is not a whole number (the output's version is the "
                         "input's plus one)",
                         c->init, r->init_version);
    if ((rc = hn_params_create(&r->g, &r->p->cfg)) ||
        (rc = hn_config_open_text(&r->p->cfg, c->text_model, r->be, &r->text)))
        return rc;
    if ((rc = tr_coco_open_dir(&r->train, c->data, 0)))
        return rc;
    if (r->train->n_images < 1)
        return eng_error(ENG_EINVAL, "%s: no images to train on", r->train->json_path);
    if (c->val && (rc = tr_coco_open_dir(&r->val, c->val, 0)))
        return rc;
    if (r->val && r->val->n_images < 1)
        return eng_error(ENG_EINVAL, "%s: no images to validate on", r->val->json_path);
    char cache[4096];
    if (c->cache)
        snprintf(cache, sizeof cache, "%s", c->cache);
    else if ((rc = tr_embed_default_dir(c->data, cache, sizeof cache)))
        return rc;
    const char *mid = eng_sam_model_id(r->m);
    if ((rc = tr_embed_open(&r->etrain, r->train, cache, mid, NULL)) ||
        (r->val && (rc = tr_embed_open(&r->eval, r->val, cache, mid, NULL))))
        return rc;
    if ((rc = tr_tasks_embed(&r->ttrain, r->train, r->text)) ||
        (r->val && (rc = tr_tasks_embed(&r->tval, r->val, r->text))))
        return rc;
    if (c->shuffle_tasks && (rc = tr_tasks_shuffle(r->ttrain, c->seed)))
        return rc;
    if ((rc = tr_step_create(&r->step, r->m, &r->p->cfg)))
        return rc;
    if ((rc = tr_adamw_create(&r->opt, r->p->n_floats, &r->optim)))
        return rc;
    /* no weight decay on biases, the norm and the embeddings */
    hn_params *p = r->p;
    const float *nd[] = {p->b_in, p->ln_g, p->ln_b, p->b_mix};
    const size_t H = (size_t)p->cfg.hidden;
    for (size_t i = 0; i < sizeof nd / sizeof *nd && !rc; i++)
        rc = tr_adamw_no_decay(r->opt, (size_t)(nd[i] - p->mem), H);
    if (!rc)
        rc = tr_adamw_no_decay(r->opt, (size_t)(p->e_type - p->mem), HN_TYPES * H);
    if (!rc)
        rc = tr_adamw_no_decay(r->opt, (size_t)(p->e_layer - p->mem), ENG_SAM_LORA_TARGETS * H);
    for (int s = 0; s < HN_SHAPES && !rc; s++) {
        int O, In;
        hn_shape(s, &O, &In);
        if (p->ba[s])
            rc = tr_adamw_no_decay(r->opt, (size_t)(p->ba[s] - p->mem), (size_t)p->cfg.rank * In);
        if (!rc && p->bb[s])
            rc = tr_adamw_no_decay(r->opt, (size_t)(p->bb[s] - p->mem), (size_t)p->cfg.rank * O);
    }
    if (rc)
        return rc;
    const size_t B = (size_t)c->batch;
    r->emb = malloc(B * EMB * sizeof *r->emb);
    r->info = calloc(B, sizeof *r->info);
    r->ex = calloc(B, sizeof *r->ex);
    r->target = malloc(B * LR);
    r->prev = malloc(B * LR * sizeof *r->prev);
    r->low_res = malloc(B * 3 * LR * sizeof *r->low_res);
    r->iou = malloc(B * 3 * sizeof *r->iou);
    r->order = malloc(B * sizeof *r->order);
    r->active = malloc(B);
    r->tp = calloc(B, sizeof *r->tp);
    r->ti = calloc(B, sizeof *r->ti);
    if (!r->emb || !r->info || !r->ex || !r->target || !r->prev || !r->low_res || !r->iou ||
        !r->order || !r->active || !r->tp || !r->ti)
        return eng_error(ENG_ENOMEM, "out of memory for a batch of %zu", B);
    return run__config_json(r);
}

static void run__free(run *r)
{
    tr_progress_close(r->pr);
    tr_curve_destroy(r->curve);
    tr_adamw_destroy(r->opt);
    tr_step_destroy(r->step);
    tr_tasks_destroy(r->ttrain);
    tr_tasks_destroy(r->tval);
    tr_embed_destroy(r->etrain);
    tr_embed_destroy(r->eval);
    tr_coco_destroy(r->train);
    tr_coco_destroy(r->val);
    hn_text_destroy(r->text);
    hn_params_destroy(r->p);
    hn_params_destroy(r->g);
    eng_sam_destroy(r->m);
    eng_backend_destroy(r->be);
    json_decref(r->cfg);
    json_decref(r->last_val);
    free(r->emb);
    free(r->info);
    free(r->ex);
    free(r->target);
    free(r->prev);
    free(r->low_res);
    free(r->iou);
    free(r->order);
    free(r->active);
    free(r->tp);
    free(r->ti);
}

/* ---- the training state ---- */

static int run__state_write(run *r, long step)
{
    hn_params *p = r->p;
    char sstep[32], sadam[32], sbase[64], tg[4096], srank[16], salpha[32], sdim[16], shid[16];
    snprintf(sstep, sizeof sstep, "%ld", step);
    snprintf(sadam, sizeof sadam, "%ld", tr_adamw_steps(r->opt));
    snprintf(sbase, sizeof sbase, "%.17g", r->base_miou);
    snprintf(srank, sizeof srank, "%d", p->cfg.rank);
    snprintf(salpha, sizeof salpha, "%.9g", (double)p->cfg.alpha);
    snprintf(sdim, sizeof sdim, "%d", p->cfg.text_dim);
    snprintf(shid, sizeof shid, "%d", p->cfg.hidden);
    hn_targets_format(p->cfg.present, tg, sizeof tg);
    char *cfg = json_dumps(r->cfg, JSON_COMPACT | JSON_SORT_KEYS);
    if (!cfg)
        return eng_error(ENG_ENOMEM, "out of memory");
    const char *meta[] = {"format",         "tasam-train-state",
                          "format_version", "1",
                          "step",           sstep,
                          "adam_steps",     sadam,
                          "baseline_miou",  sbase,
                          "init_id",        r->init_id,
                          "init_version",   r->init_version,
                          "rank",           srank,
                          "alpha",          salpha,
                          "text_dim",       sdim,
                          "hidden",         shid,
                          "text_model",     p->cfg.text_model,
                          "targets",        tg,
                          "config",         cfg};
    eng_st_entry e[3] = {
        {.name = "params",
         .dtype = ENG_F32,
         .ndim = 1,
         .shape = {(int64_t)p->n_floats},
         .data = p->mem},
        {.name = "adam.m",
         .dtype = ENG_F32,
         .ndim = 1,
         .shape = {(int64_t)p->n_floats},
         .data = tr_adamw_m(r->opt)},
        {.name = "adam.v",
         .dtype = ENG_F32,
         .ndim = 1,
         .shape = {(int64_t)p->n_floats},
         .data = tr_adamw_v(r->opt)},
    };
    int rc = eng_safetensors_write(r->state, e, 3, meta, sizeof meta / sizeof *meta / 2);
    free(cfg);
    return rc;
}

/* Compare a state's configuration with this run's, naming the first
 * difference. */
static int run__config_match(const run *r, const char *path, json_t *old)
{
    const char *key;
    json_t *v;
    json_object_foreach(r->cfg, key, v)
    {
        json_t *o = json_object_get(old, key);
        if (o && json_equal(o, v))
            continue;
        if (o && json_is_number(o) && json_is_number(v) &&
            fabs(json_number_value(o) - json_number_value(v)) <= 1e-6 * fabs(json_number_value(v)))
            continue;
        char *a = o ? json_dumps(o, JSON_ENCODE_ANY) : NULL, *b = json_dumps(v, JSON_ENCODE_ANY);
        int rc = eng_error(ENG_EINVAL,
                           "--resume %s: written with %s=%s, this run has %s=%s (a resumed run "
                           "must repeat the original's configuration)",
                           path, key, a ? a : "(absent)", key, b ? b : "?");
        free(a);
        free(b);
        return rc;
    }
    return 0;
}

static int run__resume(run *r, const char *path)
{
    eng_ckpt *c = NULL;
    int rc = eng_ckpt_open(&c, path);
    if (rc)
        return rc;
    const char *fmt = eng_ckpt_meta(c, "format"), *fv = eng_ckpt_meta(c, "format_version");
    const char *sstep = eng_ckpt_meta(c, "step"), *sadam = eng_ckpt_meta(c, "adam_steps");
    const char *scfg = eng_ckpt_meta(c, "config"), *sbase = eng_ckpt_meta(c, "baseline_miou");
    const size_t n = r->p->n_floats;
    long long step = -1, adam = -1;
    json_t *old = NULL;
    if (!fmt || strcmp(fmt, "tasam-train-state") || !fv || strcmp(fv, "1"))
        rc = eng_error(ENG_EFORMAT, "%s: not a tasam training state (format_version 1)", path);
    else if (!sstep || tr_parse_int(sstep, 0, r->c->steps, &step) || !sadam ||
             tr_parse_int(sadam, 0, step, &adam))
        rc = eng_error(ENG_EFORMAT, "%s: metadata step/adam_steps missing or outside 0..%ld", path,
                       r->c->steps);
    else if (!scfg || !(old = json_loads(scfg, 0, NULL)) || !json_is_object(old))
        rc = eng_error(ENG_EFORMAT, "%s: metadata config missing or not JSON", path);
    if (!rc)
        rc = run__config_match(r, path, old);
    float *dst[3] = {r->p->mem, tr_adamw_m(r->opt), tr_adamw_v(r->opt)};
    const char *names[3] = {"params", "adam.m", "adam.v"};
    for (int i = 0; i < 3 && !rc; i++)
        rc = eng_ckpt_load_f32(c, names[i], 1, (int64_t[]){(int64_t)n}, dst[i]);
    for (size_t i = 0; i < n && !rc; i++)
        if (!isfinite(r->p->mem[i]) || !isfinite(dst[1][i]) || !(dst[2][i] >= 0))
            rc = eng_error(ENG_EFORMAT, "%s: parameter or moment %zu is not finite", path, i);
    if (!rc) {
        r->step0 = (long)step;
        tr_adamw_set_steps(r->opt, (long)adam);
        r->base_miou = sbase ? strtod(sbase, NULL) : NAN;
    }
    json_decref(old);
    eng_ckpt_close(c);
    return rc;
}

/* ---- one step ---- */

static int run__key_cmp_ctx_sort(const run *r, int a, int b)
{
    const tr_example *x = &r->ex[a], *y = &r->ex[b];
    if (x->category != y->category)
        return x->category < y->category ? -1 : 1;
    if (x->task != y->task)
        return x->task < y->task ? -1 : 1;
    if (x->image != y->image)
        return x->image < y->image ? -1 : 1;
    return a < b ? -1 : a > b;
}

/* Examples grouped by task (insertion sort: B is small), images together. */
static void run__order(run *r, int B)
{
    for (int i = 0; i < B; i++)
        r->order[i] = i;
    for (int i = 1; i < B; i++) {
        int v = r->order[i], j = i - 1;
        while (j >= 0 && run__key_cmp_ctx_sort(r, r->order[j], v) > 0) {
            r->order[j + 1] = r->order[j];
            j--;
        }
        r->order[j + 1] = v;
    }
}

static int run__draw(run *r, tr_rng *rng)
{
    const int B = r->c->batch;
    for (int b = 0; b < B; b++) {
        int rc = ENG_ENOTFOUND;
        for (int t = 0; t < RUN_SAMPLE_TRIES && rc == ENG_ENOTFOUND; t++) {
            int image = (int)tr_rng_below(rng, (uint64_t)r->train->n_images);
            rc = tr_sample_example(r->train, image, &r->c->sample, rng, &r->ex[b]);
        }
        if (rc)
            return run__wrap(rc, "drawing a training example");
        if ((rc = tr_example_target(r->train, &r->ex[b], r->target + (size_t)b * LR)) ||
            (rc = tr_embed_get(r->etrain, r->ex[b].image, r->emb + (size_t)b * EMB, &r->info[b])))
            return rc;
    }
    return 0;
}

static int run__step(run *r, long k, run_stats *out, tr_step_info *info)
{
    const tr_run_config *c = r->c;
    const int B = c->batch;
    tr_rng rng;
    tr_rng_seed(&rng, c->seed, 1 + (uint64_t)k);
    memset(out, 0, sizeof *out);
    int rc = run__draw(r, &rng);
    if (rc)
        return rc;
    memset(r->g->mem, 0, r->g->n_floats * sizeof(float));
    run__order(r, B);
    int n_tasks = 0;
    for (int j = 0; j < B; j++)
        n_tasks += j == 0 || r->ex[r->order[j]].category != r->ex[r->order[j - 1]].category ||
                   r->ex[r->order[j]].task != r->ex[r->order[j - 1]].task;
    memset(r->active, 1, (size_t)B);
    for (int round = 0; round <= c->refine && !rc; round++) {
        for (int j0 = 0; j0 < B && !rc;) {
            /* a group: the examples of one task (those still refining) */
            const tr_example *e0 = &r->ex[r->order[j0]];
            int j1 = j0, n = 0;
            for (; j1 < B && r->ex[r->order[j1]].category == e0->category &&
                   r->ex[r->order[j1]].task == e0->task;
                 j1++) {
                const int b = r->order[j1];
                if (!r->active[b])
                    continue;
                const tr_example *ex = &r->ex[b];
                r->tp[n] =
                    (tr_prompt){.prompt = {.n_points = ex->n_points,
                                           .points = &ex->points[0][0],
                                           .labels = ex->labels,
                                           .has_box = ex->is_box,
                                           .mask_input = round ? r->prev + (size_t)b * LR : NULL},
                                .target = r->target + (size_t)b * LR,
                                /* one click: SAM's three answers; a box or several clicks: one */
                                .multimask = round == 0 && !ex->is_box && ex->n_points == 1};
                memcpy(r->tp[n].prompt.box, ex->box, sizeof ex->box);
                r->ti[n] = (tr_image){r->emb + (size_t)b * EMB, r->info[b], &r->tp[n], 1};
                n++;
            }
            if (n) {
                tr_step_opts o;
                tr_step_opts_default(&o);
                o.prompt_weight = 1.0f / (float)B;
                o.l2 = round == 0 ? c->l2 : 0;
                o.task_weight = 1.0f / (float)n_tasks;
                tr_step_stats st;
                rc = tr_step_task(r->step, r->p, tr_tasks_get(r->ttrain, e0->category, e0->task),
                                  r->ti, n, &o, r->g, &st, r->low_res, r->iou);
                if (rc)
                    break;
                out->loss += st.loss;
                out->focal += st.focal;
                out->dice += st.dice;
                out->iou_mse += st.iou_mse;
                out->l2 += st.l2;
                out->prompts += st.prompts;
                /* each example's answer for the next round: the mask the
                 * IoU head rates best, as a client picks it */
                for (int q = 0, jj = j0; q < n; jj++) {
                    const int b = r->order[jj];
                    if (!r->active[b])
                        continue;
                    const int C = r->tp[q].multimask ? 3 : 1;
                    int best = 0;
                    for (int m = 1; m < C; m++)
                        if (r->iou[q * 3 + m] > r->iou[q * 3 + best])
                            best = m;
                    memcpy(r->prev + (size_t)b * LR, r->low_res + ((size_t)q * 3 + best) * LR,
                           LR * sizeof(float));
                    q++;
                }
            }
            j0 = j1;
            if (run__cancelled(r))
                rc = eng_error(ENG_ECANCELED, "cancelled");
        }
        if (rc || round == c->refine)
            break;
        for (int b = 0; b < B; b++)
            if (r->active[b])
                r->active[b] =
                    (uint8_t)tr_sample_refine(r->train, &r->ex[b], r->target + (size_t)b * LR,
                                              r->prev + (size_t)b * LR, &rng);
    }
    if (rc)
        return rc;
    out->loss /= B;
    out->focal /= B;
    out->dice /= B;
    out->iou_mse /= B;
    rc = tr_adamw_step(r->opt, r->p->mem, r->g->mem, info);
    if (rc == ENG_EINVAL) {
        /* a non-finite gradient: the update is skipped, a few in a row end the run */
        if (++r->skipped > RUN_MAX_SKIPPED)
            return eng_error(ENG_EINVAL, "%d steps in a row had a non-finite gradient", r->skipped);
        fprintf(stderr, "tasam-train: step %ld: %s\n", k + 1, eng_last_error());
        info->lr = tr_lr_at(&r->optim, tr_adamw_steps(r->opt));
        info->grad_norm = NAN;
        return 0;
    }
    r->skipped = 0;
    return rc;
}

/* ---- validation ---- */

static void run__val_progress(void *ctx, int done, int total)
{
    const run *r = ctx;
    if (!r->c->quiet && r->tty)
        fprintf(stderr, "\rtasam-train: validating, task %d/%d   %s", done, total,
                done == total ? "\r" : "");
}

/* Validate the current parameters after `step` steps: the val event, the
 * curve, r->last_miou / last_val. */
static int run__validate(run *r, long step)
{
    tr_eval_result res;
    const double t0 = run__now();
    int rc = tr_eval_run(&res, r->m, r->eval, r->val, r->tval, r->p, &r->c->val_cfg,
                         run__val_progress, r, r->stop);
    if (rc) {
        tr_eval_result_free(&res);
        return rc == ENG_ECANCELED ? rc : run__wrap(rc, "validation");
    }
    r->val_seconds = run__now() - t0;
    json_t *m = tr_eval_json(&res, r->val, 0);
    json_object_set_new(m, "seconds", json_real(r->val_seconds));
    json_t *e = run__event("val");
    json_object_set_new(e, "step", json_integer(step));
    json_object_set(e, "metrics", m);
    tr_progress_emit(r->pr, e);
    json_decref(r->last_val);
    r->last_val = m;
    r->last_miou = res.miou;
    if (!r->c->quiet) {
        fprintf(stderr,
                "%stasam-train: step %ld validation: mIoU %.4f (seen %.4f, held-out "
                "phrasings %.4f, held-out combinations %.4f, no objects %.4f) over %d "
                "pairs",
                r->tty ? "\r" : "", step, res.miou, res.group_miou[TR_EVAL_SEEN],
                res.group_miou[TR_EVAL_HELDOUT_PHRASING],
                res.group_miou[TR_EVAL_HELDOUT_COMBINATION], res.group_miou[TR_EVAL_NO_OBJECTS],
                res.pairs);
        if (res.ap >= 0)
            fprintf(stderr, ", AP %.4f", res.ap);
        fprintf(stderr, " (%.1f s)\n", r->val_seconds);
    }
    rc = tr_curve_add_val(r->curve, step, res.miou, res.group_miou[TR_EVAL_HELDOUT_PHRASING],
                          res.ap);
    tr_eval_result_free(&res);
    return rc;
}

static void run__svg(run *r)
{
    if (!r->svg[0])
        return;
    char title[512];
    snprintf(title, sizeof title, "tasam-train run: %s, batch %d, lr %g", r->c->data, r->c->batch,
             (double)r->optim.lr);
    if (tr_curve_write_svg(r->curve, r->svg, title))
        fprintf(stderr, "tasam-train: %s\n", eng_last_error());
}

/* ---- publishing ---- */

static int run__publish(run *r, long steps_done, double seconds, char id[HN_ID_LEN + 1],
                        char version[HN_NAME_MAX])
{
    snprintf(version, HN_NAME_MAX, "%lld", r->version_in + 1);
    json_t *t = json_deep_copy(r->cfg);
    json_object_set_new(t, "parent_id", json_string(r->init_id));
    json_object_set_new(t, "parent_version", json_string(r->init_version));
    json_object_set_new(t, "steps_done", json_integer(steps_done));
    json_object_set_new(t, "seconds", json_real(seconds));
    json_object_set_new(t, "text_encoder", json_string(hn_text_describe(r->text)));
    json_object_set_new(t, "sam_checkpoint", json_string(r->c->checkpoint));
    json_object_set_new(t, "data", json_string(r->c->data));
    if (r->val) {
        json_object_set_new(t, "val_data", json_string(r->c->val));
        if (r->last_val)
            json_object_set(t, "val", r->last_val);
        if (isfinite(r->base_miou))
            json_object_set_new(t, "val_baseline_miou", json_real(r->base_miou));
    }
    char *s = json_dumps(t, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(t);
    if (!s)
        return eng_error(ENG_ENOMEM, "out of memory");
    const char *meta[] = {"training",     s, "parent_id", r->init_id, "parent_version",
                          r->init_version};
    int rc = hn_params_write_meta(r->p, r->c->out, version, meta, 3, id);
    free(s);
    return rc;
}

/* ---- the loop ---- */

static void run__fmt_eta(double s, char *buf, size_t cap)
{
    if (!isfinite(s) || s < 0)
        snprintf(buf, cap, "?");
    else if (s < 60)
        snprintf(buf, cap, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
}

static int run__loop(run *r)
{
    const tr_run_config *c = r->c;
    const double t_start = run__now();
    double t_steps = 0, t_print = 0;
    long done_here = 0;
    int rc = 0;
    if (c->publish_if_better && r->step0 == 0 && !isfinite(r->base_miou)) {
        if ((rc = run__validate(r, 0)))
            return rc;
        r->base_miou = r->last_miou;
        run__svg(r);
    }
    for (long k = r->step0; k < c->steps; k++) {
        if (run__cancelled(r))
            return eng_error(ENG_ECANCELED, "cancelled");
        const double t0 = run__now();
        run_stats st;
        tr_step_info info = {0};
        if ((rc = run__step(r, k, &st, &info)))
            return rc;
        const double dt = run__now() - t0;
        t_steps += dt;
        done_here++;
        const double per_step = t_steps / (double)done_here;
        const long left = c->steps - (k + 1);
        /* the validations still to come, at the last one's duration */
        long vals_left = r->val ? 1 + (c->val_every ? left / c->val_every : 0) : 0;
        const double eta = per_step * (double)left + (double)vals_left * r->val_seconds;
        const double sps = (double)c->batch / per_step;
        json_t *e = run__event("step");
        json_object_set_new(e, "step", json_integer(k + 1));
        json_object_set_new(e, "steps", json_integer(c->steps));
        json_object_set_new(e, "loss", run__real(st.loss));
        json_object_set_new(e, "focal", run__real(st.focal));
        json_object_set_new(e, "dice", run__real(st.dice));
        json_object_set_new(e, "iou_mse", run__real(st.iou_mse));
        json_object_set_new(e, "l2", run__real(st.l2));
        json_object_set_new(e, "lr", run__real(info.lr));
        json_object_set_new(e, "grad_norm", run__real(info.grad_norm));
        json_object_set_new(e, "prompts", json_integer(st.prompts));
        json_object_set_new(e, "samples_per_s", run__real(sps));
        json_object_set_new(e, "eta_s", run__real(eta));
        tr_progress_emit(r->pr, e);
        if ((rc = tr_curve_add_loss(r->curve, k + 1, st.loss)))
            return rc;
        const double now = run__now();
        /* a terminal's line is rewritten every second; a log gets a line
         * every ten */
        if (!c->quiet && (now - t_print >= (r->tty ? RUN_PRINT_EVERY_S : 10 * RUN_PRINT_EVERY_S) ||
                          k + 1 == c->steps || k == r->step0)) {
            char eta_s[32];
            run__fmt_eta(eta, eta_s, sizeof eta_s);
            fprintf(stderr,
                    "%stasam-train: step %ld/%ld  loss %.4f (focal %.4f dice %.4f iou %.4f)  lr "
                    "%.2e  %.2f samples/s  ETA %s%s",
                    r->tty ? "\r" : "", k + 1, c->steps, st.loss, st.focal, st.dice, st.iou_mse,
                    info.lr, sps, eta_s, r->tty ? "   " : "\n");
            t_print = now;
        }
        const int last = k + 1 == c->steps;
        if (r->val && c->val_every && (k + 1) % c->val_every == 0 && !last) {
            if (!c->quiet && r->tty)
                fputc('\n', stderr);
            if ((rc = run__validate(r, k + 1)))
                return rc;
            run__svg(r);
        }
        if (c->checkpoint_every && ((k + 1) % c->checkpoint_every == 0 || last)) {
            if ((rc = run__state_write(r, k + 1)))
                return rc;
            json_t *ce = run__event("checkpoint");
            json_object_set_new(ce, "step", json_integer(k + 1));
            json_object_set_new(ce, "path", json_string(r->state));
            tr_progress_emit(r->pr, ce);
            run__svg(r);
        }
    }
    if (!c->quiet && r->tty)
        fputc('\n', stderr);
    if (r->val && (rc = run__validate(r, c->steps)))
        return rc;
    run__svg(r);
    if (c->publish_if_better && !(r->last_miou >= r->base_miou)) {
        char why[256];
        snprintf(why, sizeof why,
                 "validation mIoU %.4f is below the initial hypernetwork's %.4f: not published",
                 r->last_miou, r->base_miou);
        json_t *e = run__event("done");
        json_object_set_new(e, "published", json_false());
        json_object_set_new(e, "reason", json_string(why));
        tr_progress_emit(r->pr, e);
        if (!c->quiet)
            fprintf(stderr, "tasam-train: %s\n", why);
        return 0;
    }
    char id[HN_ID_LEN + 1], version[HN_NAME_MAX];
    if ((rc = run__publish(r, c->steps, run__now() - t_start, id, version)))
        return rc;
    json_t *e = run__event("done");
    json_object_set_new(e, "out", json_string(c->out));
    json_object_set_new(e, "id", json_string(id));
    json_object_set_new(e, "version", json_string(version));
    json_object_set_new(e, "published", json_true());
    if (r->last_val)
        json_object_set(e, "metrics", r->last_val);
    tr_progress_emit(r->pr, e);
    if (!c->quiet)
        fprintf(stderr, "tasam-train: wrote %s (version %s, id %.16s...)\n", c->out, version, id);
    return 0;
}

int tr_run(const tr_run_config *c, volatile sig_atomic_t *stop)
{
    run r;
    memset(&r, 0, sizeof r);
    r.c = c;
    r.stop = stop;
    r.tty = isatty(2);
    r.base_miou = NAN;
    r.last_miou = NAN;
    int rc = run__check(c);
    int prc = tr_progress_open(&r.pr, c->progress_fd, c->log, c->resume != NULL);
    if (prc) {
        /* without a sink there is nothing to report on but stderr */
        run__free(&r);
        return prc;
    }
    if (!rc)
        rc = tr_curve_create(&r.curve);
    if (!rc && c->log && (rc = tr_curve_path_for_log(c->log, r.svg, sizeof r.svg)) == 0 &&
        c->resume)
        rc = tr_curve_load_log(r.curve, c->log, LONG_MAX);
    if (!rc) {
        int w = c->state ? snprintf(r.state, sizeof r.state, "%s", c->state)
                         : snprintf(r.state, sizeof r.state, "%s.state", c->out);
        if (w < 0 || (size_t)w >= sizeof r.state)
            rc = eng_error(ENG_ELIMIT, "%s: path too long", c->out);
    }
    /* the output's and the state's folders, now rather than after hours */
    if (!rc && !(rc = tr_mkdirs_parent(c->out)))
        rc = tr_mkdirs_parent(r.state);
    if (!rc) {
        r.optim = c->optim;
        r.optim.total = c->steps;
        if (r.optim.warmup < 0)
            r.optim.warmup = c->steps / 10 < 100 ? c->steps / 10 : 100;
        rc = run__load(&r);
    }
    if (!rc && c->resume)
        rc = run__resume(&r, c->resume);
    if (!rc && c->resume && c->publish_if_better && r.step0 > 0 && !isfinite(r.base_miou))
        rc = eng_error(ENG_EINVAL,
                       "--publish-if-better: %s holds no validation of the initial "
                       "hypernetwork (its run was started without the gate)",
                       c->resume);
    if (!rc) {
        json_t *e = run__event("start");
        json_object_set_new(e, "steps", json_integer(c->steps));
        json_object_set_new(e, "batch", json_integer(c->batch));
        json_object_set_new(e, "train_images", json_integer(r.train->n_images));
        json_object_set_new(e, "val_images", json_integer(r.val ? r.val->n_images : 0));
        json_t *init = json_object();
        json_object_set_new(init, "id", json_string(r.init_id));
        json_object_set_new(init, "version", json_string(r.init_version));
        json_object_set_new(e, "init", init);
        json_object_set_new(e, "out", json_string(c->out));
        json_object_set_new(e, "step", json_integer(r.step0));
        json_object_set_new(e, "text_encoder", json_string(hn_text_describe(r.text)));
        json_object_set_new(e, "model_id", json_string(eng_sam_model_id(r.m)));
        tr_progress_emit(r.pr, e);
        if (!c->quiet)
            fprintf(stderr,
                    "tasam-train: %d train images, %d val; hypernetwork %.16s... (version %s, "
                    "%zu parameters); %s; %s%s\n",
                    r.train->n_images, r.val ? r.val->n_images : 0, r.init_id, r.init_version,
                    r.p->n_floats, hn_text_describe(r.text), eng_backend_describe(r.be),
                    r.step0 ? " (resumed)" : "");
        rc = run__fill(&r);
        if (!rc)
            rc = run__loop(&r);
    }
    if (rc) {
        if (rc == ENG_ECANCELED)
            eng_error(rc, "cancelled");
        json_t *e = run__event("error");
        json_object_set_new(e, "message", json_string(eng_last_error()));
        tr_progress_emit(r.pr, e);
    }
    run__free(&r);
    return rc;
}
