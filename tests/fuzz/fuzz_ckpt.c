/*
 * tests/fuzz/fuzz_ckpt.c: libFuzzer target for the checkpoint readers.
 * Any input must open or fail cleanly; an opened checkpoint must convert
 * every float tensor to f32 without reading outside the input.
 */
#include <stdint.h>
#include <stdlib.h>

#include "engine/ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_ckpt *c = NULL;
    if (eng_ckpt_open_mem(&c, data, size, "fuzz") != 0)
        return 0;
    /* Views may legally repeat elements (stride 0), so numel is not bounded
     * by the input; cap the output buffer instead of trusting it. */
    const int64_t max_numel = (int64_t)(size < 4096 ? 4096 : size) * 4;
    for (size_t i = 0; i < eng_ckpt_count(c); i++) {
        const eng_ckpt_tensor *t = eng_ckpt_at(c, i);
        if (t->numel > max_numel)
            continue;
        if (t->dtype != ENG_F32 && t->dtype != ENG_F16 && t->dtype != ENG_BF16 &&
            t->dtype != ENG_F64)
            continue;
        float *dst = malloc(((size_t)t->numel + 1) * sizeof *dst);
        if (!dst)
            break;
        eng_ckpt_read_f32(c, t, dst);
        free(dst);
    }
    eng_ckpt_close(c);
    return 0;
}
