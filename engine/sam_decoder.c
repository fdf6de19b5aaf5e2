/*
 * engine/sam_decoder.c: the prompt encoder and the mask decoder (two-way transformer, upscaling,
 * output hypernetworks, IoU head), batched over prompts, and resident embeddings.
 *
 * Shapes use the letters of sam_internal.h.
 */
#include "sam_internal.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* prompt encoder (host side)                                           */

/* PositionEmbeddingRandom._pe_encoding of a point already normalised to
 * [0,1]^2: [sin(2 pi (2p-1) G), cos(...)] -> out[E]. float32 throughout, in
 * the reference's order of operations. */
void eng__sam_pe_encode(const eng_sam *m, float x, float y, float *out)
{
    float cx = 2.0f * x - 1.0f, cy = 2.0f * y - 1.0f;
    const float two_pi = 6.2831855f; /* float32(2 * pi) */
    for (int j = 0; j < PE_FEATS; j++) {
        float v = cx * m->pe_gauss[j] + cy * m->pe_gauss[PE_FEATS + j];
        v = two_pi * v;
        out[j] = sinf(v);
        out[PE_FEATS + j] = cosf(v);
    }
}

/* ResizeLongestSide.apply_coords: original pixels -> 1024-frame pixels,
 * computed in double as numpy does, then rounded to float32. */
static void scale_coord(const eng_sam_imginfo *info, double x, double y, float *ox, float *oy)
{
    *ox = (float)(x * ((double)info->input_w / info->orig_w));
    *oy = (float)(y * ((double)info->input_h / info->orig_h));
}

/* Sparse prompt tokens for one prompt: [n_tokens, E] into `out`, returns
 * n_tokens. Points (+ a padding point when there is no box), then the two
 * box corners. */
int eng__sam_sparse_tokens(const eng_sam *m, const eng_sam_imginfo *info, const eng_sam_prompt *p,
                           float *out)
{
    int n = 0;
    for (int i = 0; i < p->n_points; i++, n++) {
        float x, y;
        scale_coord(info, p->points[2 * i], p->points[2 * i + 1], &x, &y);
        eng__sam_pe_encode(m, (x + 0.5f) / (float)ENG_SAM_IMG, (y + 0.5f) / (float)ENG_SAM_IMG,
                           out + n * E);
        const float *add = p->labels[i] == 1 ? m->point_embed[1] : m->point_embed[0];
        for (int j = 0; j < E; j++)
            out[n * E + j] += add[j];
    }
    if (p->n_points > 0 && !p->has_box) {
        /* padding point: its encoding is zeroed, then not_a_point added */
        memcpy(out + n * E, m->not_a_point, sizeof m->not_a_point);
        n++;
    }
    if (p->has_box) {
        for (int c = 0; c < 2; c++, n++) {
            float x, y;
            scale_coord(info, p->box[2 * c], p->box[2 * c + 1], &x, &y);
            eng__sam_pe_encode(m, (x + 0.5f) / (float)ENG_SAM_IMG, (y + 0.5f) / (float)ENG_SAM_IMG,
                               out + n * E);
            for (int j = 0; j < E; j++)
                out[n * E + j] += m->point_embed[2 + c][j];
        }
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* mask decoder                                                         */

/* A decoder linear layer under an optional adapter:
 * y = act(x W^T + b + x A^T B^T) + res (B carries the scale), or with the
 * merged weight W' = W + B A. y may alias res, never x. */
static void dec_lin(eng_sam *m, const eng_sam_lora *lo, const lin_t *l, eng_tensor *y,
                    const eng_tensor *x, eng_act act, const eng_tensor *res)
{
    eng_ctx *ctx = m->dctx;
    int t = l->tid;
    if (!lo || t < 0 || !lo->present[t]) {
        eng_linear(ctx, y, x, &l->w, &l->b, act, res);
        return;
    }
    if (lo->merged) {
        eng_linear(ctx, y, x, &lo->W[t], &l->b, act, res);
        return;
    }
    assert(act == ENG_ACT_NONE || !res);
    size_t mark = eng_ctx_mark(ctx);
    int64_t M = x->shape[0];
    eng_tensor xa = eng_new2(ctx, M, lo->rank); /* x A^T [M, r] */
    eng_linear(ctx, &xa, x, &lo->A[t], NULL, ENG_ACT_NONE, NULL);
    eng_linear(ctx, y, x, &l->w, &l->b, ENG_ACT_NONE, res);
    eng_linear(ctx, y, &xa, &lo->B[t], NULL, ENG_ACT_NONE, y);
    if (act != ENG_ACT_NONE)
        eng_activate(ctx, y, y, act);
    eng_ctx_release(ctx, mark);
}

/* The attention core and output projection of the two-way transformer over
 * B independent prompts, from projected q [B*Tq, I], k and v [B*Tk, I]:
 * out [B*Tq, E] = out_proj(attn(q, k, v)) with 8 heads; residual `res`
 * added when non-NULL (out may alias res). */
static void dec_attend(eng_sam *m, const eng_sam_lora *lo, const dec_attn *a, int B,
                       eng_tensor *out, const eng_tensor *q, const eng_tensor *k,
                       const eng_tensor *v, const eng_tensor *res)
{
    eng_ctx *ctx = m->dctx;
    size_t mark = eng_ctx_mark(ctx);
    int64_t Nq = q->shape[0], Nk = k->shape[0];
    eng_tensor o = eng_new2(ctx, Nq, a->inner);
    int heads = 8, D = a->inner / heads;
    eng_attn d = {.B = B,
                  .H = heads,
                  .Tq = (int)(Nq / B),
                  .Tk = (int)(Nk / B),
                  .D = D,
                  .scale = 1.0f / sqrtf((float)D)};
    eng_attention(ctx, &o, q, k, v, &d);
    dec_lin(m, lo, &a->out, out, &o, ENG_ACT_NONE, res);
    eng_ctx_release(ctx, mark);
}

/* Attention of the two-way transformer over B independent prompts:
 * out [B*Tq, E] = out_proj(attn(q_proj(q_in), k_proj(k_in), v_proj(v_in)))
 * with q_in [B*Tq, E], k_in and v_in [B*Tk, E]; residual `res` added when
 * non-NULL (out may alias res). */
static void dec_attention(eng_sam *m, const eng_sam_lora *lo, const dec_attn *a, int B,
                          eng_tensor *out, const eng_tensor *q_in, const eng_tensor *k_in,
                          const eng_tensor *v_in, const eng_tensor *res)
{
    eng_ctx *ctx = m->dctx;
    size_t mark = eng_ctx_mark(ctx);
    int64_t Nq = q_in->shape[0], Nk = k_in->shape[0];
    eng_tensor q = eng_new2(ctx, Nq, a->inner);
    eng_tensor k = eng_new2(ctx, Nk, a->inner);
    eng_tensor v = eng_new2(ctx, Nk, a->inner);
    dec_lin(m, lo, &a->q, &q, q_in, ENG_ACT_NONE, NULL);
    dec_lin(m, lo, &a->k, &k, k_in, ENG_ACT_NONE, NULL);
    dec_lin(m, lo, &a->v, &v, v_in, ENG_ACT_NONE, NULL);
    dec_attend(m, lo, a, B, out, &q, &k, &v, res);
    eng_ctx_release(ctx, mark);
}

/* A 3-layer MLP with ReLU between layers on rows x [M, 256] -> y [M, out]. */
static void dec_mlp3(eng_sam *m, const eng_sam_lora *lo, const lin_t *l, eng_tensor *y,
                     const eng_tensor *x)
{
    eng_ctx *ctx = m->dctx;
    size_t mark = eng_ctx_mark(ctx);
    int64_t M = x->shape[0];
    eng_tensor h1 = eng_new2(ctx, M, l[0].w.shape[0]);
    dec_lin(m, lo, &l[0], &h1, x, ENG_ACT_RELU, NULL);
    eng_tensor h2 = eng_new2(ctx, M, l[1].w.shape[0]);
    dec_lin(m, lo, &l[1], &h2, &h1, ENG_ACT_RELU, NULL);
    dec_lin(m, lo, &l[2], y, &h2, ENG_ACT_NONE, NULL);
    eng_ctx_release(ctx, mark);
}

/* Rows first, first + step, ... (n of them) of a contiguous 2-D tensor, as a
 * strided view ([n, cols], row stride step * cols): e.g. the IoU token of
 * every prompt in a batch of [B * T, E] tokens. */
static eng_tensor rows_every(eng_tensor t, int64_t first, int64_t n, int64_t step)
{
    assert(t.ndim == 2 && first + (n - 1) * step < t.shape[0]);
    eng_tensor r = eng_rows(t, first, 1);
    r.shape[0] = n;
    r.stride[0] = step * t.shape[1];
    return r;
}

/* y [B*n, cols] = B copies of x [n, cols], in 1 + ceil(log2 B) copies. */
static void dec_repeat_rows(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int B)
{
    int64_t n = x->shape[0];
    eng_tensor y0 = eng_rows(*y, 0, n);
    eng_copy(ctx, &y0, x);
    for (int64_t have = 1; have < B;) {
        int64_t c = have < B - have ? have : B - have;
        eng_tensor dst = eng_rows(*y, have * n, c * n), from = eng_rows(*y, 0, c * n);
        eng_copy(ctx, &dst, &from);
        have += c;
    }
}

/* sb [P, E] += the dense embedding of a low-res mask input [256, 256]
 * (host): the prompt encoder's mask downscaling convolutions. */
void eng__sam_mask_embed(const eng_sam *m, eng_ctx *ctx, eng_tensor *sb, const float *mask_input)
{
    size_t mk = eng_ctx_mark(ctx);
    eng_tensor mi = eng_new3(ctx, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES);
    eng__sam_upload(ctx, &mi, mask_input);
    int h1 = ENG_SAM_LOWRES / 2;
    eng_tensor d1 = eng_new2(ctx, (int64_t)h1 * h1, 4);
    eng_conv2d(ctx, &d1, &mi, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES, &m->md0_w, &m->md0_b, 2, 0);
    eng_layernorm(ctx, &d1, &d1, NULL, &m->md1.g, &m->md1.b, VIT_EPS);
    eng_activate(ctx, &d1, &d1, ENG_ACT_GELU);
    eng_tensor d2 = eng_new2(ctx, P, 16);
    eng_conv2d(ctx, &d2, &d1, 0, h1, h1, &m->md3_w, &m->md3_b, 2, 0);
    eng_layernorm(ctx, &d2, &d2, NULL, &m->md4.g, &m->md4.b, VIT_EPS);
    eng_activate(ctx, &d2, &d2, ENG_ACT_GELU);
    eng_tensor w6 = eng_reshape2(m->md6_w, E, 16);
    eng_linear(ctx, sb, &d2, &w6, &m->md6_b, ENG_ACT_NONE, sb);
    eng_ctx_release(ctx, mk);
}

/* keys src [B*P, E] = the image embedding emb_hwc [P, E] + each prompt's
 * dense embedding: no_mask_embed, or mask_inputs[b] [256, 256] through the
 * mask downscaling convolutions. */
static void dec_dense_keys(eng_sam *m, eng_tensor *src, const eng_tensor *emb_hwc, int B,
                           const float *const *mask_inputs)
{
    eng_ctx *ctx = m->dctx;
    eng_tensor src0 = eng_rows(*src, 0, P);
    eng_copy(ctx, &src0, emb_hwc);
    for (int b = 1; b < B; b++) {
        eng_tensor sb = eng_rows(*src, (int64_t)b * P, P);
        eng_copy(ctx, &sb, &src0);
    }
    for (int b = 0; b < B; b++) {
        eng_tensor sb = eng_rows(*src, (int64_t)b * P, P);
        const float *mask_input = mask_inputs ? mask_inputs[b] : NULL;
        if (!mask_input)
            eng_add(ctx, &sb, &sb, &m->no_mask);
        else
            eng__sam_mask_embed(m, ctx, &sb, mask_input);
    }
}

void eng__sam_dec_shared_alloc(eng_sam *m, dec_shared *sh, emb_slot *slot)
{
    eng_ctx *ctx = m->dctx;
    memset(sh, 0, sizeof *sh);
    sh->own.src0 = eng_new2(ctx, P, E);
    sh->own.k = eng_new2(ctx, P, m->layers[0].t2i.inner);
    sh->own.v = eng_new2(ctx, P, m->layers[0].t2i.inner);
    sh->own.q = eng_new2(ctx, P, m->layers[0].i2t.inner);
    sh->kp0 = eng_new2(ctx, P, E);
    sh->slot = slot;
}

/* Points sh->cur at adapter lo's side of the embedding emb_hwc [P, E],
 * computing it unless the call or the slot already holds it. */
static void dec_shared_update(eng_sam *m, dec_shared *sh, const eng_sam_lora *lo,
                              const eng_tensor *emb_hwc)
{
    if (sh->valid && sh->lo == lo)
        return;
    sh->lo = lo;
    sh->valid = 1;
    emb_slot *slot = lo ? NULL : sh->slot;
    if (slot && slot->side_ok) {
        sh->cur = slot->side;
        return;
    }
    /* the slot's copy becomes valid only once the whole call succeeds */
    if (slot)
        slot->side_new = 1;
    dec_side *d = slot ? &slot->side : &sh->own;
    eng_ctx *ctx = m->dctx;
    const twoway_layer *L = &m->layers[0];
    eng_add(ctx, &d->src0, emb_hwc, &m->no_mask); /* no_mask [E] broadcast over rows */
    eng_add(ctx, &sh->kp0, &d->src0, &m->dense_pe);
    dec_lin(m, lo, &L->t2i.k, &d->k, &sh->kp0, ENG_ACT_NONE, NULL);
    dec_lin(m, lo, &L->t2i.v, &d->v, &d->src0, ENG_ACT_NONE, NULL);
    dec_lin(m, lo, &L->i2t.q, &d->q, &sh->kp0, ENG_ACT_NONE, NULL);
    sh->cur = *d;
}

/* What fixes a recorded stretch of a group's device work (CUDA graphs,
 * eng_backend_graph_begin): the op sequence and sizes (the part, the group's
 * shape, the adapter's layout and the workspace offset the group starts at,
 * which fixes every workspace address in it), and the buffers it reads
 * outside that (embedding, shared layer-0 side, mask buffer, adapter and
 * weight memory, the workspace itself). */
typedef struct dec_graph_shape {
    int part, B, T, first, count, shared, rank, merged;
    size_t mark;
    unsigned char present[ENG_SAM_LORA_TARGETS];
} dec_graph_shape;
typedef struct dec_graph_bufs {
    const void *emb, *src0, *k, *v, *q, *masks, *lora, *lora_mem, *wts, *dense_pe, *ws;
} dec_graph_bufs;

static int dec_graph_begin(eng_sam *m, int part, const eng_sam_lora *lo, const eng_tensor *emb_hwc,
                           const dec_shared *sh, const eng_tensor *masks, int B, int T, int first,
                           int count, int shared, size_t mark)
{
    eng_ctx *ctx = m->dctx;
    if (ctx->measure || ctx->status)
        return ENG_GRAPH_EAGER;
    dec_graph_shape s;
    dec_graph_bufs u;
    memset(&s, 0, sizeof s);
    memset(&u, 0, sizeof u);
    s.part = part, s.B = B, s.T = T, s.first = first, s.count = count, s.shared = shared;
    s.mark = mark;
    if (lo) {
        s.rank = lo->rank, s.merged = lo->merged;
        for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++)
            s.present[t] = (unsigned char)lo->present[t];
    }
    u.emb = emb_hwc->data, u.masks = masks->data, u.lora = lo, u.lora_mem = lo ? lo->mem : NULL;
    if (shared)
        u.src0 = sh->cur.src0.data, u.k = sh->cur.k.data, u.v = sh->cur.v.data,
        u.q = sh->cur.q.data;
    u.wts = m->dwts.mem, u.dense_pe = m->dense_pe.data, u.ws = ctx->base;
    int g = eng_backend_graph_begin(m->dbe, &s, sizeof s, &u, sizeof u);
    if (g < 0) {
        eng_ctx_fail(ctx, g);
        return ENG_GRAPH_REPLAYED; /* nothing to run: the call has failed */
    }
    return g;
}

/* After a stretch's ops: 1 when they must run again, eagerly (their
 * recording failed: e.g. scratch had to grow, or an op failed). */
static int dec_graph_redo(eng_sam *m, int g)
{
    eng_ctx *ctx = m->dctx;
    if (g != ENG_GRAPH_CAPTURE)
        return 0;
    int r = eng_backend_graph_end(m->dbe, ctx->status == 0);
    if (r == ENG_GRAPH_REDO) {
        ctx->status = 0;
        eng_clear_error();
        return 1;
    }
    if (r < 0)
        eng_ctx_fail(ctx, r);
    return 0;
}

/* A group of B prompts with the same token count T and the same adapter,
 * decoded in one pass: every activation carries the batch as leading rows
 * (tokens [B*T, E], image side [B*P, E]; the upscaled masks stack the B
 * images vertically, which is exact for the non-overlapping 2x2 transposed
 * convolutions). emb_hwc [P, E] is the image embedding; tokens_host [B, T, E];
 * mask_inputs[b] a [256,256] low-res mask or NULL (mask_inputs itself may be
 * NULL). When no prompt of the group has a mask input, layer 0's image side
 * comes from sh (computed here if it does not hold lo's yet). Writes
 * iou_out [B, 4] (host) and, for each prompt, masks `first` .. `first +
 * count - 1` into the first B * count rows of masks [>= B * count, 256*256]
 * on the decoder's backend (the caller's: they outlive the group's
 * activations); with `need`, only for the prompts it keeps (the rows of the
 * others are left as they were). With CUDA graphs on, the device work
 * between the token upload and the IoU download runs as two recorded
 * stretches (the two-way transformer and IoU head, then the masks), see
 * dec_graph_begin; a subset of the prompts kept by `need` runs its masks
 * eagerly. */
void eng__sam_decode_group(eng_sam *m, const eng_sam_lora *lo, const eng_tensor *emb_hwc,
                           dec_shared *sh, const float *tokens_host, int B, int T,
                           const float *const *mask_inputs, float *iou_out, const eng_tensor *masks,
                           int first, int count, const dec_need *need)
{
    eng_ctx *ctx = m->dctx;
    size_t mark = eng_ctx_mark(ctx);
    int shared = 1;
    for (int b = 0; b < B && mask_inputs; b++)
        shared &= mask_inputs[b] == NULL;

    /* keys [B*P, E]: with sh, written by layer 0's image-to-token step;
     * otherwise the image embedding + each prompt's dense embedding */
    eng_tensor src = eng_new2(ctx, (int64_t)B * P, E);
    if (shared)
        dec_shared_update(m, sh, lo, emb_hwc);
    else
        dec_dense_keys(m, &src, emb_hwc, B, mask_inputs);

    int64_t BT = (int64_t)B * T;
    eng_tensor pe_tok = eng_new2(ctx, BT, E); /* query_pe: the prompt tokens themselves */
    eng__sam_upload(ctx, &pe_tok, tokens_host);
    eng_tensor queries = eng_new2(ctx, BT, E);
    eng_tensor qp = eng_new2(ctx, BT, E);             /* queries + query_pe */
    eng_tensor kp = eng_new2(ctx, (int64_t)B * P, E); /* keys + key_pe */
    eng_tensor tmpq = eng_new2(ctx, BT, E);
    eng_tensor mid = eng_new2(ctx, BT, 2048);
    eng_tensor iou = eng_new2(ctx, B, NMASK);

    /* the two-way transformer and the IoU head */
    for (int g = dec_graph_begin(m, 1, lo, emb_hwc, sh, masks, B, T, first, count, shared, mark);
         g != ENG_GRAPH_REPLAYED; g = ENG_GRAPH_EAGER) {
        eng_copy(ctx, &queries, &pe_tok);
        for (int l = 0; l < 2; l++) {
            const twoway_layer *L = &m->layers[l];
            if (l == 0) {
                /* skip_first_layer_pe: queries are replaced, no residual */
                dec_attention(m, lo, &L->self_attn, B, &tmpq, &queries, &queries, &queries, NULL);
                eng_copy(ctx, &queries, &tmpq);
            } else {
                eng_add(ctx, &qp, &queries, &pe_tok);
                dec_attention(m, lo, &L->self_attn, B, &queries, &qp, &qp, &queries, &queries);
            }
            eng_layernorm(ctx, &queries, &queries, NULL, &L->norm1.g, &L->norm1.b, DEC_EPS);

            eng_add(ctx, &qp, &queries, &pe_tok);
            if (l == 0 && shared) {
                /* one key set for all prompts: their B*T query rows attend
                 * as a single batch */
                size_t mk = eng_ctx_mark(ctx);
                eng_tensor q = eng_new2(ctx, BT, L->t2i.inner);
                dec_lin(m, lo, &L->t2i.q, &q, &qp, ENG_ACT_NONE, NULL);
                dec_attend(m, lo, &L->t2i, 1, &queries, &q, &sh->cur.k, &sh->cur.v, &queries);
                eng_ctx_release(ctx, mk);
            } else {
                eng_add(ctx, &kp, &src, &m->dense_pe); /* dense_pe [P, E] broadcast */
                dec_attention(m, lo, &L->t2i, B, &queries, &qp, &kp, &src, &queries);
            }
            eng_layernorm(ctx, &queries, &queries, NULL, &L->norm2.g, &L->norm2.b, DEC_EPS);

            dec_lin(m, lo, &L->mlp1, &mid, &queries, ENG_ACT_RELU, NULL);
            dec_lin(m, lo, &L->mlp2, &queries, &mid, ENG_ACT_NONE, &queries);
            eng_layernorm(ctx, &queries, &queries, NULL, &L->norm3.g, &L->norm3.b, DEC_EPS);

            eng_add(ctx, &qp, &queries, &pe_tok);
            if (l == 0 && shared) {
                /* the shared q_proj(src0 + pe) for every prompt; keys <-
                 * src0 + out_proj(attention) */
                size_t mk = eng_ctx_mark(ctx);
                eng_tensor q = sh->cur.q;
                if (B > 1) {
                    q = eng_new2(ctx, (int64_t)B * P, L->i2t.inner);
                    dec_repeat_rows(ctx, &q, &sh->cur.q, B);
                }
                eng_tensor k = eng_new2(ctx, BT, L->i2t.inner);
                eng_tensor v = eng_new2(ctx, BT, L->i2t.inner);
                dec_lin(m, lo, &L->i2t.k, &k, &qp, ENG_ACT_NONE, NULL);
                dec_lin(m, lo, &L->i2t.v, &v, &queries, ENG_ACT_NONE, NULL);
                /* the residual: src0 itself for one prompt, else B copies */
                const eng_tensor *res = &sh->cur.src0;
                if (B > 1) {
                    dec_repeat_rows(ctx, &src, &sh->cur.src0, B);
                    res = &src;
                }
                dec_attend(m, lo, &L->i2t, B, &src, &q, &k, &v, res);
                eng_ctx_release(ctx, mk);
            } else {
                /* keys + key_pe unchanged since the token-to-image step */
                dec_attention(m, lo, &L->i2t, B, &src, &kp, &qp, &queries, &src);
            }
            eng_layernorm(ctx, &src, &src, NULL, &L->norm4.g, &L->norm4.b, DEC_EPS);
        }
        eng_add(ctx, &qp, &queries, &pe_tok);
        eng_add(ctx, &kp, &src, &m->dense_pe);
        dec_attention(m, lo, &m->final_attn, B, &queries, &qp, &kp, &src, &queries);
        eng_layernorm(ctx, &queries, &queries, NULL, &m->norm_final.g, &m->norm_final.b, DEC_EPS);
        eng_tensor iou_tok = rows_every(queries, 0, B, T);
        dec_mlp3(m, lo, m->iou_head, &iou, &iou_tok);
        if (!dec_graph_redo(m, g))
            break;
    }

    /* the prompts whose masks are made: with `need`, decided from the IoU
     * before any upscaling; keep[0..Bk) their indices, in order (B <= 256:
     * max_decode_batch is capped there at load) */
    int Bk = B, keep[256], got_iou = 0;
    if (need && !ctx->measure && !ctx->status) {
        uint8_t flags[256];
        assert(B <= 256);
        eng__sam_download(ctx, iou_out, &iou, (size_t)B * NMASK);
        got_iou = 1;
        memset(flags, 1, (size_t)B);
        need->fn(need->arg, iou_out, B, flags);
        Bk = 0;
        for (int b = 0; b < B; b++)
            if (flags[b])
                keep[Bk++] = b;
    }
    int subset = Bk < B;

    /* the masks: the whole batch recorded as one stretch; a subset runs
     * eagerly, the kept prompts' keys first moved to the front of src in
     * order (a prompt only ever moves down, onto a slot already read) */
    for (int g = Bk == 0  ? ENG_GRAPH_REPLAYED
                 : subset ? ENG_GRAPH_EAGER
                          : dec_graph_begin(m, 2, lo, emb_hwc, sh, masks, B, T, first, count,
                                            shared, mark);
         g != ENG_GRAPH_REPLAYED; g = ENG_GRAPH_EAGER) {
        size_t mk = eng_ctx_mark(ctx);
        for (int i = 0; subset && i < Bk; i++) {
            if (keep[i] == i)
                continue;
            eng_tensor dst = eng_rows(src, (int64_t)i * P, P);
            eng_tensor from = eng_rows(src, (int64_t)keep[i] * P, P);
            eng_copy(ctx, &dst, &from);
        }
        /* upscale src [Bk*P, E] -> [Bk*(2G)^2, 64] -> [Bk*(4G)^2, 32], HWC,
         * the Bk images stacked vertically; each step one pass where fused */
        eng_tensor srck = eng_rows(src, 0, (int64_t)Bk * P);
        eng_tensor u1 = eng_new2(ctx, (int64_t)Bk * 4 * P, UPC1);
        eng_conv_transpose2x2_norm_act(ctx, &u1, &srck, Bk * G, G, &m->up0_w, &m->up0_b, &m->up1.g,
                                       &m->up1.b, VIT_EPS, ENG_ACT_GELU);
        eng_tensor u2 = eng_new2(ctx, (int64_t)Bk * 16 * P, UPC2);
        eng_conv_transpose2x2_norm_act(ctx, &u2, &u1, 2 * Bk * G, 2 * G, &m->up3_w, &m->up3_b, NULL,
                                       NULL, 0.0f, ENG_ACT_GELU);

        /* hyper_in [4, B, 32]: one MLP per mask token over the batch, for
         * the tokens of the masks returned */
        eng_tensor hyper = eng_new2(ctx, (int64_t)NMASK * B, UPC2);
        for (int i = first; i < first + count; i++) {
            eng_tensor tok = rows_every(queries, 1 + i, B, T);
            eng_tensor out = eng_rows(hyper, (int64_t)i * B, B);
            dec_mlp3(m, lo, m->hyper[i], &out, &tok);
        }
        /* masks [B, count, 256*256]: prompt b's hypernetwork outputs `first`
         * .. `first + count - 1` against its upscaled image; only the masks
         * the caller gets, contiguous so that one copy brings them all back */
        for (int i = 0; i < Bk; i++) {
            int b = subset ? keep[i] : i;
            eng_tensor hb = rows_every(hyper, (int64_t)first * B + b, count, B);
            eng_tensor ub = eng_rows(u2, (int64_t)i * 16 * P, 16 * P);
            eng_tensor mb = eng_rows(*masks, (int64_t)b * count, count);
            eng_linear(ctx, &mb, &hb, &ub, NULL, ENG_ACT_NONE, NULL);
        }
        eng_ctx_release(ctx, mk);
        if (!dec_graph_redo(m, g))
            break;
    }
    if (!got_iou)
        eng__sam_download(ctx, iou_out, &iou, (size_t)B * NMASK);
    eng_ctx_release(ctx, mark);
}

int eng_sam_dense_pe(eng_sam *m, float *out)
{
    eng__sam_begin(m->dctx);
    eng_tensor chw = eng_new2(m->dctx, E, P);
    eng_transpose(m->dctx, &chw, &m->dense_pe);
    eng__sam_download(m->dctx, out, &chw, (size_t)E * P);
    return eng__sam_end(m->dctx);
}

int eng_sam_dense_prompt(eng_sam *m, const float *mask_input, float *out)
{
    float *zero = calloc((size_t)P * E, sizeof *zero);
    if (!zero)
        return eng_error(ENG_ENOMEM, "out of memory");
    eng__sam_begin(m->dctx);
    eng_tensor sb = eng_new2(m->dctx, P, E);
    eng__sam_upload(m->dctx, &sb, zero);
    if (mask_input)
        eng__sam_mask_embed(m, m->dctx, &sb, mask_input);
    else
        eng_add(m->dctx, &sb, &sb, &m->no_mask);
    eng_tensor chw = eng_new2(m->dctx, E, P);
    eng_transpose(m->dctx, &chw, &sb);
    eng__sam_download(m->dctx, out, &chw, (size_t)E * P);
    free(zero);
    return eng__sam_end(m->dctx);
}

int eng__sam_check_prompt(const eng_sam *m, const eng_sam_prompt *p, int idx)
{
    if (p->n_points < 0 || p->n_points > m->opt.max_points)
        return eng_error(ENG_EINVAL, "prompt %d: %d points (at most %d)", idx, p->n_points,
                         m->opt.max_points);
    if (p->n_points && (!p->points || !p->labels))
        return eng_error(ENG_EINVAL, "prompt %d: points without coordinates or labels", idx);
    for (int i = 0; i < p->n_points; i++) {
        if (p->labels[i] != 0 && p->labels[i] != 1)
            return eng_error(ENG_EINVAL, "prompt %d: point %d: label %d is not 0 or 1", idx, i,
                             p->labels[i]);
        if (!isfinite(p->points[2 * i]) || !isfinite(p->points[2 * i + 1]))
            return eng_error(ENG_EINVAL, "prompt %d: point %d is not finite", idx, i);
    }
    for (int i = 0; p->has_box && i < 4; i++)
        if (!isfinite(p->box[i]))
            return eng_error(ENG_EINVAL, "prompt %d: box is not finite", idx);
    return 0;
}

int eng_sam_decode(eng_sam *m, const float *embedding, const eng_sam_imginfo *info,
                   const eng_sam_prompt *prompts, int n, int multimask, float *iou, float *low_res)
{
    return eng_sam_decode_cached(m, NULL, embedding, info, prompts, n, multimask, iou, low_res);
}

/* The prompt-count bucket of a group of B prompts (at most GB): the counts
 * CUDA graphs are recorded for. */
static int dec_bucket(int B, int GB)
{
    static const int buckets[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256};
    for (size_t i = 0; i < sizeof buckets / sizeof buckets[0]; i++)
        if (buckets[i] >= B)
            return buckets[i] < GB ? buckets[i] : GB;
    return GB;
}

/* The least recently used slot, or the one holding `key`. */
static emb_slot *slot_lookup(eng_sam *m, const char *key, int *found)
{
    emb_slot *lru = NULL;
    *found = 0;
    for (int i = 0; i < m->n_slots; i++) {
        emb_slot *s = &m->slots[i];
        if (s->used && !strcmp(s->key, key)) {
            *found = 1;
            return s;
        }
        if (!s->used) {
            if (!lru || lru->used) /* an empty slot beats any used one */
                lru = s;
        } else if (!lru || (lru->used && s->tick < lru->tick)) {
            lru = s;
        }
    }
    return lru;
}

int eng_sam_embedding_resident(const eng_sam *m, const char *key)
{
    for (int i = 0; key && i < m->n_slots; i++)
        if (m->slots[i].used && !strcmp(m->slots[i].key, key))
            return 1;
    return 0;
}

/* What eng_sam_segment_each asks of one call. */
typedef struct each_state {
    const eng_sam_each *each;
    int C;         /* masks per prompt */
    int first;     /* the group's first prompt index in the call */
    int real;      /* the group's prompts (a CUDA-graph bucket may pad it) */
    float *iou;    /* [GB * C] the group's predicted IoU */
    uint8_t *keep; /* [GB * C] the masks to postprocess */
    int stop;      /* a callback's non-zero code */
} each_state;

/* dec_need callback: asks `select` which masks of the group to make. */
static void each_need(void *arg, const float *iou4, int B, uint8_t *need)
{
    each_state *es = arg;
    const eng_sam_each *ea = es->each;
    int off = es->C == 3 ? 1 : 0;
    int n = es->real < B ? es->real : B; /* padding prompts past it need nothing */
    memset(es->keep, 1, (size_t)n * es->C);
    for (int b = 0; b < n; b++)
        for (int k = 0; k < es->C; k++)
            es->iou[b * es->C + k] = iou4[b * NMASK + off + k];
    if (ea->select)
        ea->select(ea->arg, es->first, n, es->iou, es->keep);
    for (int b = 0; b < B; b++) {
        need[b] = 0;
        for (int k = 0; b < n && k < es->C; k++)
            need[b] |= es->keep[b * es->C + k] != 0;
    }
}

/*
 * eng_sam_decode_cached, eng_sam_segment_cached and eng_sam_segment_each:
 * decode `prompts` in groups; each group's masks land in a device buffer
 * [GB * count, 256*256] below the group's activations, from where they are
 * copied to low_res (when non-NULL) and/or postprocessed to masks +
 * stability on the host (when masks is non-NULL), or one by one into a
 * scratch mask handed to each->mask (when `each` is non-NULL), without
 * leaving the device in between.
 */
static int sam_decode_impl(eng_sam *m, const char *key, const float *embedding,
                           const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                           int multimask, float *iou, float *low_res, uint8_t *masks,
                           float *stability, const eng_sam_each *each, eng_sam_timing *timing)
{
    if (key && strlen(key) >= sizeof m->slots[0].key)
        return eng_error(ENG_EINVAL, "embedding key longer than %zu bytes",
                         sizeof m->slots[0].key - 1);
    if (n < 1)
        return eng_error(ENG_EINVAL, "no prompts to decode");
    if (info->orig_w < 1 || info->orig_h < 1 || info->input_w < 1 || info->input_h < 1)
        return eng_error(ENG_EINVAL, "bad image size");
    int rc;
    if ((masks || each) && (rc = eng__sam_post_check(info)))
        return rc;
    if (each && !(each->offset >= 0.0f && isfinite(each->offset)))
        return eng_error(ENG_EINVAL, "stability offset %g is not a finite number >= 0",
                         (double)each->offset);
    for (int i = 0; i < n; i++)
        if ((rc = eng__sam_check_prompt(m, &prompts[i], i)))
            return rc;
    /* the embedding as rows [P, E]: from a resident slot, or uploaded (and
     * kept in the least recently used slot when a key is given) */
    int found = 0;
    emb_slot *slot = key && m->n_slots ? slot_lookup(m, key, &found) : NULL;
    if (!found && !embedding)
        return eng_error(ENG_ENOTFOUND, "embedding '%s' is not resident and none was given",
                         key ? key : "");
    int T_max = 1 + NMASK + m->opt.max_points + 2, GB = m->opt.max_decode_batch;
    if (each && each->batch > 0 && each->batch < GB)
        GB = each->batch;
    int first = multimask ? 1 : 0, count = multimask ? 3 : 1;
    size_t px = (size_t)info->orig_w * (size_t)info->orig_h;
    /* host staging for one group: tokens [GB, T_max, E], IoU [GB, 4], masks */
    float *tokens = malloc((size_t)GB * T_max * E * sizeof(float));
    float *iou4 = malloc((size_t)GB * NMASK * sizeof(float));
    const float **mask_in = malloc((size_t)GB * sizeof *mask_in);
    float *iou_each = each ? malloc((size_t)GB * count * sizeof(float)) : NULL;
    uint8_t *keep = each ? malloc((size_t)GB * count) : NULL;
    uint8_t *scratch = each ? malloc(px) : NULL;
    if (!tokens || !iou4 || !mask_in || (each && (!iou_each || !keep || !scratch))) {
        free(tokens);
        free(iou4);
        free(mask_in);
        free(iou_each);
        free(keep);
        free(scratch);
        return eng_error(ENG_ENOMEM, "out of memory");
    }
    each_state es = {.each = each, .C = count, .iou = iou_each, .keep = keep};
    dec_need need = {.fn = each_need, .arg = &es};
    int graphs = eng_backend_graphs_on(m->dbe);
    double t_dec = 0, t_post = 0, t0 = eng__sam_now_ms();
    eng__sam_begin(m->dctx);
    eng_tensor emb = slot ? slot->t : eng_new2(m->dctx, P, E);
    if (!found) {
        if (slot) { /* valid only once the whole call has succeeded */
            snprintf(slot->key, sizeof slot->key, "%s", key);
            slot->used = 0;
            slot->side_ok = 0;
        }
        size_t mark = eng_ctx_mark(m->dctx);
        eng_tensor chw = eng_new2(m->dctx, E, P);
        eng__sam_upload(m->dctx, &chw, embedding);
        eng_transpose(m->dctx, &emb, &chw);
        eng_ctx_release(m->dctx, mark);
    }
    if (slot) {
        slot->tick = ++m->slot_tick;
        slot->side_new = 0;
    }
    dec_shared sh;
    eng__sam_dec_shared_alloc(m, &sh, slot);
    eng_tensor out = eng_new2(m->dctx, (int64_t)GB * count, ENG_SAM_LOWRES_FLOATS);
    for (int i = 0; i < n && !m->dctx->status && !es.stop;) {
        /* a group: consecutive prompts with the same token count, the same
         * adapter and all with or all without a mask input (those without
         * share layer 0's image side), at most max_decode_batch of them */
        int T = 1 + NMASK + eng__sam_sparse_tokens(m, info, &prompts[i], tokens + (1 + NMASK) * E);
        memcpy(tokens, m->out_tokens, sizeof m->out_tokens);
        mask_in[0] = prompts[i].mask_input;
        int B = 1;
        while (i + B < n && B < GB && prompts[i + B].lora == prompts[i].lora &&
               !prompts[i + B].mask_input == !prompts[i].mask_input) {
            float *tb = tokens + (size_t)B * T * E;
            int tb_n = eng__sam_sparse_tokens(m, info, &prompts[i + B], tb + (1 + NMASK) * E);
            if (1 + NMASK + tb_n != T)
                break;
            memcpy(tb, m->out_tokens, sizeof m->out_tokens);
            mask_in[B] = prompts[i + B].mask_input;
            B++;
        }
        if (each && each->before && (es.stop = each->before(each->arg, i, B, n)) != 0)
            break;
        es.first = i;
        es.real = B;
        /* With CUDA graphs, a group runs at its prompt-count bucket, the
         * last prompt repeated (its extra masks are never read, nor made
         * under `each`): one recording serves every count up to the bucket. */
        int Bg = graphs ? dec_bucket(B, GB) : B;
        for (int b = B; b < Bg; b++) {
            memcpy(tokens + (size_t)b * T * E, tokens + (size_t)(B - 1) * T * E,
                   (size_t)T * E * sizeof(float));
            mask_in[b] = mask_in[B - 1];
        }
        /* (the IoU copy back ends the group: its time is the decoder's) */
        eng__sam_decode_group(m, prompts[i].lora, &emb, &sh, tokens, Bg, T, mask_in, iou4, &out,
                              first, count, each ? &need : NULL);
        float *iou_dst = each ? iou_each : iou + (size_t)i * count;
        for (int b = 0; b < B; b++)
            memcpy(iou_dst + (size_t)b * count, iou4 + (size_t)b * NMASK + first,
                   (size_t)count * sizeof(float));
        size_t nm = (size_t)B * count, m0 = (size_t)i * count;
        if (low_res)
            eng__sam_download(m->dctx, low_res + m0 * ENG_SAM_LOWRES_FLOATS, &out,
                              nm * ENG_SAM_LOWRES_FLOATS);
        double t1 = eng__sam_now_ms();
        t_dec += t1 - t0;
        for (size_t k = 0; masks && k < nm && !m->dctx->status; k++) {
            eng_tensor lo = eng_rows(out, (int64_t)k, 1);
            uint64_t counts[2];
            eng__sam_post_one(m, &lo, info, 1.0f, masks + (m0 + k) * px, counts);
            if (stability)
                stability[m0 + k] = eng_sam_stability(counts[0], counts[1]);
        }
        for (size_t k = 0; each && k < nm && !m->dctx->status && !es.stop; k++) {
            if (!keep[k])
                continue;
            eng_tensor lo = eng_rows(out, (int64_t)k, 1);
            eng_sam_mask mk = {.prompt = i + (int)(k / (size_t)count),
                               .index = (int)(k % (size_t)count),
                               .iou = iou_each[k],
                               .mask = scratch};
            uint64_t counts[2] = {0, 0};
            eng__sam_post_one(m, &lo, info, each->offset, scratch, counts);
            mk.above_hi = counts[0];
            mk.above_lo = counts[1];
            if (!m->dctx->status)
                es.stop = each->mask(each->arg, &mk);
        }
        t0 = eng__sam_now_ms();
        t_post += t0 - t1;
        i += B;
    }
    free(tokens);
    free(iou4);
    free(mask_in);
    free(iou_each);
    free(keep);
    free(scratch);
    /* a callback stops the call only between complete steps: what the slot
     * holds is whole unless the backend failed */
    int st = eng__sam_end(m->dctx);
    rc = st ? st : es.stop;
    if (slot && !found)
        slot->used = st == 0;
    if (slot && slot->side_new)
        slot->side_ok = st == 0;
    if (timing) {
        timing->decode_ms = t_dec + (eng__sam_now_ms() - t0);
        timing->postprocess_ms = t_post;
    }
    return rc;
}

int eng_sam_decode_cached(eng_sam *m, const char *key, const float *embedding,
                          const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                          int multimask, float *iou, float *low_res)
{
    return sam_decode_impl(m, key, embedding, info, prompts, n, multimask, iou, low_res, NULL, NULL,
                           NULL, NULL);
}

int eng_sam_segment_cached(eng_sam *m, const char *key, const float *embedding,
                           const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                           int multimask, float *iou, uint8_t *masks, float *stability,
                           eng_sam_timing *timing)
{
    if (!masks)
        return eng_error(ENG_EINVAL, "no mask buffer");
    return sam_decode_impl(m, key, embedding, info, prompts, n, multimask, iou, NULL, masks,
                           stability, NULL, timing);
}

int eng_sam_segment_each(eng_sam *m, const char *key, const float *embedding,
                         const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                         int multimask, const eng_sam_each *each, eng_sam_timing *timing)
{
    if (!each || !each->mask)
        return eng_error(ENG_EINVAL, "no mask callback");
    return sam_decode_impl(m, key, embedding, info, prompts, n, multimask, NULL, NULL, NULL, NULL,
                           each, timing);
}
