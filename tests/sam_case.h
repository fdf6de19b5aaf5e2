/*
 * tests/sam_case.h: a fixture prompt case (golden_tiny.safetensors
 * "CASE.point_coords", ".point_labels", ".box", ".boxes", ".mask_input") as
 * eng_sam_prompt structs, and the decoder-group check, for the CPU and CUDA
 * golden tests.
 */
#ifndef TASAM_TESTS_SAM_CASE_H
#define TASAM_TESTS_SAM_CASE_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ckpt.h"
#include "engine/sam.h"

#define SAM_CASE_MAX_PROMPTS 8
#define SAM_CASE_MAX_POINTS  16

typedef struct sam_case {
    float *pts, *box, *boxes, *mask_input; /* golden tensors (NULL when the case has none) */
    int labels[SAM_CASE_MAX_POINTS];
    eng_sam_prompt prompts[SAM_CASE_MAX_PROMPTS];
    int n_prompts;
} sam_case;

/* Golden tensor `name` as f32 (malloc'd), or NULL when g is NULL or lacks
 * it; *numel (may be NULL) its size. */
static inline float *sam_gold_f32(const eng_ckpt *g, const char *name, int64_t *numel)
{
    const eng_ckpt_tensor *t = g ? eng_ckpt_find(g, name) : NULL;
    float *b = t ? malloc((size_t)t->numel * sizeof(float)) : NULL;
    if (b && eng_ckpt_read_f32(g, t, b) != 0) {
        free(b);
        b = NULL;
    }
    if (b && numel)
        *numel = t->numel;
    return b;
}

/* `CASE.what` as f32, or NULL when absent; *numel its size. */
static inline float *sam_case_tensor(const eng_ckpt *g, const char *cname, const char *what,
                                     int64_t *numel)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", cname, what);
    return sam_gold_f32(g, key, numel);
}

/* The case's prompts: every prompt has the points and the mask input; one
 * box, or box b of a batch of boxes. 0, or -1 for a case this file cannot
 * describe (too many prompts or points). */
static inline int sam_case_load(const eng_ckpt *g, const char *cname, int n_prompts, sam_case *c)
{
    int64_t npts = 0;
    memset(c, 0, sizeof *c);
    if (n_prompts < 1 || n_prompts > SAM_CASE_MAX_PROMPTS)
        return -1;
    c->n_prompts = n_prompts;
    c->pts = sam_case_tensor(g, cname, "point_coords", &npts);
    float *lab = sam_case_tensor(g, cname, "point_labels", NULL);
    c->box = sam_case_tensor(g, cname, "box", NULL);
    c->boxes = sam_case_tensor(g, cname, "boxes", NULL);
    c->mask_input = sam_case_tensor(g, cname, "mask_input", NULL);
    int np = c->pts ? (int)(npts / 2) : 0;
    if (np > SAM_CASE_MAX_POINTS || (np && !lab)) {
        free(lab);
        return -1;
    }
    for (int i = 0; i < np; i++)
        c->labels[i] = (int)lab[i];
    free(lab);
    for (int b = 0; b < n_prompts; b++) {
        eng_sam_prompt *p = &c->prompts[b];
        p->n_points = np;
        p->points = c->pts;
        p->labels = c->labels;
        p->mask_input = c->mask_input;
        const float *bx = c->boxes ? c->boxes + 4 * b : c->box;
        if (bx) {
            p->has_box = 1;
            memcpy(p->box, bx, sizeof p->box);
        }
    }
    return 0;
}

static inline void sam_case_free(sam_case *c)
{
    free(c->pts);
    free(c->box);
    free(c->boxes);
    free(c->mask_input);
    memset(c, 0, sizeof *c);
}

/* Largest |a[i] - b[i]| over n floats (NaN counts as infinite). */
static inline double sam_case_maxdiff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m))
            m = d != d ? INFINITY : d;
    }
    return m;
}

/*
 * Decoder groups against prompt-by-prompt decoding on backend `be`: five
 * prompts of the same token count (2 points each) through a model of
 * `ckpt` that decodes up to 3 per pass and one that decodes 1 per pass.
 * Round 0: three without a mask input, then two with `mask_input` (a group
 * of 3 on layer 0's shared image side, a group of 2 on the per-prompt
 * path); round 1: all five without (groups of 3 + 2, the second reusing
 * the first's shared side). d[round] = {max |logit diff|, max |IoU diff|};
 * *distinct the smallest max |logit diff| between prompt 0 and another
 * prompt (the prompts must not all give the same masks). 0, or -1 with
 * eng_last_error() set.
 */
static inline int sam_case_groups(eng_backend *be, const char *ckpt, const float *emb,
                                  const float *mask_input, double d[2][2], double *distinct)
{
    eng_sam *one = NULL, *grp = NULL;
    eng_sam_options o1 = {.max_points = 8, .max_batch = 1, .max_decode_batch = 1};
    eng_sam_options o3 = {.max_points = 8, .max_batch = 1, .max_decode_batch = 3};
    if (eng_sam_load(&one, ckpt, be, &o1) != 0 || eng_sam_load(&grp, ckpt, be, &o3) != 0) {
        eng_sam_destroy(one);
        return -1;
    }
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    static float pts[5][4] = {{400, 293.7f, 200, 160.2f},
                              {100, 100, 700, 400},
                              {50, 500, 600, 60},
                              {300, 300, 310, 310},
                              {790, 10, 5, 520}};
    static int labels[2] = {1, 0};
    size_t per = 3 * ENG_SAM_LOWRES_FLOATS;
    float *a = malloc(5 * per * sizeof(float)), *b = malloc(5 * per * sizeof(float));
    float ia[15], ib[15];
    int rc = a && b ? 0 : -1;
    *distinct = INFINITY;
    for (int round = 0; round < 2 && rc == 0; round++) {
        eng_sam_prompt p[5];
        for (int i = 0; i < 5; i++)
            p[i] = (eng_sam_prompt){.n_points = 2,
                                    .points = pts[i],
                                    .labels = labels,
                                    .mask_input = round == 0 && i >= 3 ? mask_input : NULL};
        if (eng_sam_decode(one, emb, &info, p, 5, 1, ia, a) != 0 ||
            eng_sam_decode(grp, emb, &info, p, 5, 1, ib, b) != 0) {
            rc = -1;
            break;
        }
        d[round][0] = sam_case_maxdiff(a, b, 5 * per);
        d[round][1] = sam_case_maxdiff(ia, ib, 15);
        for (int i = 1; i < 5; i++) {
            double x = sam_case_maxdiff(b, b + i * per, per);
            if (x < *distinct)
                *distinct = x;
        }
    }
    free(a);
    free(b);
    eng_sam_destroy(grp);
    eng_sam_destroy(one);
    return rc;
}

#endif
