/*
 * tests/test_hypernet.c: the hypernetwork (hypernet/hypernet.h): target
 * types and shapes, target lists, parameter counts, init -> file -> load,
 * the zero-B initialisation, a random init's determinism, the CPU forward
 * against a plain C reference, subsets of targets, hostile files, and the
 * text-encoder check.
 */
#include "harness.h"

#include <unistd.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"

#define NT ENG_SAM_LORA_TARGETS

static eng_backend *be;
static char dir[256];

static const char *tmp(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* Factor buffers for every target of h. */
typedef struct {
    float *A[NT], *B[NT];
} factors;

static void alloc_factors(const hn_hypernet *h, factors *f)
{
    for (int t = 0; t < NT; t++) {
        size_t an, bn;
        hn_hypernet_factor_size(h, t, &an, &bn);
        f->A[t] = an ? calloc(an, sizeof(float)) : NULL;
        f->B[t] = bn ? calloc(bn, sizeof(float)) : NULL;
    }
}

static void free_factors(factors *f)
{
    for (int t = 0; t < NT; t++) {
        free(f->A[t]);
        free(f->B[t]);
        f->A[t] = f->B[t] = NULL;
    }
}

static void unit_vector(float *v, int d, unsigned seed)
{
    double n = 0;
    for (int i = 0; i < d; i++) {
        seed = seed * 1103515245u + 12345u;
        v[i] = (float)((seed >> 8) & 0xffff) / 65535.0f - 0.5f;
        n += (double)v[i] * v[i];
    }
    for (int i = 0; i < d; i++)
        v[i] = (float)(v[i] / sqrt(n));
}

static hn_hypernet_config cfg_small(int dim, const char *model)
{
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    c.text_dim = dim;
    snprintf(c.text_model, sizeof c.text_model, "%s", model);
    return c;
}

static void test_types_and_shapes(void)
{
    int counts[HN_SHAPES] = {0}, tcounts[HN_TYPES] = {0};
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    for (int i = 0; i < NT; i++) {
        int s = hn_target_shape(i), o, in;
        T_REQUIRE(s >= 0 && s < HN_SHAPES, "target %d shape %d", i, s);
        hn_shape(s, &o, &in);
        T_CHECK(o == t[i].out && in == t[i].in, "target %s shape", t[i].name);
        counts[s]++;
        tcounts[hn_target_type(i)]++;
    }
    for (int s = 0; s < HN_SHAPES; s++)
        T_CHECK(counts[s] > 0, "shape %d unused", s);
    T_CHECK(tcounts[0] == 7 && tcounts[3] == 7 && tcounts[4] == 2 && tcounts[6] == 4 &&
                tcounts[11] == 1,
            "type counts");
    T_CHECK(!strcmp(hn_type_name(hn_target_type(0)), "attn.q"), "type of target 0");
    T_CHECK(!strcmp(hn_type_name(hn_target_type(46)), "iou.2"), "type of target 46");
    T_CHECK(!strcmp(hn_type_name(hn_target_type(12)), "mlp.lin1"), "type of target 12");
}

static void test_target_lists(void)
{
    unsigned char p[NT];
    char buf[8192];
    T_CHECK(hn_targets_parse("all", p) == 0, "%s", eng_last_error());
    T_CHECK(hn_targets_format(p, buf, sizeof buf) == 3 && !strcmp(buf, "all"), "%s", buf);
    T_CHECK(hn_targets_parse("all, -mlp", p) == 0, "%s", eng_last_error());
    int n = 0;
    for (int t = 0; t < NT; t++)
        n += p[t];
    T_CHECK(n == NT - 4 && !p[12] && !p[13] && !p[26] && !p[27], "all,-mlp left %d", n);
    size_t need = hn_targets_format(p, buf, sizeof buf);
    unsigned char q[NT];
    T_CHECK(need < sizeof buf && hn_targets_parse(buf, q) == 0 && !memcmp(p, q, NT),
            "canonical list round trip");
    T_CHECK(hn_targets_parse("iou,mask_decoder.transformer.layers.0.self_attn.q_proj", p) == 0 &&
                p[0] && p[44] && p[45] && p[46] && !p[1],
            "group + name");
    T_CHECK(hn_targets_parse("bogus", p) == ENG_EINVAL, "unknown name");
    T_CHECK(strstr(eng_last_error(), "bogus") != NULL, "%s", eng_last_error());
    T_CHECK(hn_targets_parse("all,-all", p) == ENG_EINVAL, "nothing left");
    T_CHECK(hn_targets_parse("", p) == ENG_EINVAL && hn_targets_parse("iou,,mlp", p) == ENG_EINVAL,
            "empty items");
}

static void test_param_counts(void)
{
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    hn_params *p = NULL;
    T_REQUIRE(hn_params_create(&p, &c) == 0, "%s", eng_last_error());
    size_t trunk, heads;
    hn_params_count(p, &trunk, &heads);
    printf("  default (d 384, H 256, r 4, 47 targets): trunk %zu, heads %zu parameters\n", trunk,
           heads);
    T_CHECK(trunk < 1000000, "trunk %zu >= 1M", trunk);
    /* W_in + b_in + LN + W_mix + b_mix + embeddings, by hand */
    size_t want = 256 * 384 + 256 + 512 + 256 * 256 + 256 + (HN_TYPES + NT) * 256;
    T_CHECK(trunk == want, "trunk %zu, expected %zu", trunk, want);
    T_CHECK(trunk + heads == p->n_floats, "counts add up");
    hn_params_destroy(p);

    c.rank = 8;
    T_REQUIRE(hn_params_create(&p, &c) == 0, "%s", eng_last_error());
    hn_params_count(p, &trunk, &heads);
    printf("  rank 8: trunk %zu, heads %zu\n", trunk, heads);
    hn_params_destroy(p);
    hn_targets_parse("all,-mlp", c.present);
    c.rank = 4;
    T_REQUIRE(hn_params_create(&p, &c) == 0, "%s", eng_last_error());
    hn_params_count(p, &trunk, &heads);
    printf("  rank 4 without the two MLPs: heads %zu\n", heads);
    T_CHECK(p->wa[hn_target_shape(12)] == NULL && p->wa[0] != NULL, "no head for unused shapes");
    hn_params_destroy(p);
}

static void test_config_check(void)
{
    hn_hypernet_config c = cfg_small(64, "hashed-64");
    T_CHECK(hn_hypernet_config_check(&c) == 0, "%s", eng_last_error());
    c.rank = 1;
    T_CHECK(hn_hypernet_config_check(&c) == ENG_EINVAL, "rank 1");
    c.rank = 9;
    T_CHECK(hn_hypernet_config_check(&c) == ENG_EINVAL, "rank 9");
    c.rank = 4;
    c.alpha = NAN;
    T_CHECK(hn_hypernet_config_check(&c) == ENG_EINVAL, "alpha NaN");
    c.alpha = 8;
    c.text_model[0] = '\0';
    T_CHECK(hn_hypernet_config_check(&c) == ENG_EINVAL, "empty text model");
    T_CHECK(hn_hypernet_init(tmp("bad.safetensors"), &c, 1, 0) == ENG_EINVAL, "init refuses");
}

/* A plain C forward of p on e, for target t: A [r, in], B [out, r]. */
static void reference(const hn_params *p, const float *e, int t, float *A, float *B)
{
    const int H = p->cfg.hidden, D = p->cfg.text_dim, R = p->cfg.rank;
    double z[4096], x[4096], h[4096], mean = 0, var = 0;
    for (int i = 0; i < H; i++) {
        double s = p->b_in[i];
        for (int k = 0; k < D; k++)
            s += (double)p->w_in[(size_t)i * D + k] * e[k];
        z[i] = 0.5 * s * (1 + erf(s / sqrt(2.0)));
        mean += z[i];
    }
    mean /= H;
    for (int i = 0; i < H; i++)
        var += (z[i] - mean) * (z[i] - mean);
    var /= H;
    for (int i = 0; i < H; i++)
        x[i] =
            (z[i] - mean) / sqrt(var + 1e-5) * p->ln_g[i] + p->ln_b[i] +
            ((double)p->e_type[(size_t)hn_target_type(t) * H + i] + p->e_layer[(size_t)t * H + i]);
    for (int i = 0; i < H; i++) {
        double s = p->b_mix[i];
        for (int k = 0; k < H; k++)
            s += (double)p->w_mix[(size_t)i * H + k] * x[k];
        h[i] = 0.5 * s * (1 + erf(s / sqrt(2.0)));
    }
    int s = hn_target_shape(t), O, I;
    hn_shape(s, &O, &I);
    for (int j = 0; j < R * I; j++) {
        double v = p->ba[s][j];
        for (int k = 0; k < H; k++)
            v += (double)p->wa[s][(size_t)j * H + k] * h[k];
        A[j] = (float)v;
    }
    for (int j = 0; j < O * R; j++) {
        double v = p->bb[s][j];
        for (int k = 0; k < H; k++)
            v += (double)p->wb[s][(size_t)j * H + k] * h[k];
        B[j] = (float)v;
    }
}

static void test_init_load_zero_b(void)
{
    T_REQUIRE(be, "no backend");
    hn_hypernet_config c = cfg_small(64, "hashed-64");
    const char *path = tmp("zero.safetensors");
    T_REQUIRE(hn_hypernet_init(path, &c, 7, 0) == 0, "%s", eng_last_error());
    hn_hypernet *h = NULL;
    T_REQUIRE(hn_hypernet_load(&h, path, be) == 0, "%s", eng_last_error());
    T_CHECK(!strcmp(hn_hypernet_version(h), "0"), "version %s", hn_hypernet_version(h));
    T_CHECK(strlen(hn_hypernet_id(h)) == HN_ID_LEN, "id %s", hn_hypernet_id(h));
    T_CHECK(hn_hypernet_rank(h) == 4 && hn_hypernet_alpha(h) == 8.0f &&
                hn_hypernet_text_dim(h) == 64 && !strcmp(hn_hypernet_text_model(h), "hashed-64"),
            "config");
    eng_ckpt *ck = NULL;
    T_REQUIRE(eng_ckpt_open(&ck, path) == 0, "%s", eng_last_error());
    T_CHECK(!strcmp(eng_ckpt_meta(ck, "format"), "tasam-hypernet") &&
                !strcmp(eng_ckpt_meta(ck, "id"), hn_hypernet_id(h)) &&
                !strcmp(eng_ckpt_meta(ck, "targets"), "all"),
            "metadata");
    eng_ckpt_close(ck);

    factors f;
    alloc_factors(h, &f);
    float e[64];
    unit_vector(e, 64, 3);
    T_REQUIRE(hn_hypernet_generate(h, e, f.A, f.B) == 0, "%s", eng_last_error());
    int b_zero = 1, a_nonzero = 1;
    for (int t = 0; t < NT; t++) {
        size_t an, bn;
        hn_hypernet_factor_size(h, t, &an, &bn);
        double asum = 0;
        for (size_t i = 0; i < bn; i++)
            b_zero &= f.B[t][i] == 0.0f;
        for (size_t i = 0; i < an; i++)
            asum += fabs(f.A[t][i]);
        a_nonzero &= asum > 0;
    }
    T_CHECK(b_zero, "B is not exactly zero");
    T_CHECK(a_nonzero, "some A is zero");

    /* Same seed, same file content, same id; another seed, another id. */
    hn_hypernet *h2 = NULL;
    T_REQUIRE(hn_hypernet_init(tmp("zero2.safetensors"), &c, 7, 0) == 0, "%s", eng_last_error());
    T_REQUIRE(hn_hypernet_load(&h2, tmp("zero2.safetensors"), be) == 0, "%s", eng_last_error());
    T_CHECK(!strcmp(hn_hypernet_id(h), hn_hypernet_id(h2)), "same seed, different id");
    hn_hypernet_destroy(h2);
    T_REQUIRE(hn_hypernet_init(tmp("zero3.safetensors"), &c, 8, 0) == 0, "%s", eng_last_error());
    T_REQUIRE(hn_hypernet_load(&h2, tmp("zero3.safetensors"), be) == 0, "%s", eng_last_error());
    T_CHECK(strcmp(hn_hypernet_id(h), hn_hypernet_id(h2)), "other seed, same id");
    hn_hypernet_destroy(h2);
    free_factors(&f);
    hn_hypernet_destroy(h);
}

static void test_random_matches_reference(void)
{
    T_REQUIRE(be, "no backend");
    hn_hypernet_config c = cfg_small(64, "hashed-64");
    c.rank = 3;
    c.alpha = 5;
    hn_params *p = NULL;
    T_REQUIRE(hn_params_create(&p, &c) == 0, "%s", eng_last_error());
    hn_params_init(p, 42, 1);
    const char *path = tmp("random.safetensors");
    char id[HN_ID_LEN + 1];
    T_REQUIRE(hn_params_write(p, path, "test-3", id) == 0, "%s", eng_last_error());
    hn_hypernet *h = NULL;
    T_REQUIRE(hn_hypernet_load(&h, path, be) == 0, "%s", eng_last_error());
    T_CHECK(!strcmp(hn_hypernet_id(h), id) && !strcmp(hn_hypernet_version(h), "test-3"),
            "id/version after load");
    hn_params *p2 = NULL;
    char ver[HN_NAME_MAX];
    T_REQUIRE(hn_params_read(&p2, path, ver) == 0, "%s", eng_last_error());
    T_CHECK(p2->n_floats == p->n_floats && !memcmp(p2->mem, p->mem, p->n_floats * sizeof(float)) &&
                !strcmp(ver, "test-3"),
            "read back differs");
    hn_params_destroy(p2);

    factors f, g;
    alloc_factors(h, &f);
    alloc_factors(h, &g);
    float e[64], e2[64];
    unit_vector(e, 64, 5);
    unit_vector(e2, 64, 6);
    T_REQUIRE(hn_hypernet_generate(h, e, f.A, f.B) == 0, "%s", eng_last_error());
    double worst = 0;
    float ra[8 * 2048], rb[2048 * 8];
    for (int t = 0; t < NT; t++) {
        size_t an, bn;
        hn_hypernet_factor_size(h, t, &an, &bn);
        reference(p, e, t, ra, rb);
        double da = t_max_abs_diff(f.A[t], ra, an, NULL), db = t_max_abs_diff(f.B[t], rb, bn, NULL);
        worst = fmax(worst, fmax(da, db));
    }
    printf("  forward vs plain C reference: max |diff| %.3g\n", worst);
    T_CHECK(worst < 1e-4, "forward differs from the reference by %g", worst);

    /* Deterministic; another embedding gives other factors. */
    T_REQUIRE(hn_hypernet_generate(h, e, g.A, g.B) == 0, "%s", eng_last_error());
    int same = 1;
    for (int t = 0; t < NT; t++) {
        size_t an, bn;
        hn_hypernet_factor_size(h, t, &an, &bn);
        same &= !memcmp(f.A[t], g.A[t], an * 4) && !memcmp(f.B[t], g.B[t], bn * 4);
    }
    T_CHECK(same, "same embedding, different factors");
    T_REQUIRE(hn_hypernet_generate(h, e2, g.A, g.B) == 0, "%s", eng_last_error());
    size_t bn;
    hn_hypernet_factor_size(h, 0, NULL, &bn);
    T_CHECK(memcmp(f.B[0], g.B[0], bn * 4) != 0, "other embedding, same B");
    float bad[64];
    memcpy(bad, e, sizeof bad);
    bad[3] = NAN;
    T_CHECK(hn_hypernet_generate(h, bad, g.A, g.B) == ENG_EINVAL, "NaN embedding");
    free_factors(&f);
    free_factors(&g);
    hn_hypernet_destroy(h);
    hn_params_destroy(p);
}

static void test_subset_targets(void)
{
    T_REQUIRE(be, "no backend");
    hn_hypernet_config c = cfg_small(64, "hashed-64");
    T_REQUIRE(hn_targets_parse("all,-mlp", c.present) == 0, "%s", eng_last_error());
    const char *path = tmp("subset.safetensors");
    T_REQUIRE(hn_hypernet_init(path, &c, 1, 1) == 0, "%s", eng_last_error());
    hn_hypernet *h = NULL;
    T_REQUIRE(hn_hypernet_load(&h, path, be) == 0, "%s", eng_last_error());
    size_t an, bn;
    T_CHECK(hn_hypernet_factor_size(h, 12, &an, &bn) == 0 && an == 0 && bn == 0, "mlp absent");
    T_CHECK(hn_hypernet_factor_size(h, 0, &an, &bn) == 4 * 256 * 2, "q_proj present");
    factors f;
    alloc_factors(h, &f);
    float e[64];
    unit_vector(e, 64, 9);
    T_CHECK(f.A[12] == NULL && hn_hypernet_generate(h, e, f.A, f.B) == 0, "%s", eng_last_error());
    struct stat st;
    T_CHECK(stat(path, &st) == 0 && st.st_size < 16 << 20, "subset file is %lld bytes",
            (long long)st.st_size);
    free_factors(&f);
    hn_hypernet_destroy(h);
}

/* hn_hypernet_create_id (the id from the caller) builds what hn_hypernet_create
 * builds; a malformed id is refused. */
static void test_create_with_id(void)
{
    T_REQUIRE(be, "no backend");
    hn_hypernet_config c = cfg_small(64, "hashed-64");
    hn_params *p = NULL;
    T_REQUIRE(hn_params_create(&p, &c) == 0, "%s", eng_last_error());
    hn_params_init(p, 5, 1);
    char id[HN_ID_LEN + 1];
    hn_params_id(p, id);
    hn_hypernet *a = NULL, *b = NULL, *x = NULL;
    T_REQUIRE(hn_hypernet_create(&a, p, "7", be) == 0, "%s", eng_last_error());
    T_REQUIRE(hn_hypernet_create_id(&b, p, "7", id, be) == 0, "%s", eng_last_error());
    T_CHECK(!strcmp(hn_hypernet_id(a), id) && !strcmp(hn_hypernet_id(b), id) &&
                !strcmp(hn_hypernet_version(b), "7"),
            "ids %s %s", hn_hypernet_id(a), hn_hypernet_id(b));
    factors fa, fb;
    alloc_factors(a, &fa);
    alloc_factors(b, &fb);
    float e[64];
    unit_vector(e, 64, 3);
    T_REQUIRE(hn_hypernet_generate(a, e, fa.A, fa.B) == 0 &&
                  hn_hypernet_generate(b, e, fb.A, fb.B) == 0,
              "%s", eng_last_error());
    int same = 1;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        size_t an, bn;
        hn_hypernet_factor_size(a, t, &an, &bn);
        if (an && (memcmp(fa.A[t], fb.A[t], an * sizeof(float)) ||
                   memcmp(fa.B[t], fb.B[t], bn * sizeof(float))))
            same = 0;
    }
    T_CHECK(same, "the two builds generate different factors");
    T_CHECK(hn_hypernet_create_id(&x, p, "7", "abc", be) == ENG_EINVAL && !x, "a short id");
    free_factors(&fa);
    free_factors(&fb);
    hn_hypernet_destroy(a);
    hn_hypernet_destroy(b);
    hn_params_destroy(p);
}

/* Truncations, a flipped byte, and hand-built files with one fault each. */
static void test_hostile_files(void)
{
    T_REQUIRE(be, "no backend");
    hn_hypernet_config c = cfg_small(32, "hashed-32");
    c.hidden = 16;
    hn_targets_parse("iou", c.present);
    hn_params *p = NULL;
    T_REQUIRE(hn_params_create(&p, &c) == 0, "%s", eng_last_error());
    hn_params_init(p, 3, 1);
    const char *good = tmp("small.safetensors");
    T_REQUIRE(hn_params_write(p, good, "1", NULL) == 0, "%s", eng_last_error());
    size_t len;
    uint8_t *buf = t_read_file(good, &len);
    T_REQUIRE(buf, "read back");
    hn_params *q = NULL;
    T_CHECK(hn_params_read_mem(&q, buf, len, "mem", NULL) == 0, "%s", eng_last_error());
    hn_params_destroy(q);
    /* every truncation fails cleanly */
    int clean = 1;
    for (size_t cut = 0; cut < len; cut += 1 + cut / 7) {
        q = NULL;
        int rc = hn_params_read_mem(&q, buf, cut, "cut", NULL);
        clean &= rc < 0 && !q;
    }
    T_CHECK(clean, "a truncated file was accepted");
    /* flip a weight byte: the id no longer matches */
    uint8_t *bad = malloc(len);
    memcpy(bad, buf, len);
    bad[len - 5] ^= 0x01;
    T_CHECK(hn_params_read_mem(&q, bad, len, "flip", NULL) == ENG_EFORMAT && !q, "flipped byte");
    T_CHECK(strstr(eng_last_error(), "does not match") != NULL, "%s", eng_last_error());
    free(bad);
    free(buf);

    /* NaN weight, metadata out of range, a missing tensor, an extra one */
    const char *mp = tmp("meta.safetensors");
    float one[16] = {1};
    float nanv[16];
    for (int i = 0; i < 16; i++)
        nanv[i] = NAN;
    struct {
        const char *what;
        const char *k, *v;
        int tensor_nan, drop, extra;
    } cases[] = {
        {"valid", NULL, NULL, 0, 0, 0}, /* the builder below is right: this one loads */
        {"rank 99", "rank", "99", 0, 0, 0},
        {"rank 0", "rank", "0", 0, 0, 0},
        {"hidden 7", "hidden", "7", 0, 0, 0},
        {"format", "format", "other", 0, 0, 0},
        {"version 2", "format_version", "2", 0, 0, 0},
        {"targets", "targets", "nope", 0, 0, 0},
        {"alpha", "alpha", "inf", 0, 0, 0},
        {"NaN", NULL, NULL, 1, 0, 0},
        {"missing", NULL, NULL, 0, 1, 0},
        {"extra", NULL, NULL, 0, 0, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *meta[] = {"format",         "tasam-hypernet",
                              "format_version", "1",
                              "version",        "1",
                              "rank",           "4",
                              "alpha",          "8",
                              "text_dim",       "32",
                              "hidden",         "16",
                              "text_model",     "hashed-32",
                              "targets",        "iou"};
        for (size_t m = 0; m < sizeof meta / sizeof meta[0]; m += 2)
            if (cases[k].k && !strcmp(meta[m], cases[k].k))
                meta[m + 1] = cases[k].v;
        /* trunk tensors + the heads of shapes [256,256] and [4,256] */
        eng_st_entry e[17];
        int n = 0;
        const char *names[] = {"trunk.in.weight", "trunk.in.bias",    "trunk.norm.weight",
                               "trunk.norm.bias", "trunk.mix.weight", "trunk.mix.bias",
                               "embed.type",      "embed.layer"};
        float *src[] = {p->w_in,  p->b_in,  p->ln_g,   p->ln_b,
                        p->w_mix, p->b_mix, p->e_type, p->e_layer};
        int64_t sh[][2] = {{16, 32}, {16, 0}, {16, 0},        {16, 0},
                           {16, 16}, {16, 0}, {HN_TYPES, 16}, {NT, 16}};
        for (int i = 0; i < 8; i++)
            e[n++] =
                (eng_st_entry){names[i], ENG_F32, sh[i][1] ? 2 : 1, {sh[i][0], sh[i][1]}, src[i]};
        int s0 = hn_target_shape(44), s1 = hn_target_shape(46);
        char hn[8][48];
        int hs[2] = {s0, s1};
        for (int j = 0; j < 2; j++) {
            int O, I;
            hn_shape(hs[j], &O, &I);
            snprintf(hn[4 * j], 48, "head.%dx%d.A.weight", O, I);
            snprintf(hn[4 * j + 1], 48, "head.%dx%d.A.bias", O, I);
            snprintf(hn[4 * j + 2], 48, "head.%dx%d.B.weight", O, I);
            snprintf(hn[4 * j + 3], 48, "head.%dx%d.B.bias", O, I);
            e[n++] = (eng_st_entry){hn[4 * j], ENG_F32, 2, {4 * I, 16}, p->wa[hs[j]]};
            e[n++] = (eng_st_entry){hn[4 * j + 1], ENG_F32, 1, {4 * I}, p->ba[hs[j]]};
            e[n++] = (eng_st_entry){hn[4 * j + 2], ENG_F32, 2, {O * 4, 16}, p->wb[hs[j]]};
            e[n++] = (eng_st_entry){hn[4 * j + 3], ENG_F32, 1, {O * 4}, p->bb[hs[j]]};
        }
        if (cases[k].tensor_nan)
            e[1].data = nanv;
        if (cases[k].drop)
            n--;
        if (cases[k].extra)
            e[n++] = (eng_st_entry){"surprise", ENG_F32, 1, {1}, one};
        T_REQUIRE(eng_safetensors_write(mp, e, (size_t)n, meta, 9) == 0, "%s", eng_last_error());
        q = NULL;
        int rc = hn_params_read(&q, mp, NULL);
        if (k == 0) {
            T_CHECK(rc == 0 && q, "valid file refused: %s", eng_last_error());
        } else {
            T_CHECK(rc < 0 && !q, "%s accepted", cases[k].what);
            printf("  %-9s -> %s\n", cases[k].what, eng_last_error());
        }
        hn_params_destroy(q);
    }
    hn_params_destroy(p);
    hn_hypernet *h = NULL;
    T_CHECK(hn_hypernet_load(&h, tmp("does-not-exist"), be) < 0 && !h, "missing file");
}

static void test_text_check(void)
{
    T_REQUIRE(be, "no backend");
    hn_hypernet_config c = cfg_small(64, "hashed-64");
    T_REQUIRE(hn_hypernet_init(tmp("hashed64.safetensors"), &c, 1, 0) == 0, "%s", eng_last_error());
    hn_hypernet *h = NULL;
    T_REQUIRE(hn_hypernet_load(&h, tmp("hashed64.safetensors"), be) == 0, "%s", eng_last_error());
    hn_text *t = NULL;
    T_CHECK(hn_hypernet_open_text(h, NULL, be, &t) == 0 && t, "%s", eng_last_error());
    char name[64];
    hn_hypernet_text_name(t, name, sizeof name);
    T_CHECK(!strcmp(name, "hashed-64"), "name %s", name);
    hn_text_destroy(t);
    T_REQUIRE(hn_text_create_hashed(&t, 384) == 0, "%s", eng_last_error());
    T_CHECK(hn_hypernet_check_text(h, t) == ENG_EINVAL && strstr(eng_last_error(), "64-d"), "%s",
            eng_last_error());
    hn_text_destroy(t);
    if (t_fixtures()) {
        /* text_tiny is 64-d too but another encoder */
        char d[4096];
        memcpy(d, t_fixture("text_tiny"), sizeof d);
        t = NULL;
        T_CHECK(hn_hypernet_open_text(h, d, be, &t) == ENG_EINVAL && !t, "BERT for hashed");
        T_CHECK(strstr(eng_last_error(), "text_tiny") != NULL, "%s", eng_last_error());
        hn_hypernet_destroy(h);
        h = NULL;
        c = cfg_small(64, "text_tiny");
        T_REQUIRE(hn_hypernet_init(tmp("tiny.safetensors"), &c, 1, 0) == 0, "%s", eng_last_error());
        T_REQUIRE(hn_hypernet_load(&h, tmp("tiny.safetensors"), be) == 0, "%s", eng_last_error());
        T_CHECK(hn_hypernet_open_text(h, d, be, &t) == 0 && t, "%s", eng_last_error());
        hn_text_destroy(t);
        t = NULL;
        T_CHECK(hn_hypernet_open_text(h, NULL, be, &t) == ENG_ENOTFOUND && !t, "no folder");
        T_CHECK(strstr(eng_last_error(), "--text-model") != NULL, "%s", eng_last_error());
    }
    hn_hypernet_destroy(h);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/tasam_test_hypernet.%d", (int)getpid());
    mkdir(dir, 0700);
    if (eng_backend_cpu_create(&be, 0))
        fprintf(stderr, "backend: %s\n", eng_last_error());
    T_RUN(test_types_and_shapes);
    T_RUN(test_target_lists);
    T_RUN(test_param_counts);
    T_RUN(test_config_check);
    T_RUN(test_init_load_zero_b);
    T_RUN(test_random_matches_reference);
    T_RUN(test_subset_targets);
    T_RUN(test_create_with_id);
    T_RUN(test_hostile_files);
    T_RUN(test_text_check);
    eng_backend_destroy(be);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return t_summary("test_hypernet");
}
