/*
 * train/tasks.h: the text embeddings of a dataset's tasks, computed once
 * per run (every phrasing of every category, normalised as the server
 * normalises a request's task: adapters/adapter.h), and the shuffled-text
 * control.
 *
 * Rows follow the categories in file order, each category's phrasings in
 * its `tasks` order: row(k, t) = first[k] + t.
 */
#ifndef TASAM_TRAIN_TASKS_H
#define TASAM_TRAIN_TASKS_H

#include <stdint.h>

#include "hypernet/text.h"
#include "train/coco.h"

typedef struct tr_tasks {
    int n_categories;
    int dim;     /* the text encoder's width */
    int rows;    /* phrasings in all */
    int *first;  /* [n_categories + 1]: first row of each category */
    float *emb;  /* [rows, dim], unit norm */
    int *source; /* [n_categories]: whose phrasings category k is given (k itself, unless
                    shuffled) */
} tr_tasks;

/* Embed every phrasing of ds with `text` (batches of 32). Errors name the
 * category and the phrasing. */
int tr_tasks_embed(tr_tasks **out, const tr_coco *ds, hn_text *text);
void tr_tasks_destroy(tr_tasks *t);

/* The control that shows the words matter: each category is given the
 * phrasings of another one (a random cyclic permutation from seed, so none
 * keeps its own), so the objective stays the same but the words no longer
 * describe the objects. Needs at least two categories. */
int tr_tasks_shuffle(tr_tasks *t, uint64_t seed);

/* The embedding [dim] of category k's phrasing t (with shuffling: phrasing
 * t mod n of the category it was given). */
const float *tr_tasks_get(const tr_tasks *t, int category, int task);

#endif
