/*
 * tests/fuzz/fuzz_wordpiece.c: libFuzzer target for the WordPiece tokenizer
 * and the hashed fallback embedding, on arbitrary bytes, with a small
 * built-in vocabulary (no files).
 *
 * Input: byte 0 picks the mode and max_len; the rest is the text, or (high
 * bit set) a vocabulary to build a tokenizer from. Whatever the input, the
 * calls must return cleanly, and a success must keep the contract: [CLS]
 * first, [SEP] last, ids within the vocabulary, mask and padding
 * consistent, a unit-norm hashed embedding. Violations abort() for
 * libFuzzer.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "hypernet/text.h"

static const char fz__vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nun\n##want\n##able\n"
                                "a\n##b\n##c\n##s\n,\n.\n!\n-\ncafe\n\xe4\xb8\xad\n"
                                "\xcf\x83\n##\xce\xbf\xcf\x82\nseg\n##ment\n##ing\nx\n##x\n";

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

/* Tokenize and check the result's shape. Returns the encode status. */
static int fz__encode(const hn_wordpiece *wp, const char *s, size_t n, int max_len)
{
    int32_t *ids = malloc((size_t)max_len * sizeof *ids);
    int32_t *mask = malloc((size_t)max_len * sizeof *mask);
    int nt = -1;
    fz__check(ids && mask);
    int rc = hn_wordpiece_encode(wp, s, n, max_len, ids, mask, &nt);
    if (rc == 0) {
        int size = hn_wordpiece_size(wp);
        fz__check(nt >= 2 && nt <= max_len);
        fz__check(strcmp(hn_wordpiece_token(wp, ids[0]), "[CLS]") == 0);
        fz__check(strcmp(hn_wordpiece_token(wp, ids[nt - 1]), "[SEP]") == 0);
        for (int i = 0; i < max_len; i++) {
            fz__check(mask[i] == (i < nt));
            fz__check(i < nt ? ids[i] >= 0 && ids[i] < size : ids[i] == 0);
        }
    } else {
        fz__check(rc == ENG_EINVAL && eng_last_error()[0]);
    }
    free(ids);
    free(mask);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const int mode = data[0] >> 7;
    const int max_len = 2 + (data[0] & 0x7f) * 4; /* 2..510 */
    const char *s = (const char *)data + 1;
    const size_t n = size - 1;

    if (mode == 0) {
        hn_wordpiece *wp = NULL;
        fz__check(hn_wordpiece_create(&wp, fz__vocab, sizeof fz__vocab - 1, "fuzz") == 0);
        int rc = fz__encode(wp, s, n, max_len);
        hn_wordpiece_destroy(wp);

        /* The fallback validates text the same way and always gives a unit
         * vector. */
        hn_text *t = NULL;
        float v[32];
        fz__check(hn_text_create_hashed(&t, 32) == 0);
        const char *texts[1] = {s};
        int rh = hn_text_embed(t, texts, &n, 1, v);
        fz__check((rh == 0) == (rc == 0));
        if (rh == 0) {
            double ss = 0;
            for (int i = 0; i < 32; i++)
                ss += (double)v[i] * v[i];
            fz__check(fabs(ss - 1) < 1e-4);
        }
        hn_text_destroy(t);
    } else {
        /* The input is a vocabulary: build it, then tokenize a few fixed
         * strings and the vocabulary's own bytes with it. */
        hn_wordpiece *wp = NULL;
        if (hn_wordpiece_create(&wp, s, n, "fuzz vocab") == 0) {
            static const char *const probes[] = {"", "the unwantable", "Caf\xc3\xa9, x!",
                                                 "\xe4\xb8\xad\xe6\x96\x87 \xce\xa3"};
            for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
                fz__encode(wp, probes[i], strlen(probes[i]), max_len);
            fz__encode(wp, s, n, max_len);
            hn_wordpiece_destroy(wp);
        } else {
            fz__check(wp == NULL);
        }
    }
    return 0;
}
