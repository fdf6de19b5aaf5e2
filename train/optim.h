/*
 * train/optim.h: the optimiser: AdamW (decoupled weight decay, as
 * torch.optim.AdamW), a learning rate with linear warmup then cosine decay,
 * and clipping of the global gradient norm (as torch.nn.utils.clip_grad_norm_).
 *
 * Parameters and gradients are flat f32 arrays (an hn_params' mem). Every
 * step is deterministic: element-wise updates, and the norm summed in
 * double in a fixed order, whatever the thread count.
 *
 * Schedule, for step s = 0, 1, ... (the s-th update):
 *   s < warmup:             lr (s + 1) / warmup
 *   warmup <= s < total:    lr_min + (lr - lr_min) (1 + cos(pi (s - warmup) / (total - warmup))) /
 * 2 s >= total:             lr_min                       (lr_min = lr * min_lr_ratio) AdamW, with t
 * = s + 1 and g the clipped gradient: p -= lr_s weight_decay p               (elements marked for
 * decay) m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2 p -= lr_s / (1 - beta1^t) * m
 * / (sqrt(v) / sqrt(1 - beta2^t) + eps) Clipping: norm = |g|_2; when norm > clip, g *= clip / (norm
 * + 1e-6).
 */
#ifndef TASAM_TRAIN_OPTIM_H
#define TASAM_TRAIN_OPTIM_H

#include <stddef.h>

typedef struct tr_optim_config {
    float lr;           /* peak learning rate (1e-3) */
    float beta1, beta2; /* moment decays (0.9, 0.999) */
    float eps;          /* (1e-8) */
    float weight_decay; /* decoupled, per unit lr (0.01) */
    float clip;         /* global gradient-norm limit, 0: none (1.0) */
    long warmup;        /* steps of linear warmup (0) */
    long total;         /* steps of the whole run: the cosine ends here (1) */
    float min_lr_ratio; /* the final rate as a fraction of lr (0) */
} tr_optim_config;

void tr_optim_config_default(tr_optim_config *c);
/* ENG_EINVAL naming the field out of range. */
int tr_optim_config_check(const tr_optim_config *c);

/* The learning rate of step s (the schedule above). */
double tr_lr_at(const tr_optim_config *c, long step);

/* The global L2 norm of g [n] (summed in double); when max_norm > 0 and the
 * norm exceeds it, g is scaled by max_norm / (norm + 1e-6). Returns the
 * norm before clipping (not finite: g untouched). */
double tr_clip_grad_norm(float *g, size_t n, float max_norm);

typedef struct tr_adamw tr_adamw;

/* An optimiser for n parameters (moments zero, step 0; every element
 * decayed until tr_adamw_no_decay says otherwise). */
int tr_adamw_create(tr_adamw **out, size_t n, const tr_optim_config *c);
void tr_adamw_destroy(tr_adamw *o);

/* Exempt parameters [off, off + n) from weight decay (biases, norms,
 * embeddings, as is usual). */
int tr_adamw_no_decay(tr_adamw *o, size_t off, size_t n);

/* What one step did. */
typedef struct tr_step_info {
    long step;        /* the step just taken (0-based) */
    double lr;        /* its learning rate */
    double grad_norm; /* the gradient's norm before clipping */
    int clipped;      /* 1 when the gradient was scaled down */
} tr_step_info;

/* One update of p [n] from g [n] (clipped in place first). A gradient whose
 * norm is not finite is refused (ENG_EINVAL) and nothing changes. info may
 * be NULL. */
int tr_adamw_step(tr_adamw *o, float *p, float *g, tr_step_info *info);

/* The state, for checkpoints: the moments m and v [n] (read or restore
 * through these pointers), and the steps taken. */
float *tr_adamw_m(tr_adamw *o);
float *tr_adamw_v(tr_adamw *o);
long tr_adamw_steps(const tr_adamw *o);
void tr_adamw_set_steps(tr_adamw *o, long steps);
size_t tr_adamw_size(const tr_adamw *o);

#endif
