/*
 * cli/embed_text.c: `tasam embed-text`: texts through the task-text encoder.
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

/* ---- tasam embed-text ---- */

static void embed_usage(FILE *f)
{
    fprintf(f,
            "usage: tasam embed-text [--text-model M] [--dump OUT.safetensors] TEXT...\n"
            "\n"
            "Embed texts with the task-text encoder and print a summary per text.\n"
            "\n"
            "  --text-model M     the text encoder, as for hypernet init, segment and tasamd:\n"
            "                     a name looked up as models/NAME (default %s,\n"
            "                     which deploy/fetch-text-model.sh fetches), a Hugging Face\n"
            "                     BERT folder (config.json, vocab.txt, model.safetensors),\n"
            "                     or 'hashed' for the built-in hashed n-gram embedding\n"
            "  --dim N            width of the hashed embedding (default 384)\n",
            HN_TEXT_DEFAULT_MODEL);
    fprintf(f, "  --dump FILE        write input_ids and attention_mask [n, T] (i32; BERT only)\n"
               "                     and embeddings [n, d] (f32) as safetensors\n"
               "  --device D         auto, cpu (default) or cuda\n");
}

int cli_cmd_embed_text(int argc, char **argv)
{
    const char *model = NULL, *dump = NULL, *device = "cpu";
    int dim = 384, n = 0, status = 1;
    const char **texts = calloc((size_t)argc + 1, sizeof *texts);
    if (!texts)
        return 1;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = !strcmp(o, "--text-model") || !strcmp(o, "--dump") || !strcmp(o, "--dim") ||
                    !strcmp(o, "--device");
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            embed_usage(stdout);
            free(texts);
            return 0;
        } else if (takes && !v) {
            fprintf(stderr, "tasam embed-text: %s needs a value\n", o);
            free(texts);
            return 2;
        } else if (!strcmp(o, "--")) {
            while (++i < argc)
                texts[n++] = argv[i];
        } else if (takes) {
            i++;
            if (!strcmp(o, "--text-model"))
                model = v;
            else if (!strcmp(o, "--dump"))
                dump = v;
            else if (!strcmp(o, "--device"))
                device = v;
            else if ((dim = atoi(v)) < 16 || dim > 65536) {
                fprintf(stderr, "tasam embed-text: --dim must be 16..65536\n");
                free(texts);
                return 2;
            }
        } else if (o[0] == '-' && o[1] == '-') {
            fprintf(stderr, "tasam embed-text: unknown option '%s' (see --help)\n", o);
            free(texts);
            return 2;
        } else {
            texts[n++] = o;
        }
    }
    if (n == 0) {
        fprintf(stderr, "tasam embed-text: no TEXT given (see tasam embed-text --help)\n");
        free(texts);
        return 2;
    }
    eng_backend *be = NULL;
    hn_text *t = NULL;
    size_t *lens = calloc((size_t)n, sizeof *lens);
    float *emb = NULL;
    int32_t *ids = NULL, *mask = NULL, *ntok = calloc((size_t)n, sizeof *ntok);
    if (!lens || !ntok)
        goto out;
    int rc = cli_open_backend(device, "fp32", 0, &be, NULL);
    if (rc) {
        status = rc;
        goto out;
    }
    if (hn_text_open(&t, model, dim, be, n < 16 ? n : 16)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        goto out;
    }
    if (!hn_text_wordpiece(t))
        fprintf(stderr,
                "tasam: the built-in hashed n-gram embedding (%d-d); it carries no meaning "
                "beyond shared words\n",
                hn_text_dim(t));
    const int d = hn_text_dim(t), L = hn_text_max_len(t);
    int T = 0;
    for (int i = 0; i < n; i++)
        lens[i] = strlen(texts[i]);
    if (L > 0) {
        ids = calloc((size_t)n * L, sizeof *ids);
        mask = calloc((size_t)n * L, sizeof *mask);
        if (!ids || !mask)
            goto out;
        for (int i = 0; i < n; i++) {
            if (hn_text_tokenize(t, texts[i], lens[i], L, ids + (size_t)i * L, mask + (size_t)i * L,
                                 &ntok[i])) {
                fprintf(stderr, "tasam: text %d: %s\n", i + 1, eng_last_error());
                goto out;
            }
            if (ntok[i] > T)
                T = ntok[i];
        }
        /* [n, L] -> [n, T]: the batch is padded to its longest text */
        for (int i = 0; i < n; i++) {
            memmove(ids + (size_t)i * T, ids + (size_t)i * L, (size_t)T * sizeof *ids);
            memmove(mask + (size_t)i * T, mask + (size_t)i * L, (size_t)T * sizeof *mask);
        }
    }
    emb = malloc((size_t)n * d * sizeof *emb);
    if (!emb)
        goto out;
    double t0 = cli_now_ms();
    if (hn_text_embed(t, texts, lens, n, emb)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        goto out;
    }
    double ms = cli_now_ms() - t0;
    printf("text model: %s\n", hn_text_describe(t));
    for (int i = 0; i < n; i++) {
        const float *e = emb + (size_t)i * d;
        double nrm = 0;
        for (int k = 0; k < d; k++)
            nrm += (double)e[k] * e[k];
        printf("[%d] ", i);
        if (L > 0)
            printf("%d tokens, ", ntok[i]);
        printf("norm %.4f, [%.4f, %.4f, %.4f, %.4f, ...]  \"%.60s%s\"\n", sqrt(nrm), e[0], e[1],
               e[2], e[3], texts[i], lens[i] > 60 ? "..." : "");
    }
    for (int i = 1; i < n && i < 8; i++) {
        double dot = 0;
        for (int k = 0; k < d; k++)
            dot += (double)emb[k] * emb[(size_t)i * d + k];
        printf("cosine([0], [%d]) = %.4f\n", i, dot);
    }
    fprintf(stderr, "tasam: %d text(s) embedded in %.2f ms\n", n, ms);
    if (dump) {
        eng_st_entry e[3];
        memset(e, 0, sizeof e);
        size_t ne = 0;
        if (L > 0 && T > 0) {
            e[ne++] = (eng_st_entry){"input_ids", ENG_I32, 2, {n, T}, ids};
            e[ne++] = (eng_st_entry){"attention_mask", ENG_I32, 2, {n, T}, mask};
        }
        e[ne++] = (eng_st_entry){"embeddings", ENG_F32, 2, {n, d}, emb};
        const char *meta[] = {"text_model", hn_text_describe(t)};
        if (eng_safetensors_write(dump, e, ne, meta, 1)) {
            fprintf(stderr, "tasam: %s\n", eng_last_error());
            goto out;
        }
        fprintf(stderr, "tasam: wrote %s%s\n", dump,
                L > 0 ? "" : " (embeddings only: the hashed embedding has no tokens)");
    }
    status = 0;
out:
    if (status == 1 && (!lens || !ntok))
        fprintf(stderr, "tasam: out of memory\n");
    free(texts);
    free(lens);
    free(emb);
    free(ids);
    free(mask);
    free(ntok);
    hn_text_destroy(t);
    eng_backend_destroy(be);
    return status;
}
