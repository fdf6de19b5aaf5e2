/*
 * train/rng.h: the seedable random generator of the trainer (synthetic data,
 * prompt sampling, shuffling).
 *
 * xoshiro256** seeded through splitmix64: fast, 256 bits of state, and the
 * same sequence on every platform (integer arithmetic only; the double and
 * normal draws use IEEE operations and libm's log/cos/sqrt, so they repeat on
 * one libm). A stream number splits one seed into independent sequences,
 * e.g. one per image, so a dataset's image i does not depend on how many
 * images come before it.
 */
#ifndef TASAM_TRAIN_RNG_H
#define TASAM_TRAIN_RNG_H

#include <stdint.h>

typedef struct tr_rng {
    uint64_t s[4]; /* xoshiro256** state; never all zero */
} tr_rng;

/* Seed from (seed, stream): distinct pairs give unrelated sequences. */
void tr_rng_seed(tr_rng *r, uint64_t seed, uint64_t stream);

/* The next 64 random bits. */
uint64_t tr_rng_u64(tr_rng *r);

/* Uniform in [0, 1) with 53 random bits. */
double tr_rng_uniform(tr_rng *r);

/* Uniform in [lo, hi). */
double tr_rng_range(tr_rng *r, double lo, double hi);

/* Uniform integer in [0, n), unbiased (n >= 1). */
uint64_t tr_rng_below(tr_rng *r, uint64_t n);

/* Standard normal (Box-Muller, one value per call). */
double tr_rng_normal(tr_rng *r);

/* Fisher-Yates shuffle of n ints. */
void tr_rng_shuffle(tr_rng *r, int *v, int n);

#endif
