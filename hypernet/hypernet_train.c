/*
 * hypernet/hypernet_train.c: the hypernetwork's forward with activations
 * kept, and its backward, host f32 with OpenBLAS (hypernet_train.h).
 *
 * Letters: d text width, H hidden, r rank, n present targets. Rows of the
 * per-target activations are grouped by shape (hn_rows_by_shape), so each
 * head is one GEMM over a block of rows. Forward, for a task embedding e [d]:
 *   a = W_in e + b_in,  g = GELU(a),  z = LN(g) = zhat ln_g + ln_b        [H]
 *   x_t = z + E_type[type(t)] + E_layer[t],  m_t = W_mix x_t + b_mix      [n, H]
 *   h_t = GELU(m_t),  A_t = W_A[s] h_t + b_A[s],  B_t = W_B[s] h_t + b_B[s]
 * Backward, from dA_t, dB_t:
 *   dW_A[s] += dA_s^T h_s,  db_A[s] += sum dA_s,  dh_s = dA_s W_A[s] + dB_s W_B[s]
 *   dm = dh GELU'(m),  dW_mix += dm^T x,  db_mix += sum dm,  dx = dm W_mix
 *   dE_type[type(t)] += dx_t,  dE_layer[t] += dx_t,  dz = sum_t dx_t
 *   dln_g += dz zhat,  dln_b += dz,  dg = rstd (dz ln_g - mean(dz ln_g) - zhat mean(dz ln_g zhat))
 *   da = dg GELU'(a),  dW_in += da e^T,  db_in += da
 */
#include "hypernet/hypernet_train.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"

#define HN_T      ENG_SAM_LORA_TARGETS
#define HN_LN_EPS 1e-5f /* as hypernet.c */

struct hn_train {
    hn_hypernet_config cfg;
    int n;                                /* present targets = rows */
    int order[HN_T];                      /* row -> target, grouped by shape */
    int s_off[HN_SHAPES], s_n[HN_SHAPES]; /* row block of each shape */
    int have_fwd;
    float *mem;      /* owns everything below */
    float *e;        /* [d] the task embedding of the last forward */
    float *a, *zhat; /* [H] pre-GELU, normalised */
    float mean, rstd;
    float *x, *m, *h; /* [n, H] */
    float *dh, *dx;   /* [n, H] backward scratch */
    float *dz;        /* [H] */
    float *stage;     /* [max over shapes of s_n * max(r*in, out*r)] */
};

static inline float hn__gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678f)); }
static inline float hn__gelu_grad(float x)
{
    return 0.5f * (1.0f + erff(x * 0.70710678f)) + x * 0.39894228f * expf(-0.5f * x * x);
}

int hn_train_create(hn_train **out, const hn_hypernet_config *cfg)
{
    *out = NULL;
    int rc = hn_hypernet_config_check(cfg);
    if (rc)
        return rc;
    hn_train *t = calloc(1, sizeof *t);
    if (!t)
        return eng_error(ENG_ENOMEM, "out of memory");
    t->cfg = *cfg;
    t->n = hn_rows_by_shape(cfg, t->order, t->s_off, t->s_n);
    const size_t H = (size_t)cfg->hidden, D = (size_t)cfg->text_dim, n = (size_t)t->n;
    size_t stage = 0;
    for (int s = 0; s < HN_SHAPES; s++) {
        int o, i;
        hn_shape(s, &o, &i);
        size_t w = (size_t)cfg->rank * (size_t)(o > i ? o : i) * (size_t)t->s_n[s];
        stage = w > stage ? w : stage;
    }
    size_t total = D + 2 * H + 5 * n * H + H + stage;
    t->mem = calloc(total, sizeof(float));
    if (!t->mem) {
        free(t);
        return eng_error(ENG_ENOMEM, "out of memory for the hypernetwork's training buffers");
    }
    float *p = t->mem;
    t->e = p, p += D;
    t->a = p, p += H;
    t->zhat = p, p += H;
    t->x = p, p += n * H;
    t->m = p, p += n * H;
    t->h = p, p += n * H;
    t->dh = p, p += n * H;
    t->dx = p, p += n * H;
    t->dz = p, p += H;
    t->stage = p;
    *out = t;
    return 0;
}

void hn_train_destroy(hn_train *t)
{
    if (!t)
        return;
    free(t->mem);
    free(t);
}

static int hn__same_config(const hn_train *t, const hn_params *p)
{
    const hn_hypernet_config *a = &t->cfg, *b = &p->cfg;
    return a->text_dim == b->text_dim && a->hidden == b->hidden && a->rank == b->rank &&
           !memcmp(a->present, b->present, sizeof a->present);
}

int hn_train_forward(hn_train *t, const hn_params *p, const float *task_emb, float *const *A,
                     float *const *B)
{
    t->have_fwd = 0;
    if (!hn__same_config(t, p))
        return eng_error(ENG_EINVAL, "hypernetwork parameters of another configuration");
    const int H = t->cfg.hidden, D = t->cfg.text_dim, R = t->cfg.rank;
    for (int i = 0; i < D; i++)
        if (!isfinite(task_emb[i]))
            return eng_error(ENG_EINVAL, "task embedding element %d is not finite", i);
    for (int r = 0; r < t->n; r++)
        if (!A || !B || !A[t->order[r]] || !B[t->order[r]])
            return eng_error(ENG_EINVAL, "hn_train_forward: no buffer for target %s",
                             eng_sam_lora_targets()[t->order[r]].name);
    memcpy(t->e, task_emb, (size_t)D * sizeof(float));
    /* trunk: a, g, z */
    memcpy(t->a, p->b_in, (size_t)H * sizeof(float));
    cblas_sgemv(CblasRowMajor, CblasNoTrans, H, D, 1.0f, p->w_in, D, t->e, 1, 1.0f, t->a, 1);
    double mean = 0, var = 0;
    for (int j = 0; j < H; j++)
        mean += hn__gelu(t->a[j]);
    mean /= H;
    for (int j = 0; j < H; j++) {
        double d = hn__gelu(t->a[j]) - mean;
        var += d * d;
    }
    var /= H;
    t->mean = (float)mean;
    t->rstd = (float)(1.0 / sqrt(var + HN_LN_EPS));
    for (int j = 0; j < H; j++)
        t->zhat[j] = (hn__gelu(t->a[j]) - t->mean) * t->rstd;
    /* rows: x, m, h */
    for (int r = 0; r < t->n; r++) {
        const int tg = t->order[r];
        const float *ty = p->e_type + (size_t)hn_target_type(tg) * H;
        const float *ly = p->e_layer + (size_t)tg * H;
        float *x = t->x + (size_t)r * H, *m = t->m + (size_t)r * H;
        for (int j = 0; j < H; j++) {
            x[j] = t->zhat[j] * p->ln_g[j] + p->ln_b[j] + ty[j] + ly[j];
            m[j] = p->b_mix[j];
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->n, H, H, 1.0f, t->x, H, p->w_mix, H,
                1.0f, t->m, H);
    for (size_t i = 0; i < (size_t)t->n * H; i++)
        t->h[i] = hn__gelu(t->m[i]);
    /* heads, one GEMM per shape and factor */
    for (int s = 0; s < HN_SHAPES; s++) {
        if (!t->s_n[s])
            continue;
        int O, In; /* (not I: complex.h, through cblas.h, defines it) */
        hn_shape(s, &O, &In);
        const float *hs = t->h + (size_t)t->s_off[s] * H;
        for (int k = 0; k < 2; k++) {
            const int w = k ? O * R : R * In;
            const float *W = k ? p->wb[s] : p->wa[s], *b = k ? p->bb[s] : p->ba[s];
            for (int r = 0; r < t->s_n[s]; r++)
                memcpy(t->stage + (size_t)r * w, b, (size_t)w * sizeof(float));
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->s_n[s], w, H, 1.0f, hs, H, W, H,
                        1.0f, t->stage, w);
            for (int r = 0; r < t->s_n[s]; r++) {
                float *dst = k ? B[t->order[t->s_off[s] + r]] : A[t->order[t->s_off[s] + r]];
                memcpy(dst, t->stage + (size_t)r * w, (size_t)w * sizeof(float));
            }
        }
    }
    t->have_fwd = 1;
    return 0;
}

int hn_train_backward(hn_train *t, const hn_params *p, const float *const *dA,
                      const float *const *dB, hn_params *grad)
{
    if (!t->have_fwd)
        return eng_error(ENG_EINVAL, "hypernetwork backward without a forward");
    if (!hn__same_config(t, p) || !hn__same_config(t, grad))
        return eng_error(ENG_EINVAL, "hypernetwork parameters or gradient of another "
                                     "configuration");
    const int H = t->cfg.hidden, D = t->cfg.text_dim, R = t->cfg.rank, n = t->n;
    for (int r = 0; r < n; r++) {
        const int tg = t->order[r];
        size_t an, bn;
        hn_factor_size(&t->cfg, tg, &an, &bn);
        for (int k = 0; k < 2; k++) {
            const float *g = k ? (dB ? dB[tg] : NULL) : (dA ? dA[tg] : NULL);
            for (size_t i = 0; g && i < (k ? bn : an); i++)
                if (!isfinite(g[i]))
                    return eng_error(ENG_EINVAL, "gradient of %s of target %s is not finite",
                                     k ? "B" : "A", eng_sam_lora_targets()[tg].name);
        }
    }
    /* heads: parameter gradients and dh */
    memset(t->dh, 0, (size_t)n * H * sizeof(float));
    for (int s = 0; s < HN_SHAPES; s++) {
        if (!t->s_n[s])
            continue;
        int O, In; /* (not I: complex.h, through cblas.h, defines it) */
        hn_shape(s, &O, &In);
        const int ns = t->s_n[s];
        const float *hs = t->h + (size_t)t->s_off[s] * H;
        float *dhs = t->dh + (size_t)t->s_off[s] * H;
        for (int k = 0; k < 2; k++) {
            const int w = k ? O * R : R * In;
            const float *const *src = k ? dB : dA;
            for (int r = 0; r < ns; r++) {
                const float *g = src ? src[t->order[t->s_off[s] + r]] : NULL;
                float *row = t->stage + (size_t)r * w;
                if (g)
                    memcpy(row, g, (size_t)w * sizeof(float));
                else
                    memset(row, 0, (size_t)w * sizeof(float));
            }
            float *gW = k ? grad->wb[s] : grad->wa[s], *gb = k ? grad->bb[s] : grad->ba[s];
            const float *W = k ? p->wb[s] : p->wa[s];
            /* dW [w, H] += dY^T [w, ns] h_s [ns, H];  dh_s [ns, H] += dY [ns, w] W [w, H] */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, H, ns, 1.0f, t->stage, w, hs, H,
                        1.0f, gW, H);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ns, H, w, 1.0f, t->stage, w, W,
                        H, 1.0f, dhs, H);
            for (int r = 0; r < ns; r++) {
                const float *row = t->stage + (size_t)r * w;
                for (int j = 0; j < w; j++)
                    gb[j] += row[j];
            }
        }
    }
    /* mix: dm (in dh) = dh GELU'(m) */
    for (size_t i = 0; i < (size_t)n * H; i++)
        t->dh[i] *= hn__gelu_grad(t->m[i]);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, H, n, 1.0f, t->dh, H, t->x, H, 1.0f,
                grad->w_mix, H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, H, H, 1.0f, t->dh, H, p->w_mix, H,
                0.0f, t->dx, H);
    memset(t->dz, 0, (size_t)H * sizeof(float));
    for (int r = 0; r < n; r++) {
        const int tg = t->order[r];
        const float *dm = t->dh + (size_t)r * H, *dx = t->dx + (size_t)r * H;
        float *gty = grad->e_type + (size_t)hn_target_type(tg) * H;
        float *gly = grad->e_layer + (size_t)tg * H;
        for (int j = 0; j < H; j++) {
            grad->b_mix[j] += dm[j];
            gty[j] += dx[j];
            gly[j] += dx[j];
            t->dz[j] += dx[j];
        }
    }
    /* LayerNorm and GELU of the trunk */
    double s1 = 0, s2 = 0;
    for (int j = 0; j < H; j++) {
        grad->ln_g[j] += t->dz[j] * t->zhat[j];
        grad->ln_b[j] += t->dz[j];
        double gz = (double)t->dz[j] * p->ln_g[j];
        s1 += gz;
        s2 += gz * t->zhat[j];
    }
    const float m1 = (float)(s1 / H), m2 = (float)(s2 / H);
    for (int j = 0; j < H; j++) {
        float dg = t->rstd * (t->dz[j] * p->ln_g[j] - m1 - t->zhat[j] * m2);
        float da = dg * hn__gelu_grad(t->a[j]);
        grad->b_in[j] += da;
        cblas_saxpy(D, da, t->e, 1, grad->w_in + (size_t)j * D, 1);
    }
    return 0;
}
