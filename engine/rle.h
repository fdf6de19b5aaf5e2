/*
 * engine/rle.h: COCO run-length encoding of binary masks, as pycocotools
 * writes it: runs over the mask in column-major (Fortran) order, starting
 * with a run of zeros, and the compressed "counts" string (LEB128-like
 * 5-bit groups offset by 48, each count after the second delta-coded
 * against the count two before it).
 */
#ifndef TASAM_ENGINE_RLE_H
#define TASAM_ENGINE_RLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct eng_rle {
    int h, w;
    size_t n;          /* number of runs */
    uint32_t *counts;  /* malloc'd */
} eng_rle;

/* Encode a row-major h x w mask (non-zero = foreground). */
int eng_rle_encode(const uint8_t *mask, int h, int w, eng_rle *out);

/* Decode into a row-major h x w 0/1 mask. Fails if the runs do not add up
 * to exactly h*w. */
int eng_rle_decode(const eng_rle *r, uint8_t *mask);

/* The compressed counts string (malloc'd, NUL-terminated). */
int eng_rle_to_string(const eng_rle *r, char **out);

/* Parse a compressed counts string of `len` bytes for an h x w mask;
 * rejects malformed strings, negative runs and totals other than h*w. */
int eng_rle_from_string(const char *s, size_t len, int h, int w, eng_rle *out);

void eng_rle_free(eng_rle *r);

/* Foreground pixel count and [x, y, width, height] box as pycocotools'
 * area() and toBbox() give them (all zeros for an empty mask). */
uint64_t eng_rle_area(const eng_rle *r);
void eng_rle_bbox(const eng_rle *r, double bbox[4]);

#endif
