/*
 * tests/test_train_loss.c: the training loss (train/loss.h) on cases worked
 * out by hand, its gradient against central differences, the choice of
 * the best mask, the L2 penalty, and bad input. (The fixture golden checks
 * the same loss against PyTorch in test_sam_train.)
 */
#include "harness.h"

#include "engine/error.h"
#include "train/loss.h"

/* Two pixels, logits 0, target (1, 0), one mask, predicted IoU 0.5:
 *   p = 0.5 everywhere, BCE = ln 2 at both pixels
 *   focal: pixel 1 0.25 * 0.5^2 ln 2, pixel 2 0.75 * 0.5^2 ln 2; mean 0.125 ln 2
 *   dice = 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3
 *   actual IoU: nothing predicted, union 1 -> 0; MSE 0.25
 *   loss = 20 * 0.125 ln 2 + 1/3 + 0.25
 * d loss / d x, with N = 2, D = 3:
 *   pixel 1 (y = 1): 20 * 0.25 * 0.25 * (-2 * 0.5 ln 2 - 0.5) / 2 - (2 * 3 - 2) / 9 * 0.25
 *   pixel 2 (y = 0): 20 * 0.75 * 0.25 * (2 * 0.5 ln 2 + 0.5) / 2 + 2 / 9 * 0.25
 *   d loss / d iou = 2 * (0.5 - 0) = 1 */
static void test_by_hand(void)
{
    const float x[2] = {0, 0}, iou = 0.5f;
    const uint8_t y[2] = {1, 0};
    const double l2 = log(2.0);
    tr_loss_weights w;
    tr_loss_weights_default(&w);
    tr_loss_parts p;
    float dx[2], di;
    T_REQUIRE(tr_loss_mask(x, &iou, y, 1, 2, &w, 1.0f, &p, dx, &di) == 0, "%s", eng_last_error());
    T_CHECK(fabs(p.focal[0] - 0.125 * l2) < 1e-12, "focal %.12g", p.focal[0]);
    T_CHECK(fabs(p.dice[0] - 1.0 / 3) < 1e-12, "dice %.12g", p.dice[0]);
    T_CHECK(p.actual_iou[0] == 0 && fabs(p.iou_mse[0] - 0.25) < 1e-7, "IoU %g, MSE %g",
            p.actual_iou[0], p.iou_mse[0]);
    T_CHECK(fabs(p.loss - (20 * 0.125 * l2 + 1.0 / 3 + 0.25)) < 1e-7, "loss %.12g", p.loss);
    double d1 = 20 * 0.25 * 0.25 * (-2 * 0.5 * l2 - 0.5) / 2 - 4.0 / 9 * 0.25;
    double d2 = 20 * 0.75 * 0.25 * (2 * 0.5 * l2 + 0.5) / 2 + 2.0 / 9 * 0.25;
    T_CHECK(fabs(dx[0] - d1) < 1e-6 && fabs(dx[1] - d2) < 1e-6,
            "d logits (%.8g, %.8g), want (%.8g, %.8g)", dx[0], dx[1], d1, d2);
    T_CHECK(fabs(di - 1.0) < 1e-7, "d iou %g", di);
    /* grad_scale scales every gradient, not the loss */
    float dx2[2], di2;
    T_REQUIRE(tr_loss_mask(x, &iou, y, 1, 2, &w, 0.25f, &p, dx2, &di2) == 0, "%s",
              eng_last_error());
    T_CHECK(fabs(dx2[0] - 0.25 * dx[0]) < 1e-8 && fabs(di2 - 0.25) < 1e-8 &&
                fabs(p.loss - (20 * 0.125 * l2 + 1.0 / 3 + 0.25)) < 1e-7,
            "grad_scale");
}

/* Three masks over an empty target: the best one predicts least; the IoU
 * is 0 for every mask (empty union counts 0, a non-empty prediction too). */
static void test_best_and_empty(void)
{
    enum { N = 16 };
    float x[3 * N], iou[3] = {0.9f, 0.1f, 0.5f}, dx[3 * N], di[3];
    uint8_t y[N] = {0};
    for (int i = 0; i < N; i++) {
        x[i] = 2.0f;      /* mask 0: everything on */
        x[N + i] = -6.0f; /* mask 1: everything off */
        x[2 * N + i] = 0.5f;
    }
    tr_loss_weights w;
    tr_loss_weights_default(&w);
    tr_loss_parts p;
    T_REQUIRE(tr_loss_mask(x, iou, y, 3, N, &w, 1.0f, &p, dx, di) == 0, "%s", eng_last_error());
    T_CHECK(p.best == 1, "best %d, want the all-off mask 1", p.best);
    T_CHECK(p.actual_iou[0] == 0 && p.actual_iou[1] == 0 && p.actual_iou[2] == 0,
            "IoU against an empty target");
    int others_zero = 1;
    for (int i = 0; i < N; i++)
        others_zero &= dx[i] == 0 && dx[2 * N + i] == 0 && dx[N + i] != 0;
    T_CHECK(others_zero, "only the best mask's logits get the focal and dice gradient");
    for (int m = 0; m < 3; m++)
        T_CHECK(fabs(di[m] - 2 * iou[m] / 3.0) < 1e-7, "d iou[%d] %g", m, di[m]);
    /* an all-ones target and a perfect prediction: IoU 1 */
    uint8_t ones[N];
    memset(ones, 1, N);
    T_REQUIRE(tr_loss_mask(x, iou, ones, 3, N, &w, 1.0f, &p, NULL, NULL) == 0, "%s",
              eng_last_error());
    T_CHECK(p.actual_iou[0] == 1 && p.actual_iou[1] == 0 && p.best == 0, "IoU %g %g, best %d",
            p.actual_iou[0], p.actual_iou[1], p.best);
}

static uint64_t rng = 0x853c49e6748fea9bull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0) * 2 - 1;
}

/* The gradient against central differences of the loss itself (computed in
 * double), for random logits away from 0 (where the thresholded IoU
 * jumps) and each focal gamma. */
static void test_finite_differences(void)
{
    enum { N = 400, C = 3 };
    float x[C * N], iou[C], dx[C * N], di[C];
    uint8_t y[N];
    for (int i = 0; i < N; i++)
        y[i] = urand() > 0.3;
    for (int i = 0; i < C * N; i++) {
        double v = 6 * urand();
        x[i] = (float)(fabs(v) < 0.05 ? 0.5 : v);
    }
    for (int m = 0; m < C; m++)
        iou[m] = (float)(0.5 + 0.4 * urand());
    const float gammas[3] = {2.0f, 0.0f, 1.5f};
    for (int gi = 0; gi < 3; gi++) {
        tr_loss_weights w;
        tr_loss_weights_default(&w);
        w.focal_gamma = gammas[gi];
        tr_loss_parts p;
        T_REQUIRE(tr_loss_mask(x, iou, y, C, N, &w, 1.0f, &p, dx, di) == 0, "%s", eng_last_error());
        double num = 0, den = 0;
        for (int i = 0; i < C * N + C; i++) {
            float *v = i < C * N ? &x[i] : &iou[i - C * N];
            float save = *v;
            /* the perturbation actually stored, exact in double */
            float up = save + 1e-3f, dn = save - 1e-3f;
            tr_loss_parts a, b;
            *v = up;
            tr_loss_mask(x, iou, y, C, N, &w, 1.0f, &a, NULL, NULL);
            *v = dn;
            tr_loss_mask(x, iou, y, C, N, &w, 1.0f, &b, NULL, NULL);
            *v = save;
            double ref = (a.loss - b.loss) / ((double)up - (double)dn);
            double got = i < C * N ? dx[i] : di[i - C * N];
            num += (got - ref) * (got - ref);
            den += ref * ref;
        }
        T_CHECK(sqrt(num / den) < 1e-4, "gamma %g: relative L2 error %.3g", (double)gammas[gi],
                sqrt(num / den));
    }
}

static void test_l2(void)
{
    float a0[3] = {1, -2, 0.5f}, b0[2] = {3, 0}, a1[1] = {4};
    const float *A[3] = {a0, NULL, a1}, *B[3] = {b0, NULL, NULL};
    size_t an[3] = {3, 0, 1}, bn[3] = {2, 0, 0};
    float da0[3] = {0}, db0[2] = {1, 1}, da1[1] = {0};
    float *dA[3] = {da0, NULL, da1}, *dB[3] = {db0, NULL, NULL};
    double pen = tr_loss_l2(A, B, an, bn, 3, 0.1f, 0.5f, dA, dB);
    /* 0.1 * (1 + 4 + 0.25 + 9 + 0 + 16) = 3.025; gradients 0.5 * 2 * 0.1 * v */
    T_CHECK(fabs(pen - 3.025) < 1e-6, "penalty %g", pen);
    T_CHECK(fabs(da0[1] - (-0.2)) < 1e-7 && fabs(db0[0] - 1.3) < 1e-6 && db0[1] == 1 &&
                fabs(da1[0] - 0.4) < 1e-7,
            "gradients %g %g %g %g", da0[1], db0[0], db0[1], da1[0]);
}

static void test_errors(void)
{
    float x[4] = {0, 1, NAN, 2}, iou[2] = {0.5f, 0.5f};
    uint8_t y[2] = {1, 0};
    tr_loss_weights w;
    tr_loss_weights_default(&w);
    tr_loss_parts p;
    T_CHECK(tr_loss_mask(x, iou, y, 2, 2, &w, 1, &p, NULL, NULL) == ENG_EINVAL &&
                strstr(eng_last_error(), "mask 1"),
            "NaN logit: %s", eng_last_error());
    x[2] = 0;
    iou[1] = INFINITY;
    T_CHECK(tr_loss_mask(x, iou, y, 2, 2, &w, 1, &p, NULL, NULL) == ENG_EINVAL,
            "infinite IoU accepted");
    iou[1] = 0;
    T_CHECK(tr_loss_mask(x, iou, y, 0, 2, &w, 1, &p, NULL, NULL) == ENG_EINVAL, "C = 0 accepted");
    T_CHECK(tr_loss_mask(x, iou, y, 5, 2, &w, 1, &p, NULL, NULL) == ENG_EINVAL, "C = 5 accepted");
    T_CHECK(tr_loss_mask(x, iou, y, 2, 0, &w, 1, &p, NULL, NULL) == ENG_EINVAL, "n = 0 accepted");
    w.focal_alpha = 2;
    T_CHECK(tr_loss_mask(x, iou, y, 2, 2, &w, 1, &p, NULL, NULL) == ENG_EINVAL, "alpha 2 accepted");
}

int main(void)
{
    T_RUN(test_by_hand);
    T_RUN(test_best_and_empty);
    T_RUN(test_finite_differences);
    T_RUN(test_l2);
    T_RUN(test_errors);
    return t_summary("test_train_loss");
}
