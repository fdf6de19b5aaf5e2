/*
 * tests/binarize_case.h: one hand-computed case for a backend's binarize
 * (engine/ops.h), shared by the CPU and CUDA op tests.
 *
 * Logits {-1, -0.0, 0.0, 1e-7, 1, the next value above 1}, repeated 37
 * times (222 values: vector tails and partial warps), thresholded as SAM's
 * postprocess and stability score do: mask x > 0, counts |x > hi = 1| and
 * |x > lo = -1|. Per group of six the mask is 0 0 0 1 1 1 (both zeros are
 * "not above 0"), |x > 1| is 1 and |x > -1| is 5; a >= anywhere changes one
 * of them.
 */
#ifndef TASAM_TESTS_BINARIZE_CASE_H
#define TASAM_TESTS_BINARIZE_CASE_H

#include "engine/error.h"
#include "engine/ops.h"

#define T_BIN_REPS 37

/* Run the case on `be`; `above_one` is the smallest value above 1 its
 * storage holds (nextafterf(1, 2) in fp32, 1 + 2^-10 in fp16, 1 + 2^-7 in
 * bf16). Returns 0, or -1 with a description in why. */
static inline int t_binarize_case(eng_backend *be, float above_one, char *why, size_t cap)
{
    const float v[6] = {-1.0f, -0.0f, 0.0f, 1e-7f, 1.0f, above_one};
    const uint8_t want[6] = {0, 0, 0, 1, 1, 1};
    const int n = 6 * T_BIN_REPS;
    float x[6 * T_BIN_REPS];
    uint8_t m[6 * T_BIN_REPS];
    uint64_t counts[2] = {99, 99};
    for (int i = 0; i < n; i++)
        x[i] = v[i % 6];
    void *d = eng_backend_alloc(be, (size_t)n * sizeof(float));
    int rc = d ? eng_backend_upload(be, d, x, (size_t)n) : ENG_ENOMEM;
    if (rc == 0)
        rc = eng_backend_binarize(be, m, d, n, -1.0f, 1.0f, counts);
    eng_backend_free(be, d);
    if (rc != 0) {
        snprintf(why, cap, "binarize failed: %s", eng_last_error());
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (m[i] != want[i % 6]) {
            snprintf(why, cap, "mask[%d] = %d for logit %g, want %d", i, m[i], (double)x[i],
                     want[i % 6]);
            return -1;
        }
    if (counts[0] != 1 * T_BIN_REPS || counts[1] != 5 * T_BIN_REPS) {
        snprintf(why, cap, "|x > 1| = %llu (want %d), |x > -1| = %llu (want %d)",
                 (unsigned long long)counts[0], T_BIN_REPS, (unsigned long long)counts[1],
                 5 * T_BIN_REPS);
        return -1;
    }
    return 0;
}

#endif
