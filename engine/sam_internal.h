/*
 * engine/sam_internal.h: what the files of the SAM model share (not a public
 * header; only engine/sam_*.c include it).
 *
 * The model is split by stage: sam_load.c (declaration, checkpoint, plan,
 * accessors), sam_encoder.c (preprocess and the ViT), sam_decoder.c (prompt
 * encoder and mask decoder, resident embeddings), sam_lora.c (adapter
 * targets and engine adapters), sam_postprocess.c (upscale and threshold),
 * sam_backends.c (device and precision choice), sam_train.c (the decoder's
 * training forward and backward with LoRA, sam_train.h).
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
#ifndef TASAM_ENGINE_SAM_INTERNAL_H
#define TASAM_ENGINE_SAM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ckpt.h"
#include "error.h"
#include "ops.h"
#include "sam.h"
#include "weights.h"

#define G           ENG_SAM_GRID
#define P           (G * G)
#define E           ENG_SAM_EMB_DIM
#define NMASK       4         /* mask tokens (3 multimask outputs + 1 single) */
#define UPC1        64        /* output_upscaling channels after the first 2x */
#define UPC2        32        /* ... after the second 2x (= hypernetwork MLP output) */
#define PE_FEATS    128       /* random Fourier features per axis pair */
#define VIT_EPS     1e-6f     /* ViT and LayerNorm2d eps */
#define DEC_EPS     1e-5f     /* two-way transformer nn.LayerNorm default */
#define BAND_FLOATS (1 << 22) /* postprocess output band: 16 MiB of f32 */

/* A linear layer: w [out, in], b [out]; `tid` is its index in the LoRA
 * target table (eng_sam_lora_targets), -1 for layers LoRA never adapts. */
typedef struct {
    eng_tensor w, b;
    int tid;
} lin_t;
typedef struct {
    eng_tensor g, b;
} norm_t; /* [width] */

typedef struct vit_block {
    norm_t norm1, norm2;
    eng_tensor rel_h, rel_w; /* [2*S-1, hd], S = window or G */
    lin_t qkv;               /* [3C, C] */
    lin_t proj;              /* [C, C] */
    lin_t lin1, lin2;        /* [4C, C], [C, 4C] */
} vit_block;

typedef struct dec_attn {
    lin_t q, k, v; /* [I, E] each, I = E / downsample */
    lin_t out;     /* [E, I] */
    int inner;     /* I */
} dec_attn;

typedef struct twoway_layer {
    dec_attn self_attn, t2i, i2t;
    norm_t norm1, norm2, norm3, norm4;
    lin_t mlp1, mlp2; /* [2048, E], [E, 2048] */
} twoway_layer;

/* Layer 0's image side for prompts without a mask input (dec_shared). */
typedef struct dec_side {
    eng_tensor src0; /* [P, E] embedding + no_mask_embed */
    eng_tensor k, v; /* [P, I] layer 0 t2i: k_proj(src0 + dense_pe), v_proj(src0) */
    eng_tensor q;    /* [P, I] layer 0 i2t: q_proj(src0 + dense_pe) */
} dec_side;

/* One device-resident embedding (eng_sam_decode_cached), with its layer-0
 * side under no adapter once a call has needed it: a repeat click on a
 * cached image skips those three GEMMs too. */
typedef struct emb_slot {
    char key[96];  /* caller's key, "" when unused */
    int used;      /* holds a complete embedding */
    int side_ok;   /* `side` holds this embedding's adapter-free layer-0 side */
    int side_new;  /* `side` written by the call in progress */
    uint64_t tick; /* last use */
    eng_tensor t;  /* [P, E] on the decoder's backend */
    dec_side side; /* on the decoder's backend */
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
    eng_tensor patch_w;   /* [C, 3, 16, 16] */
    eng_tensor patch_b;   /* [C] */
    eng_tensor pos_embed; /* [P, C] */
    vit_block blocks[ENG_SAM_MAX_DEPTH];
    eng_tensor neck0_w; /* [E, C] (1x1 conv, no bias) */
    norm_t neck1;       /* [E] */
    eng_tensor neck2_w; /* [E, E, 3, 3] (no bias) */
    norm_t neck3;

    /* prompt encoder: the sparse side runs on the host (a few tokens) */
    float pe_gauss[2 * PE_FEATS]; /* positional_encoding_gaussian_matrix [2, 128] */
    float point_embed[4][E];      /* 0 neg, 1 pos, 2 box top-left, 3 box bottom-right */
    float not_a_point[E];
    eng_tensor no_mask;      /* [E] */
    eng_tensor md0_w, md0_b; /* mask_downscaling.0: [4,1,2,2], [4] */
    norm_t md1;              /* [4] */
    eng_tensor md3_w, md3_b; /* [16,4,2,2], [16] */
    norm_t md4;              /* [16] */
    eng_tensor md6_w, md6_b; /* [E,16,1,1], [E] */
    eng_tensor dense_pe;     /* [P, E] HWC, computed at load */

    /* mask decoder */
    float out_tokens[(1 + NMASK) * E]; /* iou_token then mask_tokens */
    twoway_layer layers[2];
    dec_attn final_attn;
    norm_t norm_final;
    eng_tensor up0_w, up0_b; /* [E, 64, 2, 2], [64] */
    norm_t up1;              /* [64] */
    eng_tensor up3_w, up3_b; /* [64, 32, 2, 2], [32] */
    lin_t hyper[NMASK][3];   /* 256->256->256->32 */
    lin_t iou_head[3];       /* 256->256->256->4 */

    /* image embeddings resident on the decoder's device, rows [P, E] */
    struct emb_slot *slots; /* [n_slots] */
    int n_slots;
    uint64_t slot_tick; /* LRU clock */
    void *slot_mem;     /* one allocation behind every slot */
};

struct eng_sam_lora {
    int rank;
    int merged;                         /* W' = W + scale B A folded in */
    int present[ENG_SAM_LORA_TARGETS];  /* 1 where this adapter changes the layer */
    eng_tensor A[ENG_SAM_LORA_TARGETS]; /* [r, in] */
    eng_tensor B[ENG_SAM_LORA_TARGETS]; /* [out, r], already multiplied by the scale */
    eng_tensor W[ENG_SAM_LORA_TARGETS]; /* merged: [out, in] */
    void *mem;                          /* one device allocation for all of the above */
    size_t bytes;
};

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
    dec_side own;   /* in the decoder's workspace */
    eng_tensor kp0; /* [P, E] workspace: src0 + dense_pe */
    emb_slot *slot; /* the resident embedding's slot, or NULL */
    dec_side cur;   /* what layer 0 reads: `own` or the slot's */
} dec_shared;

/* ---- shared helpers (sam_load.c) ---- */

/* Upload host floats into a workspace tensor / download (skipped while
 * planning or after an error). */
void eng__sam_upload(eng_ctx *ctx, eng_tensor *t, const float *src);
void eng__sam_download(eng_ctx *ctx, float *dst, const eng_tensor *t, size_t n);
/* Reset the sticky error of a workspace before a call; the call's status
 * once its queued work is done. */
void eng__sam_begin(eng_ctx *ctx);
int eng__sam_end(eng_ctx *ctx);
double eng__sam_now_ms(void);

/* ---- LoRA (sam_lora.c) ---- */

int eng__sam_lora_target_index(const char *name);
/* An adapter record with every tensor described (data NULL) at `rank`. */
eng_sam_lora *eng__sam_lora_new(const eng_sam *m, int rank, int merged);
/* The model's weight for target t. */
const lin_t *eng__sam_lora_base(const eng_sam *m, int t);

/* ---- encoder (sam_encoder.c) ---- */

/* input [3,1024,1024] host -> embedding [E,G,G] host; optional taps. */
int eng__sam_encode_one(eng_sam *m, const float *input, float *patch, float **blocks, int n_blocks,
                        float *embedding);

/* ---- prompt encoder and decoder (sam_decoder.c) ---- */

/* PositionEmbeddingRandom._pe_encoding of a point in [0,1]^2 -> out[E]. */
void eng__sam_pe_encode(const eng_sam *m, float x, float y, float *out);
/* Sparse prompt tokens for one prompt: [n_tokens, E] into `out`, returns
 * n_tokens. */
int eng__sam_sparse_tokens(const eng_sam *m, const eng_sam_imginfo *info, const eng_sam_prompt *p,
                           float *out);
/* ENG_EINVAL naming prompt `idx` and what is wrong (point count, labels,
 * coordinates not finite). */
int eng__sam_check_prompt(const eng_sam *m, const eng_sam_prompt *p, int idx);
/* sb [P, E] += the dense embedding of a low-res mask input [256, 256] (host
 * f32), on ctx (the mask downscaling convolutions). */
void eng__sam_mask_embed(const eng_sam *m, eng_ctx *ctx, eng_tensor *sb, const float *mask_input);
void eng__sam_dec_shared_alloc(eng_sam *m, dec_shared *sh, emb_slot *slot);
/* Which prompts of a group need their masks, decided from the group's IoU
 * predictions before the upscaling (the larger part of a prompt's work
 * after the transformer): fn gets iou4 [B, 4] (host) and sets need[b] = 0
 * for a prompt whose masks nobody will read. */
typedef struct dec_need {
    void (*fn)(void *arg, const float *iou4, int B, uint8_t *need);
    void *arg;
} dec_need;

/* B prompts of T tokens under one adapter in one pass (see sam_decoder.c);
 * need (may be NULL: every prompt) skips the masks of some prompts. */
void eng__sam_decode_group(eng_sam *m, const eng_sam_lora *lo, const eng_tensor *emb_hwc,
                           dec_shared *sh, const float *tokens_host, int B, int T,
                           const float *const *mask_inputs, float *iou_out, const eng_tensor *masks,
                           int first, int count, const dec_need *need);

/* ---- postprocess (sam_postprocess.c) ---- */

/* Workspace of one mask's postprocess (planning). */
void eng__sam_post_plan(eng_ctx *ctx);
int eng__sam_post_check(const eng_sam_imginfo *info);
/* One low-res logit map (256*256 values on the decoder's backend) to a
 * mask [orig_h, orig_w] on the host (logits > 0) and the stability counts at
 * `offset`: counts[0] = |logits > +offset|, counts[1] = |logits > -offset|. */
void eng__sam_post_one(eng_sam *m, const eng_tensor *lo, const eng_sam_imginfo *info, float offset,
                       uint8_t *mask, uint64_t counts[2]);

#endif
