/*
 * server/everything.h: segment everything in the API: the `everything`
 * member of POST /v1/segment (the official SamAutomaticMaskGenerator's
 * parameters, engine/amg.h), the daemon's defaults for it
 * (`everything-defaults`), the worker's run with its deadline, and the JSON
 * of the masks it finds (shared with `tasam segment --everything`).
 *
 * A request is in everything mode when it carries `"everything": true` or
 * an object of parameters, or when it carries a task and no prompt at all
 * (then every matching object is wanted: the generator runs under the
 * task's adapter and its predicted-IoU filter keeps what the adapted IoU
 * head scores high). `"everything": false` turns that off.
 */
#ifndef TASAM_SERVER_EVERYTHING_H
#define TASAM_SERVER_EVERYTHING_H

#include <stddef.h>

#include <jansson.h>

#include "engine/amg.h"
#include "server/request.h"

/* Parameters of one everything-mode request, grids included. */
typedef struct srv_everything {
    eng_amg_params p;                                /* p.grids points into grids */
    eng_amg_grid grids[ENG_AMG_MAX_CROP_LAYERS + 1]; /* explicit point grids, if any */
    double *xy;                                      /* every grid point (malloc'd) */
} srv_everything;

/*
 * Parse the `everything` member: true (the defaults), or an object whose
 * members override `defaults` (the reference's names: points_per_side,
 * points_per_batch, pred_iou_thresh, stability_score_thresh,
 * stability_score_offset, box_nms_thresh, crop_n_layers, crop_nms_thresh,
 * crop_overlap_ratio, crop_n_points_downscale_factor, min_mask_region_area,
 * point_grids). Returns 0, or -1 with *e a 400 naming the field
 * ("everything.points_per_side"). `field` prefixes the names ("everything",
 * or the config option's name). out is valid (and freed by
 * srv_everything_free) either way.
 */
int srv_everything_parse(const json_t *v, const srv_everything *defaults, const char *field,
                         srv_everything *out, srv_error *e);

/* The daemon's defaults from the `everything-defaults` option's text (a
 * JSON object as above; "" or "{}" for the reference's own). 0, or -1 with
 * *e naming what is wrong. */
int srv_everything_defaults(const char *text, srv_everything *out, srv_error *e);

/* A deep copy (grids included). 0 or -1 (out of memory). */
int srv_everything_copy(srv_everything *dst, const srv_everything *src);

void srv_everything_free(srv_everything *x);

/* The parameters as JSON (point_grids as the number of points per grid). */
json_t *srv_everything_params_json(const eng_amg_params *p);

/* One mask of the generator as the API and the CLI write it: `rle` (COCO
 * compressed), `png` (base64) or `polygons` as fmt says, and bbox (the
 * generator's XYWH: x1 - x0 with x1 the last pixel), area, predicted_iou,
 * stability_score, point_coords [[x, y]], crop_box (XYWH). NULL when out of
 * memory or an encoder fails. */
json_t *srv_everything_mask_json(const eng_amg_mask *m, srv_output fmt);

/* Add one mask's encoding to its JSON object o (prompt masks and everything
 * masks alike): "rle" (COCO compressed, from `rle`), or "png" (base64) /
 * "polygons" from the row-major 0/1 `mask` (only read for those; rle->h x
 * rle->w pixels). 0, or -1 when out of memory or an encoder fails. */
int srv_mask_json_encode(json_t *o, const uint8_t *mask, const eng_rle *rle, srv_output fmt);

#endif
