/*
 * train/loss.c: focal + dice on the best of the mask outputs + IoU MSE, and
 * its gradient (train/loss.h has the formulas).
 *
 * Per pixel, with e = exp(-|x|) (one exponential serves the sigmoid and the
 * BCE, which stays exact for large |x|):
 *   p = sigmoid(x),  BCE = max(x, 0) - x y + log1p(e),  q = 1 - p_t
 *   d focal / dx = a_t (-gamma q^(gamma-1) (2y - 1) p (1 - p) BCE + q^gamma (p - y)) / n
 *   d dice / dx  = -(2 y D - N) / D^2 p (1 - p),   N = 2 sum(p y) + 1, D = sum(p) + sum(y) + 1
 * computed in double and stored as f32.
 */
#include "train/loss.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "engine/error.h"

void tr_loss_weights_default(tr_loss_weights *w)
{
    w->focal = 20.0f;
    w->dice = 1.0f;
    w->iou = 1.0f;
    w->focal_alpha = 0.25f;
    w->focal_gamma = 2.0f;
}

/* One pixel: sigmoid, BCE and the focal term with its derivative. */
typedef struct {
    double p, focal, dfocal;
} tr__px;

static inline tr__px tr__pixel(double x, double y, double alpha, double gamma)
{
    double e = exp(-fabs(x));
    double p = x >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
    double bce = (x > 0 ? x : 0) - x * y + log1p(e);
    double pt = p * y + (1 - p) * (1 - y), at = alpha * y + (1 - alpha) * (1 - y);
    double q = 1 - pt;
    double qg1 = gamma == 2.0 ? q : pow(q, gamma - 1); /* q^(gamma-1) */
    double qg = qg1 * q;
    double dq = -(2 * y - 1) * p * (1 - p);
    tr__px r = {p, at * qg * bce, at * (gamma * qg1 * dq * bce + qg * (p - y))};
    return r;
}

int tr_loss_mask(const float *logits, const float *iou_pred, const uint8_t *target, int C, size_t n,
                 const tr_loss_weights *w, float grad_scale, tr_loss_parts *out, float *d_logits,
                 float *d_iou)
{
    if (C < 1 || C > TR_LOSS_MAX_MASKS || n == 0)
        return eng_error(ENG_EINVAL, "loss: %d masks of %zu pixels (1..%d masks, >= 1 pixel)", C, n,
                         TR_LOSS_MAX_MASKS);
    if (!isfinite(w->focal) || !isfinite(w->dice) || !isfinite(w->iou) || w->focal < 0 ||
        w->dice < 0 || w->iou < 0 || !(w->focal_alpha >= 0 && w->focal_alpha <= 1) ||
        !(w->focal_gamma >= 0 && w->focal_gamma <= 16) || !isfinite(grad_scale))
        return eng_error(ENG_EINVAL, "loss: weights out of range");
    for (int m = 0; m < C; m++)
        if (!isfinite(iou_pred[m]))
            return eng_error(ENG_EINVAL, "loss: predicted IoU %d is not finite", m);
    for (size_t i = 0; i < (size_t)C * n; i++)
        if (!isfinite(logits[i]))
            return eng_error(ENG_EINVAL, "loss: logit %zu of mask %zu is not finite", i % n, i / n);
    const double alpha = w->focal_alpha, gamma = w->focal_gamma;
    memset(out, 0, sizeof *out);
    out->C = C;
    double sum_y = 0;
    for (size_t i = 0; i < n; i++)
        sum_y += target[i] != 0;
    double sum_p[TR_LOSS_MAX_MASKS], sum_py[TR_LOSS_MAX_MASKS], combo[TR_LOSS_MAX_MASKS];
    for (int m = 0; m < C; m++) {
        const float *x = logits + (size_t)m * n;
        double f = 0, sp = 0, spy = 0, inter = 0, uni = 0;
        for (size_t i = 0; i < n; i++) {
            double y = target[i] != 0;
            tr__px px = tr__pixel(x[i], y, alpha, gamma);
            f += px.focal;
            sp += px.p;
            spy += px.p * y;
            int pred = x[i] > 0;
            inter += pred && y;
            uni += pred || y;
        }
        sum_p[m] = sp;
        sum_py[m] = spy;
        out->focal[m] = f / (double)n;
        out->dice[m] = 1 - (2 * spy + 1) / (sp + sum_y + 1);
        out->actual_iou[m] = uni > 0 ? inter / uni : 0;
        out->iou_mse[m] = (iou_pred[m] - out->actual_iou[m]) * (iou_pred[m] - out->actual_iou[m]);
        combo[m] = w->focal * out->focal[m] + w->dice * out->dice[m];
    }
    int best = 0;
    double iou_mean = 0;
    for (int m = 0; m < C; m++) {
        if (combo[m] < combo[best])
            best = m;
        iou_mean += out->iou_mse[m];
    }
    iou_mean /= C;
    out->best = best;
    out->loss = combo[best] + w->iou * iou_mean;

    if (d_iou)
        for (int m = 0; m < C; m++)
            d_iou[m] =
                (float)(grad_scale * w->iou * 2 * (iou_pred[m] - out->actual_iou[m]) / (double)C);
    if (d_logits) {
        memset(d_logits, 0, (size_t)C * n * sizeof *d_logits);
        const float *x = logits + (size_t)best * n;
        float *dx = d_logits + (size_t)best * n;
        const double N = 2 * sum_py[best] + 1, D = sum_p[best] + sum_y + 1;
        const double wf = grad_scale * w->focal / (double)n, wd = grad_scale * w->dice;
        for (size_t i = 0; i < n; i++) {
            double y = target[i] != 0;
            tr__px px = tr__pixel(x[i], y, alpha, gamma);
            double ddice = -(2 * y * D - N) / (D * D) * px.p * (1 - px.p);
            float v = (float)(wf * px.dfocal + wd * ddice);
            /* Saturated pixels (|x| beyond ~45) give gradients under the
             * smallest normal float: flushed to 0, as subnormal operands
             * slow the backward's GEMMs many times over for nothing. */
            dx[i] = fabsf(v) < FLT_MIN ? 0.0f : v;
        }
    }
    return 0;
}

double tr_loss_l2(const float *const *A, const float *const *B, const size_t *a_n,
                  const size_t *b_n, int n_targets, float lambda, float grad_scale,
                  float *const *dA, float *const *dB)
{
    double s = 0;
    const float g = 2 * lambda * grad_scale;
    for (int t = 0; t < n_targets; t++) {
        for (int k = 0; k < 2; k++) {
            const float *v = k ? (B ? B[t] : NULL) : (A ? A[t] : NULL);
            float *d = k ? (dB ? dB[t] : NULL) : (dA ? dA[t] : NULL);
            size_t nv = k ? b_n[t] : a_n[t];
            for (size_t i = 0; v && i < nv; i++) {
                s += (double)v[i] * v[i];
                if (d)
                    d[i] += g * v[i];
            }
        }
    }
    return lambda * s;
}
