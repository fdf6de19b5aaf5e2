/*
 * hypernet/hypernet_train.h: the hypernetwork's training forward and
 * backward, on the host in f32 (the network is small: the decoder's
 * backward dominates a training step by far).
 *
 * The forward is hypernet.h's, keeping its activations; the backward takes
 * d loss / d A_t and d loss / d B_t of every target (B unscaled, as the
 * forward emits it; engine/sam_train.h gives them) to d loss / d every
 * parameter tensor of hn_params (trunk, embeddings, heads), accumulated
 * (+=) into a gradient hn_params of the same configuration
 * (hn_params_create makes one, zeroed). With those:
 *
 *   hn_train_forward(t, params, task_embedding, A, B);
 *   ... the decoder's forward and backward under A, B -> dA, dB ...
 *   hn_train_backward(t, params, dA, dB, grad);
 *
 * GELU uses libm's erff here; the inference forward (hn_hypernet_generate,
 * on the engine's ops) agrees to about 1e-6.
 */
#ifndef TASAM_HYPERNET_HYPERNET_TRAIN_H
#define TASAM_HYPERNET_HYPERNET_TRAIN_H

#include "hypernet/hypernet.h"

typedef struct hn_train hn_train;

/* Buffers for configuration cfg (checked). */
int hn_train_create(hn_train **out, const hn_hypernet_config *cfg);
void hn_train_destroy(hn_train *t);

/* The forward for one task embedding task_emb [d]: A[t] [r, in] and B[t]
 * [out, r] (host, hn_factor_size floats, given for every present target)
 * and the activations the backward needs. p must have t's configuration. */
int hn_train_forward(hn_train *t, const hn_params *p, const float *task_emb, float *const *A,
                     float *const *B);

/* The backward of the last forward: dA[t], dB[t] as A, B (a NULL entry, or
 * NULL dA / dB, is a zero gradient) -> grad += d loss / d p. ENG_EINVAL
 * without a forward, for a configuration mismatch or non-finite gradients. */
int hn_train_backward(hn_train *t, const hn_params *p, const float *const *dA,
                      const float *const *dB, hn_params *grad);

#endif
