/*
 * tests/fuzz/fuzz_adapter.c: libFuzzer target for ad_adapter_parse, the
 * parser that reads adapter blobs from the cache database and user uploads.
 *
 * Whatever the bytes, the call must return cleanly (an error code with a
 * message, nothing allocated) or an adapter that keeps the contract: shapes
 * from the engine's target table, finite factors, a consistent id; and it
 * must survive serialize -> parse unchanged. Violations abort() for
 * libFuzzer. Seeds: small adapters in tests/fuzz/corpus/fuzz_adapter
 * (rank 2, a few targets; written by `tasam adapter`).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"
#include "engine/error.h"
#include "engine/sam.h"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ad_adapter *a = NULL;
    int rc = ad_adapter_parse(&a, data, size, "fuzz");
    if (rc) {
        fz__check(rc < 0 && !a && eng_last_error()[0]);
        return 0;
    }
    fz__check(a != NULL);
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    fz__check(a->rank >= 1 && a->rank <= ENG_SAM_LORA_MAX_RANK && isfinite(a->alpha));
    fz__check(strlen(a->id) == AD_ID_LEN && a->n_targets >= 1);
    char id[AD_ID_LEN + 1];
    fz__check(ad_task_id(a->task, strlen(a->task), a->hypernet_id, id) == 0);
    fz__check(strcmp(id, a->id) == 0);
    size_t n = 0;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        fz__check(!a->present[t] == !a->A[t] && !a->present[t] == !a->B[t]);
        if (!a->present[t])
            continue;
        size_t an = (size_t)a->rank * tt[t].in, bn = (size_t)tt[t].out * a->rank;
        for (size_t i = 0; i < an; i++)
            fz__check(isfinite(a->A[t][i]));
        for (size_t i = 0; i < bn; i++)
            fz__check(isfinite(a->B[t][i]));
        n += an + bn;
    }
    fz__check(n == a->n_floats);
    uint8_t *buf = NULL;
    size_t len = 0;
    fz__check(ad_adapter_serialize(a, &buf, &len) == 0);
    ad_adapter *b = NULL;
    fz__check(ad_adapter_parse(&b, buf, len, "round trip") == 0);
    fz__check(!strcmp(a->id, b->id) && !strcmp(a->task, b->task) && a->rank == b->rank &&
              a->alpha == b->alpha && a->created == b->created &&
              !memcmp(a->present, b->present, sizeof a->present) &&
              !memcmp(a->mem, b->mem, a->n_floats * sizeof(float)));
    ad_adapter_destroy(b);
    free(buf);
    ad_adapter_destroy(a);
    return 0;
}
