/*
 * hypernet/hypernet.h: the hypernetwork that turns a task's text embedding
 * into LoRA factors for SAM's mask decoder (after Text-to-LoRA, Charakorn et
 * al., 2025).
 *
 * Letters used in shapes below:
 *   d  text embedding width (384 for all-MiniLM-L6-v2; from the file)
 *   H  hidden width of the hypernetwork (256 by default)
 *   r  LoRA rank (2..8)
 *   n  number of adapted targets (<= ENG_SAM_LORA_TARGETS = 47)
 *   T  module types (HN_TYPES = 12), S distinct target shapes (HN_SHAPES = 7)
 *
 * Forward, for one task embedding e [d]:
 *   z   = LayerNorm(GELU(W_in e + b_in))                          [H]
 *   x_t = z + (E_type[type(t)] + E_layer[t])                      [H] per target t
 *   h_t = GELU(W_mix x_t + b_mix)                                 [H]
 *   A_t = reshape(W_A[s] h_t + b_A[s], [r, in])    s = shape(t) = [out, in]
 *   B_t = reshape(W_B[s] h_t + b_B[s], [out, r])
 * The adapted layer computes x (W + (alpha/r) B_t A_t)^T + b (engine/sam.h).
 *
 * Module types (hn_target_type): attention q, k, v, out projections (every
 * attention of the two-way transformer and the final attention), MLP lin1,
 * lin2, output-hypernetwork MLP layers 0, 1, 2 and IoU-head layers 0, 1, 2:
 * the type says what a layer does; E_layer tells apart the 47 instances.
 * Heads are per shape, not per type, because a head's output size is fixed
 * by the shape; the 7 shapes are listed by hn_shape().
 *
 * Initialisation (hn_params_init): W_B = 0 and b_B = 0, so every generated
 * adapter has B = 0 exactly and an untrained hypernetwork reproduces plain
 * SAM bit for bit; W_A small and b_A Kaiming-uniform (bound 1/sqrt(in)), so
 * A is non-zero and training can move B (as LoRA's own init). `random` also
 * makes W_B and b_B small random, for tests and demos whose masks must
 * change.
 *
 * File: one safetensors file. Tensors (f32; any float dtype is read):
 *   trunk.in.weight [H, d]      trunk.in.bias [H]
 *   trunk.norm.weight [H]       trunk.norm.bias [H]
 *   trunk.mix.weight [H, H]     trunk.mix.bias [H]
 *   embed.type [T, H]           embed.layer [47, H]
 *   head.<out>x<in>.A.weight [r*in, H]   head.<out>x<in>.A.bias [r*in]
 *   head.<out>x<in>.B.weight [out*r, H]  head.<out>x<in>.B.bias [out*r]
 *     (heads only for shapes that some chosen target has)
 * Metadata: format "tasam-hypernet", format_version "1", version (set by the
 * writer; `tasam hypernet init` writes "0"), id, rank, alpha, text_dim,
 * hidden, text_model ("all-MiniLM-L6-v2", "hashed-384", ...), targets ("all"
 * or a comma list of target names).
 *
 * id: lower-case hex SHA-256 of the configuration (text_dim, hidden, rank,
 * alpha, text_model, targets) and every tensor's name, shape and f32 values
 * (hn_params_id). It is computed on load, so two files with different
 * weights never share an id; a stored id that disagrees with the content is
 * refused as a corrupt file. The version string does not enter the id.
 *
 * Threads: a loaded hn_hypernet runs on one backend with one workspace;
 * hn_hypernet_generate must not run on two threads at once for one handle.
 * Accessors are safe anywhere. Every function that can fail returns 0 or a
 * negative ENG_E* code with a message in eng_last_error().
 */
#ifndef TASAM_HYPERNET_HYPERNET_H
#define TASAM_HYPERNET_HYPERNET_H

#include <stddef.h>
#include <stdint.h>

#include "engine/ops.h"
#include "engine/sam.h"
#include "hypernet/text.h"

#define HN_TYPES          12 /* module types, see hn_target_type() */
#define HN_SHAPES         7  /* distinct [out, in] target shapes */
#define HN_MIN_RANK       2
#define HN_MAX_RANK       8
#define HN_DEFAULT_RANK   4
#define HN_DEFAULT_HIDDEN 256
#define HN_ID_LEN         64 /* hex characters of an id (SHA-256) */
#define HN_NAME_MAX       64 /* text_model and version strings, NUL included */

/* ---- targets: types and shapes ---- */

/* Module type of target t (0..HN_TYPES-1) and its name ("attn.q", "mlp.lin1",
 * "hyper.0", "iou.2", ...). */
int hn_target_type(int t);
const char *hn_type_name(int type);
/* Shape index of target t (0..HN_SHAPES-1); hn_shape gives its [out, in]. */
int hn_target_shape(int t);
void hn_shape(int s, int *out, int *in);

/* Parse a target list into present[ENG_SAM_LORA_TARGETS] (1 = adapted).
 * Items, comma-separated, applied left to right: "all", a group ("attn",
 * "mlp", "hyper", "iou"), or a full target name (eng_sam_lora_targets());
 * a leading '-' removes instead of adding ("all,-mlp": every target but the
 * two large MLPs). At least one target must remain. */
int hn_targets_parse(const char *s, unsigned char *present);
/* The canonical form: "all", or the comma list of target names in table
 * order. Returns the bytes needed (excluding the NUL), like snprintf. */
size_t hn_targets_format(const unsigned char *present, char *out, size_t cap);

/* ---- configuration and host parameters (init, file I/O, training) ---- */

typedef struct hn_hypernet_config {
    int text_dim;                                /* d: width of the task embedding */
    int hidden;                                  /* H */
    int rank;                                    /* r, HN_MIN_RANK..HN_MAX_RANK */
    float alpha;                                 /* LoRA scale is alpha / r */
    char text_model[HN_NAME_MAX];                /* encoder the hypernet was built for */
    unsigned char present[ENG_SAM_LORA_TARGETS]; /* targets emitted */
} hn_hypernet_config;

/* Defaults: d 384, H 256, r 4, alpha 2r, text model "all-MiniLM-L6-v2",
 * every target. */
void hn_hypernet_config_default(hn_hypernet_config *cfg);
/* ENG_EINVAL with a message if a field is out of range. */
int hn_hypernet_config_check(const hn_hypernet_config *cfg);

/* Every parameter in host f32, in one allocation. Shapes as in the file;
 * head arrays are NULL for shapes with no present target. A trainer reads,
 * updates and writes this. */
typedef struct hn_params {
    hn_hypernet_config cfg;
    float *w_in;          /* [H, d] */
    float *b_in;          /* [H] */
    float *ln_g, *ln_b;   /* [H] */
    float *w_mix;         /* [H, H] */
    float *b_mix;         /* [H] */
    float *e_type;        /* [HN_TYPES, H] */
    float *e_layer;       /* [ENG_SAM_LORA_TARGETS, H] */
    float *wa[HN_SHAPES]; /* [r*in, H] */
    float *ba[HN_SHAPES]; /* [r*in] */
    float *wb[HN_SHAPES]; /* [out*r, H] */
    float *bb[HN_SHAPES]; /* [out*r] */
    float *mem;           /* owns everything above */
    size_t n_floats;
} hn_params;

/* Parameters of `cfg`, all zero. */
int hn_params_create(hn_params **out, const hn_hypernet_config *cfg);
/* The initialisation described at the top, deterministic in `seed`. */
void hn_params_init(hn_params *p, uint64_t seed, int random);
/* Parameter counts: trunk (everything but the heads, embeddings included)
 * and heads. Either pointer may be NULL. */
void hn_params_count(const hn_params *p, size_t *trunk, size_t *heads);
/* The content id (lower-case hex, HN_ID_LEN chars + NUL). */
void hn_params_id(const hn_params *p, char id[HN_ID_LEN + 1]);
/* Write a hypernetwork file atomically; version is a short printable
 * string. id (may be NULL) receives the content id. */
int hn_params_write(const hn_params *p, const char *path, const char *version,
                    char id[HN_ID_LEN + 1]);
/* hn_params_write with extra metadata: n_extra key/value pairs (extra[2i]
 * key, extra[2i+1] value; at most HN_MAX_EXTRA_META), e.g. a trainer's
 * configuration. Keys the writer sets itself (format, version, id, rank,
 * ...) are refused. Readers ignore keys they do not know. */
#define HN_MAX_EXTRA_META 16
int hn_params_write_meta(const hn_params *p, const char *path, const char *version,
                         const char *const *extra, size_t n_extra, char id[HN_ID_LEN + 1]);
/* Read a hypernetwork file (or the same bytes in memory, `label` naming it
 * in messages). version (may be NULL) receives the version string. Every
 * shape and the metadata are checked, values must be finite, and a stored
 * id must match the content. */
int hn_params_read(hn_params **out, const char *path, char version[HN_NAME_MAX]);
int hn_params_read_mem(hn_params **out, const void *buf, size_t len, const char *label,
                       char version[HN_NAME_MAX]);
void hn_params_destroy(hn_params *p);

/* ---- the loaded hypernetwork ---- */

typedef struct hn_hypernet hn_hypernet;

/* hn_params_create + hn_params_init + hn_params_write with version "0". */
int hn_hypernet_init(const char *path, const hn_hypernet_config *cfg, uint64_t seed, int random);

/* Load a hypernetwork file onto `be` (borrowed; must outlive the handle):
 * weights in one allocation, workspace planned once. */
int hn_hypernet_load(hn_hypernet **out, const char *path, eng_backend *be);
/* The same from parameters in memory (copied to the device; p may be freed
 * afterwards). */
int hn_hypernet_create(hn_hypernet **out, const hn_params *p, const char *version, eng_backend *be);
/* The same for parameters whose content id the caller computed with
 * hn_params_id just before: hashing every weight is most of a load's time,
 * and a server swapping versions in between requests does it once, off its
 * inference thread. */
int hn_hypernet_create_id(hn_hypernet **out, const hn_params *p, const char *version,
                          const char *id, eng_backend *be);
void hn_hypernet_destroy(hn_hypernet *h);

const char *hn_hypernet_id(const hn_hypernet *h); /* HN_ID_LEN hex chars */
const char *hn_hypernet_version(const hn_hypernet *h);
const hn_hypernet_config *hn_hypernet_get_config(const hn_hypernet *h);
int hn_hypernet_rank(const hn_hypernet *h);
float hn_hypernet_alpha(const hn_hypernet *h);
int hn_hypernet_text_dim(const hn_hypernet *h);
const char *hn_hypernet_text_model(const hn_hypernet *h);
/* Parameter counts as hn_params_count. */
void hn_hypernet_count(const hn_hypernet *h, size_t *trunk, size_t *heads);

/* Floats of target t's factors: *a_n = r*in, *b_n = out*r, both 0 when t is
 * not a target of this hypernetwork. Returns the sum. */
size_t hn_hypernet_factor_size(const hn_hypernet *h, int t, size_t *a_n, size_t *b_n);
/* The same for configuration cfg. */
size_t hn_factor_size(const hn_hypernet_config *cfg, int t, size_t *a_n, size_t *b_n);

/* The row order of the per-target activations every forward uses: the
 * present targets grouped by shape (all of shape 0, then 1, ...), in table
 * order within a group, so that each head is one GEMM over a block of
 * rows. order[row] = target; shape s owns rows s_off[s] .. s_off[s] +
 * s_n[s] - 1. Returns the row count. */
int hn_rows_by_shape(const hn_hypernet_config *cfg, int order[ENG_SAM_LORA_TARGETS],
                     int s_off[HN_SHAPES], int s_n[HN_SHAPES]);

/* One forward for all targets: task_emb [d] (host) -> A[t] [r, in] and
 * B[t] [out, r] (host buffers of hn_hypernet_factor_size floats, given by
 * the caller for every present target; entries of absent targets are not
 * touched and may be NULL). */
int hn_hypernet_generate(hn_hypernet *h, const float *task_emb, float *const *A, float *const *B);

/* ---- the text encoder a hypernetwork expects ---- */

/* The name a text encoder goes by in text_model: "hashed-<dim>" for the
 * fallback, the model folder's name for BERT ("all-MiniLM-L6-v2"). */
void hn_hypernet_text_name(const hn_text *t, char *out, size_t cap);
/* 0 if `t` is the encoder `h` was built for (same name and width), else
 * ENG_EINVAL saying what differs: adapters from another encoder would be
 * meaningless and would share cache keys with the right ones. */
int hn_hypernet_check_text(const hn_hypernet *h, const hn_text *t);
/* Open the encoder `h` expects: `spec` when given (hn_text_open's values:
 * "hashed", "hashed-D", a folder or a name looked up as models/NAME; it must
 * match), else the one h names (text_model: "hashed-D" or models/NAME);
 * ENG_ENOTFOUND saying how to get it, ENG_EINVAL when it does not match. */
int hn_hypernet_open_text(const hn_hypernet *h, const char *spec, eng_backend *be, hn_text **out);
/* The same two for a configuration (a trainer holds hn_params, not a
 * loaded hypernetwork). */
int hn_config_check_text(const hn_hypernet_config *cfg, const hn_text *t);
int hn_config_open_text(const hn_hypernet_config *cfg, const char *spec, eng_backend *be,
                        hn_text **out);

#endif
