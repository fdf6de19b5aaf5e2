/*
 * cli/common.c: helpers the commands share (numbers, backends, hypernetwork loading).
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/ops.h"
#include "engine/rle.h"
#include "engine/sam.h"
#include "adapters/adapter.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"

double cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Parse exactly n comma-separated finite numbers. */
int cli_parse_numbers(const char *s, double *out, int n)
{
    const char *p = s;
    for (int i = 0; i < n; i++) {
        char *end;
        errno = 0;
        out[i] = strtod(p, &end);
        if (end == p || errno || !isfinite(out[i]))
            return -1;
        p = end;
        if (i < n - 1) {
            if (*p != ',')
                return -1;
            p++;
        }
    }
    return *p ? -1 : 0;
}

/* Backends per --device/--precision (eng_sam_open_backends); auto falls back
 * to the CPU with a note. `dec` (may be NULL: not wanted) gets the decoder's
 * own backend where the choice splits them. */
int cli_open_backend(const char *device, const char *precision, int threads, eng_backend **be,
                     eng_backend **dec)
{
    char note[512];
    eng_backend *d = NULL;
    int rc = eng_sam_open_backends(device, precision, threads, be, &d, note, sizeof note);
    if (rc) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        return rc == ENG_EINVAL ? 2 : 1;
    }
    if (note[0])
        fprintf(stderr, "tasam: %s\n", note);
    if (dec)
        *dec = d;
    else
        eng_backend_destroy(d);
    return 0;
}

/* Load a hypernetwork and the text encoder it was built for (text_dir, or
 * what the hypernetwork names), on `be`. Prints what it does. */
int cli_load_hypernet_and_text(const char *path, const char *text_dir, eng_backend *be,
                               hn_hypernet **h, hn_text **text)
{
    double t0 = cli_now_ms();
    if (hn_hypernet_load(h, path, be)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        return 1;
    }
    size_t trunk, heads;
    hn_hypernet_count(*h, &trunk, &heads);
    fprintf(stderr,
            "tasam: hypernetwork %s: version %s, id %.16s..., rank %d, alpha %g, %zu + %zu "
            "parameters, for text model %s (%d-d), loaded in %.0f ms\n",
            path, hn_hypernet_version(*h), hn_hypernet_id(*h), hn_hypernet_rank(*h),
            (double)hn_hypernet_alpha(*h), trunk, heads, hn_hypernet_text_model(*h),
            hn_hypernet_text_dim(*h), cli_now_ms() - t0);
    t0 = cli_now_ms();
    if (hn_hypernet_open_text(*h, text_dir, be, text)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        return 1;
    }
    fprintf(stderr, "tasam: text encoder: %s%s, loaded in %.0f ms\n", hn_text_describe(*text),
            hn_text_wordpiece(*text) ? "" : " (no text model: the built-in hashed embedding)",
            cli_now_ms() - t0);
    return 0;
}

/* One line per adapter property, on stderr; the id alone on stdout's
 * "adapter ID" line for scripts. */
void cli_print_adapter(const ad_adapter *ad)
{
    char tg[64];
    if (ad->n_targets == ENG_SAM_LORA_TARGETS)
        snprintf(tg, sizeof tg, "all %d decoder layers", ad->n_targets);
    else
        snprintf(tg, sizeof tg, "%d of %d decoder layers", ad->n_targets, ENG_SAM_LORA_TARGETS);
    fprintf(stderr,
            "tasam: adapter for task \"%s\": rank %d, alpha %g (scale %g), %s, %zu KiB, "
            "hypernetwork version %s, text model %s\n",
            ad->task_normalized, ad->rank, (double)ad->alpha, (double)ad_adapter_scale(ad), tg,
            ad_adapter_bytes(ad) >> 10, ad->hypernet_version, ad->text_model);
    printf("adapter %s\n", ad->id);
    fflush(stdout);
}

/* A whole-string integer in [lo, hi]. */
int cli_parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}
