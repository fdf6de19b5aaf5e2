/*
 * tests/fuzz/fuzz_train_cases.c: libFuzzer target for the training golden's
 * case files (train/gradcheck.h, `tasam-train grad --cases`).
 *
 * Whatever parses must hold only what the parser promises: 1..TR_GC_MAX_CASES
 * cases with distinct, well-formed names, finite coordinates, labels 0 or
 * 1, a rank and image size in range. Anything else must be refused with a
 * message. Any violation abort()s so libFuzzer reports it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "engine/sam.h"
#include "train/gradcheck.h"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tr_gc_cases *c = NULL;
    int rc = tr_gc_cases_parse((const char *)data, size, "fuzz", &c);
    if (rc) {
        fz__check(c == NULL && eng_last_error()[0] != '\0');
        return 0;
    }
    fz__check(c && c->n >= 1 && c->n <= TR_GC_MAX_CASES);
    fz__check(c->rank >= 1 && c->rank <= ENG_SAM_LORA_MAX_RANK);
    fz__check(c->img_w >= 1 && c->img_h >= 1 && c->img_w <= 65536 && c->img_h <= 65536);
    fz__check(isfinite(c->alpha) && c->alpha > 0);
    for (int i = 0; i < c->n; i++) {
        const tr_gc_case *k = &c->cases[i];
        size_t len = strnlen(k->name, TR_GC_NAME_MAX);
        fz__check(len >= 1 && len < TR_GC_NAME_MAX);
        for (int j = 0; j < i; j++)
            fz__check(strcmp(c->cases[j].name, k->name) != 0);
        fz__check(k->n_points >= 0 && k->n_points <= TR_GC_MAX_POINTS);
        for (int p = 0; p < k->n_points; p++) {
            fz__check(isfinite(k->points[2 * p]) && isfinite(k->points[2 * p + 1]));
            fz__check(k->labels[p] == 0 || k->labels[p] == 1);
        }
        for (int b = 0; k->has_box && b < 4; b++)
            fz__check(isfinite(k->box[b]));
        fz__check(k->ref_best >= -1 && k->ref_best <= 2);
    }
    tr_gc_cases_free(c);
    return 0;
}
