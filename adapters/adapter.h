/*
 * adapters/adapter.h: LoRA adapters for SAM's mask decoder generated from a
 * task in words, their id (the cache key), their file format and their
 * application to a loaded model.
 *
 * An adapter holds, for each adapted decoder layer t (engine/sam.h's target
 * table), host f32 factors A[t] [r, in] and B[t] [out, r]; the layer
 * computes x (W + (alpha/r) B A)^T + b.
 *
 * id: lower-case hex SHA-256 of  task_normalized '\0' hypernet_id  (the
 * hypernetwork's content id, hypernet.h). Every input that changes the
 * factors is in it: the same task wording (up to ad_normalize_task) under
 * the same hypernetwork weights gives the same id, another hypernetwork
 * another id. The hypernetwork fixes its text encoder
 * (hn_hypernet_check_text), so the encoder needs no part of the key.
 *
 * File (safetensors, f32): tensors "<target name>.lora_A" [r, in] and
 * "<target name>.lora_B" [out, r] for each adapted target; metadata format
 * "tasam-adapter", format_version "1", id, task, task_normalized,
 * hypernet_id, hypernet_version, rank, alpha, targets ("all" or the comma
 * list of target names), created (Unix seconds), text_model.
 *
 * Parsing treats the bytes as hostile (cache blobs, user uploads): every
 * shape is checked against the target table, values must be finite, the
 * metadata must be complete and consistent (task_normalized is the
 * normalisation of task, id matches), nothing unknown is accepted, and the
 * size is capped (AD_MAX_FILE_BYTES).
 *
 * Functions that can fail return 0 or a negative ENG_E* code with a message
 * in eng_last_error(). Adapters are immutable after creation and may be
 * read from any thread.
 */
#ifndef TASAM_ADAPTERS_ADAPTER_H
#define TASAM_ADAPTERS_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"

#define AD_TASK_MAX       1000        /* bytes of task text accepted (before normalising) */
#define AD_ID_LEN         64          /* hex characters of an adapter id */
#define AD_MAX_FILE_BYTES (16u << 20) /* largest adapter file parsed */

/* Normalise task text for keys and embedding: trim, collapse each run of
 * whitespace (ASCII and Unicode spaces) to one ASCII space, lower-case
 * ASCII letters; other characters stay as they are (no Unicode
 * normalisation). Refused with ENG_EINVAL and a message fit for an HTTP 400
 * (naming the byte offset where one applies): more than AD_TASK_MAX bytes,
 * invalid UTF-8, a NUL byte, a control character other than whitespace,
 * nothing left after trimming. out receives the NUL-terminated result;
 * cap >= AD_TASK_MAX + 1 always suffices. */
int ad_normalize_task(const char *s, size_t len, char *out, size_t cap);

/* The id an adapter for `task` (raw text, normalised here) under the
 * hypernetwork of content id `hypernet_id` gets, without generating it:
 * the cache key for lookups. id receives AD_ID_LEN hex chars + NUL. */
int ad_task_id(const char *task, size_t len, const char *hypernet_id, char id[AD_ID_LEN + 1]);
/* The same from text the caller already normalised (ad_normalize_task's
 * output), for callers that normalise once and keep the result. */
int ad_task_id_normalized(const char *norm, const char *hypernet_id, char id[AD_ID_LEN + 1]);

typedef struct ad_adapter {
    char id[AD_ID_LEN + 1]; /* see above */
    char *task;             /* as given, NUL-terminated UTF-8 */
    char *task_normalized;  /* ad_normalize_task(task) */
    char hypernet_id[HN_ID_LEN + 1];
    char hypernet_version[HN_NAME_MAX];
    char text_model[HN_NAME_MAX]; /* encoder that embedded the task */
    int64_t created;              /* Unix seconds */
    int rank;                     /* HN_MIN_RANK..HN_MAX_RANK, as hypernetworks make */
    float alpha;                  /* scale = alpha / rank */
    int n_targets;                /* adapted layers */
    unsigned char present[ENG_SAM_LORA_TARGETS];
    float *A[ENG_SAM_LORA_TARGETS]; /* [rank, in] host, NULL when absent */
    float *B[ENG_SAM_LORA_TARGETS]; /* [out, rank] host, NULL when absent */
    float *mem;                     /* owns every factor */
    size_t n_floats;
} ad_adapter;

/* Embed `task` with `text` and run the hypernetwork: a new adapter. The
 * task is normalised first (errors as ad_normalize_task) and the
 * normalised text is what gets embedded, so equal ids always mean equal
 * factors. `text` must be the encoder `h` was built for
 * (hn_hypernet_check_text). Not thread-safe for one text or h. */
int ad_adapter_generate(hn_text *text, hn_hypernet *h, const char *task, size_t len,
                        ad_adapter **out);
/* The same for a task whose normal form `norm` (ad_normalize_task(task,
 * len)) the caller already holds: it is embedded and keyed as given. */
int ad_adapter_generate_normalized(hn_text *text, hn_hypernet *h, const char *task, size_t len,
                                   const char *norm, ad_adapter **out);
void ad_adapter_destroy(ad_adapter *a);

const char *ad_adapter_id(const ad_adapter *a);
/* alpha / rank */
float ad_adapter_scale(const ad_adapter *a);
/* Host bytes of the factors (what an unmerged engine adapter uploads, in f32). */
size_t ad_adapter_bytes(const ad_adapter *a);

/* Serialise to a safetensors buffer (malloc'd; the caller frees it): what
 * GET /v1/adapters/{id}/weights returns and the cache stores. */
int ad_adapter_serialize(const ad_adapter *a, uint8_t **buf, size_t *len);
/* Parse and validate such bytes (see the top); `label` names the source in
 * messages. The buffer is not kept. */
int ad_adapter_parse(ad_adapter **out, const void *buf, size_t len, const char *label);

/* File versions of the two above (the write is atomic). */
int ad_adapter_save(const ad_adapter *a, const char *path);
int ad_adapter_load(ad_adapter **out, const char *path);

/* The engine adapter for model m (eng_sam_lora_create with scale
 * alpha/rank); merged as there. Allocates device memory. */
int ad_adapter_to_lora(const ad_adapter *a, eng_sam *m, int merged, eng_sam_lora **out);

#endif
