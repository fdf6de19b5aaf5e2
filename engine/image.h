/*
 * engine/image.h: image decode (JPEG via libjpeg-turbo, PNG via libpng) to
 * 8-bit RGB exactly as Pillow's Image.convert("RGB") gives it, Pillow's
 * antialiased bilinear resize, SAM's preprocessing, and PNG encoding.
 */
#ifndef TASAM_ENGINE_IMAGE_H
#define TASAM_ENGINE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

/* An 8-bit RGB image, row-major, h rows of w*3 bytes. Owns `rgb`. */
typedef struct eng_image {
    int w, h;
    uint8_t *rgb;
} eng_image;

/* Default decompression-bomb limit (pixels). Callers pass their own. */
#define ENG_IMAGE_DEFAULT_MAX_PIXELS (64LL * 1024 * 1024)

/* Decode a JPEG or PNG held in memory. Format by magic bytes; anything else
 * is ENG_EUNSUP. More than `max_pixels` (w*h, checked from the header before
 * any pixel buffer is allocated) is ENG_ELIMIT. Truncated or corrupt data is
 * ENG_EFORMAT. On failure `out` is zeroed. */
int eng_image_decode(const void *buf, size_t len, int64_t max_pixels, eng_image *out);

/* Read a file and decode it; messages name the file. */
int eng_image_load(const char *path, int64_t max_pixels, eng_image *out);

/* Free the pixels; accepts a zeroed or NULL image. */
void eng_image_free(eng_image *img);

/* SAM's ResizeLongestSide.get_preprocess_shape: scale so the long side is
 * `target`, each side rounded with int(x + 0.5). */
void eng_resize_shape(int w, int h, int target, int *out_w, int *out_h);

/* 0 when a w x h image keeps both sides >= 1 pixel at eng_resize_shape's
 * size for `target`, i.e. when its long side is at most 2 * target times
 * its short side; otherwise ENG_EINVAL with a message naming that limit
 * (SAM's own resize would give a zero side and fail later). */
int eng_resize_check(int w, int h, int target);

/* Pillow's Image.resize(..., BILINEAR) (antialiased: the filter support
 * widens with the downscale factor), on 3-channel u8 images, with Pillow's
 * fixed-point rounding. dst holds dh*dw*3 bytes. */
int eng_resize_bilinear_aa(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh);

/* SAM preprocessing of an already resized image (rw, rh <= 1024):
 * (x - mean) / std per channel (mean 123.675,116.28,103.53; std
 * 58.395,57.12,57.375) and zero padding bottom/right. out: [3,1024,1024]
 * f32, channel-major. */
void eng_sam_normalize_pad(const uint8_t *resized, int rw, int rh, float *out);

/* PNG encoding to a malloc'd buffer: `channels` 1 (grey), 3 (RGB) or 4
 * (RGBA), 8-bit, row-major. */
int eng_png_encode(const uint8_t *pix, int w, int h, int channels, uint8_t **out, size_t *out_len);

/* Same, written to a file. */
int eng_png_write(const char *path, const uint8_t *pix, int w, int h, int channels);

#endif
