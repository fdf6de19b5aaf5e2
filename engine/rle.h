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
    size_t n;         /* number of runs */
    uint32_t *counts; /* malloc'd */
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

/*
 * Outer boundaries of a mask's connected components, for the API's
 * `output: "polygon"`.
 *
 * Foreground (non-zero) pixels are 8-connected. Each component yields one
 * closed polygon: its outer boundary, traced along pixel edges, so vertices
 * are pixel-corner coordinates (pixel (x, y) covers [x, x+1] x [y, y+1]).
 * Vertices are listed clockwise as seen on screen (y down), starting at the
 * top-left corner of the component's first pixel in raster order; the
 * closing edge back to the first vertex is implied, and only turning points
 * are kept (no collinear vertices). Two pixels of one component that touch
 * only at a corner make the polygon pass through that corner twice: the
 * polygon may touch itself there, but never crosses itself.
 *
 * Holes are not reported: a ring-shaped component gives only its outside
 * boundary, and a component inside a hole of another gets its own polygon.
 * Polygons come in the raster order of their first pixels.
 */
typedef struct eng_polygon {
    size_t n;    /* number of vertices */
    int32_t *xy; /* x0, y0, x1, y1, ...: 2n values, inside the owning
                  * eng_polygons' storage */
} eng_polygon;

typedef struct eng_polygons {
    size_t n;           /* number of polygons */
    eng_polygon *polys; /* malloc'd */
    int32_t *coords;    /* malloc'd; every polygon's xy points in here */
} eng_polygons;

/* Trace a row-major h x w mask (non-zero = foreground). An empty mask gives
 * n = 0. On failure *out is left empty (safe to free). */
int eng_mask_polygons(const uint8_t *mask, int h, int w, eng_polygons *out);

void eng_polygons_free(eng_polygons *p);

/*
 * 8-connected components of a row-major h x w mask's pixels equal to `fg`
 * (fg 1: the non-zero pixels; fg 0: the zero pixels, e.g. holes), found on
 * runs: each row's runs of such pixels, joined to the runs of the row above
 * that overlap them or touch them at a corner. Polygons trace them; the
 * small-region removal of automatic mask generation (engine/amg.h) sizes
 * them.
 */
typedef struct eng_mask_run {
    int32_t y, x0, x1; /* pixels x0 .. x1-1 of row y */
    uint32_t parent;   /* union-find link (see eng_mask_run_root) */
} eng_mask_run;

typedef struct eng_mask_runs {
    size_t n;        /* runs, in raster order */
    eng_mask_run *r; /* [n] (malloc'd) */
} eng_mask_runs;

/* Find the runs and join them into components. On failure *out is empty. */
int eng_mask_runs_find(const uint8_t *mask, int h, int w, int fg, eng_mask_runs *out);
/* The component of run i, named by its root: the component's first run in
 * raster order (compresses paths as it goes). */
uint32_t eng_mask_run_root(eng_mask_runs *runs, uint32_t i);
void eng_mask_runs_free(eng_mask_runs *runs);

#endif
