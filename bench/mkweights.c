/*
 * bench/mkweights.c: write a SAM checkpoint (safetensors, official key names)
 * of random weights for an official architecture, for benchmarks and
 * backend tests where the real checkpoints are not at hand.
 *
 *   build/bench/mkweights --arch vit_b|vit_l|vit_h --out FILE [--seed N]
 *
 * Scales keep activations O(1) through the network: linear and conv weights
 * N(0, 1/fan_in), biases N(0, 0.02^2), norm gains 1 + N(0, 0.1^2), embeddings
 * and the Fourier matrix N(0, 1), position tables N(0, 0.02^2).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/sam.h"

typedef struct {
    eng_st_entry *e;
    size_t n, cap;
    uint64_t rng;
    int failed;
} mk_state;

static double mk_uniform(uint64_t *s)
{
    /* xorshift64*, 53 random bits in (0, 1) */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return ((double)((*s * 2685821657736338717ull) >> 11) + 0.5) / 9007199254740992.0;
}

static float mk_normal(uint64_t *s)
{
    double u = mk_uniform(s), v = mk_uniform(s);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static int mk_param(void *arg, const char *name, int ndim, const int64_t *shape)
{
    mk_state *st = arg;
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 512;
        eng_st_entry *e = realloc(st->e, cap * sizeof *e);
        if (!e)
            return eng_error(ENG_ENOMEM, "out of memory");
        st->e = e;
        st->cap = cap;
    }
    int64_t numel = 1, fan_in = 1;
    for (int i = 0; i < ndim; i++)
        numel *= shape[i];
    for (int i = 1; i < ndim; i++)
        fan_in *= shape[i];
    float *data = malloc((size_t)numel * sizeof(float));
    if (!data)
        return eng_error(ENG_ENOMEM, "out of memory for %s", name);
    size_t len = strlen(name);
    int is_bias = len > 5 && strcmp(name + len - 5, ".bias") == 0;
    int is_gain = ndim == 1 && !is_bias;
    int is_table = strstr(name, "pos_embed") || strstr(name, "rel_pos");
    int is_embed = strstr(name, "point_embed") || strstr(name, "_token") ||
                   strstr(name, "mask_embed") || strstr(name, "gaussian");
    for (int64_t i = 0; i < numel; i++) {
        float r = mk_normal(&st->rng);
        if (is_bias)
            data[i] = 0.02f * r;
        else if (is_gain)
            data[i] = 1.0f + 0.1f * r;
        else if (is_table)
            data[i] = 0.02f * r;
        else if (is_embed)
            data[i] = r;
        else
            data[i] = r / sqrtf((float)fan_in);
    }
    eng_st_entry *e = &st->e[st->n++];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->dtype = ENG_F32;
    e->ndim = ndim;
    memcpy(e->shape, shape, (size_t)ndim * sizeof(int64_t));
    e->data = data;
    return e->name ? 0 : eng_error(ENG_ENOMEM, "out of memory");
}

static void usage(FILE *f)
{
    fprintf(f, "usage: mkweights --arch vit_b|vit_l|vit_h --out FILE.safetensors [--seed N]\n"
               "Writes a SAM checkpoint of random weights (official key names, f32).\n");
}

int main(int argc, char **argv)
{
    const char *arch = NULL, *out = NULL;
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--arch") && i + 1 < argc)
            arch = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "mkweights: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!arch || !out) {
        usage(stderr);
        return 2;
    }
    eng_sam_config cfg;
    if (eng_sam_config_preset(arch, &cfg)) {
        fprintf(stderr, "mkweights: %s\n", eng_last_error());
        return 2;
    }
    mk_state st = {.rng = seed * 0x9e3779b97f4a7c15ull + 1};
    int rc = eng_sam_list_params(&cfg, mk_param, &st);
    if (!rc) {
        fprintf(stderr, "mkweights: writing %zu tensors of %s to %s\n", st.n, arch, out);
        rc = eng_safetensors_write(out, st.e, st.n, NULL, 0);
    }
    for (size_t i = 0; i < st.n; i++) {
        free((void *)st.e[i].name);
        free((void *)st.e[i].data);
    }
    free(st.e);
    if (rc) {
        fprintf(stderr, "mkweights: %s\n", eng_last_error());
        return 1;
    }
    return 0;
}
