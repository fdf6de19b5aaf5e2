/* engine/weights.c: declared parameters -> one device allocation. */
#include "weights.h"

#include <stdarg.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Each parameter starts 256-byte aligned inside the allocation. */
#define ENG_WALIGN 256

void eng_weights_init(eng_weights *w, eng_backend *be)
{
    memset(w, 0, sizeof *w);
    w->be = be;
}

void eng_weights_add(eng_weights *w, eng_tensor *dst, int ndim, const int64_t *shape,
                     const char *fmt, ...)
{
    if (w->status)
        return;
    if (w->n == w->cap) {
        int cap = w->cap ? w->cap * 2 : 256;
        eng_wspec *s = realloc(w->specs, (size_t)cap * sizeof *s);
        if (!s) {
            w->status = eng_error(ENG_ENOMEM, "out of memory declaring weights");
            return;
        }
        w->specs = s;
        w->cap = cap;
    }
    eng_wspec *s = &w->specs[w->n++];
    memset(s, 0, sizeof *s);
    s->dst = dst;
    s->ndim = ndim;
    memcpy(s->shape, shape, (size_t)ndim * sizeof(int64_t));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
}

int eng_weights_load(eng_weights *w, const eng_ckpt *c)
{
    if (w->status)
        return w->status;
    size_t esz = eng_dtype_size(eng_backend_dtype(w->be)), total = 0, max_numel = 0;
    for (int i = 0; i < w->n; i++) {
        int64_t n = 1;
        for (int d = 0; d < w->specs[i].ndim; d++)
            n *= w->specs[i].shape[d];
        total += ((size_t)n * esz + ENG_WALIGN - 1) & ~(size_t)(ENG_WALIGN - 1);
        if ((size_t)n > max_numel)
            max_numel = (size_t)n;
    }
    float *stage = malloc((max_numel ? max_numel : 1) * sizeof(float));
    if (!stage)
        return eng_error(ENG_ENOMEM, "out of memory staging weights");
    w->mem = eng_backend_alloc(w->be, total ? total : ENG_WALIGN);
    if (!w->mem) {
        free(stage);
        return eng_error(ENG_ENOMEM, "%s: cannot allocate %zu MiB for the weights on %s",
                         eng_ckpt_path(c), total >> 20, eng_backend_describe(w->be));
    }
    w->bytes = total;
    size_t off = 0;
    int rc = 0;
    for (int i = 0; i < w->n; i++) {
        eng_wspec *s = &w->specs[i];
        *s->dst = eng_view((uint8_t *)w->mem + off, eng_backend_dtype(w->be),
                           eng_backend_device(w->be), s->ndim, s->shape);
        int64_t n = eng_numel(s->dst);
        if ((rc = eng_ckpt_load_f32(c, s->name, s->ndim, s->shape, stage)) != 0)
            break;
        for (int64_t j = 0; j < n; j++)
            if (!isfinite(stage[j])) {
                rc = eng_error(ENG_EFORMAT, "%s: tensor '%s': element %lld is not finite",
                               eng_ckpt_path(c), s->name, (long long)j);
                break;
            }
        if (rc || (rc = eng_backend_upload(w->be, s->dst->data, stage, (size_t)n)) != 0)
            break;
        off += ((size_t)n * esz + ENG_WALIGN - 1) & ~(size_t)(ENG_WALIGN - 1);
    }
    free(stage);
    if (rc) {
        eng_backend_free(w->be, w->mem);
        w->mem = NULL;
    }
    return rc;
}

void eng_weights_free(eng_weights *w)
{
    if (w->mem)
        eng_backend_free(w->be, w->mem);
    free(w->specs);
    memset(w, 0, sizeof *w);
}
