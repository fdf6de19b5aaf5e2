/* tests/fuzz/fuzz_image.c: libFuzzer target for the image decoders. Any
 * input must decode or fail cleanly (no crash, no leak, no UB); a decoded
 * image is then resized (an antialiased downscale and, for small images,
 * an upscale) to exercise the resampler on odd sizes. */
#include "engine/error.h"
#include "engine/image.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_image img;
    /* 4 Mpx keeps each run within libFuzzer's memory and time limits. */
    if (eng_image_decode(data, size, 4LL * 1024 * 1024, &img) != 0)
        return 0;
    /* Downscale by about 8 (the cost stays near the decode's own). */
    int dw = (img.w + 7) / 8, dh = (img.h + 5) / 6;
    uint8_t *dst = malloc((size_t)dw * dh * 3);
    if (dst)
        eng_resize_bilinear_aa(img.rgb, img.w, img.h, dst, dw, dh);
    free(dst);
    if (img.w <= 64 && img.h <= 64) {
        dst = malloc((size_t)(img.w + 5) * (img.h * 2) * 3);
        if (dst)
            eng_resize_bilinear_aa(img.rgb, img.w, img.h, dst, img.w + 5, img.h * 2);
        free(dst);
    }
    eng_image_free(&img);
    return 0;
}
