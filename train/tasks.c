/* train/tasks.c: task-text embeddings of a dataset (tasks.h). */
#include "train/tasks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"
#include "engine/error.h"
#include "train/rng.h"

#define TASKS_BATCH 32

void tr_tasks_destroy(tr_tasks *t)
{
    if (!t)
        return;
    free(t->first);
    free(t->emb);
    free(t->source);
    free(t);
}

int tr_tasks_embed(tr_tasks **out, const tr_coco *ds, hn_text *text)
{
    *out = NULL;
    tr_tasks *t = calloc(1, sizeof *t);
    const int K = ds->n_categories;
    if (!t || !(t->first = malloc(((size_t)K + 1) * sizeof *t->first)) ||
        !(t->source = malloc(((size_t)K + 1) * sizeof *t->source))) {
        tr_tasks_destroy(t);
        return eng_error(ENG_ENOMEM, "out of memory");
    }
    t->n_categories = K;
    t->dim = hn_text_dim(text);
    for (int k = 0; k < K; k++) {
        t->first[k] = t->rows;
        t->rows += ds->categories[k].n_tasks;
        t->source[k] = k;
    }
    t->first[K] = t->rows;
    if (!(t->emb = malloc(((size_t)t->rows + 1) * t->dim * sizeof *t->emb))) {
        tr_tasks_destroy(t);
        return eng_error(ENG_ENOMEM, "out of memory for %d task embeddings", t->rows);
    }
    /* the text as the server embeds it: normalised (adapters/adapter.h) */
    char(*norm)[AD_TASK_MAX + 1] = malloc(TASKS_BATCH * sizeof *norm);
    if (!norm) {
        tr_tasks_destroy(t);
        return eng_error(ENG_ENOMEM, "out of memory");
    }
    const char *texts[TASKS_BATCH];
    size_t lens[TASKS_BATCH];
    int n = 0, row0 = 0, rc = 0;
    for (int k = 0; k < K && !rc; k++)
        for (int j = 0; j < ds->categories[k].n_tasks && !rc; j++) {
            const char *raw = ds->categories[k].tasks[j];
            if ((rc = ad_normalize_task(raw, strlen(raw), norm[n], sizeof norm[n]))) {
                char why[512];
                snprintf(why, sizeof why, "%s", eng_last_error());
                rc = eng_error(rc, "%s: categories[%d] ('%s'): tasks[%d]: %s", ds->json_path, k,
                               ds->categories[k].name, j, why);
                break;
            }
            texts[n] = norm[n];
            lens[n] = strlen(norm[n]);
            if (++n == TASKS_BATCH || t->first[k] + j + 1 == t->rows) {
                if ((rc = hn_text_embed(text, texts, lens, n, t->emb + (size_t)row0 * t->dim))) {
                    char why[512];
                    snprintf(why, sizeof why, "%s", eng_last_error());
                    rc = eng_error(rc, "%s: categories[%d] ('%s'): embedding its tasks: %s",
                                   ds->json_path, k, ds->categories[k].name, why);
                }
                row0 += n;
                n = 0;
            }
        }
    free(norm);
    if (rc) {
        tr_tasks_destroy(t);
        return rc;
    }
    *out = t;
    return 0;
}

int tr_tasks_shuffle(tr_tasks *t, uint64_t seed)
{
    const int K = t->n_categories;
    if (K < 2)
        return eng_error(ENG_EINVAL, "shuffled task texts need at least two categories");
    tr_rng r;
    tr_rng_seed(&r, seed, 0x5EED7A5C);
    for (int k = 0; k < K; k++)
        t->source[k] = k;
    /* Sattolo's algorithm: a uniform random cyclic permutation, so no
     * category keeps its own texts */
    for (int i = K - 1; i > 0; i--) {
        int j = (int)tr_rng_below(&r, (uint64_t)i);
        int x = t->source[i];
        t->source[i] = t->source[j];
        t->source[j] = x;
    }
    return 0;
}

const float *tr_tasks_get(const tr_tasks *t, int category, int task)
{
    const int s = t->source[category];
    const int n = t->first[s + 1] - t->first[s];
    return t->emb + (size_t)(t->first[s] + (n ? task % n : 0)) * t->dim;
}
