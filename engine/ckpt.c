/*
 * engine/ckpt.c: checkpoint handle, format dispatch, lookup and f32
 * conversion. The format parsers live in ckpt_safetensors.c and
 * ckpt_pickle.c (with ckpt_zip.c); see ckpt.h for the contract.
 */
#include "ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_internal.h"
#include "error.h"

int eng__ckerr(const eng_ckpt *c, int code, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return eng_error(code, "%s: %s", c && c->label ? c->label : "checkpoint", msg);
}

int eng__ckpt_add(eng_ckpt *c, char *name, const eng_ckpt_tensor *t)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        eng_ckpt_tensor *nt = realloc(c->t, cap * sizeof *nt);
        if (!nt) {
            free(name);
            return eng__ckerr(c, ENG_ENOMEM, "out of memory for %zu tensor records", cap);
        }
        c->t = nt;
        c->cap = cap;
    }
    c->t[c->n] = *t;
    c->t[c->n].name = name;
    c->n++;
    return 0;
}

int eng__ckpt_add_meta(eng_ckpt *c, char *key, char *val)
{
    char **nm = realloc(c->meta, (c->n_meta + 1) * 2 * sizeof *nm);
    if (!nm) {
        free(key);
        free(val);
        return eng__ckerr(c, ENG_ENOMEM, "out of memory for metadata");
    }
    c->meta = nm;
    nm[2 * c->n_meta] = key;
    nm[2 * c->n_meta + 1] = val;
    c->n_meta++;
    return 0;
}

int eng__ckpt_contiguous(const eng_ckpt *c, const char *name, eng_ckpt_tensor *t)
{
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return eng__ckerr(c, ENG_EFORMAT, "tensor '%s': negative dimension", name);
        if (eng__mul_u64(numel, (uint64_t)t->shape[d], &numel) || numel > INT64_MAX)
            return eng__ckerr(c, ENG_ELIMIT, "tensor '%s': shape product overflows", name);
    }
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        t->stride[d] = s;
        /* cannot overflow: every partial product divides numel (or numel is 0) */
        s *= t->shape[d] ? t->shape[d] : 1;
    }
    t->numel = (int64_t)numel;
    return 0;
}

/* qsort has no context argument in C11, so the handle being indexed goes
 * through a thread-local: opening checkpoints on several threads is safe. */
static _Thread_local const eng_ckpt *eng__sort_ctx;

static int eng__cmp_order(const void *a, const void *b)
{
    const eng_ckpt_tensor *t = eng__sort_ctx->t;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

/* Build the name index used by eng_ckpt_find and refuse duplicate names. */
static int eng__ckpt_index(eng_ckpt *c)
{
    c->order = malloc((c->n ? c->n : 1) * sizeof *c->order);
    if (!c->order)
        return eng__ckerr(c, ENG_ENOMEM, "out of memory for the tensor index");
    for (size_t i = 0; i < c->n; i++)
        c->order[i] = i;
    eng__sort_ctx = c;
    qsort(c->order, c->n, sizeof *c->order, eng__cmp_order);
    eng__sort_ctx = NULL;
    for (size_t i = 1; i < c->n; i++)
        if (strcmp(c->t[c->order[i - 1]].name, c->t[c->order[i]].name) == 0)
            return eng__ckerr(c, ENG_EFORMAT, "duplicate tensor name '%s'", c->t[c->order[i]].name);
    return 0;
}

static int eng__ckpt_parse(eng_ckpt *c)
{
    int rc;
    if (c->len >= 4 && memcmp(c->buf, "PK\x03\x04", 4) == 0)
        rc = eng__pth_parse(c);
    else
        rc = eng__st_parse(c);
    if (rc)
        return rc;
    return eng__ckpt_index(c);
}

static eng_ckpt *eng__ckpt_new(const char *label)
{
    eng_ckpt *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->label = strdup(label ? label : "(memory)");
    if (!c->label) {
        free(c);
        return NULL;
    }
    return c;
}

int eng_ckpt_open_mem(eng_ckpt **out, const void *buf, size_t len, const char *label)
{
    int rc;
    eng_ckpt *c = NULL;
    *out = NULL;
    c = eng__ckpt_new(label);
    if (!c) {
        rc = eng_error(ENG_ENOMEM, "%s: out of memory", label ? label : "(memory)");
        goto err;
    }
    c->buf = buf;
    c->len = buf ? len : 0;
    rc = eng__ckpt_parse(c);
    if (rc)
        goto err;
    *out = c;
    return 0;
err:
    eng_ckpt_close(c);
    return rc;
}

int eng_ckpt_open(eng_ckpt **out, const char *path)
{
    int rc, fd = -1;
    struct stat st;
    eng_ckpt *c = NULL;
    *out = NULL;
    c = eng__ckpt_new(path);
    if (!c) {
        rc = eng_error(ENG_ENOMEM, "%s: out of memory", path);
        goto err;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = eng__ckerr(c, errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO, "cannot open: %s",
                        strerror(errno));
        goto err;
    }
    if (fstat(fd, &st) != 0) {
        rc = eng__ckerr(c, ENG_EIO, "cannot stat: %s", strerror(errno));
        goto err;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = eng__ckerr(c, ENG_EIO, "not a regular file");
        goto err;
    }
    if (st.st_size == 0) {
        rc = eng__ckerr(c, ENG_EFORMAT, "empty file");
        goto err;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        rc = eng__ckerr(c, ENG_ELIMIT, "file too large to map");
        goto err;
    }
    c->map_len = (size_t)st.st_size;
    c->map = mmap(NULL, c->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (c->map == MAP_FAILED) {
        c->map = NULL;
        rc = eng__ckerr(c, ENG_EIO, "cannot map %zu bytes: %s", c->map_len, strerror(errno));
        goto err;
    }
    close(fd);
    fd = -1;
    c->buf = c->map;
    c->len = c->map_len;
    rc = eng__ckpt_parse(c);
    if (rc)
        goto err;
    *out = c;
    return 0;
err:
    if (fd >= 0)
        close(fd);
    eng_ckpt_close(c);
    return rc;
}

void eng_ckpt_close(eng_ckpt *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free((char *)c->t[i].name);
    free(c->t);
    free(c->order);
    for (size_t i = 0; i < 2 * c->n_meta; i++)
        free(c->meta[i]);
    free(c->meta);
    if (c->map)
        munmap(c->map, c->map_len);
    free(c->label);
    free(c);
}

const char *eng_ckpt_path(const eng_ckpt *c) { return c->label; }

size_t eng_ckpt_count(const eng_ckpt *c) { return c->n; }

const eng_ckpt_tensor *eng_ckpt_at(const eng_ckpt *c, size_t i)
{
    return i < c->n ? &c->t[i] : NULL;
}

const eng_ckpt_tensor *eng_ckpt_find(const eng_ckpt *c, const char *name)
{
    size_t lo = 0, hi = c->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(c->t[c->order[mid]].name, name);
        if (r == 0)
            return &c->t[c->order[mid]];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *eng_ckpt_meta(const eng_ckpt *c, const char *key)
{
    for (size_t i = 0; i < c->n_meta; i++)
        if (strcmp(c->meta[2 * i], key) == 0)
            return c->meta[2 * i + 1];
    return NULL;
}

static int eng__is_float(eng_dtype d)
{
    return d == ENG_F32 || d == ENG_F16 || d == ENG_BF16 || d == ENG_F64;
}

/* Convert `n` elements spaced `stride` elements apart (in the source dtype)
 * starting at `src` into contiguous f32. Loads go through memcpy because
 * mapped tensor data need not be aligned. */
static void eng__cvt_row(const uint8_t *src, eng_dtype dt, int64_t stride, int64_t n, float *dst)
{
    size_t es = eng_dtype_size(dt);
    if (dt == ENG_F32 && stride == 1) {
        memcpy(dst, src, (size_t)n * 4);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        /* indexed, not stepped: a pointer one stride past the last element
         * could overflow where the element offsets themselves cannot */
        const uint8_t *q = src + (size_t)(i * stride) * es;
        switch (dt) {
        case ENG_F32:
            memcpy(&dst[i], q, 4);
            break;
        case ENG_F16: {
            uint16_t h;
            memcpy(&h, q, 2);
            dst[i] = eng_f16_to_f32(h);
            break;
        }
        case ENG_BF16: {
            uint16_t h;
            memcpy(&h, q, 2);
            dst[i] = eng_bf16_to_f32(h);
            break;
        }
        default: {
            double v;
            memcpy(&v, q, 8);
            dst[i] = (float)v;
            break;
        }
        }
    }
}

int eng_ckpt_read_f32(const eng_ckpt *c, const eng_ckpt_tensor *t, float *dst)
{
    if (!eng__is_float(t->dtype))
        return eng__ckerr(c, ENG_EUNSUP, "tensor '%s': dtype %s is not a float type", t->name,
                          eng_dtype_name(t->dtype));
    if (t->numel == 0)
        return 0;
    const uint8_t *base = t->data;
    size_t es = eng_dtype_size(t->dtype);
    /* Contiguous when every dimension of extent > 1 has its row-major stride. */
    int contiguous = 1;
    int64_t want = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != want)
            contiguous = 0;
        want *= t->shape[d];
    }
    if (contiguous || t->ndim == 0) {
        eng__cvt_row(base, t->dtype, 1, t->numel, dst);
        return 0;
    }
    /* Walk every row of the last dimension with an odometer over the others.
     * Open validated that every addressed element lies in the storage. */
    int last = t->ndim - 1;
    int64_t idx[ENG_CKPT_MAX_DIMS] = {0};
    int64_t rowlen = t->shape[last];
    int64_t rows = t->numel / rowlen;
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = 0;
        for (int d = 0; d < last; d++)
            off += idx[d] * t->stride[d];
        eng__cvt_row(base + off * (int64_t)es, t->dtype, t->stride[last], rowlen, dst + r * rowlen);
        for (int d = last - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
    }
    return 0;
}

/* "[a,b,c]" into buf. */
static void eng__fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, cap - o, "[");
    for (int d = 0; d < ndim && o < cap; d++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

int eng_ckpt_load_f32(const eng_ckpt *c, const char *name, int ndim, const int64_t *shape,
                      float *dst)
{
    const eng_ckpt_tensor *t = eng_ckpt_find(c, name);
    if (!t)
        return eng__ckerr(c, ENG_ENOTFOUND, "tensor '%s': missing", name);
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == shape[d];
    if (!same) {
        char have[200], want[200];
        eng__fmt_shape(have, sizeof have, t->ndim, t->shape);
        eng__fmt_shape(want, sizeof want, ndim, shape);
        return eng__ckerr(c, ENG_ESHAPE, "tensor '%s': shape %s expected %s", name, have, want);
    }
    return eng_ckpt_read_f32(c, t, dst);
}
