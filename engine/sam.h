/*
 * engine/sam.h: the Segment Anything model (image encoder, prompt encoder,
 * mask decoder, postprocessing), written once against the op interface.
 *
 * A loaded model is bound to one backend and is NOT thread-safe: one thread
 * (the daemon's inference worker, or the CLI) owns it and calls it in turn.
 * Weights are uploaded once at load; activations come from one workspace
 * planned at load for the configured limits; no call allocates device memory.
 *
 * Coordinates in prompts are original-image pixels (x, y), as in SAM's
 * SamPredictor; the model scales them like ResizeLongestSide.
 */
#ifndef TASAM_ENGINE_SAM_H
#define TASAM_ENGINE_SAM_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "ops.h"

#define ENG_SAM_IMG           1024 /* encoder input side */
#define ENG_SAM_GRID          64   /* embedding side (1024 / patch 16) */
#define ENG_SAM_EMB_DIM       256  /* prompt/decoder width */
#define ENG_SAM_LOWRES        256  /* decoder mask side */
#define ENG_SAM_EMB_FLOATS    (ENG_SAM_EMB_DIM * ENG_SAM_GRID * ENG_SAM_GRID)
#define ENG_SAM_LOWRES_FLOATS (ENG_SAM_LOWRES * ENG_SAM_LOWRES)
#define ENG_SAM_MAX_DEPTH     64

/* Read from the checkpoint's tensor shapes. */
typedef struct eng_sam_config {
    char name[16];                 /* "vit_b", "vit_l", "vit_h", or "custom" */
    int embed_dim;                 /* 768 / 1024 / 1280 (tiny fixture: 64) */
    int depth;                     /* 12 / 24 / 32 */
    int heads;                     /* embed_dim / head_dim */
    int head_dim;                  /* 64 / 64 / 80 */
    int mlp_dim;                   /* 4 * embed_dim */
    int window;                    /* 14 */
    int global[ENG_SAM_MAX_DEPTH]; /* 1 where block i attends globally */
} eng_sam_config;

typedef struct eng_sam_options {
    int max_points;       /* points per prompt the decoder plans for (default 16) */
    int max_batch;        /* images per encoder call (default 1) */
    int max_decode_batch; /* prompts decoded in one pass (default 64 on CUDA, 1 on the CPU) */
    int embedding_slots;  /* image embeddings kept resident on the decoder's device for
                             eng_sam_decode_cached (default 0); each holds 256*64*64 values
                             and their decoder layer-0 side, 640*64*64 values in all */
    eng_backend *decoder_backend; /* borrowed; runs the prompt encoder, mask decoder and
                                     postprocessing (NULL: the model's backend). E.g. the
                                     encoder in bf16 and the decoder in fp32 on one GPU: the
                                     cheap decoder then adds no bf16 rounding to the masks. */
} eng_sam_options;

/* Sizes of one image as SAM sees it. */
typedef struct eng_sam_imginfo {
    int orig_w, orig_h;   /* decoded image */
    int input_w, input_h; /* after ResizeLongestSide(1024) */
} eng_sam_imginfo;

typedef struct eng_sam eng_sam;

/* ---- LoRA adapters on the mask decoder ---- */

#define ENG_SAM_LORA_TARGETS  47 /* decoder linear layers an adapter may change */
#define ENG_SAM_LORA_MAX_RANK 16

typedef struct eng_sam_lora_target {
    char name[96]; /* official weight prefix, e.g.
                      "mask_decoder.transformer.layers.0.self_attn.q_proj" */
    int out, in;   /* weight shape [out, in] */
} eng_sam_lora_target;

/* The targets in their fixed order (ENG_SAM_LORA_TARGETS entries). */
const eng_sam_lora_target *eng_sam_lora_targets(void);

typedef struct eng_sam_lora eng_sam_lora;

/* An adapter on model m: for each target t, A[t] [rank, in] and B[t]
 * [out, rank] host f32 (both NULL: the layer is not adapted); the layer
 * computes x (W + scale B A)^T + b. merged = 1 folds W + scale B A into a
 * private copy of each adapted weight (one GEMM per layer then; costs that
 * weight's size of device memory); merged = 0 keeps A and B and adds
 * x A^T (scale B)^T per call (small, and prompts with different adapters can
 * share a batch). Allocates device memory: create adapters once and cache
 * them, not per request. Same thread rules as the model. */
int eng_sam_lora_create(eng_sam *m, int rank, float scale, const float *const *A,
                        const float *const *B, int merged, eng_sam_lora **out);
void eng_sam_lora_destroy(eng_sam *m, eng_sam_lora *l);
/* Device bytes held by the adapter. */
size_t eng_sam_lora_bytes(const eng_sam_lora *l);

/* One decoder prompt. Points and a box may be combined; neither (and no
 * mask) is SAM's prompt-free output. */
typedef struct eng_sam_prompt {
    int n_points;
    const float *points; /* [n_points, 2] x, y in original pixels */
    const int *labels;   /* [n_points]: 1 foreground, 0 background */
    int has_box;
    float box[4];             /* x0, y0, x1, y1 in original pixels */
    const float *mask_input;  /* [256, 256] low-res logits from an earlier call, or NULL */
    const eng_sam_lora *lora; /* adapter for this prompt, or NULL for plain SAM */
} eng_sam_prompt;

/* The configuration of an official architecture ("vit_b", "vit_l", "vit_h"). */
int eng_sam_config_preset(const char *name, eng_sam_config *cfg);

/* Every parameter a checkpoint of `cfg` holds, official key and shape, in a
 * fixed order; fn returning non-zero stops the walk with that code. */
typedef int (*eng_sam_param_fn)(void *arg, const char *name, int ndim, const int64_t *shape);
int eng_sam_list_params(const eng_sam_config *cfg, eng_sam_param_fn fn, void *arg);

/* Load a checkpoint (official .pth or safetensors, SAM key names) onto `be`
 * (borrowed: must outlive the model). opt may be NULL for defaults. Errors
 * name the file and tensor. */
int eng_sam_load(eng_sam **out, const char *path, eng_backend *be, const eng_sam_options *opt);
void eng_sam_destroy(eng_sam *m);

const eng_sam_config *eng_sam_get_config(const eng_sam *m);
/* Identifies the weights for cache keys: "<name>-<16 hex>" from a hash of
 * the tensor names, shapes and sampled contents. */
const char *eng_sam_model_id(const eng_sam *m);
eng_backend *eng_sam_backend(const eng_sam *m);
/* The backend that runs the decoder (eng_sam_backend's unless split). */
eng_backend *eng_sam_decoder_backend(const eng_sam *m);
/* Workspace bytes planned at load. */
size_t eng_sam_workspace_bytes(const eng_sam *m);

/* Analytic FLOP counts (multiply-add = 2) of one image through the encoder,
 * and of one prompt of n_tokens decoder tokens (5 + sparse prompt tokens),
 * both as the reference model computes them. (Decoding several prompts
 * without mask inputs in one call shares layer 0's image side, about a
 * quarter of the decoder count, so a rate from this count is an effective
 * rate there.) */
double eng_sam_encoder_flops(const eng_sam_config *cfg);
double eng_sam_decoder_flops(int n_tokens);

/* The backends for a device ("auto", "cpu", "cuda") and precision ("auto",
 * "fp32", "fp16", "bf16") choice. CUDA with auto precision stores bf16 where
 * the GPU has it (fp16 on sm_75) and then runs the decoder on a second, fp16
 * backend (*dec; pass it as eng_sam_options.decoder_backend), since bf16
 * rounding through the decoder costs the masks IoU. *dec is NULL when the
 * encoder's backend decodes too. "auto" falls back to the CPU when no GPU is
 * usable and leaves a line for the log in `note` (empty otherwise).
 * The caller destroys both backends (after the model). */
int eng_sam_open_backends(const char *device, const char *precision, int cpu_threads,
                          eng_backend **enc, eng_backend **dec, char *note, size_t note_cap);

/* Resize (Pillow bilinear, long side 1024), normalise and pad an RGB image:
 * input [3,1024,1024] f32 host. */
int eng_sam_preprocess(const eng_image *img, float *input, eng_sam_imginfo *info);

/* Image encoder on n preprocessed inputs (n <= max_batch), each
 * [3,1024,1024] host f32, giving n embeddings [256,64,64] host f32. */
int eng_sam_encode(eng_sam *m, const float *inputs, int n, float *embeddings);

/* Encoder with the block outputs kept, for golden tests: patch
 * [64*64, C] (HWC, before pos_embed), blocks[i] [64*64, C] for i < n_blocks
 * (NULL entries skipped), embedding [256,64,64]. */
int eng_sam_encode_debug(eng_sam *m, const float *input, float *patch, float **blocks, int n_blocks,
                         float *embedding);

/* The prompt encoder's dense positional encoding [256,64,64] host f32. */
int eng_sam_dense_pe(eng_sam *m, float *out);

/* The prompt encoder's dense embedding [256,64,64] (CHW host f32) of a
 * low-res mask input [256,256] (host f32), or of no mask (no_mask_embed at
 * every position) when mask_input is NULL: what the decoder adds to the
 * image embedding. */
int eng_sam_dense_prompt(eng_sam *m, const float *mask_input, float *out);

/* Decode n prompts against one embedding [256,64,64] (host f32). Each
 * prompt gives C = 3 masks when multimask, else 1 (SAM's slicing: masks
 * 1..3 or mask 0). iou [n, C] and low_res [n, C, 256, 256] host f32. */
int eng_sam_decode(eng_sam *m, const float *embedding, const eng_sam_imginfo *info,
                   const eng_sam_prompt *prompts, int n, int multimask, float *iou, float *low_res);

/* eng_sam_decode against an embedding kept resident on the decoder's device
 * under `key` (any string up to 95 bytes, e.g. the image's sha256): when the
 * key is resident its copy is used and `embedding` may be NULL (ENG_ENOTFOUND
 * if it is NULL and the key is not resident); otherwise `embedding` is
 * uploaded into the least recently used of opt.embedding_slots slots. Saves
 * the upload and layout change of 4 MiB per call on a GPU, and, for prompts
 * without a mask input or adapter, the first decoder layer's image-side
 * projections after the first such call. key NULL: as eng_sam_decode. */
int eng_sam_decode_cached(eng_sam *m, const char *key, const float *embedding,
                          const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                          int multimask, float *iou, float *low_res);
/* Where eng_sam_segment_cached's time went: decoding (prompt encoder, mask
 * decoder, the IoU copy back) and postprocessing (upscale, threshold, masks
 * copied to the host), in wall-clock ms. */
typedef struct eng_sam_timing {
    double decode_ms, postprocess_ms;
} eng_sam_timing;

/* eng_sam_decode_cached then eng_sam_postprocess in one call, the low-res
 * logits never leaving the decoder's device: iou [n, C] host f32, masks
 * [n, C, orig_h, orig_w] u8 0/1, stability [n, C] (may be NULL), timing
 * (may be NULL). Saves copying n * C * 256 KiB of logits to the host and
 * back on a GPU. */
int eng_sam_segment_cached(eng_sam *m, const char *key, const float *embedding,
                           const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                           int multimask, float *iou, uint8_t *masks, float *stability,
                           eng_sam_timing *timing);

/* One postprocessed mask of eng_sam_segment_each. */
typedef struct eng_sam_mask {
    int prompt;          /* index into the call's prompts */
    int index;           /* mask within the prompt: 0..C-1 (multimask: SAM's masks 1..3) */
    float iou;           /* predicted IoU */
    const uint8_t *mask; /* [orig_h, orig_w] 0/1 (logits > 0); valid during the callback */
    uint64_t above_hi;   /* |logits > +offset|: the stability score's intersection */
    uint64_t above_lo;   /* |logits > -offset|: its union */
} eng_sam_mask;

/* What eng_sam_segment_each does besides decoding. Callbacks run on the
 * calling thread; a non-zero return stops the call, which then returns
 * that code (set the message with eng_error first). */
typedef struct eng_sam_each {
    float offset; /* stability thresholds at +-offset (>= 0; SAM's default 1.0) */
    int batch;    /* prompts per decoder pass, at most the model's max_decode_batch (0: that) */
    /* before each decoder pass, over prompts [first, first + n) of `total`:
     * progress, and the place to stop for a deadline. May be NULL. */
    int (*before)(void *arg, int first, int n, int total);
    /* after the pass's IoU head, before any mask is made: iou [n, C] of
     * prompts [first, first + n); keep [n, C] comes in all 1, a 0 skips that
     * mask, and a prompt with none kept skips its upscaling (the costlier
     * part of the decoder after the transformer). May be NULL (keep all). */
    void (*select)(void *arg, int first, int n, const float *iou, uint8_t *keep);
    /* each kept mask, prompt by prompt, in mask order. Required. */
    int (*mask)(void *arg, const eng_sam_mask *mk);
    void *arg;
} eng_sam_each;

/* eng_sam_decode_cached, then each kept mask postprocessed as
 * eng_sam_postprocess does (at the size of `info`) into one scratch mask
 * handed to each->mask: memory stays at one mask whatever n is, and masks
 * nobody keeps are never upscaled. What automatic mask generation
 * (engine/amg.h) runs its point grid through. */
int eng_sam_segment_each(eng_sam *m, const char *key, const float *embedding,
                         const eng_sam_imginfo *info, const eng_sam_prompt *prompts, int n,
                         int multimask, const eng_sam_each *each, eng_sam_timing *timing);

/* SAM's stability score from the counts at +-offset, in float32 as
 * calculate_stability_score divides them (0 when above_lo is 0, where the
 * reference divides 0 by 0). */
float eng_sam_stability(uint64_t above_hi, uint64_t above_lo);

/* 1 when `key`'s embedding is resident. */
int eng_sam_embedding_resident(const eng_sam *m, const char *key);

/* Upscale n low-res logit maps [n,256,256] to the original size exactly as
 * SAM's postprocess_masks (bilinear to 1024, crop to the resized input,
 * bilinear to the original) and threshold at 0: masks [n, orig_h, orig_w]
 * u8 0/1. stability[n] (may be NULL) gets SAM's stability score with offset
 * 1.0: |logits > 1| / |logits > -1|. */
int eng_sam_postprocess(eng_sam *m, const float *low_res, int n, const eng_sam_imginfo *info,
                        uint8_t *masks, float *stability);

#endif
