/*
 * server/everything.c: everything mode's parameters in JSON (the request's
 * `everything` member and the `everything-defaults` option) and the JSON of
 * its masks. See everything.h.
 */
#include "server/everything.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "engine/image.h"
#include "engine/rle.h"
#include "server/base64.h"

void srv_everything_free(srv_everything *x)
{
    if (!x)
        return;
    free(x->xy);
    memset(x, 0, sizeof *x);
}

/* Contract: x->p.grids, if any, pointing into x->grids (after a copy). */
static void rebind_grids(srv_everything *x)
{
    if (x->p.grids)
        x->p.grids = x->grids;
}

int srv_everything_copy(srv_everything *dst, const srv_everything *src)
{
    *dst = *src;
    dst->xy = NULL;
    if (!src->p.grids || !src->xy) {
        dst->p.grids = NULL;
        dst->p.n_grids = 0;
        return 0;
    }
    size_t total = 0;
    for (int g = 0; g < src->p.n_grids; g++)
        total += (size_t)src->grids[g].n;
    dst->xy = malloc(total * 2 * sizeof *dst->xy);
    if (!dst->xy)
        return -1;
    memcpy(dst->xy, src->xy, total * 2 * sizeof *dst->xy);
    size_t at = 0;
    for (int g = 0; g < src->p.n_grids; g++) {
        dst->grids[g].xy = dst->xy + 2 * at;
        at += (size_t)src->grids[g].n;
    }
    rebind_grids(dst);
    return 0;
}

static const char *jtype(const json_t *v)
{
    return json_is_object(v)    ? "an object"
           : json_is_array(v)   ? "an array"
           : json_is_string(v)  ? "a string"
           : json_is_number(v)  ? "a number"
           : json_is_boolean(v) ? "a boolean"
                                : "null";
}

/* Contract: point_grids: an array of grids, each an array of [x, y]. */
static int parse_grids(const json_t *v, const char *field, srv_everything *out, srv_error *e)
{
    char f[64];
    snprintf(f, sizeof f, "%s.point_grids", field);
    size_t ng = json_array_size(v);
    if (!json_is_array(v) || ng < 1 || ng > ENG_AMG_MAX_CROP_LAYERS + 1)
        return srv_fail(e, 400, f,
                        "%s must be an array of 1 to %d point grids (one per crop layer), each an "
                        "array of [x, y] in [0, 1]",
                        f, ENG_AMG_MAX_CROP_LAYERS + 1);
    size_t total = 0;
    for (size_t g = 0; g < ng; g++) {
        const json_t *grid = json_array_get(v, g);
        size_t n = json_array_size(grid);
        if (!json_is_array(grid) || n < 1 || n > ENG_AMG_MAX_GRID_POINTS) {
            snprintf(f, sizeof f, "%s.point_grids[%zu]", field, g);
            return srv_fail(e, 400, f, "%s must be an array of 1 to %d points [x, y]", f,
                            ENG_AMG_MAX_GRID_POINTS);
        }
        total += n;
    }
    free(out->xy);
    out->xy = malloc(total * 2 * sizeof *out->xy);
    if (!out->xy)
        return srv_fail(e, 503, "", "out of memory for the point grids; retry later");
    size_t at = 0;
    for (size_t g = 0; g < ng; g++) {
        const json_t *grid = json_array_get(v, g);
        out->grids[g].n = (int)json_array_size(grid);
        out->grids[g].xy = out->xy + 2 * at;
        for (size_t i = 0; i < json_array_size(grid); i++, at++) {
            const json_t *pt = json_array_get(grid, i);
            const json_t *x = json_array_get(pt, 0), *y = json_array_get(pt, 1);
            if (!json_is_array(pt) || json_array_size(pt) != 2 || !json_is_number(x) ||
                !json_is_number(y)) {
                snprintf(f, sizeof f, "%s.point_grids[%zu][%zu]", field, g, i);
                return srv_fail(e, 400, f, "%s must be [x, y] (two numbers in [0, 1])", f);
            }
            out->xy[2 * at] = json_number_value(x);
            out->xy[2 * at + 1] = json_number_value(y);
        }
    }
    out->p.grids = out->grids;
    out->p.n_grids = (int)ng;
    return 0;
}

int srv_everything_parse(const json_t *v, const srv_everything *defaults, const char *field,
                         srv_everything *out, srv_error *e)
{
    char f[96];
    memset(out, 0, sizeof *out);
    if (defaults) {
        if (srv_everything_copy(out, defaults) != 0)
            return srv_fail(e, 503, "", "out of memory; retry later");
    } else {
        eng_amg_defaults(&out->p);
    }
    if (v && json_is_object(v)) {
        int have_side = 0, have_grids = 0;
        const char *key;
        json_t *x;
        json_object_foreach((json_t *)v, key, x)
        {
            snprintf(f, sizeof f, "%s.%.60s", field, key);
            if (!strcmp(key, "point_grids")) {
                if (parse_grids(x, field, out, e) != 0)
                    return -1;
                have_grids = 1;
                continue;
            }
            size_t k = 0, np;
            const eng_amg_param_desc *params = eng_amg_param_table(&np);
            while (k < np && strcmp(params[k].name, key))
                k++;
            if (k == np)
                return srv_fail(e, 400, f,
                                "unknown parameter %s (everything mode takes the automatic mask "
                                "generator's: points_per_side, points_per_batch, pred_iou_thresh, "
                                "stability_score_thresh, stability_score_offset, box_nms_thresh, "
                                "crop_n_layers, crop_nms_thresh, crop_overlap_ratio, "
                                "crop_n_points_downscale_factor, min_mask_region_area, "
                                "point_grids)",
                                f);
            char *dst = (char *)&out->p + params[k].offset;
            if (params[k].is_int) {
                if (!json_is_integer(x) || json_integer_value(x) < -1000000000LL ||
                    json_integer_value(x) > 1000000000LL)
                    return srv_fail(e, 400, f, "%s must be an integer, not %s", f, jtype(x));
                int iv = (int)json_integer_value(x);
                memcpy(dst, &iv, sizeof iv);
                have_side |= !strcmp(key, "points_per_side");
            } else {
                if (!json_is_number(x) || !isfinite(json_number_value(x)))
                    return srv_fail(e, 400, f, "%s must be a number, not %s", f, jtype(x));
                double dv = json_number_value(x);
                memcpy(dst, &dv, sizeof dv);
            }
        }
        if (have_side && have_grids) {
            snprintf(f, sizeof f, "%s.point_grids", field);
            return srv_fail(e, 400, f,
                            "give points_per_side or point_grids, not both (as the reference)");
        }
        /* the request's choice of grid replaces the defaults' */
        if (have_grids) {
            out->p.points_per_side = 0;
        } else if (have_side) {
            out->p.grids = NULL;
            out->p.n_grids = 0;
        }
    } else if (v && !json_is_true(v)) {
        return srv_fail(e, 400, field,
                        "%s must be true or an object of the automatic mask generator's "
                        "parameters, not %s",
                        field, jtype(v));
    }
    char pf[64];
    if (eng_amg_check(&out->p, pf) != 0) {
        snprintf(f, sizeof f, "%s.%s", field, pf);
        return srv_fail(e, 400, f, "%s.%s", field, eng_last_error());
    }
    return 0;
}

int srv_everything_defaults(const char *text, srv_everything *out, srv_error *e)
{
    memset(out, 0, sizeof *out);
    eng_amg_defaults(&out->p);
    if (!text || !text[0])
        return 0;
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!v || !json_is_object(v)) {
        json_decref(v);
        return srv_fail(e, 400, "everything-defaults",
                        "everything-defaults must be a JSON object of the automatic mask "
                        "generator's parameters, e.g. {\"points_per_side\": 16}%s%s",
                        v ? "" : ": ", v ? "" : jerr.text);
    }
    int rc = srv_everything_parse(v, NULL, "everything-defaults", out, e);
    json_decref(v);
    return rc;
}

json_t *srv_everything_params_json(const eng_amg_params *p)
{
    json_t *o = json_object();
    size_t np;
    const eng_amg_param_desc *params = eng_amg_param_table(&np);
    for (size_t k = 0; o && k < np; k++) {
        const char *src = (const char *)p + params[k].offset;
        if (params[k].is_int) {
            int iv;
            memcpy(&iv, src, sizeof iv);
            json_object_set_new(o, params[k].name,
                                !strcmp(params[k].name, "points_per_side") && p->grids
                                    ? json_null()
                                    : json_integer(iv));
        } else {
            double dv;
            memcpy(&dv, src, sizeof dv);
            json_object_set_new(o, params[k].name, json_real(dv));
        }
    }
    if (o && p->grids) {
        json_t *g = json_array();
        for (int i = 0; i < p->n_grids; i++)
            json_array_append_new(g, json_integer(p->grids[i].n));
        json_object_set_new(o, "point_grids", g);
    }
    return o;
}

int srv_mask_json_encode(json_t *o, const uint8_t *mask, const eng_rle *rle, srv_output fmt)
{
    int w = rle->w, h = rle->h;
    if (fmt == SRV_OUT_RLE) {
        char *counts = NULL;
        if (eng_rle_to_string(rle, &counts) != 0)
            return -1;
        int rc = json_object_set_new(o, "rle",
                                     json_pack("{s:[i,i],s:s}", "size", h, w, "counts", counts));
        free(counts);
        return rc ? -1 : 0;
    }
    if (fmt == SRV_OUT_PNG) {
        uint8_t *pix = malloc((size_t)w * (size_t)h), *png = NULL;
        size_t plen = 0;
        char *b64 = NULL;
        if (pix) {
            for (size_t k = 0; k < (size_t)w * (size_t)h; k++)
                pix[k] = mask[k] ? 255 : 0;
            if (eng_png_encode(pix, w, h, 1, &png, &plen) == 0)
                b64 = srv_base64_encode(png, plen);
        }
        free(pix);
        free(png);
        if (!b64)
            return -1;
        int rc = json_object_set_new(o, "png", json_string(b64));
        free(b64);
        return rc ? -1 : 0;
    }
    eng_polygons polys = {0};
    json_t *arr = json_array();
    if (!arr || eng_mask_polygons(mask, h, w, &polys) != 0) {
        json_decref(arr);
        eng_polygons_free(&polys);
        return -1;
    }
    for (size_t k = 0; k < polys.n; k++) {
        json_t *pa = json_array();
        for (size_t v = 0; v < 2 * polys.polys[k].n; v++)
            json_array_append_new(pa, json_integer(polys.polys[k].xy[v]));
        json_array_append_new(arr, pa);
    }
    eng_polygons_free(&polys);
    return json_object_set_new(o, "polygons", arr) ? -1 : 0;
}

json_t *srv_everything_mask_json(const eng_amg_mask *m, srv_output fmt)
{
    const int *b = m->box, *c = m->crop_box;
    json_t *o = json_pack("{s:[i,i,i,i],s:I,s:f,s:f,s:[[f,f]],s:[i,i,i,i]}", "bbox", b[0], b[1],
                          b[2] - b[0], b[3] - b[1], "area", (json_int_t)eng_rle_area(&m->rle),
                          "predicted_iou", (double)m->predicted_iou, "stability_score",
                          (double)m->stability_score, "point_coords", m->point[0], m->point[1],
                          "crop_box", c[0], c[1], c[2] - c[0], c[3] - c[1]);
    if (!o)
        return NULL;
    uint8_t *mask = NULL;
    if (fmt != SRV_OUT_RLE) {
        mask = malloc((size_t)m->rle.w * (size_t)m->rle.h + 1);
        if (!mask || eng_rle_decode(&m->rle, mask) != 0) {
            free(mask);
            json_decref(o);
            return NULL;
        }
    }
    if (srv_mask_json_encode(o, mask, &m->rle, fmt) != 0) {
        json_decref(o);
        o = NULL;
    }
    free(mask);
    return o;
}
