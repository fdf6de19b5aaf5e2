/*
 * tests/test_cpu_ops.c: CPU backend ops against straightforward reference
 * formulas (the CUDA backend is checked against the CPU one in
 * test_cuda_ops). GELU against libm's erf. Bilinear resize: PyTorch's
 * F.interpolate(mode="bilinear", align_corners=False) written out per output pixel; the backend's
 * separable, row-cached version must give the same bits, for upscales,
 * downscales, crops, several channels and output bands. Binarize on the
 * signed zeros and the values next to its thresholds (tests/binarize_case.h).
 */
#include "harness.h"

#include <pthread.h>
#include <time.h>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/parallel.h"
#include "tests/binarize_case.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 16777216.0)) * 8.0f - 4.0f;
}

/* PyTorch's source index for output o of `out` from `in` (align_corners=False),
 * restated here on purpose: this test checks the backend's loop structure
 * against the plain formula; the rule itself is checked against PyTorch by
 * the mask goldens in test_sam. */
static void ref_index(int in, int out, int o, int *i0, int *i1, float *l)
{
    float scale = (float)in / (float)out;
    float src = scale * ((float)o + 0.5f) - 0.5f;
    if (src < 0)
        src = 0;
    int i = (int)src;
    if (i > in - 1)
        i = in - 1;
    *i0 = i;
    *i1 = i < in - 1 ? i + 1 : i;
    float lam = src - (float)i;
    *l = lam < 0 ? 0 : (lam > 1 ? 1 : lam);
}

/* Rows [y0, y0 + rows) of the OH x OW resize of x's top-left crop. */
static void ref_resize(float *y, const float *x, int C, int H, int W, int crop_h, int crop_w,
                       int OH, int OW, int y0, int rows)
{
    for (int c = 0; c < C; c++)
        for (int r = 0; r < rows; r++) {
            int a0, a1, b0, b1;
            float ly, lx;
            ref_index(crop_h, OH, y0 + r, &a0, &a1, &ly);
            for (int o = 0; o < OW; o++) {
                ref_index(crop_w, OW, o, &b0, &b1, &lx);
                const float *p = x + (size_t)c * H * W;
                float top = (1.0f - lx) * p[a0 * W + b0] + lx * p[a0 * W + b1];
                float bot = (1.0f - lx) * p[a1 * W + b0] + lx * p[a1 * W + b1];
                y[((size_t)c * rows + r) * OW + o] = (1.0f - ly) * top + ly * bot;
            }
        }
}

static void test_resize_bilinear(void)
{
    eng_backend *be = NULL;
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0, "%s", eng_last_error());
    eng_ctx ctx;
    T_REQUIRE(eng_ctx_init(&ctx, be, 64 << 20) == 0, "%s", eng_last_error());
    static const struct {
        int C, H, W, crop_h, crop_w, OH, OW, y0, rows;
    } cases[] = {
        {1, 256, 256, 256, 256, 1024, 1024, 0, 1024},    /* SAM: low-res to 1024 */
        {1, 256, 256, 256, 256, 1024, 1024, 0, 684},     /* ... only the rows a crop reads */
        {1, 684, 1024, 684, 1024, 534, 800, 0, 534},     /* crop to the original, downscale */
        {1, 1024, 1024, 684, 1024, 1080, 1920, 300, 97}, /* a band of an upscale */
        {3, 7, 5, 7, 5, 13, 11, 0, 13},                  /* channels, odd sizes */
        {2, 9, 9, 4, 6, 3, 2, 1, 2},                     /* a crop downscaled below 1/2 */
        {1, 1, 1, 1, 1, 5, 3, 0, 5},                     /* one source pixel */
        {1, 6, 40, 6, 40, 1, 97, 0, 1},                  /* one output row */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int C = cases[i].C, H = cases[i].H, W = cases[i].W, rows = cases[i].rows;
        int OW = cases[i].OW;
        size_t mark = eng_ctx_mark(&ctx);
        eng_tensor x = eng_new3(&ctx, C, H, W), y = eng_new3(&ctx, C, rows, OW);
        float *hx = malloc(sizeof(float) * (size_t)C * H * W);
        float *want = malloc(sizeof(float) * (size_t)C * rows * OW);
        float *got = malloc(sizeof(float) * (size_t)C * rows * OW);
        for (size_t k = 0; k < (size_t)C * H * W; k++)
            hx[k] = frand();
        eng_backend_upload(be, x.data, hx, (size_t)C * H * W);
        eng_resize_bilinear(&ctx, &y, &x, cases[i].crop_h, cases[i].crop_w, cases[i].OH,
                            cases[i].y0);
        T_CHECK(eng_ctx_status(&ctx) == 0, "case %zu: %s", i, eng_last_error());
        eng_backend_download(be, got, y.data, (size_t)C * rows * OW);
        ref_resize(want, hx, C, H, W, cases[i].crop_h, cases[i].crop_w, cases[i].OH, OW,
                   cases[i].y0, rows);
        size_t bad = 0, first = 0;
        for (size_t k = 0; k < (size_t)C * rows * OW; k++)
            if (memcmp(&got[k], &want[k], sizeof(float)) != 0 && !bad++)
                first = k;
        T_CHECK(bad == 0, "case %zu: %zu values differ from the reference (first at %zu: %g vs %g)",
                i, bad, first, got[first], want[first]);
        free(hx), free(want), free(got);
        eng_ctx_release(&ctx, mark);
    }
    eng_ctx_free(&ctx);
    eng_backend_destroy(be);
}

/* GELU (exact, erf form) to within 1e-6 of libm's erf over [-12, 12] and
 * at the edges, whichever build of the loop (SSE or AVX2) this CPU runs;
 * in place and out of place give the same bits. */
static void test_gelu(void)
{
    eng_backend *be = NULL;
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0, "%s", eng_last_error());
    eng_ctx ctx;
    T_REQUIRE(eng_ctx_init(&ctx, be, 1 << 20) == 0, "%s", eng_last_error());
    enum { N = 24011 };
    eng_tensor x = eng_new1(&ctx, N), y = eng_new1(&ctx, N);
    float *h = malloc(N * sizeof(float)), *g = malloc(N * sizeof(float));
    float *g2 = malloc(N * sizeof(float));
    for (int i = 0; i < N - 5; i++)
        h[i] = -12.0f + 24.0f * (float)i / (float)(N - 6);
    const float edge[5] = {0.0f, -0.0f, 1e-30f, -87.5f, 3e4f};
    memcpy(h + N - 5, edge, sizeof edge);
    eng_backend_upload(be, x.data, h, N);
    eng_activate(&ctx, &y, &x, ENG_ACT_GELU);
    eng_backend_download(be, g, y.data, N);
    eng_activate(&ctx, &x, &x, ENG_ACT_GELU);
    eng_backend_download(be, g2, x.data, N);
    double worst = 0;
    int at = 0;
    for (int i = 0; i < N; i++) {
        double want = 0.5 * h[i] * (1.0 + erf(h[i] / sqrt(2.0)));
        double d = fabs((double)g[i] - want);
        if (!(d <= worst)) {
            worst = d;
            at = i;
        }
    }
    printf("  GELU max |diff| from libm erf: %.3g at x = %g\n", worst, h[at]);
    T_CHECK(worst <= 1e-6, "GELU off by %g at x = %g", worst, h[at]);
    T_CHECK(memcmp(g, g2, N * sizeof(float)) == 0, "in place differs from out of place");
    free(h), free(g), free(g2);
    eng_ctx_free(&ctx);
    eng_backend_destroy(be);
}

static void test_binarize(void)
{
    eng_backend *be = NULL;
    char why[256];
    T_REQUIRE(eng_backend_cpu_create(&be, 1) == 0, "%s", eng_last_error());
    T_CHECK(t_binarize_case(be, nextafterf(1.0f, 2.0f), why, sizeof why) == 0, "cpu: %s", why);
    eng_backend_destroy(be);
}

/* The pool: every item of every job is handled exactly once, by a worker
 * index in range, whether the workers are spinning (jobs back to back) or
 * asleep (a pause longer than the spin, or no spin at all), and with jobs
 * from two threads at once (they are serialised). */
typedef struct {
    int *hits; /* [n] */
    int bad_worker;
} pool_job;

static void pool_range(void *arg, int64_t i0, int64_t i1)
{
    pool_job *j = arg;
    for (int64_t i = i0; i < i1; i++)
        __atomic_fetch_add(&j->hits[i], 1, __ATOMIC_RELAXED);
}

static void pool_task(void *arg, int64_t i0, int64_t i1, int worker)
{
    pool_job *j = arg;
    if (worker < 0 || worker >= eng_parallel_threads())
        __atomic_store_n(&j->bad_worker, 1, __ATOMIC_RELAXED);
    pool_range(arg, i0, i1);
}

/* Contract: runs `rounds` jobs of n items, sleeping pause_us between
 * them; returns the number of items not hit exactly once per job. */
static int pool_rounds(int rounds, int n, int pause_us, int *bad_worker)
{
    int *hits = calloc((size_t)n, sizeof *hits), wrong = 0;
    pool_job j = {hits, 0};
    for (int r = 0; r < rounds; r++) {
        if (r % 2)
            eng_parallel_for(n, 1, pool_range, &j);
        else
            eng_parallel_run(n, pool_task, &j);
        if (pause_us)
            nanosleep(&(struct timespec){0, pause_us * 1000L}, NULL);
    }
    for (int i = 0; i < n; i++)
        wrong += hits[i] != rounds;
    *bad_worker |= j.bad_worker;
    free(hits);
    return wrong;
}

static void *pool_thread(void *arg)
{
    int *wrong = arg, bad = 0;
    *wrong = pool_rounds(2000, 97, 0, &bad) + bad;
    return NULL;
}

static void test_parallel_pool(void)
{
    int bad = 0;
    eng_backend *be = NULL;
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0, "%s", eng_last_error());
    T_CHECK(pool_rounds(5000, 1000, 0, &bad) == 0, "back to back: items missed or repeated");
    /* 5 ms pauses: past the spin, so every job wakes sleeping workers */
    T_CHECK(pool_rounds(20, 1000, 5000, &bad) == 0, "after pauses: items missed or repeated");
    T_CHECK(pool_rounds(200, 3, 0, &bad) == 0, "fewer items than workers");
    /* no spinning at all: every job wakes sleeping workers */
    eng_cpu_set_spin_us(0);
    T_CHECK(pool_rounds(2000, 1000, 0, &bad) == 0, "without spinning: items missed or repeated");
    eng_cpu_set_spin_us(ENG_CPU_SPIN_US_DEFAULT);
    pthread_t th;
    int wrong_th = -1;
    T_REQUIRE(pthread_create(&th, NULL, pool_thread, &wrong_th) == 0, "thread");
    int wrong_main = pool_rounds(2000, 89, 0, &bad);
    pthread_join(th, NULL);
    T_CHECK(wrong_main == 0 && wrong_th == 0, "two callers at once: %d and %d items wrong",
            wrong_main, wrong_th);
    T_CHECK(!bad, "a worker index out of range");
    eng_backend_destroy(be);
}

int main(void)
{
    T_RUN(test_resize_bilinear);
    T_RUN(test_gelu);
    T_RUN(test_binarize);
    T_RUN(test_parallel_pool);
    return t_summary("test_cpu_ops");
}
