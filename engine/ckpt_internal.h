/*
 * engine/ckpt_internal.h: shared state of the checkpoint readers (ckpt.c,
 * ckpt_safetensors.c, ckpt_zip.c, ckpt_pickle.c). Not a public header.
 */
#ifndef TASAM_ENGINE_CKPT_INTERNAL_H
#define TASAM_ENGINE_CKPT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ckpt.h"

/* safetensors headers above this are refused (the reference reader's limit). */
#define ENG__ST_MAX_HEADER ((uint64_t)100000000)
/* Longest tensor name or metadata string we accept, in bytes. */
#define ENG__MAX_NAME 65536

struct eng_ckpt {
    char *label;        /* path or caller label, for messages */
    const uint8_t *buf; /* whole file: the mapping, or the caller's buffer */
    size_t len;
    void *map; /* mmap base when we own a mapping, else NULL */
    size_t map_len;
    eng_ckpt_tensor *t; /* tensors in file order; names are malloc'd */
    size_t n, cap;
    size_t *order; /* indices into t sorted by name (for find) */
    char **meta;   /* 2*n_meta malloc'd strings: key, value, ... */
    size_t n_meta;
};

/* Record "label: <formatted message>" and return `code`. */
int eng__ckerr(const eng_ckpt *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Append a tensor record; takes ownership of `name` (freed on failure). */
int eng__ckpt_add(eng_ckpt *c, char *name, const eng_ckpt_tensor *t);

/* Append a metadata pair; takes ownership of both strings. */
int eng__ckpt_add_meta(eng_ckpt *c, char *key, char *val);

/* Fill t->stride with the row-major strides of t->shape and t->numel with
 * the product of the shape; ENG_ELIMIT on overflow of int64. */
int eng__ckpt_contiguous(const eng_ckpt *c, const char *name, eng_ckpt_tensor *t);

/* Checked unsigned arithmetic: 0 on success, 1 on overflow. */
static inline int eng__mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}
static inline int eng__add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

/* Little-endian loads from possibly unaligned bytes. */
static inline uint16_t eng__le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t eng__le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t eng__le64(const uint8_t *p)
{
    return (uint64_t)eng__le32(p) | ((uint64_t)eng__le32(p + 4) << 32);
}

/* Format parsers: fill c->t / c->meta from c->buf[0..len). */
int eng__st_parse(eng_ckpt *c);
int eng__pth_parse(eng_ckpt *c);

/* ---- zip central directory (ckpt_zip.c) ---- */

typedef struct eng__zip_entry {
    const char *name; /* points into the central directory, not NUL-terminated */
    size_t name_len;
    uint64_t size;  /* uncompressed */
    uint64_t csize; /* compressed */
    uint64_t lho;   /* local header offset */
    uint16_t method;
    uint16_t flags;
} eng__zip_entry;

typedef struct eng__zip {
    eng__zip_entry *e; /* sorted by name */
    size_t n;
} eng__zip;

int eng__zip_open(eng__zip *z, const eng_ckpt *c);
void eng__zip_free(eng__zip *z);
/* Entry with exactly this name, or NULL. */
const eng__zip_entry *eng__zip_find(const eng__zip *z, const char *name, size_t len);
/* Bytes of a stored entry, located through its local header and
 * bounds-checked against the file; refuses compressed or encrypted entries. */
int eng__zip_data(const eng_ckpt *c, const eng__zip_entry *e, const uint8_t **data, uint64_t *size);

#endif
