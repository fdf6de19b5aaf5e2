/*
 * train/mask.h: binary masks as COCO RLE (engine/rle.h) for the trainer's
 * data and evaluation: polygons rasterised exactly as pycocotools does,
 * union, intersection and point queries on runs, without decoding to pixels.
 *
 * Every RLE here is column-major (COCO's order), h x w, counts alternating
 * zero runs and one runs starting with zeros; runs of length zero anywhere
 * are accepted (an uncompressed RLE from a file may hold them).
 */
#ifndef TASAM_TRAIN_MASK_H
#define TASAM_TRAIN_MASK_H

#include <stddef.h>
#include <stdint.h>

#include "engine/rle.h"

/* Most boundary steps one polygon may take at pycocotools' 5x upsampling
 * (about its perimeter in pixels x 5); a real annotation takes thousands. */
#define TR_POLY_MAX_STEPS (1u << 22)

/*
 * One polygon (k >= 3 vertices, xy = x0, y0, x1, y1, ... in pixels, pixel
 * (x, y) covering [x, x+1) x [y, y+1)) rasterised as pycocotools'
 * frPyObjects / rleFrPoly does: vertices scaled by 5 and rounded with
 * (int)(5 v + 0.5), the closed boundary traced at that resolution, and a
 * pixel is inside when its centre lies between an odd number of the
 * boundary's crossings of its column (even-odd rule; parts outside the
 * image are clipped). Coordinates must be finite and within
 * [-TR_POLY_MAX_COORD, TR_POLY_MAX_COORD]; a boundary longer than
 * TR_POLY_MAX_STEPS is ENG_ELIMIT. h, w >= 1 with h*w < 2^32.
 */
#define TR_POLY_MAX_COORD 1e6
int tr_rle_from_polygon(const double *xy, size_t k, int h, int w, eng_rle *out);

/* pycocotools' frBbox: the box [x, y, width, height] as a 4-vertex polygon
 * (any finite box: parts far outside the image are clamped first, which
 * leaves the raster unchanged). */
int tr_rle_from_box(const double box[4], int h, int w, eng_rle *out);

/* Union of n >= 1 RLEs of one size (pycocotools' merge with intersect 0);
 * the result has no empty runs but the leading one. */
int tr_rle_union(const eng_rle *const *r, size_t n, eng_rle *out);

/* Pixels set in both a and b (same size). */
uint64_t tr_rle_intersection(const eng_rle *a, const eng_rle *b);

/* Pixels set in either (same size). */
uint64_t tr_rle_union_area(const eng_rle *a, const eng_rle *b);

/* 1 when pixel (x, y) is set; 0 outside the mask. */
int tr_rle_at(const eng_rle *r, int x, int y);

/* Deep copy. */
int tr_rle_copy(const eng_rle *src, eng_rle *dst);

/* Set to 1 every pixel of the row-major h x w `mask` that r has set (an
 * OR: pixels already set stay set). */
void tr_rle_paint(const eng_rle *r, uint8_t *mask);

#endif
