/*
 * train/embed.h: image embeddings for training and evaluation, computed
 * once per image by SAM's frozen image encoder and cached on disk, so a
 * second run (or `eval` after `run`) never runs the encoder again.
 *
 * The cache is a folder of files keyed by (image, model):
 *   CACHE/<model id>/<sha[0..2)>/<sha>.safetensors
 * where <model id> is eng_sam_model_id() (a hash of the weights) and <sha>
 * the SHA-256 of the image file's bytes, so a renamed image still hits and
 * a changed one misses. Each file holds one tensor, `embedding` [256, 64,
 * 64] in f16 (f32 when a value is beyond f16's range), half of f32's 4 MiB,
 * and metadata: format "tasam-embedding", model_id, image_sha256, orig_w,
 * orig_h, input_w, input_h, encoder (the backend that computed it) and
 * checksum (FNV-1a 64 of the tensor's bytes). Files are written atomically
 * (engine/ckpt.h), so concurrent runs sharing a cache at worst compute an
 * embedding twice. A file that does not read back whole and matching (a
 * torn or damaged entry) is a miss: it is recomputed and replaced, with a
 * warning on stderr.
 *
 * The encoder may run anywhere (the GPU where present: eng_sam_open_backends);
 * the embeddings are read back as host f32 on any machine.
 */
#ifndef TASAM_TRAIN_EMBED_H
#define TASAM_TRAIN_EMBED_H

#include <signal.h>
#include <stddef.h>

#include "engine/sam.h"
#include "train/coco.h"

typedef struct tr_embed tr_embed;

/* What tr_embed_fill reports after each batch of images. */
typedef void (*tr_embed_progress_fn)(void *ctx, int done, int total, double images_per_s);

/* The embeddings of dataset ds (borrowed: must outlive the handle) under
 * model id `model_id`, cached in `cache_dir` (created when missing). Reads
 * every image file once to hash it, and looks each up in the cache;
 * *missing (may be NULL) receives how many are not there. Errors name the
 * image file and its entry. */
int tr_embed_open(tr_embed **out, const tr_coco *ds, const char *cache_dir, const char *model_id,
                  int *missing);
void tr_embed_destroy(tr_embed *e);

/* Images not in the cache yet. */
int tr_embed_missing(const tr_embed *e);

/* Compute and store every missing embedding with model m (same weights as
 * model_id: checked), `batch` images per encoder call (at most the model's
 * max_batch). Stops with ENG_ECANCELED between batches once *stop is set
 * (stop may be NULL). progress may be NULL. */
int tr_embed_fill(tr_embed *e, eng_sam *m, int batch, tr_embed_progress_fn progress, void *ctx,
                  volatile sig_atomic_t *stop);

/* Image `image`'s embedding into emb [256*64*64] host f32 and its sizes
 * into info. ENG_ENOTFOUND when it is not cached (tr_embed_fill first). */
int tr_embed_get(tr_embed *e, int image, float *emb, eng_sam_imginfo *info);

/* The cache file of an image (for messages and tests). */
const char *tr_embed_path(const tr_embed *e, int image);

/* The default cache folder of a dataset folder: beside it, so the train
 * and val splits of one set share it: dirname(data_dir)/.tasam-cache
 * ("./.tasam-cache" for a bare name). Into buf; 0 or ENG_ELIMIT. */
int tr_embed_default_dir(const char *data_dir, char *buf, size_t cap);

#endif
