/*
 * engine/sam_encoder.c: preprocessing and the image encoder (ViT with windowed and global
 * attention, neck).
 *
 * Shapes use the letters of sam_internal.h.
 */
#include "sam_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* image encoder                                                        */

/* One ViT block, in place on x [P, C]. */
static void vit_block_forward(eng_sam *m, const vit_block *blk, int global, eng_tensor *x)
{
    eng_ctx *ctx = &m->ctx;
    const eng_sam_config *cfg = &m->cfg;
    int C = cfg->embed_dim, ws = cfg->window;
    size_t mark = eng_ctx_mark(ctx);

    eng_tensor h = eng_new2(ctx, P, C);
    eng_layernorm(ctx, &h, x, NULL, &blk->norm1.g, &blk->norm1.b, VIT_EPS);

    int grid = global ? G : ws;
    int nwin = global ? 1 : ((G + ws - 1) / ws) * ((G + ws - 1) / ws);
    int T = grid * grid;
    eng_tensor tokens = h; /* [nwin * T, C] */
    if (!global) {
        tokens = eng_new2(ctx, (int64_t)nwin * T, C);
        eng_window_partition(ctx, &tokens, &h, G, G, ws);
    }
    eng_tensor qkv = eng_new2(ctx, (int64_t)nwin * T, 3 * C); /* per token: q | k | v */
    eng_linear(ctx, &qkv, &tokens, &blk->qkv.w, &blk->qkv.b, ENG_ACT_NONE, NULL);
    eng_tensor att = eng_new2(ctx, (int64_t)nwin * T, C);
    eng_tensor q = qkv, k = qkv, v = qkv;
    size_t es = eng_dtype_size(qkv.dtype);
    if (qkv.data) {
        k.data = (uint8_t *)qkv.data + (size_t)C * es;
        v.data = (uint8_t *)qkv.data + (size_t)2 * C * es;
    }
    eng_relpos rp = {&blk->rel_h, &blk->rel_w, grid, grid};
    eng_attn a = {.B = nwin,
                  .H = cfg->heads,
                  .Tq = T,
                  .Tk = T,
                  .D = cfg->head_dim,
                  .q_rs = 3 * C,
                  .kv_rs = 3 * C,
                  .scale = 1.0f / sqrtf((float)cfg->head_dim),
                  .relpos = &rp};
    eng_attention(ctx, &att, &q, &k, &v, &a);
    if (global) {
        eng_linear(ctx, x, &att, &blk->proj.w, &blk->proj.b, ENG_ACT_NONE, x);
    } else {
        eng_tensor pr = eng_new2(ctx, (int64_t)nwin * T, C);
        eng_linear(ctx, &pr, &att, &blk->proj.w, &blk->proj.b, ENG_ACT_NONE, NULL);
        eng_window_unpartition_add(ctx, x, &pr, G, G, ws);
    }
    eng_ctx_release(ctx, mark);

    h = eng_new2(ctx, P, C);
    eng_layernorm(ctx, &h, x, NULL, &blk->norm2.g, &blk->norm2.b, VIT_EPS);
    eng_tensor mid = eng_new2(ctx, P, cfg->mlp_dim);
    eng_linear(ctx, &mid, &h, &blk->lin1.w, &blk->lin1.b, ENG_ACT_GELU, NULL);
    eng_linear(ctx, x, &mid, &blk->lin2.w, &blk->lin2.b, ENG_ACT_NONE, x);
    eng_ctx_release(ctx, mark);
}

/* input [3,1024,1024] host -> embedding [E,G,G] host; optional taps. */
int eng__sam_encode_one(eng_sam *m, const float *input, float *patch, float **blocks, int n_blocks,
                        float *embedding)
{
    eng_ctx *ctx = &m->ctx;
    const eng_sam_config *cfg = &m->cfg;
    int C = cfg->embed_dim;
    size_t mark = eng_ctx_mark(ctx);

    eng_tensor img = eng_new3(ctx, 3, ENG_SAM_IMG, ENG_SAM_IMG);
    eng__sam_upload(ctx, &img, input);
    eng_tensor x = eng_new2(ctx, P, C);
    eng_conv2d(ctx, &x, &img, 1, ENG_SAM_IMG, ENG_SAM_IMG, &m->patch_w, &m->patch_b, 16, 0);
    if (patch)
        eng__sam_download(ctx, patch, &x, (size_t)P * C);
    eng_add(ctx, &x, &x, &m->pos_embed);
    for (int i = 0; i < cfg->depth; i++) {
        vit_block_forward(m, &m->blocks[i], cfg->global[i], &x);
        if (blocks && i < n_blocks && blocks[i])
            eng__sam_download(ctx, blocks[i], &x, (size_t)P * C);
    }
    /* neck: 1x1 conv (a linear over HWC), LayerNorm2d (a row LayerNorm in
     * HWC), 3x3 conv, LayerNorm2d, then CHW for the caller. */
    eng_tensor n0 = eng_new2(ctx, P, E);
    eng_tensor w0 = eng_reshape2(m->neck0_w, E, C);
    eng_linear(ctx, &n0, &x, &w0, NULL, ENG_ACT_NONE, NULL);
    eng_layernorm(ctx, &n0, &n0, NULL, &m->neck1.g, &m->neck1.b, VIT_EPS);
    eng_tensor n2 = eng_new2(ctx, P, E);
    eng_conv2d(ctx, &n2, &n0, 0, G, G, &m->neck2_w, NULL, 1, 1);
    eng_layernorm(ctx, &n2, &n2, NULL, &m->neck3.g, &m->neck3.b, VIT_EPS);
    eng_tensor chw = eng_new2(ctx, E, P);
    eng_transpose(ctx, &chw, &n2);
    eng__sam_download(ctx, embedding, &chw, (size_t)ENG_SAM_EMB_FLOATS);
    eng_ctx_release(ctx, mark);
    return eng_ctx_status(ctx);
}

int eng_sam_preprocess(const eng_image *img, float *input, eng_sam_imginfo *info)
{
    int nw, nh;
    if (!img || !img->rgb || img->w <= 0 || img->h <= 0)
        return eng_error(ENG_EINVAL, "empty image");
    int rc = eng_resize_check(img->w, img->h, ENG_SAM_IMG);
    if (rc)
        return rc;
    eng_resize_shape(img->w, img->h, ENG_SAM_IMG, &nw, &nh);
    uint8_t *rs = malloc((size_t)nw * nh * 3);
    if (!rs)
        return eng_error(ENG_ENOMEM, "out of memory resizing a %dx%d image", img->w, img->h);
    rc = eng_resize_bilinear_aa(img->rgb, img->w, img->h, rs, nw, nh);
    if (!rc)
        eng_sam_normalize_pad(rs, nw, nh, input);
    free(rs);
    if (rc)
        return rc;
    info->orig_w = img->w;
    info->orig_h = img->h;
    info->input_w = nw;
    info->input_h = nh;
    return 0;
}

int eng_sam_encode(eng_sam *m, const float *inputs, int n, float *embeddings)
{
    if (n < 1 || n > m->opt.max_batch)
        return eng_error(ENG_EINVAL, "encoder batch %d outside 1..%d", n, m->opt.max_batch);
    eng__sam_begin(&m->ctx);
    for (int i = 0; i < n && !m->ctx.status; i++)
        eng__sam_encode_one(m, inputs + (size_t)i * 3 * ENG_SAM_IMG * ENG_SAM_IMG, NULL, NULL, 0,
                            embeddings + (size_t)i * ENG_SAM_EMB_FLOATS);
    return eng__sam_end(&m->ctx);
}

int eng_sam_encode_debug(eng_sam *m, const float *input, float *patch, float **blocks, int n_blocks,
                         float *embedding)
{
    eng__sam_begin(&m->ctx);
    eng__sam_encode_one(m, input, patch, blocks, n_blocks, embedding);
    return eng__sam_end(&m->ctx);
}
