/*
 * engine/sam.c: Segment Anything, written once against engine/ops.h.
 *
 * Dimension letters used in shape comments:
 *   C   image-encoder width (768 / 1024 / 1280; 64 in the tiny fixture)
 *   G   embedding grid side, 64;  P = G*G = 4096 image tokens
 *   E   prompt/decoder width, 256
 *   T   decoder tokens: 1 IoU token + 4 mask tokens + sparse prompt tokens
 *   W   window side, 14 (windows padded to 70x70 -> 25 windows of 196 tokens)
 * Images inside the model are HWC ([P, C]); the public embedding is CHW
 * [E, G, G] as the reference returns it.
 *
 * Reference: segment_anything (Kirillov et al. 2023): ImageEncoderViT,
 * PromptEncoder, MaskDecoder + TwoWayTransformer, SamPredictor.
 */
#include "sam.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckpt.h"
#include "error.h"
#include "weights.h"

#define G ENG_SAM_GRID
#define P (G * G)
#define E ENG_SAM_EMB_DIM
#define NMASK 4          /* mask tokens (3 multimask outputs + 1 single) */
#define UPC1 64          /* output_upscaling channels after the first 2x */
#define UPC2 32          /* ... after the second 2x (= hypernetwork MLP output) */
#define PE_FEATS 128     /* random Fourier features per axis pair */
#define VIT_EPS 1e-6f    /* ViT and LayerNorm2d eps */
#define DEC_EPS 1e-5f    /* two-way transformer nn.LayerNorm default */
#define BAND_FLOATS (1 << 22) /* postprocess output band: 16 MiB of f32 */

/* A linear layer: w [out, in], b [out]; `tid` is its index in the LoRA
 * target table (eng_sam_lora_targets), -1 for layers LoRA never adapts. */
typedef struct { eng_tensor w, b; int tid; } lin_t;
typedef struct { eng_tensor g, b; } norm_t; /* [width] */

typedef struct vit_block {
    norm_t norm1, norm2;
    eng_tensor rel_h, rel_w; /* [2*S-1, hd], S = window or G */
    lin_t qkv;               /* [3C, C] */
    lin_t proj;              /* [C, C] */
    lin_t lin1, lin2;        /* [4C, C], [C, 4C] */
} vit_block;

typedef struct dec_attn {
    lin_t q, k, v;  /* [I, E] each, I = E / downsample */
    lin_t out;      /* [E, I] */
    int inner;      /* I */
} dec_attn;

typedef struct twoway_layer {
    dec_attn self_attn, t2i, i2t;
    norm_t norm1, norm2, norm3, norm4;
    lin_t mlp1, mlp2; /* [2048, E], [E, 2048] */
} twoway_layer;

/* Layer 0's image side for prompts without a mask input (dec_shared). */
typedef struct dec_side {
    eng_tensor src0;  /* [P, E] embedding + no_mask_embed */
    eng_tensor k, v;  /* [P, I] layer 0 t2i: k_proj(src0 + dense_pe), v_proj(src0) */
    eng_tensor q;     /* [P, I] layer 0 i2t: q_proj(src0 + dense_pe) */
} dec_side;

/* One device-resident embedding (eng_sam_decode_cached), with its layer-0
 * side under no adapter once a call has needed it: a repeat click on a
 * cached image skips those three GEMMs too. */
typedef struct emb_slot {
    char key[96];     /* caller's key, "" when unused */
    int used;         /* holds a complete embedding */
    int side_ok;      /* `side` holds this embedding's adapter-free layer-0 side */
    int side_new;     /* `side` written by the call in progress */
    uint64_t tick;    /* last use */
    eng_tensor t;     /* [P, E] on the decoder's backend */
    dec_side side;    /* on the decoder's backend */
} emb_slot;

struct eng_sam {
    eng_sam_config cfg;
    eng_sam_options opt;
    eng_backend *be;  /* borrowed: runs the image encoder */
    eng_backend *dbe; /* borrowed: runs the prompt encoder, decoder and postprocess (== be
                         unless opt.decoder_backend split them) */
    eng_weights wts;  /* owns the image encoder's weights (on be) */
    eng_weights dwts; /* owns the prompt encoder's and decoder's weights (on dbe) */
    eng_ctx ctx;      /* activation workspace on be */
    eng_ctx dctx_own; /* workspace on dbe when it is another backend */
    eng_ctx *dctx;    /* the decoder's workspace: &ctx or &dctx_own */
    char model_id[48];

    /* image encoder */
    eng_tensor patch_w;       /* [C, 3, 16, 16] */
    eng_tensor patch_b;       /* [C] */
    eng_tensor pos_embed;     /* [P, C] */
    vit_block blocks[ENG_SAM_MAX_DEPTH];
    eng_tensor neck0_w;       /* [E, C] (1x1 conv, no bias) */
    norm_t neck1;             /* [E] */
    eng_tensor neck2_w;       /* [E, E, 3, 3] (no bias) */
    norm_t neck3;

    /* prompt encoder: the sparse side runs on the host (a few tokens) */
    float pe_gauss[2 * PE_FEATS];      /* positional_encoding_gaussian_matrix [2, 128] */
    float point_embed[4][E];           /* 0 neg, 1 pos, 2 box top-left, 3 box bottom-right */
    float not_a_point[E];
    eng_tensor no_mask;                /* [E] */
    eng_tensor md0_w, md0_b;           /* mask_downscaling.0: [4,1,2,2], [4] */
    norm_t md1;                        /* [4] */
    eng_tensor md3_w, md3_b;           /* [16,4,2,2], [16] */
    norm_t md4;                        /* [16] */
    eng_tensor md6_w, md6_b;           /* [E,16,1,1], [E] */
    eng_tensor dense_pe;               /* [P, E] HWC, computed at load */

    /* mask decoder */
    float out_tokens[(1 + NMASK) * E]; /* iou_token then mask_tokens */
    twoway_layer layers[2];
    dec_attn final_attn;
    norm_t norm_final;
    eng_tensor up0_w, up0_b;           /* [E, 64, 2, 2], [64] */
    norm_t up1;                        /* [64] */
    eng_tensor up3_w, up3_b;           /* [64, 32, 2, 2], [32] */
    lin_t hyper[NMASK][3];             /* 256->256->256->32 */
    lin_t iou_head[3];                 /* 256->256->256->4 */


    /* image embeddings resident on the decoder's device, rows [P, E] */
    struct emb_slot *slots;            /* [n_slots] */
    int n_slots;
    uint64_t slot_tick;                /* LRU clock */
    void *slot_mem;                    /* one allocation behind every slot */
};

/* ------------------------------------------------------------------ */
/* LoRA targets and adapters                                            */

/* The mask decoder's linear layers, in the fixed order adapters and the
 * hypernetwork use: per two-way layer its three attentions' q/k/v/out
 * projections and its MLP, then the final attention, the output
 * hypernetwork MLPs and the IoU head. */
static eng_sam_lora_target lora_targets[ENG_SAM_LORA_TARGETS];
static pthread_once_t lora_targets_once = PTHREAD_ONCE_INIT;

static void lora_add(int *n, int out, int in, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void lora_add(int *n, int out, int in, const char *fmt, ...)
{
    eng_sam_lora_target *t = &lora_targets[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->out = out;
    t->in = in;
}

static void lora_targets_init(void)
{
    static const char *attn[3] = {"self_attn", "cross_attn_token_to_image",
                                  "cross_attn_image_to_token"};
    int n = 0;
    for (int l = 0; l < 2; l++) {
        for (int a = 0; a < 3; a++) {
            int I = a == 0 ? E : E / 2;
            const char *p = "mask_decoder.transformer.layers";
            lora_add(&n, I, E, "%s.%d.%s.q_proj", p, l, attn[a]);
            lora_add(&n, I, E, "%s.%d.%s.k_proj", p, l, attn[a]);
            lora_add(&n, I, E, "%s.%d.%s.v_proj", p, l, attn[a]);
            lora_add(&n, E, I, "%s.%d.%s.out_proj", p, l, attn[a]);
        }
        lora_add(&n, 2048, E, "mask_decoder.transformer.layers.%d.mlp.lin1", l);
        lora_add(&n, E, 2048, "mask_decoder.transformer.layers.%d.mlp.lin2", l);
    }
    const char *f = "mask_decoder.transformer.final_attn_token_to_image";
    lora_add(&n, E / 2, E, "%s.q_proj", f);
    lora_add(&n, E / 2, E, "%s.k_proj", f);
    lora_add(&n, E / 2, E, "%s.v_proj", f);
    lora_add(&n, E, E / 2, "%s.out_proj", f);
    for (int i = 0; i < NMASK; i++)
        for (int j = 0; j < 3; j++)
            lora_add(&n, j == 2 ? UPC2 : E, E, "mask_decoder.output_hypernetworks_mlps.%d.layers.%d",
                     i, j);
    for (int j = 0; j < 3; j++)
        lora_add(&n, j == 2 ? NMASK : E, E, "mask_decoder.iou_prediction_head.layers.%d", j);
    assert(n == ENG_SAM_LORA_TARGETS);
}

const eng_sam_lora_target *eng_sam_lora_targets(void)
{
    pthread_once(&lora_targets_once, lora_targets_init);
    return lora_targets;
}

static int lora_target_index(const char *name)
{
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++)
        if (!strcmp(t[i].name, name))
            return i;
    return -1;
}

struct eng_sam_lora {
    int rank;
    int merged;                            /* W' = W + scale B A folded in */
    int present[ENG_SAM_LORA_TARGETS];     /* 1 where this adapter changes the layer */
    eng_tensor A[ENG_SAM_LORA_TARGETS];    /* [r, in] */
    eng_tensor B[ENG_SAM_LORA_TARGETS];    /* [out, r], already multiplied by the scale */
    eng_tensor W[ENG_SAM_LORA_TARGETS];    /* merged: [out, in] */
    void *mem;                             /* one device allocation for all of the above */
    size_t bytes;
};

/* An adapter record with every tensor described (data NULL) at `rank`. */
static eng_sam_lora *lora_new(const eng_sam *m, int rank, int merged)
{
    eng_sam_lora *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    eng_dtype dt = eng_backend_dtype(m->dbe);
    eng_device dev = eng_backend_device(m->dbe);
    l->rank = rank;
    l->merged = merged;
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        l->A[i] = eng_view(NULL, dt, dev, 2, (int64_t[]){rank, t[i].in});
        l->B[i] = eng_view(NULL, dt, dev, 2, (int64_t[]){t[i].out, rank});
        l->W[i] = eng_view(NULL, dt, dev, 2, (int64_t[]){t[i].out, t[i].in});
    }
    return l;
}

/* The model's weight for target t. */
static const lin_t *lora_base(const eng_sam *m, int t)
{
    /* targets follow lora_targets_init's order */
    if (t < 28) {
        const twoway_layer *L = &m->layers[t / 14];
        int k = t % 14;
        if (k == 12)
            return &L->mlp1;
        if (k == 13)
            return &L->mlp2;
        const dec_attn *a = k < 4 ? &L->self_attn : k < 8 ? &L->t2i : &L->i2t;
        const lin_t *p[4] = {&a->q, &a->k, &a->v, &a->out};
        return p[k % 4];
    }
    if (t < 32) {
        const lin_t *p[4] = {&m->final_attn.q, &m->final_attn.k, &m->final_attn.v,
                             &m->final_attn.out};
        return p[t - 28];
    }
    if (t < 44)
        return &m->hyper[(t - 32) / 3][(t - 32) % 3];
    return &m->iou_head[t - 44];
}

int eng_sam_lora_create(eng_sam *m, int rank, float scale, const float *const *A,
                        const float *const *B, int merged, eng_sam_lora **out)
{
    *out = NULL;
    if (rank < 1 || rank > ENG_SAM_LORA_MAX_RANK)
        return eng_error(ENG_EINVAL, "LoRA rank %d outside 1..%d", rank, ENG_SAM_LORA_MAX_RANK);
    if (!isfinite(scale))
        return eng_error(ENG_EINVAL, "LoRA scale is not finite");
    eng_sam_lora *l = lora_new(m, rank, merged);
    if (!l)
        return eng_error(ENG_ENOMEM, "out of memory");
    size_t esz = eng_dtype_size(eng_backend_dtype(m->dbe)), total = 0;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        if (!A[t] != !B[t]) {
            free(l);
            return eng_error(ENG_EINVAL, "LoRA target %s: A and B must both be given",
                             eng_sam_lora_targets()[t].name);
        }
        if (!A[t])
            continue;
        l->present[t] = 1;
        total += (size_t)(eng_numel(&l->A[t]) + eng_numel(&l->B[t]) +
                          (merged ? eng_numel(&l->W[t]) : 0)) * esz + 3 * 256;
    }
    l->mem = total ? eng_backend_alloc(m->dbe, total) : NULL;
    if (total && !l->mem) {
        free(l);
        return ENG_ENOMEM;
    }
    l->bytes = total;
    uint8_t *p = l->mem;
    float *stage = NULL;
    size_t stage_n = 0;
    int rc = 0;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS && !rc; t++) {
        if (!l->present[t])
            continue;
        eng_tensor *ts[3] = {&l->A[t], &l->B[t], merged ? &l->W[t] : NULL};
        for (int k = 0; k < 3 && ts[k]; k++) {
            ts[k]->data = p;
            p += ((size_t)eng_numel(ts[k]) * esz + 255) & ~(size_t)255;
        }
        size_t nb = (size_t)eng_numel(&l->B[t]);
        for (size_t i = 0; i < (size_t)eng_numel(&l->A[t]); i++)
            if (!isfinite(A[t][i])) {
                rc = eng_error(ENG_EINVAL, "LoRA target %s: A is not finite",
                               eng_sam_lora_targets()[t].name);
                break;
            }
        if (rc)
            break;
        if (nb > stage_n) {
            float *s2 = realloc(stage, nb * sizeof(float));
            if (!s2) {
                rc = eng_error(ENG_ENOMEM, "out of memory");
                break;
            }
            stage = s2;
            stage_n = nb;
        }
        for (size_t i = 0; i < nb; i++) {
            stage[i] = scale * B[t][i];
            if (!isfinite(stage[i])) {
                rc = eng_error(ENG_EINVAL, "LoRA target %s: B is not finite",
                               eng_sam_lora_targets()[t].name);
                break;
            }
        }
        if (rc || (rc = eng_backend_upload(m->dbe, l->A[t].data, A[t],
                                           (size_t)eng_numel(&l->A[t]))) ||
            (rc = eng_backend_upload(m->dbe, l->B[t].data, stage, nb)))
            break;
        if (merged) {
            /* W' = (scale B) A + W, computed on the device */
            const lin_t *base = lora_base(m, t);
            m->dctx->status = 0;
            eng_matmul_nn(m->dctx, &l->W[t], &l->B[t], &l->A[t], NULL, 1);
            eng_add(m->dctx, &l->W[t], &l->W[t], &base->w);
            rc = eng_ctx_status(m->dctx);
            if (!rc)
                rc = eng_backend_sync(m->dbe);
        }
    }
    free(stage);
    if (rc) {
        eng_sam_lora_destroy(m, l);
        return rc;
    }
    *out = l;
    return 0;
}

void eng_sam_lora_destroy(eng_sam *m, eng_sam_lora *l)
{
    if (!l)
        return;
    if (l->mem)
        eng_backend_free(m->dbe, l->mem);
    free(l);
}

size_t eng_sam_lora_bytes(const eng_sam_lora *l) { return l ? l->bytes : 0; }

/* ------------------------------------------------------------------ */
/* small helpers                                                        */

/* Upload host floats into a workspace tensor (skipped while planning). */
static void sam_upload(eng_ctx *ctx, eng_tensor *t, const float *src)
{
    if (ctx->measure || ctx->status)
        return;
    int rc = eng_backend_upload(ctx->be, t->data, src, (size_t)eng_numel(t));
    if (rc)
        eng_ctx_fail(ctx, rc);
}

static void sam_download(eng_ctx *ctx, float *dst, const eng_tensor *t, size_t n)
{
    if (ctx->measure || ctx->status)
        return;
    int rc = eng_backend_download(ctx->be, dst, t->data, n);
    if (rc)
        eng_ctx_fail(ctx, rc);
}

static int lora_target_index(const char *name);

static void decl_lin(eng_weights *w, lin_t *l, int out, int in, const char *name)
{
    l->tid = lora_target_index(name);
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

static void sam_declare(eng_sam *m);

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
/* prompt encoder (host side)                                           */

/* PositionEmbeddingRandom._pe_encoding of a point already normalised to
 * [0,1]^2: [sin(2 pi (2p-1) G), cos(...)] -> out[E]. float32 throughout, in
 * the reference's order of operations. */
static void pe_encode(const eng_sam *m, float x, float y, float *out)
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
static int sam_sparse_tokens(const eng_sam *m, const eng_sam_imginfo *info,
                             const eng_sam_prompt *p, float *out)
{
    int n = 0;
    for (int i = 0; i < p->n_points; i++, n++) {
        float x, y;
        scale_coord(info, p->points[2 * i], p->points[2 * i + 1], &x, &y);
        pe_encode(m, (x + 0.5f) / (float)ENG_SAM_IMG, (y + 0.5f) / (float)ENG_SAM_IMG,
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
            pe_encode(m, (x + 0.5f) / (float)ENG_SAM_IMG, (y + 0.5f) / (float)ENG_SAM_IMG,
                      out + n * E);
            for (int j = 0; j < E; j++)
                out[n * E + j] += m->point_embed[2 + c][j];
        }
    }
    return n;
}

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
static int sam_encode_one(eng_sam *m, const float *input, float *patch, float **blocks,
                          int n_blocks, float *embedding)
{
    eng_ctx *ctx = &m->ctx;
    const eng_sam_config *cfg = &m->cfg;
    int C = cfg->embed_dim;
    size_t mark = eng_ctx_mark(ctx);

    eng_tensor img = eng_new3(ctx, 3, ENG_SAM_IMG, ENG_SAM_IMG);
    sam_upload(ctx, &img, input);
    eng_tensor x = eng_new2(ctx, P, C);
    eng_conv2d(ctx, &x, &img, 1, ENG_SAM_IMG, ENG_SAM_IMG, &m->patch_w, &m->patch_b, 16, 0);
    if (patch)
        sam_download(ctx, patch, &x, (size_t)P * C);
    eng_add(ctx, &x, &x, &m->pos_embed);
    for (int i = 0; i < cfg->depth; i++) {
        vit_block_forward(m, &m->blocks[i], cfg->global[i], &x);
        if (blocks && i < n_blocks && blocks[i])
            sam_download(ctx, blocks[i], &x, (size_t)P * C);
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
    sam_download(ctx, embedding, &chw, (size_t)ENG_SAM_EMB_FLOATS);
    eng_ctx_release(ctx, mark);
    return eng_ctx_status(ctx);
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
    eng_attn d = {.B = B, .H = heads, .Tq = (int)(Nq / B), .Tk = (int)(Nk / B), .D = D,
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
        if (!mask_input) {
            eng_add(ctx, &sb, &sb, &m->no_mask);
            continue;
        }
        size_t mk = eng_ctx_mark(ctx);
        eng_tensor mi = eng_new3(ctx, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES);
        sam_upload(ctx, &mi, mask_input);
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
        eng_linear(ctx, &sb, &d2, &w6, &m->md6_b, ENG_ACT_NONE, &sb);
        eng_ctx_release(ctx, mk);
    }
}

/* The first two-way layer's image side, shared by every prompt without a
 * mask input: such prompts all start from the same keys src0 = embedding +
 * no_mask_embed, so the token-to-image k/v projections and the
 * image-to-token q projection of layer 0 (three [P, E] x [E, I] GEMMs, about
 * a quarter of a prompt's decoder FLOPs, see eng_sam_decoder_flops) are the
 * same for all of them. Computed once per call and adapter and reused by
 * every group of the call; under no adapter, kept with a resident
 * embedding's slot across calls. */
typedef struct dec_shared {
    const eng_sam_lora *lo; /* the adapter `cur` was computed under */
    int valid;
    dec_side own;           /* in the decoder's workspace */
    eng_tensor kp0;         /* [P, E] workspace: src0 + dense_pe */
    emb_slot *slot;         /* the resident embedding's slot, or NULL */
    dec_side cur;           /* what layer 0 reads: `own` or the slot's */
} dec_shared;

static void dec_shared_alloc(eng_sam *m, dec_shared *sh, emb_slot *slot)
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
 * activations). */
static void sam_decode_group(eng_sam *m, const eng_sam_lora *lo, const eng_tensor *emb_hwc,
                             dec_shared *sh, const float *tokens_host, int B, int T,
                             const float *const *mask_inputs, float *iou_out,
                             const eng_tensor *masks, int first, int count)
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
    sam_upload(ctx, &pe_tok, tokens_host);
    eng_tensor queries = eng_new2(ctx, BT, E);
    eng_copy(ctx, &queries, &pe_tok);
    eng_tensor qp = eng_new2(ctx, BT, E);              /* queries + query_pe */
    eng_tensor kp = eng_new2(ctx, (int64_t)B * P, E);  /* keys + key_pe */
    eng_tensor tmpq = eng_new2(ctx, BT, E);
    eng_tensor mid = eng_new2(ctx, BT, 2048);

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
            /* one key set for all prompts: their B*T query rows attend as
             * a single batch */
            size_t mk = eng_ctx_mark(ctx);
            eng_tensor q = eng_new2(ctx, BT, L->t2i.inner);
            dec_lin(m, lo, &L->t2i.q, &q, &qp, ENG_ACT_NONE, NULL);
            dec_attend(m, lo, &L->t2i, 1, &queries, &q, &sh->cur.k, &sh->cur.v, &queries);
            eng_ctx_release(ctx, mk);
        } else {
            eng_add(ctx, &kp, &src, &m->dense_pe); /* dense_pe [P, E] broadcast over the batch */
            dec_attention(m, lo, &L->t2i, B, &queries, &qp, &kp, &src, &queries);
        }
        eng_layernorm(ctx, &queries, &queries, NULL, &L->norm2.g, &L->norm2.b, DEC_EPS);

        dec_lin(m, lo, &L->mlp1, &mid, &queries, ENG_ACT_RELU, NULL);
        dec_lin(m, lo, &L->mlp2, &queries, &mid, ENG_ACT_NONE, &queries);
        eng_layernorm(ctx, &queries, &queries, NULL, &L->norm3.g, &L->norm3.b, DEC_EPS);

        eng_add(ctx, &qp, &queries, &pe_tok);
        if (l == 0 && shared) {
            /* the shared q_proj(src0 + pe) for every prompt; keys <- src0 +
             * out_proj(attention) */
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
            /* the residual: src0 itself for one prompt, else B copies of it */
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

    /* upscale src [B*P, E] -> [B*(2G)^2, 64] -> [B*(4G)^2, 32], HWC, the B
     * images stacked vertically */
    eng_tensor u1 = eng_new2(ctx, (int64_t)B * 4 * P, UPC1);
    eng_conv_transpose2x2(ctx, &u1, &src, B * G, G, &m->up0_w, &m->up0_b);
    eng_layernorm(ctx, &u1, &u1, NULL, &m->up1.g, &m->up1.b, VIT_EPS);
    eng_activate(ctx, &u1, &u1, ENG_ACT_GELU);
    eng_tensor u2 = eng_new2(ctx, (int64_t)B * 16 * P, UPC2);
    eng_conv_transpose2x2(ctx, &u2, &u1, 2 * B * G, 2 * G, &m->up3_w, &m->up3_b);
    eng_activate(ctx, &u2, &u2, ENG_ACT_GELU);

    /* hyper_in [4, B, 32]: one MLP per mask token over the batch, for the
     * tokens of the masks returned */
    eng_tensor hyper = eng_new2(ctx, (int64_t)NMASK * B, UPC2);
    for (int i = first; i < first + count; i++) {
        eng_tensor tok = rows_every(queries, 1 + i, B, T);
        eng_tensor out = eng_rows(hyper, (int64_t)i * B, B);
        dec_mlp3(m, lo, m->hyper[i], &out, &tok);
    }
    /* masks [B, count, 256*256]: prompt b's hypernetwork outputs `first` ..
     * `first + count - 1` against its upscaled image; only the masks the
     * caller gets, contiguous so that one copy brings them all back */
    for (int b = 0; b < B; b++) {
        eng_tensor hb = rows_every(hyper, (int64_t)first * B + b, count, B);
        eng_tensor ub = eng_rows(u2, (int64_t)b * 16 * P, 16 * P);
        eng_tensor mb = eng_rows(*masks, (int64_t)b * count, count);
        eng_linear(ctx, &mb, &hb, &ub, NULL, ENG_ACT_NONE, NULL);
    }
    eng_tensor iou = eng_new2(ctx, B, NMASK);
    eng_tensor iou_tok = rows_every(queries, 0, B, T);
    dec_mlp3(m, lo, m->iou_head, &iou, &iou_tok);

    sam_download(ctx, iou_out, &iou, (size_t)B * NMASK);
    eng_ctx_release(ctx, mark);
}

/* ------------------------------------------------------------------ */
/* postprocess: SAM's postprocess_masks, then the threshold             */

/* Workspace of one mask's postprocess: the 1024-wide upscale, one band. */
static void sam_post_plan(eng_ctx *ctx)
{
    eng_new3(ctx, 1, ENG_SAM_IMG, ENG_SAM_IMG);
    eng_new2(ctx, 1, BAND_FLOATS);
}

static int sam_post_check(const eng_sam_imginfo *info)
{
    int ow = info->orig_w, oh = info->orig_h;
    if (ow < 1 || oh < 1 || ow > BAND_FLOATS || info->input_w < 1 || info->input_h < 1 ||
        info->input_w > ENG_SAM_IMG || info->input_h > ENG_SAM_IMG)
        return eng_error(ENG_EINVAL, "bad image size %dx%d for postprocessing", ow, oh);
    return 0;
}

/* One low-res logit map lo (256*256 values on the decoder's backend) to
 * mask [orig_h, orig_w] u8 0/1 on the host, and (stability non-NULL) its
 * stability score: bilinear to 1024, crop to the resized input, bilinear
 * to the original, in bands of rows so the workspace stays small. */
static void sam_post_one(eng_sam *m, const eng_tensor *lo, const eng_sam_imginfo *info,
                         uint8_t *mask, float *stability)
{
    eng_ctx *ctx = m->dctx;
    int ow = info->orig_w, oh = info->orig_h;
    int band = BAND_FLOATS / ow;
    if (band > oh)
        band = oh;
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor lo3 = eng_reshape3(*lo, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES);
    /* of the 1024 x 1024 upscale only the rows the crop to the resized
     * input reads: [1, input_h, 1024] (each output row depends only on its
     * own index, so this is exact) */
    eng_tensor up = eng_new3(ctx, 1, info->input_h, ENG_SAM_IMG);
    eng_resize_bilinear(ctx, &up, &lo3, ENG_SAM_LOWRES, ENG_SAM_LOWRES, ENG_SAM_IMG, 0);
    uint64_t inter = 0, uni = 0;
    for (int y0 = 0; y0 < oh && !ctx->status; y0 += band) {
        int rows = oh - y0 < band ? oh - y0 : band;
        size_t mk = eng_ctx_mark(ctx);
        eng_tensor out = eng_new3(ctx, 1, rows, ow);
        eng_resize_bilinear(ctx, &out, &up, info->input_h, info->input_w, oh, y0);
        /* threshold at 0 (the mask) and at +-1 (the stability score's
         * intersection and union) where the logits are */
        uint64_t counts[2] = {0, 0};
        if (!ctx->status) {
            int rc = eng_backend_binarize(ctx->be, mask + (size_t)y0 * ow, out.data,
                                          (int64_t)rows * ow, -1.0f, 1.0f, counts);
            if (rc)
                eng_ctx_fail(ctx, rc);
        }
        eng_ctx_release(ctx, mk);
        inter += counts[0];
        uni += counts[1];
    }
    if (stability)
        *stability = uni ? (float)((double)inter / (double)uni) : 0.0f;
    eng_ctx_release(ctx, mark);
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
    {"mask_decoder.mask_tokens.weight", NMASK, E, offsetof(eng_sam, out_tokens) + E * sizeof(float)},
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
            pe_encode(m, ((float)x + 0.5f) / (float)G, ((float)y + 0.5f) / (float)G,
                      pe + ((size_t)y * G + x) * E);
    int rc = 0;
    void *mem = eng_backend_alloc(m->dbe, (size_t)P * E * eng_dtype_size(eng_backend_dtype(m->dbe)));
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
    sam_encode_one(m, NULL, NULL, NULL, 0, NULL);
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
        eng_sam_lora *plan_lora = lora_new(m, ENG_SAM_LORA_MAX_RANK, 0);
        if (!plan_lora) {
            free(masks);
            return eng_error(ENG_ENOMEM, "out of memory");
        }
        for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++)
            plan_lora->present[t] = 1;
        /* the largest group, every prompt with a mask input, then without
         * (layer 0 from the shared image side) */
        dec_shared sh;
        dec_shared_alloc(m, &sh, NULL);
        eng_tensor out = eng_new2(dc, (int64_t)GB * NMASK, ENG_SAM_LOWRES_FLOATS);
        sam_decode_group(m, plan_lora, &emb, &sh, NULL, GB, T, masks, NULL, &out, 0, NMASK);
        sam_decode_group(m, plan_lora, &emb, &sh, NULL, GB, T, NULL, NULL, &out, 0, NMASK);
        /* eng_sam_segment_cached: a group's masks postprocessed in place */
        sam_post_plan(dc);
        free(plan_lora);
        free(masks);
        eng_ctx_release(dc, mark);
        /* eng_sam_postprocess: one uploaded low-res map, then the same */
        eng_new3(dc, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES);
        sam_post_plan(dc);
        eng_ctx_release(dc, 0);
    }
    if ((rc = eng_ctx_status(&m->ctx)) || (rc = eng_ctx_status(m->dctx)))
        return rc;
    if ((rc = eng_ctx_commit(&m->ctx)))
        return rc;
    return m->dctx != &m->ctx ? eng_ctx_commit(m->dctx) : 0;
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
    m->opt.max_decode_batch = opt && opt->max_decode_batch > 0 ? opt->max_decode_batch
                              : eng_backend_device(m->dbe) == ENG_DEV_CUDA ? 64 : 1;
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
        assert(lora_base(m, t)->tid == t); /* target table and model agree */
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
    f += 2.0 * P * C * 3 * 16 * 16;                   /* patch embed */
    for (int i = 0; i < cfg->depth; i++) {
        double T = cfg->global[i] ? P : (double)wp * wp; /* tokens incl. window padding */
        double L = cfg->global[i] ? P : (double)ws * ws; /* attention span */
        int S = cfg->global[i] ? G : ws;
        f += 2.0 * T * C * 3 * C;                        /* qkv */
        f += 4.0 * T * L * C;                            /* QK^T and PV over all heads */
        f += 2.0 * T * C * 2 * (2 * S - 1);              /* rel-pos tables */
        f += 2.0 * T * C * C;                            /* proj */
        f += 2.0 * 2 * P * C * cfg->mlp_dim;             /* MLP */
    }
    f += 2.0 * P * C * E + 2.0 * P * E * E * 9;         /* neck */
    return f;
}

double eng_sam_decoder_flops(int n_tokens)
{
    double T = n_tokens, f = 0, I = E / 2;
    /* token-side and image-side projections and attention, per two-way layer */
    double layer = 2 * T * E * E * 4 + 4 * T * T * E            /* self attention */
                   + 2 * T * E * I * 2 + 2 * P * E * I * 2 + 4 * T * P * I /* token->image */
                   + 2 * T * E * 2048 * 2                          /* MLP */
                   + 2 * T * E * I * 2 + 2 * P * E * I * 2 + 4 * T * P * I; /* image->token */
    f += 2 * layer;
    f += 2 * T * E * I * 2 + 2 * P * E * I * 2 + 4 * T * P * I;   /* final attention */
    f += 2.0 * P * E * UPC1 * 4 + 2.0 * 4 * P * UPC1 * UPC2 * 4;  /* upscaling */
    f += NMASK * (2.0 * E * E * 2 + 2.0 * E * UPC2) + 2.0 * E * E * 2 + 2.0 * E * NMASK;
    f += 2.0 * NMASK * UPC2 * 16 * P;                              /* masks */
    return f;
}
const char *eng_sam_model_id(const eng_sam *m) { return m->model_id; }
eng_backend *eng_sam_backend(const eng_sam *m) { return m->be; }
eng_backend *eng_sam_decoder_backend(const eng_sam *m) { return m->dbe; }
size_t eng_sam_workspace_bytes(const eng_sam *m)
{
    return m->ctx.cap + (m->dctx != &m->ctx ? m->dctx->cap : 0);
}

int eng_sam_open_backends(const char *device, const char *precision, int cpu_threads,
                          eng_backend **enc, eng_backend **dec, char *note, size_t note_cap)
{
    *enc = *dec = NULL;
    if (note_cap)
        note[0] = '\0';
    int want_cpu = !strcmp(device, "cpu"), want_cuda = !strcmp(device, "cuda");
    if (!want_cpu && !want_cuda && strcmp(device, "auto"))
        return eng_error(ENG_EINVAL, "device '%s': expected auto, cpu or cuda", device);
    eng_dtype dt = ENG_BF16;
    int autop = !strcmp(precision, "auto");
    if (!strcmp(precision, "fp32"))
        dt = ENG_F32;
    else if (!strcmp(precision, "fp16"))
        dt = ENG_F16;
    else if (strcmp(precision, "bf16") && !autop)
        return eng_error(ENG_EINVAL, "precision '%s': expected auto, fp32, fp16 or bf16",
                         precision);
    if (!want_cpu) {
        int rc = eng_backend_cuda_create(enc, 0, dt);
        if (rc && autop) /* no bf16 on this GPU (sm_75): fp16 */
            rc = eng_backend_cuda_create(enc, 0, dt = ENG_F16);
        if (!rc) {
            /* bf16's 8-bit mantissa costs the masks about 1.5% IoU through the
             * decoder; fp16 keeps them within 0.2% at the same speed, and the
             * decoder's activations are small enough for its range */
            if (dt == ENG_BF16 && eng_backend_cuda_create(dec, 0, ENG_F16) != 0)
                *dec = NULL;
            return 0;
        }
        if (want_cuda)
            return rc;
        snprintf(note, note_cap, "no usable GPU (%s); running on the CPU", eng_last_error());
    }
    if (!autop && dt != ENG_F32 && note_cap && !note[0])
        snprintf(note, note_cap, "the CPU backend computes in fp32 (precision %s ignored)",
                 precision);
    return eng_backend_cpu_create(enc, cpu_threads);
}

int eng_sam_preprocess(const eng_image *img, float *input, eng_sam_imginfo *info)
{
    int nw, nh;
    if (!img || !img->rgb || img->w <= 0 || img->h <= 0)
        return eng_error(ENG_EINVAL, "empty image");
    eng_resize_shape(img->w, img->h, ENG_SAM_IMG, &nw, &nh);
    uint8_t *rs = malloc((size_t)nw * nh * 3);
    if (!rs)
        return eng_error(ENG_ENOMEM, "out of memory resizing a %dx%d image", img->w, img->h);
    int rc = eng_resize_bilinear_aa(img->rgb, img->w, img->h, rs, nw, nh);
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

/* Reset the sticky error of a workspace before a call. */
static void sam_begin(eng_ctx *ctx)
{
    ctx->status = 0;
    eng_ctx_release(ctx, 0);
}

/* The call's status once its queued work is done. */
static int sam_end(eng_ctx *ctx)
{
    int rc = eng_ctx_status(ctx);
    if (!rc)
        rc = eng_backend_sync(ctx->be);
    eng_ctx_release(ctx, 0);
    return rc;
}

int eng_sam_encode(eng_sam *m, const float *inputs, int n, float *embeddings)
{
    if (n < 1 || n > m->opt.max_batch)
        return eng_error(ENG_EINVAL, "encoder batch %d outside 1..%d", n, m->opt.max_batch);
    sam_begin(&m->ctx);
    for (int i = 0; i < n && !m->ctx.status; i++)
        sam_encode_one(m, inputs + (size_t)i * 3 * ENG_SAM_IMG * ENG_SAM_IMG, NULL, NULL, 0,
                       embeddings + (size_t)i * ENG_SAM_EMB_FLOATS);
    return sam_end(&m->ctx);
}

int eng_sam_encode_debug(eng_sam *m, const float *input, float *patch, float **blocks,
                         int n_blocks, float *embedding)
{
    sam_begin(&m->ctx);
    sam_encode_one(m, input, patch, blocks, n_blocks, embedding);
    return sam_end(&m->ctx);
}

int eng_sam_dense_pe(eng_sam *m, float *out)
{
    sam_begin(m->dctx);
    eng_tensor chw = eng_new2(m->dctx, E, P);
    eng_transpose(m->dctx, &chw, &m->dense_pe);
    sam_download(m->dctx, out, &chw, (size_t)E * P);
    return sam_end(m->dctx);
}

static int sam_check_prompt(const eng_sam *m, const eng_sam_prompt *p, int idx)
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
                   const eng_sam_prompt *prompts, int n, int multimask, float *iou,
                   float *low_res)
{
    return eng_sam_decode_cached(m, NULL, embedding, info, prompts, n, multimask, iou, low_res);
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

static double sam_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

/*
 * eng_sam_decode_cached and eng_sam_segment_cached: decode `prompts` in
 * groups; each group's masks land in a device buffer [GB * count, 256*256]
 * below the group's activations, from where they are copied to low_res
 * (when non-NULL) and/or postprocessed to masks + stability on the host
 * (when masks is non-NULL) without leaving the device in between.
 */
static int sam_decode_impl(eng_sam *m, const char *key, const float *embedding,
                           const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                           int multimask, float *iou, float *low_res, uint8_t *masks,
                           float *stability, eng_sam_timing *timing)
{
    if (key && strlen(key) >= sizeof m->slots[0].key)
        return eng_error(ENG_EINVAL, "embedding key longer than %zu bytes",
                         sizeof m->slots[0].key - 1);
    if (n < 1)
        return eng_error(ENG_EINVAL, "no prompts to decode");
    if (info->orig_w < 1 || info->orig_h < 1 || info->input_w < 1 || info->input_h < 1)
        return eng_error(ENG_EINVAL, "bad image size");
    int rc;
    if (masks && (rc = sam_post_check(info)))
        return rc;
    for (int i = 0; i < n; i++)
        if ((rc = sam_check_prompt(m, &prompts[i], i)))
            return rc;
    /* the embedding as rows [P, E]: from a resident slot, or uploaded (and
     * kept in the least recently used slot when a key is given) */
    int found = 0;
    emb_slot *slot = key && m->n_slots ? slot_lookup(m, key, &found) : NULL;
    if (!found && !embedding)
        return eng_error(ENG_ENOTFOUND, "embedding '%s' is not resident and none was given",
                         key ? key : "");
    int T_max = 1 + NMASK + m->opt.max_points + 2, GB = m->opt.max_decode_batch;
    /* host staging for one group: tokens [GB, T_max, E], IoU [GB, 4], masks */
    float *tokens = malloc((size_t)GB * T_max * E * sizeof(float));
    float *iou4 = malloc((size_t)GB * NMASK * sizeof(float));
    const float **mask_in = malloc((size_t)GB * sizeof *mask_in);
    if (!tokens || !iou4 || !mask_in) {
        free(tokens);
        free(iou4);
        free(mask_in);
        return eng_error(ENG_ENOMEM, "out of memory");
    }
    int first = multimask ? 1 : 0, count = multimask ? 3 : 1;
    size_t px = (size_t)info->orig_w * (size_t)info->orig_h;
    double t_dec = 0, t_post = 0, t0 = sam_now_ms();
    sam_begin(m->dctx);
    eng_tensor emb = slot ? slot->t : eng_new2(m->dctx, P, E);
    if (!found) {
        if (slot) { /* valid only once the whole call has succeeded */
            snprintf(slot->key, sizeof slot->key, "%s", key);
            slot->used = 0;
            slot->side_ok = 0;
        }
        size_t mark = eng_ctx_mark(m->dctx);
        eng_tensor chw = eng_new2(m->dctx, E, P);
        sam_upload(m->dctx, &chw, embedding);
        eng_transpose(m->dctx, &emb, &chw);
        eng_ctx_release(m->dctx, mark);
    }
    if (slot) {
        slot->tick = ++m->slot_tick;
        slot->side_new = 0;
    }
    dec_shared sh;
    dec_shared_alloc(m, &sh, slot);
    eng_tensor out = eng_new2(m->dctx, (int64_t)GB * count, ENG_SAM_LOWRES_FLOATS);
    for (int i = 0; i < n && !m->dctx->status;) {
        /* a group: consecutive prompts with the same token count, the same
         * adapter and all with or all without a mask input (those without
         * share layer 0's image side), at most max_decode_batch of them */
        int T = 1 + NMASK + sam_sparse_tokens(m, info, &prompts[i], tokens + (1 + NMASK) * E);
        memcpy(tokens, m->out_tokens, sizeof m->out_tokens);
        mask_in[0] = prompts[i].mask_input;
        int B = 1;
        while (i + B < n && B < GB && prompts[i + B].lora == prompts[i].lora &&
               !prompts[i + B].mask_input == !prompts[i].mask_input) {
            float *tb = tokens + (size_t)B * T * E;
            int tb_n = sam_sparse_tokens(m, info, &prompts[i + B], tb + (1 + NMASK) * E);
            if (1 + NMASK + tb_n != T)
                break;
            memcpy(tb, m->out_tokens, sizeof m->out_tokens);
            mask_in[B] = prompts[i + B].mask_input;
            B++;
        }
        /* (the IoU copy back ends the group: its time is the decoder's) */
        sam_decode_group(m, prompts[i].lora, &emb, &sh, tokens, B, T, mask_in, iou4, &out,
                         first, count);
        for (int b = 0; b < B; b++)
            memcpy(iou + (size_t)(i + b) * count, iou4 + (size_t)b * NMASK + first,
                   (size_t)count * sizeof(float));
        size_t nm = (size_t)B * count, m0 = (size_t)i * count;
        if (low_res)
            sam_download(m->dctx, low_res + m0 * ENG_SAM_LOWRES_FLOATS, &out,
                         nm * ENG_SAM_LOWRES_FLOATS);
        double t1 = sam_now_ms();
        t_dec += t1 - t0;
        for (size_t k = 0; masks && k < nm && !m->dctx->status; k++) {
            eng_tensor lo = eng_rows(out, (int64_t)k, 1);
            float *st = stability ? &stability[m0 + k] : NULL;
            sam_post_one(m, &lo, info, masks + (m0 + k) * px, st);
        }
        t0 = sam_now_ms();
        t_post += t0 - t1;
        i += B;
    }
    free(tokens);
    free(iou4);
    free(mask_in);
    rc = sam_end(m->dctx);
    if (slot && !found)
        slot->used = rc == 0;
    if (slot && slot->side_new)
        slot->side_ok = rc == 0;
    if (timing) {
        timing->decode_ms = t_dec + (sam_now_ms() - t0);
        timing->postprocess_ms = t_post;
    }
    return rc;
}

int eng_sam_decode_cached(eng_sam *m, const char *key, const float *embedding,
                          const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                          int multimask, float *iou, float *low_res)
{
    return sam_decode_impl(m, key, embedding, info, prompts, n, multimask, iou, low_res, NULL,
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
                           stability, timing);
}

int eng_sam_postprocess(eng_sam *m, const float *low_res, int n, const eng_sam_imginfo *info,
                        uint8_t *masks, float *stability)
{
    int rc = sam_post_check(info);
    if (rc)
        return rc;
    eng_ctx *ctx = m->dctx;
    size_t px = (size_t)info->orig_w * (size_t)info->orig_h;
    sam_begin(ctx);
    eng_tensor lo = eng_new3(ctx, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES);
    for (int i = 0; i < n && !ctx->status; i++) {
        sam_upload(ctx, &lo, low_res + (size_t)i * ENG_SAM_LOWRES_FLOATS);
        sam_post_one(m, &lo, info, masks + (size_t)i * px, stability ? &stability[i] : NULL);
    }
    return sam_end(ctx);
}
