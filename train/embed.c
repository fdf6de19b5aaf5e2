/*
 * train/embed.c: the on-disk cache of image embeddings (embed.h).
 */
#include "train/embed.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine/ckpt.h"
#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/image.h"
#include "train/io.h"

#define EMB_N   ENG_SAM_EMB_FLOATS
#define F16_MAX 65504.0f

struct tr_embed {
    const tr_coco *ds;
    char *dir; /* CACHE/<model id> */
    char model_id[64];
    char (*sha)[65];    /* [n_images] hex SHA-256 of each image file */
    char (*path)[4096]; /* [n_images] cache file of each */
    eng_sam_imginfo *info;
    uint8_t *cached; /* [n_images] 1: the file is there and well formed */
    int missing;
};

static uint64_t embed__fnv1a(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int tr_embed_default_dir(const char *data_dir, char *buf, size_t cap)
{
    size_t n = strlen(data_dir);
    while (n > 1 && data_dir[n - 1] == '/')
        n--;
    size_t k = n;
    while (k > 0 && data_dir[k - 1] != '/')
        k--;
    /* k: length of the parent part, its '/' included ("" for a bare name) */
    int w = k ? snprintf(buf, cap, "%.*s.tasam-cache", (int)k, data_dir)
              : snprintf(buf, cap, ".tasam-cache");
    if (w < 0 || (size_t)w >= cap)
        return eng_error(ENG_ELIMIT, "%s: path too long for the embedding cache", data_dir);
    return 0;
}

/* A whole-string integer metadata value in [lo, hi]. */
static int embed__meta_int(const eng_ckpt *c, const char *key, long lo, long hi, int *out)
{
    const char *v = eng_ckpt_meta(c, key);
    long long x;
    if (!v || tr_parse_int(v, lo, hi, &x))
        return -1;
    *out = (int)x;
    return 0;
}

/* Check a cache file's structure and metadata (not the checksum: that is
 * read with the data); 0 with *info filled, or -1 with a reason in why. */
static int embed__check(const tr_embed *e, int i, eng_sam_imginfo *info, char *why, size_t cap)
{
    eng_ckpt *c = NULL;
    if (eng_ckpt_open(&c, e->path[i]) != 0) {
        snprintf(why, cap, "%s", eng_last_error());
        return -1;
    }
    const eng_ckpt_tensor *t = eng_ckpt_find(c, "embedding");
    const char *fmt = eng_ckpt_meta(c, "format"), *mid = eng_ckpt_meta(c, "model_id");
    const char *sha = eng_ckpt_meta(c, "image_sha256"), *ck = eng_ckpt_meta(c, "checksum");
    const tr_coco_image *im = &e->ds->images[i];
    int rc = -1;
    if (!fmt || strcmp(fmt, "tasam-embedding"))
        snprintf(why, cap, "not a tasam embedding file");
    else if (!mid || strcmp(mid, e->model_id) || !sha || strcmp(sha, e->sha[i]))
        snprintf(why, cap, "written for another model or image");
    else if (!t || (t->dtype != ENG_F16 && t->dtype != ENG_F32) || t->ndim != 3 ||
             t->shape[0] != ENG_SAM_EMB_DIM || t->shape[1] != ENG_SAM_GRID ||
             t->shape[2] != ENG_SAM_GRID || eng_ckpt_count(c) != 1 || !ck)
        snprintf(why, cap, "no embedding [256,64,64] f16/f32 with a checksum");
    else if (embed__meta_int(c, "orig_w", 1, 65535, &info->orig_w) ||
             embed__meta_int(c, "orig_h", 1, 65535, &info->orig_h) ||
             embed__meta_int(c, "input_w", 1, ENG_SAM_IMG, &info->input_w) ||
             embed__meta_int(c, "input_h", 1, ENG_SAM_IMG, &info->input_h))
        snprintf(why, cap, "bad image sizes in the metadata");
    else if (info->orig_w != im->width || info->orig_h != im->height)
        snprintf(why, cap, "computed for a %dx%d image, the dataset says %dx%d", info->orig_w,
                 info->orig_h, im->width, im->height);
    else
        rc = 0;
    eng_ckpt_close(c);
    return rc;
}

void tr_embed_destroy(tr_embed *e)
{
    if (!e)
        return;
    free(e->dir);
    free(e->sha);
    free(e->path);
    free(e->info);
    free(e->cached);
    free(e);
}

/* Hash image i's file into e->sha[i]. */
static int embed__hash(tr_embed *e, int i)
{
    char p[4096];
    const tr_coco *ds = e->ds;
    int rc = tr_coco_image_path(ds, i, p, sizeof p);
    if (!rc && (rc = tr_sha256_file(p, e->sha[i]))) {
        char why[4200];
        snprintf(why, sizeof why, "%s", eng_last_error());
        rc = eng_error(rc, "%s: images[%d] (id %" PRId64 "): %s", ds->json_path, i,
                       ds->images[i].id, why);
    }
    return rc;
}

int tr_embed_open(tr_embed **out, const tr_coco *ds, const char *cache_dir, const char *model_id,
                  int *missing)
{
    *out = NULL;
    if (!ds->image_dir)
        return eng_error(ENG_EINVAL, "%s: loaded without images", ds->json_path);
    if (strlen(model_id) >= sizeof((tr_embed *)0)->model_id || strchr(model_id, '/'))
        return eng_error(ENG_EINVAL, "bad model id '%s'", model_id);
    tr_embed *e = calloc(1, sizeof *e);
    size_t n = (size_t)ds->n_images + 1, dl = strlen(cache_dir) + strlen(model_id) + 2;
    int rc = 0;
    if (!e || !(e->dir = malloc(dl)) || !(e->sha = calloc(n, sizeof *e->sha)) ||
        !(e->path = calloc(n, sizeof *e->path)) || !(e->info = calloc(n, sizeof *e->info)) ||
        !(e->cached = calloc(n, 1))) {
        tr_embed_destroy(e);
        return eng_error(ENG_ENOMEM, "out of memory for %d images' cache entries", ds->n_images);
    }
    e->ds = ds;
    snprintf(e->model_id, sizeof e->model_id, "%s", model_id);
    snprintf(e->dir, dl, "%s/%s", cache_dir, model_id);
    if ((rc = tr_mkdirs(e->dir))) {
        char why[512];
        snprintf(why, sizeof why, "%s", eng_last_error());
        tr_embed_destroy(e);
        return eng_error(rc, "embedding cache: %s (choose another folder with --cache)", why);
    }
    for (int i = 0; i < ds->n_images && !rc; i++) {
        if ((rc = embed__hash(e, i)))
            break;
        int w = snprintf(e->path[i], sizeof e->path[i], "%s/%.2s/%s.safetensors", e->dir, e->sha[i],
                         e->sha[i]);
        if (w < 0 || (size_t)w >= sizeof e->path[i]) {
            rc = eng_error(ENG_ELIMIT, "%s: cache path too long", e->dir);
            break;
        }
        struct stat st;
        char why[512];
        if (stat(e->path[i], &st) == 0) {
            if (embed__check(e, i, &e->info[i], why, sizeof why) == 0)
                e->cached[i] = 1;
            else
                fprintf(stderr, "tasam-train: cached embedding %s is unusable (%s); recomputing\n",
                        e->path[i], why);
        }
        e->missing += !e->cached[i];
    }
    if (rc) {
        tr_embed_destroy(e);
        return rc;
    }
    if (missing)
        *missing = e->missing;
    *out = e;
    return 0;
}

int tr_embed_missing(const tr_embed *e) { return e->missing; }

const char *tr_embed_path(const tr_embed *e, int image) { return e->path[image]; }

/* Store one embedding [256,64,64] f32 of image i. */
static int embed__put(tr_embed *e, int i, const float *emb, const eng_sam_imginfo *info,
                      const char *encoder, uint16_t *half)
{
    int f16 = 1;
    for (size_t k = 0; k < EMB_N; k++) {
        if (!isfinite(emb[k]))
            return eng_error(ENG_EINVAL, "%s: the encoder gave a non-finite embedding value",
                             e->path[i]);
        if (fabsf(emb[k]) > F16_MAX)
            f16 = 0;
    }
    if (f16)
        for (size_t k = 0; k < EMB_N; k++)
            half[k] = eng_f32_to_f16(emb[k]);
    const void *data = f16 ? (const void *)half : (const void *)emb;
    const size_t nb = EMB_N * (f16 ? 2 : 4);
    char sub[4096 + 8];
    snprintf(sub, sizeof sub, "%s/%.2s", e->dir, e->sha[i]);
    int rc = tr_mkdirs(sub);
    if (rc)
        return rc;
    char ow[16], oh[16], iw[16], ih[16], ck[24];
    snprintf(ow, sizeof ow, "%d", info->orig_w);
    snprintf(oh, sizeof oh, "%d", info->orig_h);
    snprintf(iw, sizeof iw, "%d", info->input_w);
    snprintf(ih, sizeof ih, "%d", info->input_h);
    snprintf(ck, sizeof ck, "%016" PRIx64, embed__fnv1a(data, nb));
    const char *meta[] = {"format",       "tasam-embedding",
                          "model_id",     e->model_id,
                          "image_sha256", e->sha[i],
                          "orig_w",       ow,
                          "orig_h",       oh,
                          "input_w",      iw,
                          "input_h",      ih,
                          "encoder",      encoder,
                          "checksum",     ck};
    eng_st_entry t = {.name = "embedding",
                      .dtype = f16 ? ENG_F16 : ENG_F32,
                      .ndim = 3,
                      .shape = {ENG_SAM_EMB_DIM, ENG_SAM_GRID, ENG_SAM_GRID},
                      .data = data};
    if ((rc = eng_safetensors_write(e->path[i], &t, 1, meta, sizeof meta / sizeof *meta / 2)))
        return rc;
    e->info[i] = *info;
    e->cached[i] = 1;
    e->missing--;
    return 0;
}

static double embed__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int tr_embed_fill(tr_embed *e, eng_sam *m, int batch, tr_embed_progress_fn progress, void *ctx,
                  volatile sig_atomic_t *stop)
{
    if (strcmp(eng_sam_model_id(m), e->model_id))
        return eng_error(ENG_EINVAL, "embedding cache for model %s filled by model %s", e->model_id,
                         eng_sam_model_id(m));
    if (!e->missing)
        return 0;
    if (batch < 1)
        batch = 1;
    const size_t in_n = (size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG;
    float *in = malloc((size_t)batch * in_n * sizeof *in);
    float *emb = malloc((size_t)batch * EMB_N * sizeof *emb);
    uint16_t *half = malloc(EMB_N * sizeof *half);
    int *which = malloc((size_t)batch * sizeof *which);
    eng_sam_imginfo *info = malloc((size_t)batch * sizeof *info);
    int rc = 0;
    if (!in || !emb || !half || !which || !info)
        rc = eng_error(ENG_ENOMEM, "out of memory for %d encoder inputs", batch);
    const char *encoder = eng_backend_describe(eng_sam_backend(m));
    const int total = e->missing;
    int done = 0;
    const double t0 = embed__now();
    for (int i = 0; i < e->ds->n_images && !rc;) {
        int nb = 0;
        for (; i < e->ds->n_images && nb < batch; i++) {
            if (e->cached[i])
                continue;
            eng_image img = {0};
            if ((rc = tr_coco_load_image(e->ds, i, &img)))
                break;
            rc = eng_sam_preprocess(&img, in + (size_t)nb * in_n, &info[nb]);
            eng_image_free(&img);
            if (rc)
                break;
            which[nb++] = i;
        }
        if (rc || nb == 0)
            break;
        if (stop && *stop) {
            rc = eng_error(ENG_ECANCELED, "cancelled");
            break;
        }
        if ((rc = eng_sam_encode(m, in, nb, emb)))
            break;
        for (int k = 0; k < nb && !rc; k++)
            rc = embed__put(e, which[k], emb + (size_t)k * EMB_N, &info[k], encoder, half);
        done += nb;
        if (!rc && progress)
            progress(ctx, done, total, done / fmax(embed__now() - t0, 1e-9));
    }
    free(in);
    free(emb);
    free(half);
    free(which);
    free(info);
    return rc;
}

int tr_embed_get(tr_embed *e, int image, float *emb, eng_sam_imginfo *info)
{
    if (image < 0 || image >= e->ds->n_images)
        return eng_error(ENG_EINVAL, "embedding of image %d: out of range", image);
    if (!e->cached[image])
        return eng_error(ENG_ENOTFOUND, "%s: not computed yet", e->path[image]);
    eng_ckpt *c = NULL;
    int rc = eng_ckpt_open(&c, e->path[image]);
    if (rc)
        return rc;
    const eng_ckpt_tensor *t = eng_ckpt_find(c, "embedding");
    const char *ck = eng_ckpt_meta(c, "checksum");
    char want[24] = "";
    if (t && ck)
        snprintf(want, sizeof want, "%016" PRIx64,
                 embed__fnv1a(t->data, (size_t)t->numel * eng_dtype_size(t->dtype)));
    if (!t || !ck || strcmp(ck, want))
        rc = eng_error(ENG_EFORMAT,
                       "%s: damaged cache entry (checksum mismatch); delete it and run again",
                       e->path[image]);
    if (!rc && t->numel != EMB_N)
        rc =
            eng_error(ENG_EFORMAT, "%s: embedding of %" PRId64 " values", e->path[image], t->numel);
    if (!rc)
        rc = eng_ckpt_read_f32(c, t, emb);
    eng_ckpt_close(c);
    if (!rc && info)
        *info = e->info[image];
    return rc;
}
