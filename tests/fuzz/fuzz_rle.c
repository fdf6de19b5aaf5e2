/*
 * tests/fuzz/fuzz_rle.c: libFuzzer target for the COCO RLE counts parser.
 *
 * Input: byte 0 and byte 1 give h and w (each mod 65, so masks stay small
 * and every size from empty up is reachable), the rest is the counts string.
 * Whatever parses must decode; re-encoding the decoded mask must give
 * counts that parse back to the same runs and mask. When the input is
 * already canonical (what an encoder writes: no empty runs but the leading
 * one, minimal groups), the re-encoded string must equal it byte for byte.
 * Non-canonical inputs that pycocotools also accepts (needless continuation
 * groups, empty runs) legitimately re-encode differently, so for them only
 * the mask, area and box must survive. Any mismatch abort()s so libFuzzer
 * reports it.
 */
#include "engine/rle.h"

#include <stdlib.h>
#include <string.h>

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const int h = data[0] % 65, w = data[1] % 65;
    const char *s = (const char *)data + 2;
    const size_t len = size - 2, area = (size_t)h * (size_t)w;

    eng_rle r, r2, r3;
    if (eng_rle_from_string(s, len, h, w, &r) != 0)
        return 0;

    uint8_t *mask = malloc(area + 1), *back = malloc(area + 1);
    fz__check(mask && back);
    fz__check(eng_rle_decode(&r, mask) == 0);
    fz__check(eng_rle_encode(mask, h, w, &r2) == 0);

    char *s1 = NULL, *s2 = NULL;
    fz__check(eng_rle_to_string(&r, &s1) == 0);
    fz__check(eng_rle_to_string(&r2, &s2) == 0);
    fz__check(eng_rle_from_string(s2, strlen(s2), h, w, &r3) == 0);
    fz__check(r3.n == r2.n && memcmp(r3.counts, r2.counts, r2.n * sizeof *r2.counts) == 0);
    fz__check(eng_rle_decode(&r3, back) == 0 && memcmp(back, mask, area) == 0);

    fz__check(eng_rle_area(&r) == eng_rle_area(&r2));
    double b1[4], b2[4];
    eng_rle_bbox(&r, b1);
    eng_rle_bbox(&r2, b2);
    fz__check(memcmp(b1, b2, sizeof b1) == 0);

    int canonical = r.n > 0 && strlen(s1) == len && memcmp(s1, s, len) == 0;
    for (size_t i = 1; i < r.n && canonical; i++)
        canonical = r.counts[i] != 0;
    if (canonical)
        fz__check(strcmp(s2, s1) == 0);

    free(s1);
    free(s2);
    free(mask);
    free(back);
    eng_rle_free(&r);
    eng_rle_free(&r2);
    eng_rle_free(&r3);
    return 0;
}
