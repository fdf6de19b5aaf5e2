/*
 * tests/sam_case.h: a fixture prompt case (golden_tiny.safetensors
 * "CASE.point_coords", ".point_labels", ".box", ".boxes", ".mask_input") as
 * eng_sam_prompt structs, for the CPU and CUDA golden tests.
 */
#ifndef TASAM_TESTS_SAM_CASE_H
#define TASAM_TESTS_SAM_CASE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ckpt.h"
#include "engine/sam.h"

#define SAM_CASE_MAX_PROMPTS 8
#define SAM_CASE_MAX_POINTS 16

typedef struct sam_case {
    float *pts, *box, *boxes, *mask_input;    /* golden tensors (NULL when the case has none) */
    int labels[SAM_CASE_MAX_POINTS];
    eng_sam_prompt prompts[SAM_CASE_MAX_PROMPTS];
    int n_prompts;
} sam_case;

/* `CASE.what` as f32, or NULL when absent; *numel its size. */
static inline float *sam_case_tensor(const eng_ckpt *g, const char *cname, const char *what,
                                     int64_t *numel)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", cname, what);
    const eng_ckpt_tensor *t = eng_ckpt_find(g, key);
    float *b = t ? malloc((size_t)t->numel * sizeof(float)) : NULL;
    if (b && eng_ckpt_read_f32(g, t, b) != 0) {
        free(b);
        b = NULL;
    }
    if (b && numel)
        *numel = t->numel;
    return b;
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

#endif
