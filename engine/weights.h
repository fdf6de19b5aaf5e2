/*
 * engine/weights.h: load a model's parameters from a checkpoint into ONE
 * backend allocation. A model declares each parameter (its eng_tensor slot,
 * official key and expected shape), then eng_weights_load() checks every
 * shape, sizes the allocation, converts to the backend's storage dtype and
 * uploads. Parameters are read one at a time through a small host staging
 * buffer, so peak host memory is one tensor, not the model.
 */
#ifndef TASAM_ENGINE_WEIGHTS_H
#define TASAM_ENGINE_WEIGHTS_H

#include "ckpt.h"
#include "ops.h"

typedef struct eng_wspec {
    eng_tensor *dst; /* slot filled with a view into the allocation */
    char name[160];  /* checkpoint key */
    int ndim;
    int64_t shape[ENG_MAX_DIMS];
} eng_wspec;

typedef struct eng_weights {
    eng_backend *be; /* borrowed */
    void *mem;       /* the one device allocation (owned) */
    size_t bytes;
    eng_wspec *specs;
    int n, cap;
    int status; /* first error while declaring (out of memory) */
} eng_weights;

void eng_weights_init(eng_weights *w, eng_backend *be);
/* Declare `dst` as checkpoint key `name` of the given shape (printf-style
 * name). */
void eng_weights_add(eng_weights *w, eng_tensor *dst, int ndim, const int64_t *shape,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Check, allocate and upload every declared tensor. */
int eng_weights_load(eng_weights *w, const eng_ckpt *c);
/* Free the allocation and the declarations. */
void eng_weights_free(eng_weights *w);

#endif
