/*
 * tests/test_cuda_sam.c: the SAM forward through the CUDA backend against
 * the official reference's outputs in ../shared/fixtures (config `tiny`,
 * images/dog.jpg), in each storage dtype the GPU offers.
 *
 * Criteria (issue 3): the image embedding within 1e-2 relative L2 error of
 * the fp32 reference; final masks with mean IoU >= 0.99 against the
 * reference masks. fp32 storage must also meet the fixture README's fp32
 * tolerances (max |diff| 2e-3 for activations and logits, 1e-3 for IoU
 * predictions, 99.9% of mask pixels). Decoder cases start from the golden
 * embedding, as tests/test_sam.c does, so decoder error is measured alone;
 * the end-to-end test encodes dog.jpg from its JPEG bytes.
 *
 * Skips (with the reason) without fixtures or without a usable GPU.
 */
#include "harness.h"
#include "sam_case.h"

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/ops.h"
#include "engine/sam.h"

#ifdef ENG_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#define EMB_REL_L2 1e-2
#define MEAN_IOU   0.99

static eng_ckpt *golden;
static char no_gpu[1024];

static float *gold_f32(const char *name, int64_t *numel)
{
    return sam_gold_f32(golden, name, numel);
}

/* ||a - ref|| / ||ref|| and max |a - ref| over n floats. */
static double rel_l2(const float *a, const float *ref, size_t n, double *maxd)
{
    double num = 0, den = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        if (d != d)
            return INFINITY;
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > m)
            m = fabs(d);
    }
    if (maxd)
        *maxd = m;
    return sqrt(num) / (den > 0 ? sqrt(den) : 1);
}

/* Compare with a golden tensor: relative L2 (and max |diff|). */
static double vs_gold(const char *what, const float *ours, const char *gname, double *maxd)
{
    int64_t n = 0;
    float *ref = gold_f32(gname, &n);
    if (!ref) {
        printf("  golden %s missing\n", gname);
        return INFINITY;
    }
    double m = 0, r = rel_l2(ours, ref, (size_t)n, &m);
    printf("  %-30s rel L2 %.3g  max|diff| %.3g\n", what, r, m);
    if (maxd)
        *maxd = m;
    free(ref);
    return r;
}

typedef struct {
    double iou_sum; /* sum of per-mask IoU */
    int n_masks;
    double max_logit, max_iou_pred, min_agree, max_logit_rel;
} dec_stats;

/* One fixture case through decode + postprocess from the golden embedding. */
static int run_case(eng_sam *m, const char *cname, int multimask, int n_prompts, dec_stats *st)
{
    char key[128];
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    float *emb = gold_f32("image_embedding", NULL);
    sam_case sc;
    if (!golden || sam_case_load(golden, cname, n_prompts, &sc) != 0) {
        fprintf(stderr, "  case %s: cannot read its prompts\n", cname);
        free(emb);
        return 0;
    }
    eng_sam_prompt *pr = sc.prompts;
    int C = multimask ? 3 : 1, ok = 1;
    size_t nm = (size_t)n_prompts * C, px = 800 * 534;
    float *iou = malloc(nm * sizeof(float));
    float *lo = malloc(nm * ENG_SAM_LOWRES_FLOATS * sizeof(float));
    uint8_t *masks = malloc(nm * px);
    int rc = eng_sam_decode(m, emb, &info, pr, n_prompts, multimask, iou, lo);
    if (!rc)
        rc = eng_sam_postprocess(m, lo, (int)nm, &info, masks, NULL);
    if (rc) {
        printf("  %s: %s\n", cname, eng_last_error());
        ok = 0;
        goto out;
    }
    /* decode + postprocess in one call (the logits never leave the GPU):
     * the same masks, bit for bit (the fp16/bf16 -> f32 -> fp16/bf16 round
     * trip of the two-call path is exact) */
    uint8_t *one = malloc(nm * px);
    float *iou1 = malloc(nm * sizeof(float));
    rc = eng_sam_segment_cached(m, NULL, emb, &info, pr, n_prompts, multimask, iou1, one, NULL,
                                NULL);
    if (rc || memcmp(one, masks, nm * px) != 0 || memcmp(iou1, iou, nm * sizeof(float)) != 0) {
        printf("  %s: eng_sam_segment_cached %s\n", cname,
               rc ? eng_last_error() : "differs from decode + postprocess");
        ok = 0;
    }
    free(one);
    free(iou1);
    double md = 0, r;
    snprintf(key, sizeof key, "%s.iou_predictions", cname);
    vs_gold(key, iou, key, &md);
    if (md > st->max_iou_pred)
        st->max_iou_pred = md;
    snprintf(key, sizeof key, "%s.low_res_logits", cname);
    r = vs_gold(key, lo, key, &md);
    if (md > st->max_logit)
        st->max_logit = md;
    if (r > st->max_logit_rel)
        st->max_logit_rel = r;
    snprintf(key, sizeof key, "%s.masks", cname);
    const eng_ckpt_tensor *gm = eng_ckpt_find(golden, key);
    if (!gm || (size_t)gm->numel != nm * px) {
        ok = 0;
        goto out;
    }
    const uint8_t *ref = gm->data;
    size_t agree = 0;
    for (size_t k = 0; k < nm; k++) {
        size_t inter = 0, uni = 0;
        for (size_t i = 0; i < px; i++) {
            int a = masks[k * px + i] != 0, b = ref[k * px + i] != 0;
            inter += a && b;
            uni += a || b;
            agree += a == b;
        }
        double iu = uni ? (double)inter / (double)uni : 1.0;
        st->iou_sum += iu;
        st->n_masks++;
        printf("  %-30s mask %zu IoU %.5f\n", key, k, iu);
    }
    double ag = (double)agree / (double)(nm * px);
    if (ag < st->min_agree)
        st->min_agree = ag;
out:
    free(emb);
    sam_case_free(&sc);
    free(iou), free(lo), free(masks);
    return ok;
}

/* The model stored in `dt`; with dec_dt != dt the decoder runs on a second
 * backend in dec_dt (bf16 is served that way: encoder bf16, decoder fp16,
 * as eng_sam_open_backends sets it up). */
static void run_dtype(eng_dtype dt, eng_dtype dec_dt, const char *kernels)
{
    T_NEED_FIXTURES();
    eng_backend *be = NULL, *dbe = NULL;
    if (kernels) /* e.g. "sm75": the T4's kernel set on whatever GPU this is */
        setenv("TASAM_CUDA_KERNELS", kernels, 1);
    int rc = eng_backend_cuda_create(&be, 0, dt);
    unsetenv("TASAM_CUDA_KERNELS");
    if (rc != 0) {
        snprintf(no_gpu, sizeof no_gpu, "%s", eng_last_error());
        T_SKIP("no CUDA backend in %s: %s", eng_dtype_name(dt), no_gpu);
    }
    if (dec_dt != dt && eng_backend_cuda_create(&dbe, 0, dec_dt) != 0) {
        eng_backend_destroy(be);
        T_REQUIRE(0, "decoder backend: %s", eng_last_error());
    }
    int f32 = dt == ENG_F32;
    printf("  %s%s%s\n", eng_backend_describe(be), dbe ? ", decoder on " : "",
           dbe ? eng_backend_describe(dbe) : "");
    eng_sam *m = NULL;
    eng_sam_options opt = {.max_points = 8, .max_batch = 1, .decoder_backend = dbe};
    rc = eng_sam_load(&m, t_fixture("sam_tiny.safetensors"), be, &opt);
    if (rc) {
        eng_backend_destroy(dbe);
        eng_backend_destroy(be);
        T_REQUIRE(0, "load: %s", eng_last_error());
    }

    /* encoder on the golden input tensor, with taps */
    eng_ckpt *in = NULL;
    float *input = malloc(3 * 1024 * 1024 * sizeof(float));
    size_t PC = 64 * 64 * 64;
    float *patch = malloc(PC * 4), *b0 = malloc(PC * 4), *b1 = malloc(PC * 4);
    float *blocks[2] = {b0, b1};
    float *emb = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
    rc = eng_ckpt_open(&in, t_fixture("golden_tiny_input.safetensors"));
    const eng_ckpt_tensor *it = rc ? NULL : eng_ckpt_find(in, "input_tensor");
    T_CHECK(it && it->numel == 3 * 1024 * 1024, "input_tensor: %s", eng_last_error());
    if (it) {
        eng_ckpt_read_f32(in, it, input);
        rc = eng_sam_encode_debug(m, input, patch, blocks, 2, emb);
        T_CHECK(rc == 0, "encode: %s", eng_last_error());
        double md;
        double tol = f32 ? 1e-3 : EMB_REL_L2;
        T_CHECK(vs_gold("patch_embed", patch, "enc.patch_embed", &md) <= tol, "patch embed");
        T_CHECK(!f32 || md <= 2e-3, "patch embed max|diff| %g", md);
        T_CHECK(vs_gold("block0 (windowed)", b0, "enc.block0", &md) <= tol, "block 0");
        T_CHECK(!f32 || md <= 2e-3, "block0 max|diff| %g", md);
        T_CHECK(vs_gold("block1 (global)", b1, "enc.block1", &md) <= tol, "block 1");
        T_CHECK(!f32 || md <= 2e-3, "block1 max|diff| %g", md);
        T_CHECK(vs_gold("image_embedding", emb, "image_embedding", &md) <= EMB_REL_L2,
                "embedding within %g relative L2", EMB_REL_L2);
        T_CHECK(!f32 || md <= 2e-3, "embedding max|diff| %g", md);
        float *pe = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
        T_CHECK(eng_sam_dense_pe(m, pe) == 0, "dense pe");
        T_CHECK(vs_gold("dense_pe", pe, "dense_pe", &md) <= (f32 ? 1e-5 : 1e-2), "dense pe");
        free(pe);
    }
    eng_ckpt_close(in);

    /* end to end from the JPEG */
    eng_image img = {0};
    if (eng_image_load(t_fixture("images/dog.jpg"), ENG_IMAGE_DEFAULT_MAX_PIXELS, &img) == 0) {
        eng_sam_imginfo info;
        T_CHECK(eng_sam_preprocess(&img, input, &info) == 0, "%s", eng_last_error());
        T_CHECK(eng_sam_encode(m, input, 1, emb) == 0, "%s", eng_last_error());
        T_CHECK(vs_gold("e2e image_embedding", emb, "image_embedding", NULL) <= EMB_REL_L2,
                "e2e embedding");
        eng_image_free(&img);
    } else {
        T_CHECK(0, "dog.jpg: %s", eng_last_error());
    }

    /* decoder cases */
    static const struct {
        const char *name;
        int multi, n;
    } cases[] = {{"point1", 1, 1},      {"point1_single", 0, 1}, {"points3", 1, 1},
                 {"box", 0, 1},         {"box_point", 1, 1},     {"no_prompt", 1, 1},
                 {"mask_refine", 0, 1}, {"boxes4", 1, 4}};
    dec_stats st = {0, 0, 0, 0, 1.0, 0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        T_CHECK(run_case(m, cases[i].name, cases[i].multi, cases[i].n, &st), "case %s",
                cases[i].name);
    double miou = st.n_masks ? st.iou_sum / st.n_masks : 0;
    printf("  %s: mean mask IoU %.5f over %d masks; worst pixel agreement %.5f%%; logits max|diff| "
           "%.3g (worst rel L2 %.3g); IoU predictions max|diff| %.3g\n",
           eng_dtype_name(dt), miou, st.n_masks, 100 * st.min_agree, st.max_logit, st.max_logit_rel,
           st.max_iou_pred);
    T_CHECK(miou >= MEAN_IOU, "mean IoU %.5f < %.2f", miou, MEAN_IOU);
    if (f32) {
        T_CHECK(st.max_logit <= 2e-3, "fp32 logits max|diff| %g", st.max_logit);
        T_CHECK(st.max_iou_pred <= 1e-3, "fp32 IoU predictions max|diff| %g", st.max_iou_pred);
        T_CHECK(st.min_agree >= 0.999, "fp32 mask agreement %g", st.min_agree);
    }
    size_t used = 0, total = 0;
    eng_backend_memory(be, &used, &total);
    printf("  %s: GPU memory in use %.1f MiB (workspace %.1f MiB)\n", eng_dtype_name(dt),
           used / 1048576.0, eng_sam_workspace_bytes(m) / 1048576.0);
    free(input), free(patch), free(b0), free(b1), free(emb);
    eng_sam_destroy(m);
    eng_backend_destroy(dbe);
    eng_backend_destroy(be);
}

static void test_bf16(void) { run_dtype(ENG_BF16, ENG_F16, NULL); }
static void test_fp16(void) { run_dtype(ENG_F16, ENG_F16, NULL); }
static void test_fp32(void) { run_dtype(ENG_F32, ENG_F32, NULL); }
/* The T4 configuration: fp16 everywhere, the sm_75 kernels (the same
 * criteria as every other GPU path). */
static void test_fp16_sm75(void) { run_dtype(ENG_F16, ENG_F16, "sm75"); }

/* Decoder groups on the GPU (sam_case_groups): groups of up to 3 prompts,
 * with and without mask inputs and with layer 0's image side shared, agree
 * with prompt-by-prompt decoding. fp32 storage, so the bound is the fixture
 * README's fp32 logit tolerance (2e-3), which either side may use up
 * against the reference: 4e-3 between them. */
static void test_groups_fp32(void)
{
    T_NEED_FIXTURES();
    eng_backend *be = NULL;
    if (eng_backend_cuda_create(&be, 0, ENG_F32) != 0)
        T_SKIP("no CUDA backend in fp32: %s", eng_last_error());
    float *emb = gold_f32("image_embedding", NULL);
    float *mi = gold_f32("mask_refine.mask_input", NULL);
    double d[2][2], distinct;
    int rc = emb && mi
                 ? sam_case_groups(be, t_fixture("sam_tiny.safetensors"), emb, mi, d, &distinct)
                 : -1;
    T_CHECK(rc == 0, "groups: %s", emb && mi ? eng_last_error() : "golden tensors missing");
    for (int r = 0; rc == 0 && r < 2; r++) {
        printf("  groups of 3 vs one by one (%s): logits %.3g, IoU %.3g\n",
               r == 0 ? "2 with a mask input" : "no mask input", d[r][0], d[r][1]);
        T_CHECK(d[r][0] <= 4e-3 && d[r][1] <= 2e-3, "batched decode differs: %g / %g", d[r][0],
                d[r][1]);
    }
    T_CHECK(rc != 0 || distinct > 1e-2, "prompts gave the same logits (%g)", distinct);
    free(emb);
    free(mi);
    eng_backend_destroy(be);
}

/* CUDA graphs (TASAM_CUDA_GRAPHS=1) on the fixture model in fp16, loaded
 * without the warm-up, so the first recordings need scratch to grow and run
 * eagerly instead (ENG_GRAPH_REDO). Three of boxes4's prompts, padded to the
 * bucket of 4: against the same call on a backend without graphs (the
 * padded group runs other GEMM shapes: close, not equal); a second call
 * replays the recording and gives the same bits; a resident embedding
 * (other buffers: the recording is refreshed) agrees too, and its repeat
 * replays bit for bit. */
static void test_graphs_fp16(void)
{
    T_NEED_FIXTURES();
    eng_backend *be = NULL, *eager = NULL;
    setenv("TASAM_CUDA_GRAPHS", "1", 1);
    int rc = eng_backend_cuda_create(&be, 0, ENG_F16);
    unsetenv("TASAM_CUDA_GRAPHS");
    if (rc)
        T_SKIP("no CUDA backend in fp16: %s", eng_last_error());
    T_CHECK(eng_backend_graphs_on(be), "graphs on");
    rc = eng_backend_cuda_create(&eager, 0, ENG_F16);
    T_CHECK(rc == 0 && !eng_backend_graphs_on(eager), "a second backend without graphs");
    eng_sam *mg = NULL, *me = NULL;
    eng_sam_options opt = {
        .max_points = 8, .max_batch = 1, .max_decode_batch = 8, .embedding_slots = 1};
    setenv("TASAM_NO_WARMUP", "1", 1);
    if (!rc)
        rc = eng_sam_load(&mg, t_fixture("sam_tiny.safetensors"), be, &opt);
    unsetenv("TASAM_NO_WARMUP");
    if (!rc)
        rc = eng_sam_load(&me, t_fixture("sam_tiny.safetensors"), eager, &opt);
    sam_case sc;
    memset(&sc, 0, sizeof sc);
    float *emb = gold_f32("image_embedding", NULL);
    if (!rc && (!emb || sam_case_load(golden, "boxes4", 4, &sc) != 0))
        rc = -1;
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    enum { N = 3, C = 3, RUNS = 5 };
    size_t nlo = (size_t)N * C * ENG_SAM_LOWRES_FLOATS;
    float *iou = calloc((size_t)RUNS * N * C, sizeof(float));
    float *lo = calloc((size_t)RUNS * nlo, sizeof(float));
    /* run 0: no graphs; 1, 2: graphs, the embedding passed; 3, 4: resident */
    for (int r = 0; !rc && r < RUNS; r++)
        rc = eng_sam_decode_cached(r ? mg : me, r >= 3 ? "dog" : NULL, emb, &info, sc.prompts, N, 1,
                                   iou + (size_t)r * N * C, lo + (size_t)r * nlo);
    if (!rc) {
        double d1 = rel_l2(lo + nlo, lo, nlo, NULL), d3 = rel_l2(lo + 3 * nlo, lo, nlo, NULL);
        double di = sam_case_maxdiff(iou + N * C, iou, N * C);
        printf("  graphs vs eager: logits rel L2 %.3g (resident %.3g), IoU max|diff| %.3g\n", d1,
               d3, di);
        T_CHECK(d1 <= 1e-2 && d3 <= 1e-2 && di <= 1e-2, "graphs differ from eager: %g %g %g", d1,
                d3, di);
        T_CHECK(memcmp(lo + nlo, lo + 2 * nlo, nlo * sizeof(float)) == 0 &&
                    memcmp(iou + N * C, iou + 2 * N * C, N * C * sizeof(float)) == 0,
                "a replay differs from its recording");
        T_CHECK(memcmp(lo + 3 * nlo, lo + 4 * nlo, nlo * sizeof(float)) == 0,
                "a resident replay differs from its recording");
    }
    T_CHECK(rc == 0, "graphs: %s", eng_last_error());
    free(iou), free(lo), free(emb);
    sam_case_free(&sc);
    eng_sam_destroy(mg);
    eng_sam_destroy(me);
    eng_backend_destroy(be);
    eng_backend_destroy(eager);
}

/* A configuration that does not fit the device is a clear error at load,
 * never a crash or a failure on a later request: with all but 64 MiB of the
 * GPU taken, loading the fixture model (its workspace alone is larger)
 * fails with ENG_ENOMEM and a message that says how much was wanted and
 * how much is free; once the memory is back, the same backend loads it. */
static void test_load_out_of_memory(void)
{
    T_NEED_FIXTURES();
    eng_backend *be = NULL;
    if (eng_backend_cuda_create(&be, 0, ENG_F16) != 0)
        T_SKIP("no CUDA backend in fp16: %s", eng_last_error());
    void *hog = NULL;
#ifdef ENG_HAVE_CUDA
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess && fr > ((size_t)128 << 20))
        hog = eng_backend_alloc(be, fr - ((size_t)64 << 20));
#endif
    T_REQUIRE(hog != NULL, "could not take the GPU's free memory: %s", eng_last_error());
    eng_sam *m = NULL;
    int rc = eng_sam_load(&m, t_fixture("sam_tiny.safetensors"), be, NULL);
    printf("  loading with 64 MiB free: %s\n", rc ? eng_last_error() : "loaded");
    T_CHECK(rc == ENG_ENOMEM && !m, "load with no room: rc %d", rc);
    T_CHECK(strstr(eng_last_error(), "MiB") != NULL, "the message names the sizes: %s",
            eng_last_error());
    eng_sam_destroy(m);
    eng_backend_free(be, hog);
    m = NULL;
    rc = eng_sam_load(&m, t_fixture("sam_tiny.safetensors"), be, NULL);
    T_CHECK(rc == 0, "load once the memory is back: %s", eng_last_error());
    eng_sam_destroy(m);
    eng_backend_destroy(be);
}

/* The CPU backend must keep working in a binary with the CUDA backend. */
static void test_cpu_still_works(void)
{
    eng_backend *cpu = NULL;
    T_REQUIRE(eng_backend_cpu_create(&cpu, 0) == 0, "%s", eng_last_error());
    eng_ctx c;
    T_REQUIRE(eng_ctx_init(&c, cpu, 1 << 20) == 0, "ctx");
    eng_tensor a = eng_new2(&c, 4, 4);
    float h[16], o[16];
    for (int i = 0; i < 16; i++)
        h[i] = (float)i - 8.0f;
    eng_backend_upload(cpu, a.data, h, 16);
    eng_activate(&c, &a, &a, ENG_ACT_RELU);
    eng_backend_download(cpu, o, a.data, 16);
    T_CHECK(o[0] == 0.0f && o[15] == 7.0f, "relu on cpu");
    eng_ctx_free(&c);
    eng_backend_destroy(cpu);
}

int main(void)
{
    if (t_fixtures() && eng_ckpt_open(&golden, t_fixture("golden_tiny.safetensors")) != 0)
        fprintf(stderr, "golden: %s\n", eng_last_error());
    T_RUN(test_bf16);
    T_RUN(test_fp16);
    T_RUN(test_fp32);
    T_RUN(test_fp16_sm75);
    T_RUN(test_groups_fp32);
    T_RUN(test_graphs_fp16);
    T_RUN(test_load_out_of_memory);
    T_RUN(test_cpu_still_works);
    eng_ckpt_close(golden);
    return t_summary("test_cuda_sam");
}
