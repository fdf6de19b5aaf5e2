/*
 * engine/ckpt.h: read-only, memory-mapped checkpoints (PyTorch .pth zip
 * archives written by torch.save, and safetensors), and a safetensors writer.
 *
 * Reading never executes anything: .pth files go through a restricted
 * unpickler that accepts only the opcodes and globals a tensor state_dict
 * needs and refuses everything else by name. Every offset and size is
 * checked against the mapped file; a malformed file is an error naming the
 * file (and the tensor, where one is at fault), never an out-of-bounds read.
 */
#ifndef TASAM_ENGINE_CKPT_H
#define TASAM_ENGINE_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define ENG_CKPT_MAX_DIMS 8

/* One tensor of an open checkpoint. `data` points into the mapping and is
 * valid until eng_ckpt_close(). Strides are in elements (safetensors tensors
 * are always contiguous; .pth tensors may be views of a larger storage). */
typedef struct eng_ckpt_tensor {
    const char *name; /* official key, NUL-terminated */
    eng_dtype dtype;
    int ndim; /* 0..ENG_CKPT_MAX_DIMS */
    int64_t shape[ENG_CKPT_MAX_DIMS];
    int64_t stride[ENG_CKPT_MAX_DIMS];
    const void *data; /* first element (storage + offset) */
    int64_t numel;    /* product of shape */
} eng_ckpt_tensor;

typedef struct eng_ckpt eng_ckpt;

/* Open a checkpoint file; the format is chosen by content (zip magic ->
 * .pth, otherwise safetensors). On failure *out is NULL and the message
 * names the file. */
int eng_ckpt_open(eng_ckpt **out, const char *path);

/* Parse a checkpoint held in memory (no copy: `buf` must outlive the
 * handle). `label` names it in messages. Used by tests and fuzzers. */
int eng_ckpt_open_mem(eng_ckpt **out, const void *buf, size_t len, const char *label);

/* Release the mapping and every tensor record. Accepts NULL. */
void eng_ckpt_close(eng_ckpt *c);

const char *eng_ckpt_path(const eng_ckpt *c);
size_t eng_ckpt_count(const eng_ckpt *c);
const eng_ckpt_tensor *eng_ckpt_at(const eng_ckpt *c, size_t i);
/* NULL when absent. */
const eng_ckpt_tensor *eng_ckpt_find(const eng_ckpt *c, const char *name);

/* Copy a floating tensor (F32/F16/BF16/F64) into `dst` as contiguous
 * row-major f32, honouring strides. `dst` holds t->numel floats. */
int eng_ckpt_read_f32(const eng_ckpt *c, const eng_ckpt_tensor *t, float *dst);

/* Look up `name`, check it is floating with exactly the given shape, and
 * copy it as f32. Errors name the file and the tensor ("missing tensor",
 * "shape [a,b] expected [c,d]"). */
int eng_ckpt_load_f32(const eng_ckpt *c, const char *name, int ndim, const int64_t *shape,
                      float *dst);

/* ---- safetensors writer ---- */

typedef struct eng_st_entry {
    const char *name;
    eng_dtype dtype;
    int ndim;
    int64_t shape[ENG_CKPT_MAX_DIMS];
    const void *data; /* contiguous, little-endian, numel * dtype size bytes */
} eng_st_entry;

/* Serialise entries (and optional string metadata, `n_meta` key/value pairs
 * in `meta`: meta[2i] key, meta[2i+1] value) into one malloc'd buffer. */
int eng_safetensors_serialize(const eng_st_entry *e, size_t n, const char *const *meta,
                              size_t n_meta, uint8_t **out, size_t *out_len);

/* Same, written to `path` atomically: a temporary file in the same folder
 * (PATH.tmp.PID), fsync, rename over PATH, fsync of the folder, so a reader
 * sees the old file or the whole new one, and after a crash the rename has
 * happened or not. */
int eng_safetensors_write(const char *path, const eng_st_entry *e, size_t n,
                          const char *const *meta, size_t n_meta);

/* fsync the folder holding `path` (after a rename into it, so the new name
 * survives a crash). 0 or ENG_EIO naming the path. */
int eng_fsync_dir_of(const char *path);

/* Metadata value for `key` from a safetensors file's __metadata__, or NULL. */
const char *eng_ckpt_meta(const eng_ckpt *c, const char *key);

#endif
