/*
 * tests/amg_case.h: the segment-everything fixture cases
 * (../shared/fixtures/golden_amg_tiny.{json,safetensors}: the official
 * SamAutomaticMaskGenerator on sam_tiny and images/dog.jpg) and their
 * comparison, shared by the engine, CLI and HTTP tests (header-only, as
 * tests/harness.h).
 *
 * Tolerances are the fixture README's: the same mask count and order,
 * predicted_iou and stability_score within 1e-3, area within 0.1%, bbox
 * within 1 pixel, masks agreeing on >= 99.9% of pixels; point_coords and
 * crop_box are exact (they do not depend on the model).
 */
#ifndef TASAM_TESTS_AMG_CASE_H
#define TASAM_TESTS_AMG_CASE_H

#include <jansson.h>

#include "engine/amg.h"
#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/rle.h"
#include "tests/harness.h"

/* One mask as the tests compare it. */
typedef struct amg_rec {
    double bbox[4];  /* XYWH */
    double area;     /* pixels */
    double iou;      /* predicted_iou */
    double stab;     /* stability_score */
    double point[2]; /* point_coords[0] */
    double crop[4];  /* crop_box XYWH */
    eng_rle rle;     /* the mask (owned) */
} amg_rec;

static inline void amg_recs_free(amg_rec *r, int n)
{
    for (int i = 0; r && i < n; i++)
        eng_rle_free(&r[i].rle);
    free(r);
}

/* The golden cases (new reference; NULL when absent). */
static inline json_t *amg_cases_load(void)
{
    const char *p = t_fixture("golden_amg_tiny.json");
    json_error_t e;
    json_t *root = p ? json_load_file(p, 0, &e) : NULL;
    json_t *cases = json_incref(json_object_get(root, "cases"));
    json_decref(root);
    return cases;
}

/* The case's generator arguments on top of the reference's defaults. */
static inline void amg_case_params(const json_t *c, eng_amg_params *p)
{
    const json_t *a = json_object_get(c, "args");
    eng_amg_defaults(p);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)a, k, v)
    {
        double x = json_number_value(v);
        if (!strcmp(k, "points_per_side"))
            p->points_per_side = (int)x;
        else if (!strcmp(k, "points_per_batch"))
            p->points_per_batch = (int)x;
        else if (!strcmp(k, "pred_iou_thresh"))
            p->pred_iou_thresh = x;
        else if (!strcmp(k, "stability_score_thresh"))
            p->stability_score_thresh = x;
        else if (!strcmp(k, "stability_score_offset"))
            p->stability_score_offset = x;
        else if (!strcmp(k, "box_nms_thresh"))
            p->box_nms_thresh = x;
        else if (!strcmp(k, "crop_n_layers"))
            p->crop_n_layers = (int)x;
        else if (!strcmp(k, "crop_nms_thresh"))
            p->crop_nms_thresh = x;
        else if (!strcmp(k, "crop_overlap_ratio"))
            p->crop_overlap_ratio = x;
        else if (!strcmp(k, "crop_n_points_downscale_factor"))
            p->crop_n_points_downscale_factor = (int)x;
        else if (!strcmp(k, "min_mask_region_area"))
            p->min_mask_region_area = (int)x;
        else
            fprintf(stderr, "  (case argument %s not known to the test)\n", k);
    }
}

/* The engine's result as records (RLE copied). */
static inline amg_rec *amg_recs_from_result(const eng_amg_result *r)
{
    amg_rec *out = calloc(r->n + 1, sizeof *out);
    for (size_t i = 0; out && i < r->n; i++) {
        const eng_amg_mask *m = &r->masks[i];
        amg_rec *o = &out[i];
        o->bbox[0] = m->box[0];
        o->bbox[1] = m->box[1];
        o->bbox[2] = m->box[2] - m->box[0];
        o->bbox[3] = m->box[3] - m->box[1];
        o->area = (double)eng_rle_area(&m->rle);
        o->iou = m->predicted_iou;
        o->stab = m->stability_score;
        o->point[0] = m->point[0];
        o->point[1] = m->point[1];
        for (int k = 0; k < 2; k++) {
            o->crop[k] = m->crop_box[k];
            o->crop[2 + k] = m->crop_box[2 + k] - m->crop_box[k];
        }
        o->rle = m->rle;
        o->rle.counts = malloc(m->rle.n * sizeof(uint32_t) + 1);
        memcpy(o->rle.counts, m->rle.counts, m->rle.n * sizeof(uint32_t));
    }
    return out;
}

static inline int amg__num4(const json_t *a, double *out)
{
    if (json_array_size(a) != 4)
        return -1;
    for (size_t k = 0; k < 4; k++)
        out[k] = json_number_value(json_array_get(a, k));
    return 0;
}

/* Masks as the CLI and the daemon write them (JSON objects with rle, bbox,
 * area, predicted_iou, stability_score, point_coords, crop_box); *n gets
 * the count, NULL when a field is missing or malformed. */
static inline amg_rec *amg_recs_from_json(const json_t *masks, int *n)
{
    *n = (int)json_array_size(masks);
    amg_rec *out = calloc((size_t)*n + 1, sizeof *out);
    for (int i = 0; out && i < *n; i++) {
        const json_t *m = json_array_get(masks, (size_t)i);
        amg_rec *o = &out[i];
        const json_t *rle = json_object_get(m, "rle"), *pc = json_object_get(m, "point_coords");
        const char *counts = json_string_value(json_object_get(rle, "counts"));
        const json_t *size = json_object_get(rle, "size");
        int h = (int)json_integer_value(json_array_get(size, 0)),
            w = (int)json_integer_value(json_array_get(size, 1));
        if (!counts || amg__num4(json_object_get(m, "bbox"), o->bbox) ||
            amg__num4(json_object_get(m, "crop_box"), o->crop) || json_array_size(pc) != 1 ||
            json_array_size(json_array_get(pc, 0)) != 2 ||
            !json_is_number(json_object_get(m, "area")) ||
            !json_is_number(json_object_get(m, "predicted_iou")) ||
            !json_is_number(json_object_get(m, "stability_score")) ||
            eng_rle_from_string(counts, strlen(counts), h, w, &o->rle) != 0) {
            fprintf(stderr, "  mask %d: a field is missing or malformed\n", i);
            amg_recs_free(out, *n);
            return NULL;
        }
        o->area = json_number_value(json_object_get(m, "area"));
        o->iou = json_number_value(json_object_get(m, "predicted_iou"));
        o->stab = json_number_value(json_object_get(m, "stability_score"));
        o->point[0] = json_number_value(json_array_get(json_array_get(pc, 0), 0));
        o->point[1] = json_number_value(json_array_get(json_array_get(pc, 0), 1));
    }
    return out;
}

/* Compare records with golden case `c` (masks from `golden`); reports
 * through T_CHECK in the calling test and returns 1 when all agree. */
static inline int amg_case_check(const json_t *c, eng_ckpt *golden, const amg_rec *got, int n)
{
    const char *name = json_string_value(json_object_get(c, "name"));
    const json_t *want = json_object_get(c, "masks");
    int nw = (int)json_array_size(want), ok = 1;
    T_CHECK(n == nw, "%s: %d masks, the reference has %d", name, n, nw);
    if (n != nw)
        return 0;
    char tname[128];
    snprintf(tname, sizeof tname, "%s.masks_packed", name);
    const eng_ckpt_tensor *mt = golden ? eng_ckpt_find(golden, tname) : NULL;
    T_CHECK(mt || nw == 0, "%s missing from the golden file", tname);
    double worst_iou = 0, worst_stab = 0, worst_area = 0, worst_box = 0, worst_agree = 1;
    for (int i = 0; i < n; i++) {
        const json_t *w = json_array_get(want, (size_t)i);
        double bb[4], cb[4];
        amg__num4(json_object_get(w, "bbox"), bb);
        amg__num4(json_object_get(w, "crop_box"), cb);
        const json_t *pc = json_array_get(json_object_get(w, "point_coords"), 0);
        double area = json_number_value(json_object_get(w, "area"));
        double diou = fabs(got[i].iou - json_number_value(json_object_get(w, "predicted_iou")));
        double dst = fabs(got[i].stab - json_number_value(json_object_get(w, "stability_score")));
        double darea = fabs(got[i].area - area) / (area > 0 ? area : 1);
        double dbox = 0;
        for (int k = 0; k < 4; k++)
            dbox = fmax(dbox, fabs(got[i].bbox[k] - bb[k]));
        worst_iou = fmax(worst_iou, diou);
        worst_stab = fmax(worst_stab, dst);
        worst_area = fmax(worst_area, darea);
        worst_box = fmax(worst_box, dbox);
        int same_pt = got[i].point[0] == json_number_value(json_array_get(pc, 0)) &&
                      got[i].point[1] == json_number_value(json_array_get(pc, 1));
        int same_crop = 1;
        for (int k = 0; k < 4; k++)
            same_crop &= got[i].crop[k] == cb[k];
        int good =
            diou <= 1e-3 && dst <= 1e-3 && darea <= 1e-3 && dbox <= 1 && same_pt && same_crop;
        if (!good)
            fprintf(stderr,
                    "  %s mask %d: iou %.6f vs %.6f, stability %.6f vs %.6f, area %.0f vs %.0f, "
                    "bbox off by %.0f, point (%g, %g), crop %s\n",
                    name, i, got[i].iou, json_number_value(json_object_get(w, "predicted_iou")),
                    got[i].stab, json_number_value(json_object_get(w, "stability_score")),
                    got[i].area, area, dbox, got[i].point[0], got[i].point[1],
                    same_crop ? "same" : "differs");
        ok &= good;
        if (mt) {
            int h = got[i].rle.h, wd = got[i].rle.w;
            size_t px = (size_t)h * (size_t)wd, row = (px + 7) / 8;
            uint8_t *mine = malloc(px ? px : 1);
            const uint8_t *packed = (const uint8_t *)mt->data + (size_t)i * row;
            size_t same = 0;
            if (mine && (size_t)mt->numel >= (size_t)(i + 1) * row &&
                eng_rle_decode(&got[i].rle, mine) == 0) {
                for (size_t k = 0; k < px; k++)
                    same += mine[k] == ((packed[k >> 3] >> (7 - (k & 7))) & 1);
            }
            free(mine);
            double agree = px ? (double)same / (double)px : 0;
            worst_agree = fmin(worst_agree, agree);
            ok &= agree >= 0.999;
        }
    }
    printf("  %-13s %3d masks: max|diff| iou %.2g, stability %.2g, area %.2g%%, bbox %.0f px; "
           "masks agree >= %.5f\n",
           name, n, worst_iou, worst_stab, 100 * worst_area, worst_box, worst_agree);
    T_CHECK(ok, "%s: outside the fixture tolerances (see above)", name);
    return ok;
}

#endif
