/*
 * engine/sam_load.c: declaring, loading and planning the model; accessors and FLOP counts.
 *
 * Shapes use the letters of sam_internal.h.
 */
#include "sam_internal.h"

#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ */
/* shared helpers                                                       */

/* Upload host floats into a workspace tensor (skipped while planning). */
void eng__sam_upload(eng_ctx *ctx, eng_tensor *t, const float *src)
{
    if (ctx->measure || ctx->status)
        return;
    int rc = eng_backend_upload(ctx->be, t->data, src, (size_t)eng_numel(t));
    if (rc)
        eng_ctx_fail(ctx, rc);
}

void eng__sam_download(eng_ctx *ctx, float *dst, const eng_tensor *t, size_t n)
{
    if (ctx->measure || ctx->status)
        return;
    int rc = eng_backend_download(ctx->be, dst, t->data, n);
    if (rc)
        eng_ctx_fail(ctx, rc);
}

/* Reset the sticky error of a workspace before a call. */
void eng__sam_begin(eng_ctx *ctx)
{
    ctx->status = 0;
    eng_ctx_release(ctx, 0);
}

/* The call's status once its queued work is done. */
int eng__sam_end(eng_ctx *ctx)
{
    int rc = eng_ctx_status(ctx);
    if (!rc)
        rc = eng_backend_sync(ctx->be);
    eng_ctx_release(ctx, 0);
    return rc;
}

double eng__sam_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static void decl_lin(eng_weights *w, lin_t *l, int out, int in, const char *name)
{
    l->tid = eng__sam_lora_target_index(name);
    eng_weights_add(w, &l->w, 2, (int64_t[]){out, in}, "%.140s.weight", name);
    eng_weights_add(w, &l->b, 1, (int64_t[]){out}, "%.140s.bias", name);
}

static void decl_norm(eng_weights *w, norm_t *n, int dim, const char *name)
{
    eng_weights_add(w, &n->g, 1, (int64_t[]){dim}, "%.140s.weight", name);
    eng_weights_add(w, &n->b, 1, (int64_t[]){dim}, "%.140s.bias", name);
}

static void decl_dec_attn(eng_weights *w, dec_attn *a, int down, const char *name)
{
    char buf[160];
    a->inner = E / down;
    snprintf(buf, sizeof buf, "%.120s.q_proj", name);
    decl_lin(w, &a->q, a->inner, E, buf);
    snprintf(buf, sizeof buf, "%.120s.k_proj", name);
    decl_lin(w, &a->k, a->inner, E, buf);
    snprintf(buf, sizeof buf, "%.120s.v_proj", name);
    decl_lin(w, &a->v, a->inner, E, buf);
    snprintf(buf, sizeof buf, "%.120s.out_proj", name);
    decl_lin(w, &a->out, E, a->inner, buf);
}

/* ------------------------------------------------------------------ */
/* configuration from tensor shapes                                     */

static int sam_infer_config(const eng_ckpt *c, eng_sam_config *cfg)
{
    const char *path = eng_ckpt_path(c);
    memset(cfg, 0, sizeof *cfg);
    const eng_ckpt_tensor *pw = eng_ckpt_find(c, "image_encoder.patch_embed.proj.weight");
    if (!pw)
        return eng_error(ENG_ENOTFOUND,
                         "%s: tensor 'image_encoder.patch_embed.proj.weight': missing (not a SAM "
                         "checkpoint?)",
                         path);
    if (pw->ndim != 4 || pw->shape[1] != 3 || pw->shape[2] != 16 || pw->shape[3] != 16 ||
        pw->shape[0] < 8 || pw->shape[0] > 8192)
        return eng_error(ENG_ESHAPE,
                         "%s: tensor 'image_encoder.patch_embed.proj.weight': shape is not "
                         "[C,3,16,16]",
                         path);
    cfg->embed_dim = (int)pw->shape[0];
    cfg->mlp_dim = 4 * cfg->embed_dim;
    cfg->window = 14;
    char key[128];
    for (;;) {
        snprintf(key, sizeof key, "image_encoder.blocks.%d.attn.rel_pos_h", cfg->depth);
        const eng_ckpt_tensor *rp = eng_ckpt_find(c, key);
        if (!rp)
            break;
        if (cfg->depth == ENG_SAM_MAX_DEPTH)
            return eng_error(ENG_EUNSUP, "%s: more than %d encoder blocks", path,
                             ENG_SAM_MAX_DEPTH);
        if (rp->ndim != 2 || (rp->shape[0] != 2 * G - 1 && rp->shape[0] != 2 * 14 - 1))
            return eng_error(ENG_ESHAPE,
                             "%s: tensor '%s': expected [127,hd] (global) or [27,hd] (window); "
                             "other input sizes are not supported",
                             path, key);
        int hd = (int)rp->shape[1];
        if (cfg->depth == 0)
            cfg->head_dim = hd;
        else if (hd != cfg->head_dim)
            return eng_error(ENG_ESHAPE, "%s: tensor '%s': head dim %d differs from block 0's %d",
                             path, key, hd, cfg->head_dim);
        cfg->global[cfg->depth] = rp->shape[0] == 2 * G - 1;
        cfg->depth++;
    }
    if (cfg->depth == 0)
        return eng_error(ENG_ENOTFOUND,
                         "%s: tensor 'image_encoder.blocks.0.attn.rel_pos_h': missing", path);
    if (cfg->head_dim <= 0 || cfg->embed_dim % cfg->head_dim)
        return eng_error(ENG_ESHAPE, "%s: embed dim %d is not a multiple of head dim %d", path,
                         cfg->embed_dim, cfg->head_dim);
    cfg->heads = cfg->embed_dim / cfg->head_dim;
    const char *nm = "custom";
    if (cfg->embed_dim == 768 && cfg->depth == 12)
        nm = "vit_b";
    else if (cfg->embed_dim == 1024 && cfg->depth == 24)
        nm = "vit_l";
    else if (cfg->embed_dim == 1280 && cfg->depth == 32)
        nm = "vit_h";
    snprintf(cfg->name, sizeof cfg->name, "%s", nm);
    return 0;
}

/* ------------------------------------------------------------------ */
/* public API                                                           */

static void sam_declare(eng_sam *m)
{
    eng_weights *w = &m->wts;
    const eng_sam_config *cfg = &m->cfg;
    int C = cfg->embed_dim;
    char nm[160];

    eng_weights_add(w, &m->patch_w, 4, (int64_t[]){C, 3, 16, 16},
                    "image_encoder.patch_embed.proj.weight");
    eng_weights_add(w, &m->patch_b, 1, (int64_t[]){C}, "image_encoder.patch_embed.proj.bias");
    /* [1, G, G, C] in the file; the same bytes as [P, C] */
    eng_weights_add(w, &m->pos_embed, 4, (int64_t[]){1, G, G, C}, "image_encoder.pos_embed");
    for (int i = 0; i < cfg->depth; i++) {
        vit_block *b = &m->blocks[i];
        int S = cfg->global[i] ? G : cfg->window;
#define BLK(s) (snprintf(nm, sizeof nm, "image_encoder.blocks.%d.%s", i, s), nm)
        decl_norm(w, &b->norm1, C, BLK("norm1"));
        decl_norm(w, &b->norm2, C, BLK("norm2"));
        eng_weights_add(w, &b->rel_h, 2, (int64_t[]){2 * S - 1, cfg->head_dim}, "%s",
                        BLK("attn.rel_pos_h"));
        eng_weights_add(w, &b->rel_w, 2, (int64_t[]){2 * S - 1, cfg->head_dim}, "%s",
                        BLK("attn.rel_pos_w"));
        decl_lin(w, &b->qkv, 3 * C, C, BLK("attn.qkv"));
        decl_lin(w, &b->proj, C, C, BLK("attn.proj"));
        decl_lin(w, &b->lin1, cfg->mlp_dim, C, BLK("mlp.lin1"));
        decl_lin(w, &b->lin2, C, cfg->mlp_dim, BLK("mlp.lin2"));
#undef BLK
    }
    eng_weights_add(w, &m->neck0_w, 4, (int64_t[]){E, C, 1, 1}, "image_encoder.neck.0.weight");
    decl_norm(w, &m->neck1, E, "image_encoder.neck.1");
    eng_weights_add(w, &m->neck2_w, 4, (int64_t[]){E, E, 3, 3}, "image_encoder.neck.2.weight");
    decl_norm(w, &m->neck3, E, "image_encoder.neck.3");

    /* everything after the image encoder lives on the decoder's backend */
    w = &m->dwts;

    eng_weights_add(w, &m->no_mask, 2, (int64_t[]){1, E}, "prompt_encoder.no_mask_embed.weight");
    eng_weights_add(w, &m->md0_w, 4, (int64_t[]){4, 1, 2, 2},
                    "prompt_encoder.mask_downscaling.0.weight");
    eng_weights_add(w, &m->md0_b, 1, (int64_t[]){4}, "prompt_encoder.mask_downscaling.0.bias");
    decl_norm(w, &m->md1, 4, "prompt_encoder.mask_downscaling.1");
    eng_weights_add(w, &m->md3_w, 4, (int64_t[]){16, 4, 2, 2},
                    "prompt_encoder.mask_downscaling.3.weight");
    eng_weights_add(w, &m->md3_b, 1, (int64_t[]){16}, "prompt_encoder.mask_downscaling.3.bias");
    decl_norm(w, &m->md4, 16, "prompt_encoder.mask_downscaling.4");
    eng_weights_add(w, &m->md6_w, 4, (int64_t[]){E, 16, 1, 1},
                    "prompt_encoder.mask_downscaling.6.weight");
    eng_weights_add(w, &m->md6_b, 1, (int64_t[]){E}, "prompt_encoder.mask_downscaling.6.bias");

    for (int l = 0; l < 2; l++) {
        twoway_layer *L = &m->layers[l];
        char base[96], buf[160];
        snprintf(base, sizeof base, "mask_decoder.transformer.layers.%d", l);
        snprintf(buf, sizeof buf, "%.90s.self_attn", base);
        decl_dec_attn(w, &L->self_attn, 1, buf);
        snprintf(buf, sizeof buf, "%.90s.cross_attn_token_to_image", base);
        decl_dec_attn(w, &L->t2i, 2, buf);
        snprintf(buf, sizeof buf, "%.90s.cross_attn_image_to_token", base);
        decl_dec_attn(w, &L->i2t, 2, buf);
        snprintf(buf, sizeof buf, "%.90s.norm1", base);
        decl_norm(w, &L->norm1, E, buf);
        snprintf(buf, sizeof buf, "%.90s.norm2", base);
        decl_norm(w, &L->norm2, E, buf);
        snprintf(buf, sizeof buf, "%.90s.norm3", base);
        decl_norm(w, &L->norm3, E, buf);
        snprintf(buf, sizeof buf, "%.90s.norm4", base);
        decl_norm(w, &L->norm4, E, buf);
        snprintf(buf, sizeof buf, "%.90s.mlp.lin1", base);
        decl_lin(w, &L->mlp1, 2048, E, buf);
        snprintf(buf, sizeof buf, "%.90s.mlp.lin2", base);
        decl_lin(w, &L->mlp2, E, 2048, buf);
    }
    decl_dec_attn(w, &m->final_attn, 2, "mask_decoder.transformer.final_attn_token_to_image");
    decl_norm(w, &m->norm_final, E, "mask_decoder.transformer.norm_final_attn");
    eng_weights_add(w, &m->up0_w, 4, (int64_t[]){E, UPC1, 2, 2},
                    "mask_decoder.output_upscaling.0.weight");
    eng_weights_add(w, &m->up0_b, 1, (int64_t[]){UPC1}, "mask_decoder.output_upscaling.0.bias");
    decl_norm(w, &m->up1, UPC1, "mask_decoder.output_upscaling.1");
    eng_weights_add(w, &m->up3_w, 4, (int64_t[]){UPC1, UPC2, 2, 2},
                    "mask_decoder.output_upscaling.3.weight");
    eng_weights_add(w, &m->up3_b, 1, (int64_t[]){UPC2}, "mask_decoder.output_upscaling.3.bias");
    for (int i = 0; i < NMASK; i++)
        for (int j = 0; j < 3; j++) {
            snprintf(nm, sizeof nm, "mask_decoder.output_hypernetworks_mlps.%d.layers.%d", i, j);
            decl_lin(w, &m->hyper[i][j], j == 2 ? UPC2 : E, E, nm);
        }
    for (int j = 0; j < 3; j++) {
        snprintf(nm, sizeof nm, "mask_decoder.iou_prediction_head.layers.%d", j);
        decl_lin(w, &m->iou_head[j], j == 2 ? NMASK : E, E, nm);
    }
}

/* Parameters kept on the host: the prompt encoder's sparse side and the
 * decoder's output tokens (a few KiB, assembled into tokens per prompt). */
typedef struct host_param {
    const char *name;
    int rows, cols;
    size_t offset; /* of the float array inside eng_sam */
} host_param;

static const host_param sam_host_params[] = {
    {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", 2, PE_FEATS,
     offsetof(eng_sam, pe_gauss)},
    {"prompt_encoder.point_embeddings.0.weight", 1, E, offsetof(eng_sam, point_embed[0])},
    {"prompt_encoder.point_embeddings.1.weight", 1, E, offsetof(eng_sam, point_embed[1])},
    {"prompt_encoder.point_embeddings.2.weight", 1, E, offsetof(eng_sam, point_embed[2])},
    {"prompt_encoder.point_embeddings.3.weight", 1, E, offsetof(eng_sam, point_embed[3])},
    {"prompt_encoder.not_a_point_embed.weight", 1, E, offsetof(eng_sam, not_a_point)},
    {"mask_decoder.iou_token.weight", 1, E, offsetof(eng_sam, out_tokens)},
    {"mask_decoder.mask_tokens.weight", NMASK, E,
     offsetof(eng_sam, out_tokens) + E * sizeof(float)},
};
#define N_HOST_PARAMS (sizeof sam_host_params / sizeof sam_host_params[0])

static int sam_load_host(eng_sam *m, const eng_ckpt *c)
{
    for (size_t i = 0; i < N_HOST_PARAMS; i++) {
        const host_param *hp = &sam_host_params[i];
        int rc = eng_ckpt_load_f32(c, hp->name, 2, (int64_t[]){hp->rows, hp->cols},
                                   (float *)((uint8_t *)m + hp->offset));
        if (rc)
            return rc;
    }
    return 0;
}

int eng_sam_config_preset(const char *name, eng_sam_config *cfg)
{
    static const struct {
        const char *name;
        int dim, depth, head_dim, global[4];
    } presets[] = {
        {"vit_b", 768, 12, 64, {2, 5, 8, 11}},
        {"vit_l", 1024, 24, 64, {5, 11, 17, 23}},
        {"vit_h", 1280, 32, 80, {7, 15, 23, 31}},
    };
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(name, presets[i].name) != 0)
            continue;
        snprintf(cfg->name, sizeof cfg->name, "%s", name);
        cfg->embed_dim = presets[i].dim;
        cfg->depth = presets[i].depth;
        cfg->head_dim = presets[i].head_dim;
        cfg->heads = cfg->embed_dim / cfg->head_dim;
        cfg->mlp_dim = 4 * cfg->embed_dim;
        cfg->window = 14;
        for (int j = 0; j < 4; j++)
            cfg->global[presets[i].global[j]] = 1;
        return 0;
    }
    return eng_error(ENG_EINVAL, "unknown SAM architecture '%s' (vit_b, vit_l or vit_h)", name);
}

int eng_sam_list_params(const eng_sam_config *cfg, eng_sam_param_fn fn, void *arg)
{
    eng_sam *m = calloc(1, sizeof *m);
    if (!m)
        return eng_error(ENG_ENOMEM, "out of memory");
    m->cfg = *cfg;
    eng_weights_init(&m->wts, NULL);
    eng_weights_init(&m->dwts, NULL);
    sam_declare(m);
    int rc = m->wts.status ? m->wts.status : m->dwts.status;
    const eng_weights *ws[2] = {&m->wts, &m->dwts};
    for (int k = 0; k < 2; k++)
        for (int i = 0; !rc && i < ws[k]->n; i++)
            rc = fn(arg, ws[k]->specs[i].name, ws[k]->specs[i].ndim, ws[k]->specs[i].shape);
    for (size_t i = 0; !rc && i < N_HOST_PARAMS; i++)
        rc = fn(arg, sam_host_params[i].name, 2,
                (int64_t[]){sam_host_params[i].rows, sam_host_params[i].cols});
    eng_weights_free(&m->wts);
    eng_weights_free(&m->dwts);
    free(m);
    return rc;
}

/* 64-bit FNV-1a, for the model id. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Model id: the architecture name and a hash of every tensor's name and shape
 * and of a sample of its bytes (up to 4 KiB at each of its start, middle and
 * end), so different weights get different cache keys without reading all
 * 2.5 GB of ViT-H. */
static void sam_model_id(eng_sam *m, const eng_ckpt *c)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < eng_ckpt_count(c); i++) {
        const eng_ckpt_tensor *t = eng_ckpt_at(c, i);
        h = fnv1a(h, t->name, strlen(t->name) + 1);
        h = fnv1a(h, t->shape, (size_t)t->ndim * sizeof t->shape[0]);
        size_t bytes = (size_t)t->numel * eng_dtype_size(t->dtype);
        int contiguous = 1;
        for (int d = t->ndim - 1, s = 1; d >= 0; s *= (int)t->shape[d], d--)
            if (t->shape[d] > 1 && t->stride[d] != s)
                contiguous = 0;
        if (!contiguous || !bytes)
            continue;
        size_t chunk = bytes < 4096 ? bytes : 4096;
        const uint8_t *d = t->data;
        h = fnv1a(h, d, chunk);
        h = fnv1a(h, d + (bytes - chunk) / 2, chunk);
        h = fnv1a(h, d + bytes - chunk, chunk);
    }
    snprintf(m->model_id, sizeof m->model_id, "%s-%016llx", m->cfg.name, (unsigned long long)h);
}

/* Dense positional encoding of the 64x64 grid, HWC [P, E], on the device. */
static int sam_make_dense_pe(eng_sam *m)
{
    float *pe = malloc((size_t)P * E * sizeof(float));
    if (!pe)
        return eng_error(ENG_ENOMEM, "out of memory");
    for (int y = 0; y < G; y++)
        for (int x = 0; x < G; x++)
            eng__sam_pe_encode(m, ((float)x + 0.5f) / (float)G, ((float)y + 0.5f) / (float)G,
                               pe + ((size_t)y * G + x) * E);
    int rc = 0;
    void *mem =
        eng_backend_alloc(m->dbe, (size_t)P * E * eng_dtype_size(eng_backend_dtype(m->dbe)));
    if (!mem)
        rc = ENG_ENOMEM;
    else
        rc = eng_backend_upload(m->dbe, mem, pe, (size_t)P * E);
    if (mem)
        m->dense_pe = eng_view(mem, eng_backend_dtype(m->dbe), eng_backend_device(m->dbe), 2,
                               (int64_t[]){P, E});
    free(pe);
    return rc;
}

/* Plan the workspace: run each entry point once in measure mode with the
 * largest inputs the options allow, then allocate the peak once. */
static int sam_plan(eng_sam *m)
{
    int rc = eng_ctx_init(&m->ctx, m->be, 0);
    if (rc)
        return rc;
    m->dctx = &m->ctx;
    if (m->dbe != m->be) {
        if ((rc = eng_ctx_init(&m->dctx_own, m->dbe, 0)))
            return rc;
        m->dctx = &m->dctx_own;
    }
    eng__sam_encode_one(m, NULL, NULL, NULL, 0, NULL);
    eng_ctx_release(&m->ctx, 0);
    {
        eng_ctx *dc = m->dctx;
        size_t mark = eng_ctx_mark(dc);
        eng_new2(dc, E, P); /* eng_sam_decode: the uploaded CHW embedding */
        eng_tensor emb = eng_new2(dc, P, E);
        int T = 1 + NMASK + m->opt.max_points + 2;
        static const float dummy_mask = 0;
        int GB = m->opt.max_decode_batch;
        const float **masks = malloc((size_t)GB * sizeof *masks);
        if (!masks)
            return eng_error(ENG_ENOMEM, "out of memory");
        for (int b = 0; b < GB; b++)
            masks[b] = &dummy_mask;
        /* an unmerged adapter of the largest rank on every target: the
         * heaviest decoder path (only its shapes matter while measuring) */
        eng_sam_lora *plan_lora = eng__sam_lora_new(m, ENG_SAM_LORA_MAX_RANK, 0);
        if (!plan_lora) {
            free(masks);
            return eng_error(ENG_ENOMEM, "out of memory");
        }
        for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++)
            plan_lora->present[t] = 1;
        /* the largest group, every prompt with a mask input, then without
         * (layer 0 from the shared image side) */
        dec_shared sh;
        eng__sam_dec_shared_alloc(m, &sh, NULL);
        eng_tensor out = eng_new2(dc, (int64_t)GB * NMASK, ENG_SAM_LOWRES_FLOATS);
        eng__sam_decode_group(m, plan_lora, &emb, &sh, NULL, GB, T, masks, NULL, &out, 0, NMASK,
                              NULL);
        eng__sam_decode_group(m, plan_lora, &emb, &sh, NULL, GB, T, NULL, NULL, &out, 0, NMASK,
                              NULL);
        /* eng_sam_segment_cached: a group's masks postprocessed in place */
        eng__sam_post_plan(dc);
        free(plan_lora);
        free(masks);
        eng_ctx_release(dc, mark);
        /* eng_sam_postprocess: one uploaded low-res map, then the same */
        eng_new3(dc, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES);
        eng__sam_post_plan(dc);
        eng_ctx_release(dc, 0);
    }
    if ((rc = eng_ctx_status(&m->ctx)) || (rc = eng_ctx_status(m->dctx)))
        return rc;
    if ((rc = eng_ctx_commit(&m->ctx)))
        return rc;
    return m->dctx != &m->ctx ? eng_ctx_commit(m->dctx) : 0;
}

/* On a GPU, run every shape the model serves once before the first
 * request, so that the CUDA backend settles its GEMM algorithms and grows
 * its scratch now, then turn its tuning off for good (eng_backend_set_tuning):
 * the encoder on a zero image; the decoder at each prompt-count bucket up to
 * max_decode_batch (with one point and with max_points points, single and
 * multimask: every power-of-two class of token rows), and one prompt with a
 * mask input. Outputs are discarded. TASAM_NO_WARMUP=1 skips it (tuning
 * then happens on the first calls, as it did before). */
static int sam_warmup(eng_sam *m)
{
    if (getenv("TASAM_NO_WARMUP") ||
        (eng_backend_device(m->be) != ENG_DEV_CUDA && eng_backend_device(m->dbe) != ENG_DEV_CUDA))
        return 0;
    static const int counts[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256};
    int GB = m->opt.max_decode_batch, np = m->opt.max_points;
    size_t img = (size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG;
    float *in = calloc(img + ENG_SAM_EMB_FLOATS + ENG_SAM_LOWRES_FLOATS, sizeof(float));
    float *pts = malloc((size_t)np * 2 * sizeof(float));
    int *lab = malloc((size_t)np * sizeof(int));
    float *iou = malloc((size_t)GB * 3 * sizeof(float));
    eng_sam_prompt *pr = calloc((size_t)GB, sizeof *pr);
    int rc = in && pts && lab && iou && pr ? 0 : eng_error(ENG_ENOMEM, "out of memory");
    float *emb = in + img, *mask = emb + ENG_SAM_EMB_FLOATS;
    for (int i = 0; !rc && i < np; i++) {
        pts[2 * i] = (float)(64 + (37 * i) % 900);
        pts[2 * i + 1] = (float)(64 + (53 * i) % 900);
        lab[i] = i % 2;
    }
    const eng_sam_imginfo info = {ENG_SAM_IMG, ENG_SAM_IMG, ENG_SAM_IMG, ENG_SAM_IMG};
    eng_backend_set_tuning(m->be, 1);
    eng_backend_set_tuning(m->dbe, 1);
    if (!rc)
        rc = eng_sam_encode(m, in, 1, emb);
    for (size_t c = 0; !rc && c < sizeof counts / sizeof counts[0] && counts[c] <= GB; c++)
        for (int k = 0; !rc && k < 4; k++) {
            for (int b = 0; b < counts[c]; b++) {
                pr[b].n_points = k < 2 ? 1 : np;
                pr[b].points = pts;
                pr[b].labels = lab;
            }
            rc = eng_sam_decode_cached(m, NULL, emb, &info, pr, counts[c], k % 2, iou, NULL);
        }
    if (!rc) {
        pr[0].mask_input = mask;
        rc = eng_sam_decode_cached(m, NULL, emb, &info, pr, 1, 0, iou, NULL);
    }
    free(in), free(pts), free(lab), free(iou), free(pr);
    eng_backend_set_tuning(m->be, 0);
    eng_backend_set_tuning(m->dbe, 0);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", eng_last_error());
        return eng_error(rc, "warming up the model: %s", msg);
    }
    return 0;
}

int eng_sam_load(eng_sam **out, const char *path, eng_backend *be, const eng_sam_options *opt)
{
    *out = NULL;
    eng_ckpt *c = NULL;
    eng_sam *m = calloc(1, sizeof *m);
    if (!m)
        return eng_error(ENG_ENOMEM, "out of memory");
    int rc;
    m->be = be;
    m->dbe = opt && opt->decoder_backend ? opt->decoder_backend : be;
    m->dctx = &m->ctx;
    m->opt.max_points = opt && opt->max_points > 0 ? opt->max_points : 16;
    m->opt.max_batch = opt && opt->max_batch > 0 ? opt->max_batch : 1;
    m->opt.embedding_slots = opt && opt->embedding_slots > 0 ? opt->embedding_slots : 0;
    if (m->opt.embedding_slots > 1024)
        m->opt.embedding_slots = 1024;
    /* Decoder groups: worth it where many small kernels are the cost (GPU);
     * the CPU's GEMMs are already large enough per prompt. Each prompt of a
     * group holds about 30 MiB (f32) of activations. */
    m->opt.max_decode_batch = opt && opt->max_decode_batch > 0             ? opt->max_decode_batch
                              : eng_backend_device(m->dbe) == ENG_DEV_CUDA ? 64
                                                                           : 1;
    if (m->opt.max_decode_batch > 256)
        m->opt.max_decode_batch = 256;
    eng_weights_init(&m->wts, be);
    eng_weights_init(&m->dwts, m->dbe);
    if ((rc = eng_ckpt_open(&c, path)))
        goto err;
    if ((rc = sam_infer_config(c, &m->cfg)))
        goto err;
    sam_declare(m);
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++)
        assert(eng__sam_lora_base(m, t)->tid == t); /* target table and model agree */
    if ((rc = eng_weights_load(&m->wts, c)) || (rc = eng_weights_load(&m->dwts, c)))
        goto err;
    if ((rc = sam_load_host(m, c)))
        goto err;
    /* pos_embed [1,G,G,C] is used as rows [P, C] */
    m->pos_embed = eng_reshape2(m->pos_embed, P, m->cfg.embed_dim);
    m->no_mask = eng_reshape2(m->no_mask, 1, E);
    sam_model_id(m, c);
    eng_ckpt_close(c);
    c = NULL;
    if ((rc = sam_make_dense_pe(m)))
        goto err;
    if (m->opt.embedding_slots > 0) {
        /* a slot: the embedding [P, E], then its layer-0 side: src0 [P, E],
         * k, v [P, I_t2i], q [P, I_i2t] (every offset a multiple of P
         * elements, so aligned) */
        eng_dtype dt = eng_backend_dtype(m->dbe);
        eng_device dev = eng_backend_device(m->dbe);
        int64_t it = m->layers[0].t2i.inner, ii = m->layers[0].i2t.inner;
        size_t es = eng_dtype_size(dt), one = (size_t)P * (2 * E + 2 * it + ii) * es;
        m->slots = calloc((size_t)m->opt.embedding_slots, sizeof *m->slots);
        m->slot_mem = m->slots ? eng_backend_alloc(m->dbe, one * m->opt.embedding_slots) : NULL;
        if (!m->slots || !m->slot_mem) {
            rc = eng_error(ENG_ENOMEM, "no room for %d resident embeddings (%zu MiB)",
                           m->opt.embedding_slots, (one * m->opt.embedding_slots) >> 20);
            goto err;
        }
        m->n_slots = m->opt.embedding_slots;
        for (int i = 0; i < m->n_slots; i++) {
            emb_slot *sl = &m->slots[i];
            uint8_t *p = (uint8_t *)m->slot_mem + one * i;
            sl->t = eng_view(p, dt, dev, 2, (int64_t[]){P, E});
            p += (size_t)P * E * es;
            sl->side.src0 = eng_view(p, dt, dev, 2, (int64_t[]){P, E});
            p += (size_t)P * E * es;
            sl->side.k = eng_view(p, dt, dev, 2, (int64_t[]){P, it});
            p += (size_t)P * it * es;
            sl->side.v = eng_view(p, dt, dev, 2, (int64_t[]){P, it});
            p += (size_t)P * it * es;
            sl->side.q = eng_view(p, dt, dev, 2, (int64_t[]){P, ii});
        }
    }
    if ((rc = sam_plan(m)))
        goto err;
    if ((rc = sam_warmup(m)))
        goto err;
    *out = m;
    return 0;
err:
    eng_ckpt_close(c);
    eng_sam_destroy(m);
    return rc;
}

void eng_sam_destroy(eng_sam *m)
{
    if (!m)
        return;
    eng_ctx_free(&m->ctx);
    eng_ctx_free(&m->dctx_own);
    if (m->dense_pe.data)
        eng_backend_free(m->dbe, m->dense_pe.data);
    if (m->slot_mem)
        eng_backend_free(m->dbe, m->slot_mem);
    free(m->slots);
    eng_weights_free(&m->wts);
    eng_weights_free(&m->dwts);
    free(m);
}

const eng_sam_config *eng_sam_get_config(const eng_sam *m) { return &m->cfg; }

double eng_sam_encoder_flops(const eng_sam_config *cfg)
{
    double C = cfg->embed_dim, f = 0;
    int ws = cfg->window, wp = (G + ws - 1) / ws * ws; /* padded side, 70 */
    f += 2.0 * P * C * 3 * 16 * 16;                    /* patch embed */
    for (int i = 0; i < cfg->depth; i++) {
        double T = cfg->global[i] ? P : (double)wp * wp; /* tokens incl. window padding */
        double L = cfg->global[i] ? P : (double)ws * ws; /* attention span */
        int S = cfg->global[i] ? G : ws;
        f += 2.0 * T * C * 3 * C;            /* qkv */
        f += 4.0 * T * L * C;                /* QK^T and PV over all heads */
        f += 2.0 * T * C * 2 * (2 * S - 1);  /* rel-pos tables */
        f += 2.0 * T * C * C;                /* proj */
        f += 2.0 * 2 * P * C * cfg->mlp_dim; /* MLP */
    }
    f += 2.0 * P * C * E + 2.0 * P * E * E * 9; /* neck */
    return f;
}

double eng_sam_decoder_flops(int n_tokens)
{
    double T = n_tokens, f = 0, I = E / 2;
    /* token-side and image-side projections and attention, per two-way layer */
    double layer = 2 * T * E * E * 4 + 4 * T * T * E                        /* self attention */
                   + 2 * T * E * I * 2 + 2 * P * E * I * 2 + 4 * T * P * I  /* token->image */
                   + 2 * T * E * 2048 * 2                                   /* MLP */
                   + 2 * T * E * I * 2 + 2 * P * E * I * 2 + 4 * T * P * I; /* image->token */
    f += 2 * layer;
    f += 2 * T * E * I * 2 + 2 * P * E * I * 2 + 4 * T * P * I;  /* final attention */
    f += 2.0 * P * E * UPC1 * 4 + 2.0 * 4 * P * UPC1 * UPC2 * 4; /* upscaling */
    f += NMASK * (2.0 * E * E * 2 + 2.0 * E * UPC2) + 2.0 * E * E * 2 + 2.0 * E * NMASK;
    f += 2.0 * NMASK * UPC2 * 16 * P; /* masks */
    return f;
}

const char *eng_sam_model_id(const eng_sam *m) { return m->model_id; }
eng_backend *eng_sam_backend(const eng_sam *m) { return m->be; }
eng_backend *eng_sam_decoder_backend(const eng_sam *m) { return m->dbe; }
size_t eng_sam_workspace_bytes(const eng_sam *m)
{
    return m->ctx.cap + (m->dctx != &m->ctx ? m->dctx->cap : 0);
}
