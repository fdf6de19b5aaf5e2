/* train/rng.c: xoshiro256** seeded through splitmix64 (see rng.h). */
#include "train/rng.h"

#include <assert.h>
#include <math.h>

static uint64_t rng__splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void tr_rng_seed(tr_rng *r, uint64_t seed, uint64_t stream)
{
    /* Mix the stream through one splitmix step of its own so that (s, t)
     * and (s + 1, t - 1) do not collide. */
    uint64_t t = stream ^ 0x7472616e646f6d21ull; /* "trandom!" */
    uint64_t x = seed ^ rng__splitmix(&t);
    for (int i = 0; i < 4; i++)
        r->s[i] = rng__splitmix(&x);
    if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3]))
        r->s[0] = 1;
}

uint64_t tr_rng_u64(tr_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t out = rng__rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rng__rotl(s[3], 45);
    return out;
}

double tr_rng_uniform(tr_rng *r) { return (double)(tr_rng_u64(r) >> 11) * 0x1.0p-53; }

double tr_rng_range(tr_rng *r, double lo, double hi) { return lo + (hi - lo) * tr_rng_uniform(r); }

uint64_t tr_rng_below(tr_rng *r, uint64_t n)
{
    assert(n >= 1);
    /* Rejection from the top of the range: unbiased for every n. */
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = tr_rng_u64(r);
    while (x >= limit);
    return x % n;
}

double tr_rng_normal(tr_rng *r)
{
    double u = 1.0 - tr_rng_uniform(r); /* (0, 1]: log is finite */
    double v = tr_rng_uniform(r);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

void tr_rng_shuffle(tr_rng *r, int *v, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)tr_rng_below(r, (uint64_t)i + 1);
        int t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}
