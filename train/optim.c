/*
 * train/optim.c: AdamW, warmup + cosine, global-norm clipping (optim.h).
 * Updates are computed per element in double and stored in f32, in the
 * order torch.optim.AdamW applies them.
 */
#include "train/optim.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"

struct tr_adamw {
    tr_optim_config cfg;
    size_t n;
    long steps;
    float *m, *v;   /* [n] first and second moments */
    uint8_t *decay; /* [n] 1: weight decay applies */
};

void tr_optim_config_default(tr_optim_config *c)
{
    c->lr = 1e-3f;
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = 0.01f;
    c->clip = 1.0f;
    c->warmup = 0;
    c->total = 1;
    c->min_lr_ratio = 0.0f;
}

int tr_optim_config_check(const tr_optim_config *c)
{
    if (!(c->lr > 0 && c->lr <= 10))
        return eng_error(ENG_EINVAL, "learning rate %g outside (0, 10]", (double)c->lr);
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1))
        return eng_error(ENG_EINVAL, "Adam betas (%g, %g) outside [0, 1)", (double)c->beta1,
                         (double)c->beta2);
    if (!(c->eps > 0 && c->eps <= 1))
        return eng_error(ENG_EINVAL, "Adam eps %g outside (0, 1]", (double)c->eps);
    if (!(c->weight_decay >= 0 && c->weight_decay <= 10))
        return eng_error(ENG_EINVAL, "weight decay %g outside [0, 10]", (double)c->weight_decay);
    if (!(c->clip >= 0 && isfinite(c->clip)))
        return eng_error(ENG_EINVAL, "gradient clip %g is negative or not finite", (double)c->clip);
    if (c->total < 1 || c->warmup < 0 || c->warmup > c->total)
        return eng_error(ENG_EINVAL,
                         "schedule: %ld warmup steps of %ld (need 0 <= warmup <= total, "
                         "total >= 1)",
                         c->warmup, c->total);
    if (!(c->min_lr_ratio >= 0 && c->min_lr_ratio <= 1))
        return eng_error(ENG_EINVAL, "min_lr_ratio %g outside [0, 1]", (double)c->min_lr_ratio);
    return 0;
}

double tr_lr_at(const tr_optim_config *c, long s)
{
    const double lr = c->lr, lo = lr * c->min_lr_ratio;
    if (s < 0)
        s = 0;
    if (s < c->warmup)
        return lr * (double)(s + 1) / (double)c->warmup;
    if (s >= c->total)
        return lo;
    double progress = (double)(s - c->warmup) / (double)(c->total - c->warmup);
    return lo + (lr - lo) * 0.5 * (1.0 + cos(M_PI * progress));
}

double tr_clip_grad_norm(float *g, size_t n, float max_norm)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)g[i] * g[i];
    double norm = sqrt(s);
    if (!isfinite(norm))
        return norm;
    if (max_norm > 0 && norm > max_norm) {
        const double coef = max_norm / (norm + 1e-6);
        for (size_t i = 0; i < n; i++)
            g[i] = (float)(g[i] * coef);
    }
    return norm;
}

int tr_adamw_create(tr_adamw **out, size_t n, const tr_optim_config *c)
{
    *out = NULL;
    int rc = tr_optim_config_check(c);
    if (rc)
        return rc;
    tr_adamw *o = calloc(1, sizeof *o);
    if (!o)
        return eng_error(ENG_ENOMEM, "out of memory");
    o->cfg = *c;
    o->n = n;
    o->m = calloc(n ? n : 1, sizeof *o->m);
    o->v = calloc(n ? n : 1, sizeof *o->v);
    o->decay = malloc(n ? n : 1);
    if (!o->m || !o->v || !o->decay) {
        tr_adamw_destroy(o);
        return eng_error(ENG_ENOMEM, "out of memory for the optimiser state (%zu parameters)", n);
    }
    memset(o->decay, 1, n);
    *out = o;
    return 0;
}

void tr_adamw_destroy(tr_adamw *o)
{
    if (!o)
        return;
    free(o->m);
    free(o->v);
    free(o->decay);
    free(o);
}

int tr_adamw_no_decay(tr_adamw *o, size_t off, size_t n)
{
    if (off > o->n || n > o->n - off)
        return eng_error(ENG_EINVAL, "no-decay range [%zu, %zu) outside %zu parameters", off,
                         off + n, o->n);
    memset(o->decay + off, 0, n);
    return 0;
}

int tr_adamw_step(tr_adamw *o, float *p, float *g, tr_step_info *info)
{
    const tr_optim_config *c = &o->cfg;
    double norm = tr_clip_grad_norm(g, o->n, c->clip);
    if (!isfinite(norm))
        return eng_error(ENG_EINVAL, "gradient norm is not finite at step %ld: update skipped",
                         o->steps);
    const long s = o->steps;
    const double lr = tr_lr_at(c, s), t = (double)(s + 1);
    const double b1 = c->beta1, b2 = c->beta2;
    const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    const double step_size = lr / bc1, sq_bc2 = sqrt(bc2), wd = lr * c->weight_decay;
    for (size_t i = 0; i < o->n; i++) {
        double pi = p[i], gi = g[i];
        if (o->decay[i])
            pi *= 1.0 - wd;
        double m = b1 * o->m[i] + (1.0 - b1) * gi;
        double v = b2 * o->v[i] + (1.0 - b2) * gi * gi;
        o->m[i] = (float)m;
        o->v[i] = (float)v;
        p[i] = (float)(pi - step_size * m / (sqrt(v) / sq_bc2 + c->eps));
    }
    o->steps = s + 1;
    if (info) {
        info->step = s;
        info->lr = lr;
        info->grad_norm = norm;
        info->clipped = c->clip > 0 && norm > c->clip;
    }
    return 0;
}

float *tr_adamw_m(tr_adamw *o) { return o->m; }
float *tr_adamw_v(tr_adamw *o) { return o->v; }
long tr_adamw_steps(const tr_adamw *o) { return o->steps; }
void tr_adamw_set_steps(tr_adamw *o, long steps) { o->steps = steps < 0 ? 0 : steps; }
size_t tr_adamw_size(const tr_adamw *o) { return o->n; }
