/*
 * server/worker.c: the inference worker thread. It alone owns the backend,
 * the SAM model and, with --hypernet, the hypernetwork, its text encoder and
 * the device tier of task adapters: it loads them, then takes jobs from the
 * scheduler, batches image-encoder work, finds or generates task adapters,
 * runs the decoder and postprocessing, and hands each job back through its
 * `done` callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/amg.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/ops.h"
#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"
#include "server/adapter_cache.h"
#include "server/everything.h"
#include "server/hypernet_swap.h"
#include "server/log.h"
#include "server/scheduler.h"

#define IMG_FLOATS ((size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG)

/* The worker's state, on its own stack. */
typedef struct worker {
    srv_sched *s;     /* the scheduler (borrowed) */
    eng_backend *be;  /* owned: runs the image encoder (and the rest unless dbe) */
    eng_backend *dbe; /* owned: the decoder's own backend (fp16 beside a bf16 encoder), or NULL */
    eng_sam *m;       /* owned */
    srv_hnet_env hn;  /* what loading a hypernetwork version needs (hnet.c) */
    int max_batch;    /* images per encoder call */
    float *inputs;    /* [max_batch, 3, 1024, 1024] encoder inputs */
    float *embs;      /* [max_batch, 256, 64, 64] encoder outputs */
    float *scratch;   /* [256, 64, 64] an embedding read from disk for the decoder */
    srv_job **batch;  /* jobs of the current batch */
    int batch_cap;    /* capacity of batch */
} worker;

static const char *dtype_precision(eng_dtype t)
{
    return t == ENG_F16 ? "fp16" : t == ENG_BF16 ? "bf16" : "fp32";
}

/* Contract: creates the backends the config asks for through
 * eng_sam_open_backends (auto: CUDA if usable, else CPU; on CUDA in bf16 the
 * decoder gets its own fp16 backend, w->dbe). Returns 0 or a negative code
 * with eng_last_error() set. */
static int make_backend(worker *w)
{
    static const char *devs[] = {
        [SRV_DEVICE_AUTO] = "auto", [SRV_DEVICE_CPU] = "cpu", [SRV_DEVICE_CUDA] = "cuda"};
    static const char *precs[] = {[SRV_PREC_AUTO] = "auto",
                                  [SRV_PREC_FP32] = "fp32",
                                  [SRV_PREC_FP16] = "fp16",
                                  [SRV_PREC_BF16] = "bf16"};
    srv_config *cfg = w->s->cfg;
    int dev = (int)srv_config_int(cfg, SRV_OPT_DEVICE);
    int prec = (int)srv_config_int(cfg, SRV_OPT_PRECISION);
    char note[512];
    eng_cpu_set_spin_us((int)srv_config_int(cfg, SRV_OPT_CPU_SPIN_US));
    int rc =
        eng_sam_open_backends(devs[dev], precs[prec], (int)srv_config_int(cfg, SRV_OPT_CPU_THREADS),
                              &w->be, &w->dbe, note, sizeof note);
    if (rc)
        return rc;
    if (eng_backend_device(w->be) == ENG_DEV_CPU &&
        (prec == SRV_PREC_FP16 || prec == SRV_PREC_BF16)) {
        eng_backend_destroy(w->be);
        w->be = NULL;
        return eng_error(ENG_EUNSUP, "precision %s needs a CUDA device; the CPU runs fp32 (%s)",
                         precs[prec], note);
    }
    if (note[0])
        srv_log_info("worker: %s", note);
    return 0;
}

static void update_memory(worker *w)
{
    size_t used = 0, total = 0, dused = 0;
    eng_backend_memory(w->be, &used, &total);
    if (w->dbe)
        eng_backend_memory(w->dbe, &dused, NULL);
    used += dused;
    srv_metrics_gauge_set(&w->s->metrics->memory_used, (int64_t)used);
    srv_metrics_gauge_set(&w->s->metrics->memory_total, (int64_t)total);
}

/* Contract: with a hypernetwork (s->hn_path), loads it as the active
 * version and sets up what later versions need; on failure records the
 * message in the scheduler and returns -1. */
static int load_hypernet(worker *w)
{
    srv_sched *s = w->s;
    srv_model_info *in = &s->info;
    const char *path = s->hn_path ? s->hn_path : "";

    in->adapter_merged = srv_config_int(s->cfg, SRV_OPT_ADAPTER_MERGE) == SRV_MERGE_ON;
    if (!path[0]) {
        srv_log_info("worker: no hypernetwork configured: requests with `task` answer 501 (start "
                     "tasamd with --hypernet FILE)");
        return 0;
    }
    /* the hypernetwork and its text encoder run beside the decoder */
    w->hn.m = w->m;
    w->hn.be = w->dbe ? w->dbe : w->be;
    w->hn.text_dir = srv_config_str(s->cfg, SRV_OPT_TEXT_MODEL);
    w->hn.cache = s->cache;
    w->hn.metrics = s->metrics;
    w->hn.slots = (int)srv_config_int(s->cfg, SRV_OPT_ADAPTER_SLOTS);
    w->hn.merged = in->adapter_merged;
    if (srv__hnet_load_file(&w->hn, s, path, s->load_error, sizeof s->load_error) != 0)
        return -1;
    in->has_hypernet = 1;
    return 0;
}

/* Contract: loads everything; on failure records the message in the
 * scheduler, returns -1 and leaves nothing allocated. */
static int worker_load(worker *w)
{
    srv_sched *s = w->s;
    eng_sam_options opt = {0};
    double t0 = srv_now();
    const char *ckpt = srv_config_str(s->cfg, SRV_OPT_CHECKPOINT);
    int rc;

    w->max_batch = (int)srv_config_int(s->cfg, SRV_OPT_MAX_BATCH);
    if ((rc = make_backend(w)) != 0) {
        snprintf(s->load_error, sizeof s->load_error, "backend: %s", eng_last_error());
        return -1;
    }
    opt.max_points = (int)srv_config_int(s->cfg, SRV_OPT_MAX_POINTS);
    opt.max_batch = w->max_batch;
    opt.decoder_backend = w->dbe;
    /* the device-resident tier of the embedding cache */
    opt.embedding_slots = (int)srv_config_int(s->cfg, SRV_OPT_GPU_CACHE_SLOTS);
    srv_log_info("worker: loading %s on %s%s%s", ckpt, eng_backend_describe(w->be),
                 w->dbe ? ", decoder on " : "", w->dbe ? eng_backend_describe(w->dbe) : "");
    if ((rc = eng_sam_load(&w->m, ckpt, w->be, &opt)) != 0) {
        snprintf(s->load_error, sizeof s->load_error, "%s", eng_last_error());
        return -1;
    }
    w->batch_cap = 4 * (int)srv_config_int(s->cfg, SRV_OPT_QUEUE_DEPTH) + 16;
    if (w->batch_cap > 4096)
        w->batch_cap = 4096;
    w->inputs = malloc((size_t)w->max_batch * IMG_FLOATS * sizeof(float));
    w->embs = malloc((size_t)w->max_batch * ENG_SAM_EMB_FLOATS * sizeof(float));
    w->batch = malloc((size_t)w->batch_cap * sizeof *w->batch);
    w->scratch = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
    if (!w->inputs || !w->embs || !w->batch || !w->scratch) {
        snprintf(s->load_error, sizeof s->load_error, "out of memory for %d encoder inputs",
                 w->max_batch);
        return -1;
    }
    const eng_sam_config *mc = eng_sam_get_config(w->m);
    srv_model_info *in = &s->info;
    snprintf(in->model_id, sizeof in->model_id, "%s", eng_sam_model_id(w->m));
    snprintf(in->arch, sizeof in->arch, "%s", mc->name);
    in->embed_dim = mc->embed_dim;
    in->depth = mc->depth;
    snprintf(in->device, sizeof in->device, "%s%s%s", eng_backend_describe(w->be),
             w->dbe ? "; decoder on " : "", w->dbe ? eng_backend_describe(w->dbe) : "");
    /* the encoder's precision keys the embedding cache */
    snprintf(in->precision, sizeof in->precision, "%s", dtype_precision(eng_backend_dtype(w->be)));
    in->workspace_bytes = eng_sam_workspace_bytes(w->m);
    if (load_hypernet(w) != 0)
        return -1;
    in->load_seconds = srv_now() - t0;
    srv_cache_set_model(s->cache, in->model_id, in->precision);
    update_memory(w);
    srv_log_info("worker: model %s (%s, embed %d, depth %d) ready on %s in %.2f s", in->model_id,
                 in->arch, in->embed_dim, in->depth, in->device, in->load_seconds);
    return 0;
}

static void worker_unload(worker *w)
{
    srv__hnet_unload_all(w->s);
    eng_sam_destroy(w->m);
    eng_backend_destroy(w->dbe);
    eng_backend_destroy(w->be);
    w->dbe = NULL;
    free(w->inputs);
    free(w->embs);
    free(w->batch);
    free(w->scratch);
    w->m = NULL;
    w->be = NULL;
}

/* Contract: completes j as failed with the error already in j->err. */
static void fail_job(srv_sched *s, srv_job *j)
{
    j->status = j->err.status;
    srv__sched_finish(s, j);
}

/* Contract: completes j as succeeded. */
static void finish_ok(srv_sched *s, srv_job *j)
{
    j->status = 200;
    srv__sched_finish(s, j);
}

/*
 * Contract: finds or generates the adapter of j's task (timed into
 * j->t.adapter, metadata into j->ad_meta). Returns 0 with *lora set, or -1
 * with j->err set (the caller completes the job).
 */
static int adapter_for(worker *w, srv_job *j, const eng_sam_lora **lora)
{
    double t = srv_now();
    (void)w;
    if (!j->hn)
        return srv_fail(&j->err, 501, "task",
                        "no hypernetwork configured (start tasamd with --hypernet FILE)");
    int rc =
        srv_adapter_cache_acquire(srv__hnet_adapters(j->hn), j->adapter_id, j->task, j->task_len,
                                  j->task_norm, lora, &j->ad_meta, &j->ad_source, &j->err);
    j->t.adapter = (srv_now() - t) * 1e3;
    return rc;
}

/* Contract: done with the adapter adapter_for gave (NULL ok). */
static void adapter_done(srv_job *j, const eng_sam_lora *lora)
{
    if (lora)
        srv_adapter_cache_release(srv__hnet_adapters(j->hn), lora);
}

/* Contract: answers an adapter job (POST /v1/adapters) or a flush
 * (DELETE /admin/adapters) and completes it. */
static void serve_adapter_job(worker *w, srv_job *j)
{
    srv_sched *s = w->s;
    if (j->kind == SRV_KIND_ADAPTER_FLUSH) {
        j->flushed_mem = j->hn ? srv_adapter_cache_flush(srv__hnet_adapters(j->hn)) : 0;
        j->flushed_disk = srv_cache_adapter_clear(s->cache);
        srv_log_info("worker: adapter cache flushed: %lld from the device, %lld from disk",
                     (long long)j->flushed_mem, (long long)j->flushed_disk);
        if (j->flushed_disk < 0) {
            srv_fail(&j->err, 500, "", "flushing the adapter table failed (see the log)");
            fail_job(s, j);
            return;
        }
        finish_ok(s, j);
        return;
    }
    const eng_sam_lora *lora = NULL;
    if (adapter_for(w, j, &lora) != 0) {
        fail_job(s, j);
        return;
    }
    adapter_done(j, lora);
    finish_ok(s, j);
}

/* What everything mode's cancel hook looks at. */
typedef struct ev_watch {
    srv_sched *s;     /* the scheduler (its stop flags) */
    const srv_job *j; /* the job (its deadline) */
} ev_watch;

/* Contract: everything mode's cancel hook: the job's deadline has passed,
 * its client has left, or the daemon stops without draining. */
static int everything_cancel(void *arg)
{
    const ev_watch *x = arg;
    if (x->j->deadline > 0 && srv_now() >= x->j->deadline)
        return 1;
    if (__atomic_load_n(&x->j->abandoned, __ATOMIC_ACQUIRE))
        return 1;
    pthread_mutex_lock(&x->s->mu);
    int quit = x->s->stopping && !x->s->drain;
    pthread_mutex_unlock(&x->s->mu);
    return quit;
}

/*
 * Contract: answers an everything-mode job from the image's embedding (and
 * its pixels for crop layers), under the task's adapter when it has a task:
 * the point grid through the decoder, the generator's filters and NMS, with
 * the job's deadline checked between decoder passes (504 when it passes);
 * then completes the job.
 */
static void serve_everything(worker *w, srv_job *j, const float *emb)
{
    srv_sched *s = w->s;
    const eng_sam_lora *lora = NULL;
    if (j->task && adapter_for(w, j, &lora) != 0) {
        fail_job(s, j);
        return;
    }
    eng_amg_input in = {.image = j->pixels,
                        .width = j->info.orig_w,
                        .height = j->info.orig_h,
                        .embedding = emb,
                        .key = j->sha,
                        .lora = lora,
                        .max_mask_bytes = (size_t)j->max_mask_bytes};
    ev_watch watch = {s, j};
    eng_amg_hooks hooks = {.cancel = everything_cancel, .arg = &watch};
    int rc = eng_amg_run(w->m, &in, &j->everything->p, &hooks, &j->amg);
    adapter_done(j, lora);
    const eng_amg_stats *st = &j->amg.stats;
    j->t.encode += st->encode_ms;
    j->t.decode_masks = st->decode_ms;
    j->t.postprocess = st->postprocess_ms + st->nms_ms;
    srv_hist_observe(&s->metrics->decoder_seconds, j->t.decode_masks * 1e-3);
    srv_hist_observe(&s->metrics->postprocess_seconds, j->t.postprocess * 1e-3);
    if (rc == 0) {
        finish_ok(s, j);
        return;
    }
    int64_t decoded = st->prompts; /* st is zeroed with the result */
    eng_amg_result_free(&j->amg);
    if (rc == ENG_ECANCELED && __atomic_load_n(&j->abandoned, __ATOMIC_ACQUIRE)) {
        srv_metrics_add(&s->metrics->jobs_abandoned, 1);
        srv_fail(&j->err, 499, "",
                 "the client closed the connection while everything mode ran (%lld of its "
                 "prompts decoded)",
                 (long long)decoded);
    } else if (rc == ENG_ECANCELED && !(j->deadline > 0 && srv_now() >= j->deadline)) {
        srv_fail(&j->err, 503, "", "the server is shutting down");
    } else if (rc == ENG_ECANCELED) {
        srv_metrics_add(&s->metrics->deadline_expired, 1);
        srv_fail(&j->err, srv_status_of(rc, SRV_BLAME_INPUT), "everything",
                 "everything mode did not finish before the request's deadline "
                 "(request-timeout-ms %lld ms after arrival; %lld of its prompts decoded): lower "
                 "points_per_side or crop_n_layers",
                 (long long)srv_config_int(s->cfg, SRV_OPT_REQUEST_TIMEOUT_MS), (long long)decoded);
    } else {
        /* the request asked for more than max-mask-bytes (its fault); anything
         * else is the model's or the device's */
        int input = rc == ENG_ELIMIT;
        if (!input)
            srv_log_error("worker: everything mode on %s failed: %s", j->sha, eng_last_error());
        srv_fail_eng(&j->err, rc, input ? SRV_BLAME_INPUT : SRV_BLAME_SERVER,
                     input ? "everything" : "", "everything mode");
    }
    fail_job(s, j);
}

/*
 * Contract: answers one job from an embedding: for segment jobs the decoder
 * and postprocessing (with the task's adapter when it has a task), or
 * everything mode; then completes the job.
 */
static void serve(worker *w, srv_job *j, const float *emb, int hit, srv_cache_tier tier)
{
    srv_sched *s = w->s;
    srv_prompts *pr = j->prompts;
    eng_sam_imginfo info = j->info;
    const eng_sam_lora *lora = NULL;
    int rc;

    j->cache_hit = hit;
    j->tier = tier;
    if (j->kind == SRV_KIND_SEGMENT && j->everything) {
        serve_everything(w, j, emb);
        return;
    }
    if (j->kind == SRV_KIND_EMBED || !pr) {
        finish_ok(s, j);
        return;
    }
    eng_resize_shape(info.orig_w, info.orig_h, ENG_SAM_IMG, &info.input_w, &info.input_h);
    int C = j->multimask ? 3 : 1;
    size_t n = (size_t)pr->n * (size_t)C;
    size_t px = (size_t)info.orig_w * (size_t)info.orig_h;
    j->per_prompt = C;
    j->iou = malloc(n * sizeof(float));
    j->stability = malloc(n * sizeof(float));
    j->masks = malloc(n * px);
    if (!j->iou || !j->stability || !j->masks) {
        srv_job_free_results(j);
        srv_fail(&j->err, 503, "", "not enough memory for the masks of this request; retry later");
        fail_job(s, j);
        return;
    }
    if (j->task) {
        if (adapter_for(w, j, &lora) != 0) {
            srv_job_free_results(j);
            fail_job(s, j);
            return;
        }
        for (int i = 0; i < pr->n; i++)
            pr->p[i].lora = lora;
    }
    /* keyed by the image: a repeat request for it finds the embedding still
     * on the device and skips the 4 MiB upload; decoding and postprocessing
     * in one call keep the low-res logits on the device */
    eng_sam_timing tm = {0, 0};
    rc = eng_sam_segment_cached(w->m, j->sha, emb, &info, pr->p, pr->n, j->multimask, j->iou,
                                j->masks, j->stability, &tm);
    for (int i = 0; i < pr->n; i++)
        pr->p[i].lora = NULL;
    adapter_done(j, lora);
    if (rc == 0) /* the engine keeps it under j->sha now */
        srv_cache_note_resident(s->cache, j->sha, info.orig_w, info.orig_h);
    j->t.decode_masks = tm.decode_ms;
    j->t.postprocess = tm.postprocess_ms;
    srv_hist_observe(&s->metrics->decoder_seconds, j->t.decode_masks * 1e-3);
    srv_hist_observe(&s->metrics->postprocess_seconds, j->t.postprocess * 1e-3);
    if (rc != 0) {
        srv_job_free_results(j);
        srv_log_error("worker: decoding %s failed: %s", j->sha, eng_last_error());
        srv_fail_eng(&j->err, rc, SRV_BLAME_SERVER, "", "the mask decoder failed");
        fail_job(s, j);
        return;
    }
    j->n_masks = (int)n;
    finish_ok(s, j);
}

/* Contract: fills `input` from the job's resized pixels, or (its embedding
 * was evicted after the HTTP thread found it cached) decodes and resizes its
 * raw bytes. Returns 0, or -1 with j->err set. */
static int prepare_input(srv_job *j, float *input)
{
    uint8_t *rgb = NULL;
    if (j->resized) {
        eng_sam_normalize_pad(j->resized, j->info.input_w, j->info.input_h, input);
        return 0;
    }
    if (srv_image_prepare(j->raw, j->raw_len, j->max_pixels, &rgb, &j->info, NULL, &j->err) != 0)
        return -1;
    eng_sam_normalize_pad(rgb, j->info.input_w, j->info.input_h, input);
    free(rgb);
    return 0;
}

/* Contract: encodes the batch's distinct images, stores the embeddings and
 * serves every job of the batch. */
static void run_batch(worker *w, char (*shas)[65], int n_shas, srv_job **jobs, int n_jobs)
{
    srv_sched *s = w->s;
    srv_job *rep[64];
    int ok[64], n_ok = 0, slot[64], ow[64], oh[64];
    double t;

    /* One representative job per image supplies the pixels. */
    for (int k = 0; k < n_shas; k++) {
        rep[k] = NULL;
        for (int i = 0; i < n_jobs && !rep[k]; i++)
            if (strcmp(jobs[i]->sha, shas[k]) == 0)
                rep[k] = jobs[i];
        ok[k] = 0;
        slot[k] = -1;
        if (!rep[k])
            continue;
        if (prepare_input(rep[k], w->inputs + (size_t)n_ok * IMG_FLOATS) != 0) {
            /* The representative may be freed once finished: copy first. */
            srv_error err = rep[k]->err;
            rep[k] = NULL;
            for (int i = 0; i < n_jobs; i++)
                if (jobs[i] && strcmp(jobs[i]->sha, shas[k]) == 0) {
                    srv_job *j = jobs[i];
                    jobs[i] = NULL;
                    j->err = err;
                    fail_job(s, j);
                }
            continue;
        }
        ow[k] = rep[k]->info.orig_w;
        oh[k] = rep[k]->info.orig_h;
        rep[k] = NULL; /* only the sizes are used from here on */
        ok[k] = 1;
        slot[k] = n_ok++;
    }
    if (n_ok == 0)
        return;
    t = srv_now();
    int rc = eng_sam_encode(w->m, w->inputs, n_ok, w->embs);
    double enc_ms = (srv_now() - t) * 1e3;
    srv_hist_observe(&s->metrics->encoder_seconds, enc_ms * 1e-3);
    srv_hist_observe(&s->metrics->batch_size, n_ok);
    srv_metrics_add(&s->metrics->images_encoded, (uint64_t)n_ok);
    if (rc != 0)
        srv_log_error("worker: encoding %d images failed: %s", n_ok, eng_last_error());
    for (int k = 0; k < n_shas; k++) {
        if (!ok[k])
            continue;
        const float *emb = w->embs + (size_t)slot[k] * ENG_SAM_EMB_FLOATS;
        int first = 1, decoded = 0;
        /* a host copy only when no job of this batch decodes it (the
         * decoder's device keeps the copy the others need) */
        for (int i = 0; i < n_jobs; i++)
            decoded |= jobs[i] && jobs[i]->kind == SRV_KIND_SEGMENT && jobs[i]->prompts &&
                       strcmp(jobs[i]->sha, shas[k]) == 0;
        if (rc == 0 && srv_cache_put(s->cache, shas[k], emb, ow[k], oh[k], !decoded) != 0)
            srv_log_warn("worker: could not store the embedding of %s", shas[k]);
        for (int i = 0; i < n_jobs; i++) {
            srv_job *j = jobs[i];
            if (!j || strcmp(j->sha, shas[k]) != 0)
                continue;
            jobs[i] = NULL;
            if (rc != 0) {
                srv_fail_eng(&j->err, rc, SRV_BLAME_SERVER, "", "the image encoder failed");
                fail_job(s, j);
                continue;
            }
            srv_metrics_add(&s->metrics->cache_misses, 1);
            if (!first)
                srv_metrics_add(&s->metrics->encodes_shared, 1);
            first = 0;
            j->t.encode = enc_ms;
            j->info.orig_w = ow[k];
            j->info.orig_h = oh[k];
            serve(w, j, emb, 0, SRV_TIER_NONE);
        }
    }
    update_memory(w);
}

static void worker_loop(worker *w)
{
    srv_sched *s = w->s;
    srv_job *j;
    char shas[64][65];
    int stop = 0;

    while (!stop) {
        const float *emb;
        int ew, eh, rc;
        srv_cache_tier tier;
        double now;

        j = srv__sched_next(s, &stop);
        /* between jobs: free the hypernetwork versions no request uses */
        srv__hnet_reclaim(s);
        if (!j)
            continue;
        now = srv_now();
        j->t.queue = (now - j->t_submit) * 1e3;
        if (j->deadline > 0 && now >= j->deadline) {
            srv_metrics_add(&s->metrics->deadline_expired, 1);
            srv_fail(&j->err, 504, "", "the request's deadline passed while it was queued");
            fail_job(s, j);
            continue;
        }
        if (j->kind == SRV_KIND_ADAPTER || j->kind == SRV_KIND_ADAPTER_FLUSH) {
            serve_adapter_job(w, j);
            continue;
        }
        if (j->kind == SRV_KIND_HN_SWAP) {
            if (!w->hn.m) {
                srv_fail(&j->err, 409, "", "this daemon runs without a hypernetwork");
                fail_job(s, j);
            } else {
                srv__hnet_swap_job(&w->hn, s, j);
            }
            continue;
        }
        if (eng_sam_embedding_resident(w->m, j->sha) && j->info.orig_w > 0 && j->info.orig_h > 0) {
            /* on the decoder's device already: no copy needed */
            srv_cache_touch(s->cache, j->sha);
            srv_metrics_add(&s->metrics->cache_hits_mem, 1);
            serve(w, j, NULL, 1, SRV_TIER_MEMORY);
            continue;
        }
        emb = NULL;
        rc = srv_cache_get(s->cache, j->sha, j->kind == SRV_KIND_EMBED ? NULL : w->scratch, &emb,
                           &ew, &eh, &tier);
        if (rc == 0) {
            srv_metrics_add(tier == SRV_TIER_MEMORY ? &s->metrics->cache_hits_mem
                                                    : &s->metrics->cache_hits_disk,
                            1);
            j->info.orig_w = ew;
            j->info.orig_h = eh;
            serve(w, j, emb, 1, tier);
            continue;
        }
        if (!j->raw && !j->resized) {
            srv_fail(&j->err, 404, "image_id",
                     "no cached embedding for image_id %s (evicted or never computed); send the "
                     "image",
                     j->sha);
            fail_job(s, j);
            continue;
        }
        int n_shas = 1, n_jobs = 1;
        memcpy(shas[0], j->sha, 65);
        w->batch[0] = j;
        double wait = (double)srv_config_int(s->cfg, SRV_OPT_BATCH_WAIT_MS) * 1e-3;
        int maxb = w->max_batch < 64 ? w->max_batch : 64;
        srv__sched_gather(s, shas, &n_shas, maxb, w->batch, &n_jobs, w->batch_cap,
                          srv_now() + wait);
        run_batch(w, shas, n_shas, w->batch, n_jobs);
    }
}

void *srv__worker_main(void *arg)
{
    worker w;
    srv_sched *s = arg;
    memset(&w, 0, sizeof w);
    w.s = s;
    if (worker_load(&w) != 0) {
        srv_log_error("worker: cannot load the model: %s", s->load_error);
        worker_unload(&w);
        pthread_mutex_lock(&s->mu);
        s->failed = 1;
        pthread_mutex_unlock(&s->mu);
        if (s->on_state)
            s->on_state(s->on_state_arg);
        return NULL;
    }
    pthread_mutex_lock(&s->mu);
    __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->mu);
    srv_metrics_gauge_set(&s->metrics->ready, 1);
    if (s->on_state)
        s->on_state(s->on_state_arg);
    worker_loop(&w);
    srv_metrics_gauge_set(&s->metrics->ready, 0);
    worker_unload(&w);
    srv_log_info("worker: stopped");
    return NULL;
}
