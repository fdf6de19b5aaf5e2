/*
 * train/coco_internal.h: what train/coco.c shares with train/cocoeval.c
 * (the results file holds segmentations in the same forms as the ground
 * truth).
 */
#ifndef TASAM_TRAIN_COCO_INTERNAL_H
#define TASAM_TRAIN_COCO_INTERNAL_H

#include <jansson.h>

#include "engine/rle.h"

/*
 * A COCO `segmentation` (polygons, uncompressed or compressed RLE) as a mask
 * of the image's h x w. strict: polygon vertices must lie within a pixel of
 * the image (ground truth); otherwise they are clipped as pycocotools clips
 * them (results, whose boxes may reach past the border). Errors name `file`
 * and `entry`.
 */
int tr__coco_parse_segm(const char *file, const json_t *js, int h, int w, int strict, eng_rle *out,
                        const char *entry);

#endif
