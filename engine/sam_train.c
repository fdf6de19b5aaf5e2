/*
 * engine/sam_train.c: the mask decoder's training forward, which keeps what
 * its backward needs, and the backward to the LoRA factors (sam_train.h).
 *
 * The forward is the serving decoder's (sam_decoder.c) for one prompt,
 * written out of place: every intermediate the backward reads gets its own
 * workspace tensor, and each linear layer leaves a record (tl_lin: its
 * input and x A^T). The backward walks the same graph in reverse with the
 * engine's backward ops, keeping two running gradients, dQ [T, E] for the
 * tokens and dK [P, E] for the image side, and updating them in place.
 * Nothing upstream of the adapter needs a gradient: SAM's weights are
 * frozen, and the prompt tokens, the image embedding and the dense prompt
 * (no_mask_embed or the mask downscaling) are constants, so layers fed only
 * by those skip their input gradient (tl_lin.need_dx = 0).
 *
 * LoRA of one layer, with the scale folded into B as the serving path does
 * (sB = scale B), u = x A^T [M, r]:
 *   y  = x W^T + b + u sB^T
 *   dsB += dy^T u,   du = dy sB,   dA += du^T x,   dx = dy W + du A
 * and d loss / d B = scale d loss / d sB.
 *
 * Workspace, one bump allocator planned at create in measure mode:
 *   [embedding rows][layer 0's image side][one prompt's tape][backward temporaries]
 * The image side (src0 = embedding + no_mask_embed, src0 + dense_pe, and
 * layer 0's token-to-image k/v and image-to-token q projections) depends on
 * the image and the adapter only: the first forward without a mask input
 * after set_image or set_lora computes it, and every later such prompt
 * shares it; a prompt with a mask input computes its own in its tape. (A
 * forward lays its tape out after the side, so recomputing the side, which
 * may change its size with the adapter, only ever discards a dead tape.)
 *
 * Shapes use the letters of sam_internal.h; I is an attention's inner width
 * (E for self-attention, E/2 for the cross attentions), r the rank, C the
 * masks returned (3 or 1).
 */
#include "sam_train.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sam_internal.h"

#define HEADS 8 /* the decoder's attention heads */

/* One linear layer's record for the backward. */
typedef struct tl_lin {
    const lin_t *l; /* the frozen layer (the model's) */
    eng_tensor x;   /* input [M, in], a view of a tensor the tape keeps */
    eng_tensor u;   /* x A^T [M, r] when the layer is adapted */
    int need_dx;    /* the input depends on the adapter: propagate to it */
} tl_lin;

/* An attention with its projections. */
typedef struct tl_attn {
    tl_lin q, k, v, out;
    eng_tensor qp, kp, vp; /* projected q [Tq, I], k and v [Tk, I] */
    eng_attn d;            /* the core's descriptor (one prompt, 8 heads) */
} tl_attn;

/* A 3-layer MLP with ReLU between (output hypernetworks, IoU head). */
typedef struct tl_mlp {
    tl_lin l[3];
    eng_tensor h1, h2; /* ReLU outputs [M, 256] */
} tl_mlp;

/* One two-way layer: its attentions and MLP, and the inputs of its four
 * LayerNorms (the residual sums). */
typedef struct tl_layer {
    tl_attn self, t2i, i2t;
    tl_lin mlp1, mlp2;
    eng_tensor h;              /* ReLU(mlp1) [T, 2048] */
    eng_tensor r1, r2, r3, r4; /* [T, E] x 3, [P, E] */
} tl_layer;

/* Everything one prompt's backward reads. */
typedef struct tl_tape {
    int T, C, first;
    eng_tensor tokens; /* [T, E]: the prompt tokens, also query_pe */
    tl_layer layer[2];
    tl_attn fin;
    eng_tensor r5;                /* final attention's LayerNorm input [T, E] */
    eng_tensor c1, n1, g1, c2, U; /* upscaling: [4P, 64] x 3, [16P, 32] x 2 */
    tl_mlp hyper[NMASK], iou;     /* output hypernetworks (those used), IoU head */
    eng_tensor hyper_out, masks;  /* [C, 32], [C, 256*256] */
    eng_tensor iou4;              /* [1, 4] */
} tl_tape;

struct eng_sam_train {
    eng_sam *m;  /* borrowed */
    eng_ctx ctx; /* own workspace on the model's decoder backend */
    int rank;
    float scale;
    int present[ENG_SAM_LORA_TARGETS];
    eng_tensor A[ENG_SAM_LORA_TARGETS], sB[ENG_SAM_LORA_TARGETS];   /* [r, in], scale B [out, r] */
    eng_tensor dA[ENG_SAM_LORA_TARGETS], dsB[ENG_SAM_LORA_TARGETS]; /* their gradients */
    void *lmem;                                                     /* all of the above */
    float *host; /* staging (tokens, scaled B), host_n floats */
    size_t host_n;

    /* the image */
    int have_image;
    eng_sam_imginfo info;
    eng_tensor emb;            /* [P, E] rows */
    size_t mark_emb, mark_img; /* end of the embedding, of the side (== mark_emb: none) */
    int side_ok;               /* the side holds this image's and adapter's */
    eng_tensor src0, kp0;      /* [P, E]: embedding + no_mask_embed, + dense_pe */
    tl_lin k0, v0, q0;         /* layer 0's t2i k/v and i2t q on them */
    eng_tensor k0p, v0p, q0p;  /* [P, I] */

    /* the last forward */
    int have_tape;
    tl_tape tape;
};

/* ------------------------------------------------------------------ */
/* layers                                                               */

static int adapted(const eng_sam_train *t, const lin_t *l)
{
    return l->tid >= 0 && t->present[l->tid];
}

/* y [M, out] = act(x W^T + b + u sB^T) + res (act and res never both);
 * records x and u in r. */
static void tl_lin_fwd(eng_sam_train *t, tl_lin *r, const lin_t *l, eng_tensor *y,
                       const eng_tensor *x, eng_act act, const eng_tensor *res, int need_dx)
{
    eng_ctx *ctx = &t->ctx;
    assert(act == ENG_ACT_NONE || !res);
    memset(r, 0, sizeof *r);
    r->l = l;
    r->x = *x;
    r->need_dx = need_dx;
    if (!adapted(t, l)) {
        eng_linear(ctx, y, x, &l->w, &l->b, act, res);
        return;
    }
    r->u = eng_new2(ctx, x->shape[0], t->rank);
    eng_linear(ctx, &r->u, x, &t->A[l->tid], NULL, ENG_ACT_NONE, NULL);
    eng_linear(ctx, y, x, &l->w, &l->b, ENG_ACT_NONE, res);
    eng_linear(ctx, y, &r->u, &t->sB[l->tid], NULL, ENG_ACT_NONE, y);
    if (act != ENG_ACT_NONE)
        eng_activate(ctx, y, y, act);
}

/* From dy [M, out] (the gradient before any activation): the adapter's
 * gradients, and the input's into dx (written, or added when acc) if the
 * layer needs it and dx is given. dy is only read. */
static void tl_lin_bwd(eng_sam_train *t, const tl_lin *r, const eng_tensor *dy, eng_tensor *dx,
                       int acc)
{
    eng_ctx *ctx = &t->ctx;
    int want_dx = dx && r->need_dx;
    if (want_dx)
        eng_linear_backward(ctx, dx, NULL, NULL, dy, NULL, &r->l->w, acc);
    if (!adapted(t, r->l))
        return;
    int tid = r->l->tid;
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor du = eng_new2(ctx, dy->shape[0], t->rank);
    eng_linear_backward(ctx, &du, &t->dsB[tid], NULL, dy, &r->u, &t->sB[tid], 0);
    eng_linear_backward(ctx, want_dx ? dx : NULL, &t->dA[tid], NULL, &du, &r->x, &t->A[tid],
                        want_dx ? 1 : 0);
    eng_ctx_release(ctx, mark);
}

/* out [Tq, E] = out_proj(attention(q_proj(q_in), k_proj(k_in), v_proj(v_in))) (+ res).
 * q_in NULL: r->q and r->qp are already set (layer 0's shared side), and so
 * for k_in NULL with r->k, r->v, r->kp, r->vp. dx_q, dx_kv: whether the
 * inputs depend on the adapter. */
static void tl_attn_fwd(eng_sam_train *t, tl_attn *r, const dec_attn *a, eng_tensor *out,
                        const eng_tensor *q_in, const eng_tensor *k_in, const eng_tensor *v_in,
                        const eng_tensor *res, int dx_q, int dx_kv)
{
    eng_ctx *ctx = &t->ctx;
    if (q_in) {
        r->qp = eng_new2(ctx, q_in->shape[0], a->inner);
        tl_lin_fwd(t, &r->q, &a->q, &r->qp, q_in, ENG_ACT_NONE, NULL, dx_q);
    }
    if (k_in) {
        r->kp = eng_new2(ctx, k_in->shape[0], a->inner);
        r->vp = eng_new2(ctx, v_in->shape[0], a->inner);
        tl_lin_fwd(t, &r->k, &a->k, &r->kp, k_in, ENG_ACT_NONE, NULL, dx_kv);
        tl_lin_fwd(t, &r->v, &a->v, &r->vp, v_in, ENG_ACT_NONE, NULL, dx_kv);
    }
    int Tq = (int)r->qp.shape[0], Tk = (int)r->kp.shape[0], D = a->inner / HEADS;
    r->d =
        (eng_attn){.B = 1, .H = HEADS, .Tq = Tq, .Tk = Tk, .D = D, .scale = 1.0f / sqrtf((float)D)};
    eng_tensor o = eng_new2(ctx, Tq, a->inner);
    eng_attention(ctx, &o, &r->qp, &r->kp, &r->vp, &r->d);
    tl_lin_fwd(t, &r->out, &a->out, out, &o, ENG_ACT_NONE, res, 1);
}

/* From dout [Tq, E]: the adapter's gradients in this attention, and its
 * inputs' gradients added into dq_in, dk_in, dv_in (where given and
 * needed). dout is read before any of those is written, so they may alias
 * it (a residual's gradient accumulating in place). */
static void tl_attn_bwd(eng_sam_train *t, const tl_attn *r, const eng_tensor *dout,
                        eng_tensor *dq_in, eng_tensor *dk_in, eng_tensor *dv_in)
{
    eng_ctx *ctx = &t->ctx;
    size_t mark = eng_ctx_mark(ctx);
    int64_t I = r->qp.shape[1];
    eng_tensor d_o = eng_new2(ctx, r->d.Tq, I);
    tl_lin_bwd(t, &r->out, dout, &d_o, 0);
    eng_tensor dq = eng_new2(ctx, r->d.Tq, I);
    eng_tensor dk = eng_new2(ctx, r->d.Tk, I);
    eng_tensor dv = eng_new2(ctx, r->d.Tk, I);
    eng_attention_backward(ctx, &dq, &dk, &dv, &d_o, &r->qp, &r->kp, &r->vp, &r->d);
    tl_lin_bwd(t, &r->q, &dq, dq_in, 1);
    tl_lin_bwd(t, &r->k, &dk, dk_in, 1);
    tl_lin_bwd(t, &r->v, &dv, dv_in, 1);
    eng_ctx_release(ctx, mark);
}

/* y [M, out] = MLP(x [M, 256]), ReLU between the three layers. */
static void tl_mlp_fwd(eng_sam_train *t, tl_mlp *r, const lin_t *l, eng_tensor *y,
                       const eng_tensor *x)
{
    eng_ctx *ctx = &t->ctx;
    r->h1 = eng_new2(ctx, x->shape[0], l[0].w.shape[0]);
    tl_lin_fwd(t, &r->l[0], &l[0], &r->h1, x, ENG_ACT_RELU, NULL, 1);
    r->h2 = eng_new2(ctx, x->shape[0], l[1].w.shape[0]);
    tl_lin_fwd(t, &r->l[1], &l[1], &r->h2, &r->h1, ENG_ACT_RELU, NULL, 1);
    tl_lin_fwd(t, &r->l[2], &l[2], y, &r->h2, ENG_ACT_NONE, NULL, 1);
}

/* From dy [M, out]: the adapter's gradients and dx [M, 256] (written). */
static void tl_mlp_bwd(eng_sam_train *t, const tl_mlp *r, const eng_tensor *dy, eng_tensor *dx)
{
    eng_ctx *ctx = &t->ctx;
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor d2 = eng_new2(ctx, r->h2.shape[0], r->h2.shape[1]);
    tl_lin_bwd(t, &r->l[2], dy, &d2, 0);
    eng_activate_backward(ctx, &d2, &d2, &r->h2, ENG_ACT_RELU);
    eng_tensor d1 = eng_new2(ctx, r->h1.shape[0], r->h1.shape[1]);
    tl_lin_bwd(t, &r->l[1], &d2, &d1, 0);
    eng_activate_backward(ctx, &d1, &d1, &r->h1, ENG_ACT_RELU);
    tl_lin_bwd(t, &r->l[0], &d1, dx, 0);
    eng_ctx_release(ctx, mark);
}

/* y = LayerNorm(x) into a new tensor. */
static eng_tensor tl_norm(eng_ctx *ctx, const eng_tensor *x, const norm_t *n, float eps)
{
    eng_tensor y = eng_new2(ctx, x->shape[0], x->shape[1]);
    eng_layernorm(ctx, &y, x, NULL, &n->g, &n->b, eps);
    return y;
}

/* a + b (b [E] or [rows, E] broadcast) into a new tensor. */
static eng_tensor tl_add(eng_ctx *ctx, const eng_tensor *a, const eng_tensor *b)
{
    eng_tensor y = eng_new2(ctx, a->shape[0], a->shape[1]);
    eng_add(ctx, &y, a, b);
    return y;
}

/* ------------------------------------------------------------------ */
/* image side, forward, backward                                        */

/* Layer 0's image side of the current image under the current adapter, at
 * mark_emb; sets mark_img and side_ok. */
static void tl_side(eng_sam_train *t)
{
    eng_ctx *ctx = &t->ctx;
    const eng_sam *m = t->m;
    const twoway_layer *L = &m->layers[0];
    eng_ctx_release(ctx, t->mark_emb);
    t->src0 = tl_add(ctx, &t->emb, &m->no_mask);
    t->kp0 = tl_add(ctx, &t->src0, &m->dense_pe);
    t->k0p = eng_new2(ctx, P, L->t2i.inner);
    t->v0p = eng_new2(ctx, P, L->t2i.inner);
    t->q0p = eng_new2(ctx, P, L->i2t.inner);
    tl_lin_fwd(t, &t->k0, &L->t2i.k, &t->k0p, &t->kp0, ENG_ACT_NONE, NULL, 0);
    tl_lin_fwd(t, &t->v0, &L->t2i.v, &t->v0p, &t->src0, ENG_ACT_NONE, NULL, 0);
    tl_lin_fwd(t, &t->q0, &L->i2t.q, &t->q0p, &t->kp0, ENG_ACT_NONE, NULL, 0);
    t->mark_img = eng_ctx_mark(ctx);
    t->side_ok = 1;
}

/* The forward of one prompt of T tokens (tokens_host [T, E]) into the tape,
 * after the image side (computed first when the prompt needs it). */
static void tl_forward(eng_sam_train *t, const float *tokens_host, int T, const float *mask_input,
                       int multimask)
{
    eng_ctx *ctx = &t->ctx;
    const eng_sam *m = t->m;
    tl_tape *tp = &t->tape;
    if (!mask_input && !t->side_ok)
        tl_side(t);
    eng_ctx_release(ctx, t->mark_img);
    memset(tp, 0, sizeof *tp);
    tp->T = T;
    tp->first = multimask ? 1 : 0;
    tp->C = multimask ? 3 : 1;
    tp->tokens = eng_new2(ctx, T, E);
    eng__sam_upload(ctx, &tp->tokens, tokens_host);

    /* keys: the shared image side, or this prompt's own with its mask */
    const int shared = mask_input == NULL;
    eng_tensor K = t->src0, kpe = t->kp0;
    if (!shared) {
        K = eng_new2(ctx, P, E);
        eng_copy(ctx, &K, &t->emb);
        eng__sam_mask_embed(m, ctx, &K, mask_input);
        kpe = tl_add(ctx, &K, &m->dense_pe);
    }
    eng_tensor Q = tp->tokens;
    for (int l = 0; l < 2; l++) {
        const twoway_layer *L = &m->layers[l];
        tl_layer *S = &tp->layer[l];
        /* self-attention; layer 0 skips the PE and the residual */
        S->r1 = eng_new2(ctx, T, E);
        if (l == 0) {
            tl_attn_fwd(t, &S->self, &L->self_attn, &S->r1, &Q, &Q, &Q, NULL, 0, 0);
        } else {
            eng_tensor qpe = tl_add(ctx, &Q, &tp->tokens);
            tl_attn_fwd(t, &S->self, &L->self_attn, &S->r1, &qpe, &qpe, &Q, &Q, 1, 1);
        }
        eng_tensor q1 = tl_norm(ctx, &S->r1, &L->norm1, DEC_EPS);
        eng_tensor q1pe = tl_add(ctx, &q1, &tp->tokens);

        /* tokens to image */
        S->r2 = eng_new2(ctx, T, E);
        if (l == 0 && shared) {
            S->t2i.k = t->k0;
            S->t2i.v = t->v0;
            S->t2i.kp = t->k0p;
            S->t2i.vp = t->v0p;
            tl_attn_fwd(t, &S->t2i, &L->t2i, &S->r2, &q1pe, NULL, NULL, &q1, 1, 0);
        } else {
            if (l > 0)
                kpe = tl_add(ctx, &K, &m->dense_pe);
            tl_attn_fwd(t, &S->t2i, &L->t2i, &S->r2, &q1pe, &kpe, &K, &q1, 1, l > 0);
        }
        eng_tensor q2 = tl_norm(ctx, &S->r2, &L->norm2, DEC_EPS);

        /* MLP */
        S->h = eng_new2(ctx, T, L->mlp1.w.shape[0]);
        tl_lin_fwd(t, &S->mlp1, &L->mlp1, &S->h, &q2, ENG_ACT_RELU, NULL, 1);
        S->r3 = eng_new2(ctx, T, E);
        tl_lin_fwd(t, &S->mlp2, &L->mlp2, &S->r3, &S->h, ENG_ACT_NONE, &q2, 1);
        eng_tensor q3 = tl_norm(ctx, &S->r3, &L->norm3, DEC_EPS);
        eng_tensor q3pe = tl_add(ctx, &q3, &tp->tokens);

        /* image to tokens: the image side queries, the tokens answer */
        S->r4 = eng_new2(ctx, P, E);
        if (l == 0 && shared) {
            S->i2t.q = t->q0;
            S->i2t.qp = t->q0p;
            tl_attn_fwd(t, &S->i2t, &L->i2t, &S->r4, NULL, &q3pe, &q3, &K, 0, 1);
        } else {
            tl_attn_fwd(t, &S->i2t, &L->i2t, &S->r4, &kpe, &q3pe, &q3, &K, l > 0, 1);
        }
        K = tl_norm(ctx, &S->r4, &L->norm4, DEC_EPS);
        Q = q3;
    }
    /* final attention, tokens to image */
    eng_tensor qpe = tl_add(ctx, &Q, &tp->tokens);
    eng_tensor kfpe = tl_add(ctx, &K, &m->dense_pe);
    tp->r5 = eng_new2(ctx, T, E);
    tl_attn_fwd(t, &tp->fin, &m->final_attn, &tp->r5, &qpe, &kfpe, &K, &Q, 1, 1);
    eng_tensor Qf = tl_norm(ctx, &tp->r5, &m->norm_final, DEC_EPS);

    /* upscaling: K [P, E] -> [4P, 64] -> [16P, 32], HWC */
    tp->c1 = eng_new2(ctx, 4 * P, UPC1);
    eng_conv_transpose2x2(ctx, &tp->c1, &K, G, G, &m->up0_w, &m->up0_b);
    tp->n1 = tl_norm(ctx, &tp->c1, &m->up1, VIT_EPS);
    tp->g1 = eng_new2(ctx, 4 * P, UPC1);
    eng_activate(ctx, &tp->g1, &tp->n1, ENG_ACT_GELU);
    tp->c2 = eng_new2(ctx, 16 * P, UPC2);
    eng_conv_transpose2x2(ctx, &tp->c2, &tp->g1, 2 * G, 2 * G, &m->up3_w, &m->up3_b);
    tp->U = eng_new2(ctx, 16 * P, UPC2);
    eng_activate(ctx, &tp->U, &tp->c2, ENG_ACT_GELU);

    /* masks [C, 256*256] = hypernetwork outputs [C, 32] . U^T */
    tp->hyper_out = eng_new2(ctx, tp->C, UPC2);
    for (int i = 0; i < tp->C; i++) {
        int k = tp->first + i;
        eng_tensor tok = eng_rows(Qf, 1 + k, 1), out = eng_rows(tp->hyper_out, i, 1);
        tl_mlp_fwd(t, &tp->hyper[k], m->hyper[k], &out, &tok);
    }
    tp->masks = eng_new2(ctx, tp->C, ENG_SAM_LOWRES_FLOATS);
    eng_linear(ctx, &tp->masks, &tp->hyper_out, &tp->U, NULL, ENG_ACT_NONE, NULL);
    tp->iou4 = eng_new2(ctx, 1, NMASK);
    eng_tensor itok = eng_rows(Qf, 0, 1);
    tl_mlp_fwd(t, &tp->iou, m->iou_head, &tp->iou4, &itok);
}

/* The backward of the tape from d_masks (host [C, 256*256]) and d_iou4
 * (host [4]); adds into the adapter's gradients. */
static void tl_backward(eng_sam_train *t, const float *d_masks, const float *d_iou4)
{
    eng_ctx *ctx = &t->ctx;
    const eng_sam *m = t->m;
    const tl_tape *tp = &t->tape;
    size_t mark = eng_ctx_mark(ctx);
    const int T = tp->T;
    eng_tensor dQ = eng_new2(ctx, T, E); /* d loss / d current tokens */
    eng_tensor dK = eng_new2(ctx, P, E); /* d loss / d current image side */
    eng_fill(ctx, &dQ, 0.0f);

    /* heads: masks and the IoU prediction, into dQ's token rows */
    size_t mk = eng_ctx_mark(ctx);
    eng_tensor dm = eng_new2(ctx, tp->C, ENG_SAM_LOWRES_FLOATS);
    eng__sam_upload(ctx, &dm, d_masks);
    eng_tensor dU = eng_new2(ctx, 16 * P, UPC2);
    eng_fill(ctx, &dU, 0.0f);
    eng_tensor dh = eng_new2(ctx, tp->C, UPC2);
    eng_linear_backward(ctx, &dh, &dU, NULL, &dm, &tp->hyper_out, &tp->U, 0);
    for (int i = 0; i < tp->C; i++) {
        int k = tp->first + i;
        eng_tensor dy = eng_rows(dh, i, 1), dx = eng_rows(dQ, 1 + k, 1);
        tl_mlp_bwd(t, &tp->hyper[k], &dy, &dx);
    }
    eng_tensor di = eng_new2(ctx, 1, NMASK);
    eng__sam_upload(ctx, &di, d_iou4);
    eng_tensor dq0 = eng_rows(dQ, 0, 1);
    tl_mlp_bwd(t, &tp->iou, &di, &dq0);

    /* upscaling, back to the image side */
    eng_activate_backward(ctx, &dU, &dU, &tp->c2, ENG_ACT_GELU);
    eng_tensor dg1 = eng_new2(ctx, 4 * P, UPC1);
    eng_conv_transpose2x2_backward(ctx, &dg1, NULL, NULL, &dU, NULL, 2 * G, 2 * G, &m->up3_w, 0);
    eng_activate_backward(ctx, &dg1, &dg1, &tp->n1, ENG_ACT_GELU);
    eng_layernorm_backward(ctx, &dg1, NULL, NULL, &dg1, &tp->c1, &m->up1.g, VIT_EPS, 0);
    eng_conv_transpose2x2_backward(ctx, &dK, NULL, NULL, &dg1, NULL, G, G, &m->up0_w, 0);
    eng_ctx_release(ctx, mk);

    /* final attention: r5 = Q + attn(Q + pe, K + dense_pe, K) */
    eng_layernorm_backward(ctx, &dQ, NULL, NULL, &dQ, &tp->r5, &m->norm_final.g, DEC_EPS, 0);
    tl_attn_bwd(t, &tp->fin, &dQ, &dQ, &dK, &dK);

    for (int l = 1; l >= 0; l--) {
        const twoway_layer *L = &m->layers[l];
        const tl_layer *S = &tp->layer[l];
        /* K' = LN4(K + i2t(K + dense_pe, q3 + pe, q3)); layer 0's K is a constant */
        eng_layernorm_backward(ctx, &dK, NULL, NULL, &dK, &S->r4, &L->norm4.g, DEC_EPS, 0);
        tl_attn_bwd(t, &S->i2t, &dK, l > 0 ? &dK : NULL, &dQ, &dQ);
        /* q3 = LN3(q2 + mlp(q2)) */
        eng_layernorm_backward(ctx, &dQ, NULL, NULL, &dQ, &S->r3, &L->norm3.g, DEC_EPS, 0);
        mk = eng_ctx_mark(ctx);
        eng_tensor dhm = eng_new2(ctx, T, S->h.shape[1]);
        tl_lin_bwd(t, &S->mlp2, &dQ, &dhm, 0);
        eng_activate_backward(ctx, &dhm, &dhm, &S->h, ENG_ACT_RELU);
        tl_lin_bwd(t, &S->mlp1, &dhm, &dQ, 1);
        eng_ctx_release(ctx, mk);
        /* q2 = LN2(q1 + t2i(q1 + pe, K + dense_pe, K)) */
        eng_layernorm_backward(ctx, &dQ, NULL, NULL, &dQ, &S->r2, &L->norm2.g, DEC_EPS, 0);
        tl_attn_bwd(t, &S->t2i, &dQ, &dQ, l > 0 ? &dK : NULL, l > 0 ? &dK : NULL);
        /* q1 = LN1(Q + self(Q + pe, Q + pe, Q)); layer 0: LN1(self(Q, Q, Q)) */
        eng_layernorm_backward(ctx, &dQ, NULL, NULL, &dQ, &S->r1, &L->norm1.g, DEC_EPS, 0);
        if (l > 0)
            tl_attn_bwd(t, &S->self, &dQ, &dQ, &dQ, &dQ);
        else
            tl_attn_bwd(t, &S->self, &dQ, NULL, NULL, NULL);
    }
    eng_ctx_release(ctx, mark);
}

/* ------------------------------------------------------------------ */
/* public API                                                           */

/* A call's status: the first error of its ops, or the device's. */
static int tl_end(eng_sam_train *t)
{
    int rc = eng_ctx_status(&t->ctx);
    if (!rc)
        rc = eng_backend_sync(t->ctx.be);
    t->ctx.status = 0;
    return rc;
}

/* The tokens of prompt p (iou and mask tokens, then its sparse tokens) into
 * t->host; returns T. */
static int tl_tokens(eng_sam_train *t, const eng_sam_prompt *p)
{
    memcpy(t->host, t->m->out_tokens, sizeof t->m->out_tokens);
    return 1 + NMASK + eng__sam_sparse_tokens(t->m, &t->info, p, t->host + (1 + NMASK) * E);
}

int eng_sam_train_create(eng_sam_train **out, eng_sam *m, int rank)
{
    *out = NULL;
    if (rank < 1 || rank > ENG_SAM_LORA_MAX_RANK)
        return eng_error(ENG_EINVAL, "LoRA rank %d outside 1..%d", rank, ENG_SAM_LORA_MAX_RANK);
    eng_backend *be = m->dbe;
    if (!eng_backend_has_backward(be))
        return eng_error(ENG_EUNSUP,
                         "training needs backward ops, which %s does not have yet "
                         "(use the CPU backend)",
                         eng_backend_describe(be));
    if (eng_backend_dtype(be) != ENG_F32)
        return eng_error(ENG_EUNSUP, "training needs fp32 storage (%s)", eng_backend_describe(be));
    eng_sam_train *t = calloc(1, sizeof *t);
    if (!t)
        return eng_error(ENG_ENOMEM, "out of memory");
    t->m = m;
    t->rank = rank;
    t->scale = 1.0f;
    int T_max = 1 + NMASK + m->opt.max_points + 2;
    /* host staging: a prompt's tokens, or one target's scaled B (at most
     * ENG_SAM_LORA_MAX_RANK * 2048 values) */
    t->host_n =
        (size_t)T_max * E > ENG_SAM_LOWRES_FLOATS ? (size_t)T_max * E : ENG_SAM_LOWRES_FLOATS;
    t->host = calloc(t->host_n, sizeof(float));
    /* the factors and their gradients: one allocation, 256-byte aligned pieces */
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    size_t bytes = 0;
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++)
        bytes += 2 * ((((size_t)rank * tg[i].in * 4 + 255) & ~(size_t)255) +
                      (((size_t)rank * tg[i].out * 4 + 255) & ~(size_t)255));
    t->lmem = t->host ? eng_backend_alloc(be, bytes) : NULL;
    if (!t->host || !t->lmem) {
        eng_sam_train_destroy(t);
        return eng_error(ENG_ENOMEM, "out of memory for the training state");
    }
    uint8_t *p = t->lmem;
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        eng_tensor *ts[4] = {&t->A[i], &t->dA[i], &t->sB[i], &t->dsB[i]};
        for (int k = 0; k < 4; k++) {
            int64_t sh[2] = {k < 2 ? rank : tg[i].out, k < 2 ? tg[i].in : rank};
            *ts[k] = eng_view(p, ENG_F32, eng_backend_device(be), 2, sh);
            p += (eng_nbytes(ts[k]) + 255) & ~(size_t)255;
        }
    }

    /* plan the workspace: an image, then the largest prompt (most points, a
     * box and a mask input, every layer adapted) forward and backward */
    int rc = eng_ctx_init(&t->ctx, be, 0);
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++)
        t->present[i] = 1;
    t->emb = eng_new2(&t->ctx, P, E);
    t->mark_emb = eng_ctx_mark(&t->ctx);
    tl_side(t); /* (the side, then a prompt with its own: the most a forward holds) */
    tl_forward(t, t->host, T_max, t->host, 1); /* (nothing is read while measuring) */
    tl_backward(t, t->host, t->host);
    if (!rc)
        rc = eng_ctx_commit(&t->ctx);
    memset(t->present, 0, sizeof t->present);
    eng_ctx_release(&t->ctx, 0);
    t->ctx.status = 0;
    t->side_ok = 0;
    if (!rc)
        rc = eng_sam_train_zero_grad(t);
    if (rc) {
        eng_sam_train_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

void eng_sam_train_destroy(eng_sam_train *t)
{
    if (!t)
        return;
    eng_ctx_free(&t->ctx);
    if (t->lmem)
        eng_backend_free(t->m->dbe, t->lmem);
    free(t->host);
    free(t);
}

size_t eng_sam_train_workspace_bytes(const eng_sam_train *t) { return t->ctx.cap; }

int eng_sam_train_zero_grad(eng_sam_train *t)
{
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        eng_fill(&t->ctx, &t->dA[i], 0.0f);
        eng_fill(&t->ctx, &t->dsB[i], 0.0f);
    }
    return tl_end(t);
}

int eng_sam_train_set_lora(eng_sam_train *t, float scale, const float *const *A,
                           const float *const *B)
{
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    if (!isfinite(scale))
        return eng_error(ENG_EINVAL, "LoRA scale is not finite");
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        const float *a = A ? A[i] : NULL, *b = B ? B[i] : NULL;
        if (!a != !b)
            return eng_error(ENG_EINVAL, "LoRA target %s: A and B must both be given", tg[i].name);
        size_t na = (size_t)t->rank * tg[i].in, nb = (size_t)t->rank * tg[i].out;
        for (size_t k = 0; a && k < na; k++)
            if (!isfinite(a[k]))
                return eng_error(ENG_EINVAL, "LoRA target %s: A[%zu] is not finite", tg[i].name, k);
        for (size_t k = 0; b && k < nb; k++)
            if (!isfinite(b[k]) || !isfinite(scale * b[k]))
                return eng_error(ENG_EINVAL, "LoRA target %s: B[%zu] is not finite", tg[i].name, k);
    }
    int rc = 0;
    t->have_tape = 0;
    t->scale = scale;
    for (int i = 0; i < ENG_SAM_LORA_TARGETS && !rc; i++) {
        const float *a = A ? A[i] : NULL, *b = B ? B[i] : NULL;
        t->present[i] = a != NULL;
        if (!a)
            continue;
        size_t nb = (size_t)t->rank * tg[i].out; /* <= host_n (16 * 2048 < 65536) */
        for (size_t k = 0; k < nb; k++)
            t->host[k] = scale * b[k];
        rc = eng_backend_upload(t->ctx.be, t->A[i].data, a, (size_t)t->rank * tg[i].in);
        if (!rc)
            rc = eng_backend_upload(t->ctx.be, t->sB[i].data, t->host, nb);
    }
    t->side_ok = 0;
    t->mark_img = t->mark_emb;
    if (rc) {
        /* a half-uploaded adapter must not be trained on */
        memset(t->present, 0, sizeof t->present);
        t->have_image = 0;
        return rc;
    }
    return eng_sam_train_zero_grad(t);
}

int eng_sam_train_set_image(eng_sam_train *t, const float *embedding, const eng_sam_imginfo *info)
{
    if (!embedding || !info)
        return eng_error(ENG_EINVAL, "no image embedding or size");
    if (info->orig_w < 1 || info->orig_h < 1 || info->input_w < 1 || info->input_h < 1 ||
        info->input_w > ENG_SAM_IMG || info->input_h > ENG_SAM_IMG)
        return eng_error(ENG_EINVAL, "bad image size %dx%d (resized %dx%d)", info->orig_w,
                         info->orig_h, info->input_w, info->input_h);
    for (size_t i = 0; i < ENG_SAM_EMB_FLOATS; i++)
        if (!isfinite(embedding[i]))
            return eng_error(ENG_EINVAL, "image embedding element %zu is not finite", i);
    eng_ctx *ctx = &t->ctx;
    t->have_tape = 0;
    t->have_image = 0;
    t->side_ok = 0;
    t->info = *info;
    eng_ctx_release(ctx, 0);
    t->emb = eng_new2(ctx, P, E);
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor chw = eng_new2(ctx, E, P);
    eng__sam_upload(ctx, &chw, embedding);
    eng_transpose(ctx, &t->emb, &chw);
    eng_ctx_release(ctx, mark);
    t->mark_emb = t->mark_img = mark;
    int rc = tl_end(t);
    t->have_image = rc == 0;
    return rc;
}

int eng_sam_train_forward(eng_sam_train *t, const eng_sam_prompt *p, int multimask, float *iou,
                          float *low_res)
{
    if (!t->have_image)
        return eng_error(ENG_EINVAL, "training forward without an image (set_image first)");
    int rc = eng__sam_check_prompt(t->m, p, 0);
    if (rc)
        return rc;
    if (p->mask_input)
        for (size_t i = 0; i < ENG_SAM_LOWRES_FLOATS; i++)
            if (!isfinite(p->mask_input[i]))
                return eng_error(ENG_EINVAL, "mask_input element %zu is not finite", i);
    t->have_tape = 0;
    int T = tl_tokens(t, p);
    tl_forward(t, t->host, T, p->mask_input, multimask != 0);
    if (eng_ctx_status(&t->ctx)) { /* the side may be half computed */
        t->side_ok = 0;
        t->mark_img = t->mark_emb;
    }
    const tl_tape *tp = &t->tape;
    if (low_res)
        eng__sam_download(&t->ctx, low_res, &tp->masks, (size_t)tp->C * ENG_SAM_LOWRES_FLOATS);
    float iou4[NMASK];
    eng__sam_download(&t->ctx, iou4, &tp->iou4, NMASK);
    rc = tl_end(t);
    if (rc)
        return rc;
    if (iou)
        memcpy(iou, iou4 + tp->first, (size_t)tp->C * sizeof *iou);
    t->have_tape = 1;
    return 0;
}

int eng_sam_train_backward(eng_sam_train *t, const float *d_low_res, const float *d_iou)
{
    if (!t->have_tape)
        return eng_error(ENG_EINVAL, "training backward without a forward to go back through");
    if (!d_low_res)
        return eng_error(ENG_EINVAL, "no logits gradient");
    const tl_tape *tp = &t->tape;
    float di[NMASK] = {0};
    for (int i = 0; d_iou && i < tp->C; i++)
        di[tp->first + i] = d_iou[i];
    for (int i = 0; i < NMASK; i++)
        if (!isfinite(di[i]))
            return eng_error(ENG_EINVAL, "IoU gradient %d is not finite", i);
    for (size_t i = 0; i < (size_t)tp->C * ENG_SAM_LOWRES_FLOATS; i++)
        if (!isfinite(d_low_res[i]))
            return eng_error(ENG_EINVAL, "logits gradient element %zu is not finite", i);
    t->have_tape = 0;
    tl_backward(t, d_low_res, di);
    return tl_end(t);
}

int eng_sam_train_grads(eng_sam_train *t, float *const *dA, float *const *dB)
{
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    int rc = eng_backend_sync(t->ctx.be);
    for (int i = 0; i < ENG_SAM_LORA_TARGETS && !rc; i++) {
        if (!t->present[i])
            continue;
        if (dA && dA[i])
            rc = eng_backend_download(t->ctx.be, dA[i], t->dA[i].data, (size_t)t->rank * tg[i].in);
        if (!rc && dB && dB[i]) {
            size_t nb = (size_t)t->rank * tg[i].out;
            rc = eng_backend_download(t->ctx.be, dB[i], t->dsB[i].data, nb);
            for (size_t k = 0; !rc && k < nb; k++)
                dB[i][k] *= t->scale;
        }
    }
    return rc;
}
