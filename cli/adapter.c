/*
 * cli/adapter.c: `tasam adapter`: generate a task's adapter and save it, or describe one.
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

/* ---- tasam adapter ---- */

static void adapter_usage(FILE *f)
{
    fprintf(f,
            "usage: tasam adapter --hypernet FILE --task TEXT --out FILE [options]\n"
            "       tasam adapter --info FILE\n"
            "\n"
            "Generate the LoRA adapter for a task (text encoder + hypernetwork) and save it\n"
            "as safetensors with its metadata; prints \"adapter ID\" on stdout.\n"
            "\n"
            "  --hypernet FILE     hypernetwork (tasam hypernet init)\n"
            "  --task TEXT         the task in words (at most %d bytes of UTF-8)\n"
            "  --out FILE          the adapter file to write\n"
            "  --text-model DIR    text encoder folder (default: what the hypernetwork names)\n"
            "  --device D          auto, cpu (default) or cuda\n"
            "  --info FILE         check a saved adapter and describe it\n",
            AD_TASK_MAX);
}

int cli_cmd_adapter(int argc, char **argv)
{
    const char *hyper = NULL, *task = NULL, *out = NULL, *model = NULL, *info = NULL;
    const char *device = "cpu";
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **dst = !strcmp(o, "--hypernet")     ? &hyper
                           : !strcmp(o, "--task")       ? &task
                           : !strcmp(o, "--out")        ? &out
                           : !strcmp(o, "--text-model") ? &model
                           : !strcmp(o, "--info")       ? &info
                           : !strcmp(o, "--device")     ? &device
                                                        : NULL;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            adapter_usage(stdout);
            return 0;
        }
        if (!dst) {
            fprintf(stderr, "tasam adapter: unknown option '%s' (see --help)\n", o);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "tasam adapter: %s needs a value\n", o);
            return 2;
        }
        *dst = argv[++i];
    }
    if (info) {
        ad_adapter *ad = NULL;
        if (ad_adapter_load(&ad, info)) {
            fprintf(stderr, "tasam: %s\n", eng_last_error());
            return 1;
        }
        cli_print_adapter(ad);
        printf("task %s\nhypernet %s (version %s)\ncreated %lld\n", ad->task, ad->hypernet_id,
               ad->hypernet_version, (long long)ad->created);
        ad_adapter_destroy(ad);
        return 0;
    }
    if (!hyper || !task || !out) {
        fprintf(stderr, "tasam adapter: --hypernet, --task and --out are required (see --help)\n");
        return 2;
    }
    eng_backend *be = NULL;
    hn_hypernet *h = NULL;
    hn_text *text = NULL;
    ad_adapter *ad = NULL;
    int status = cli_open_backend(device, "fp32", 0, &be, NULL);
    if (status)
        return status;
    status = 1;
    if (cli_load_hypernet_and_text(hyper, model, be, &h, &text))
        goto out;
    double t0 = cli_now_ms();
    if (ad_adapter_generate(text, h, task, strlen(task), &ad)) {
        fprintf(stderr, "tasam: --task: %s\n", eng_last_error());
        status = 2;
        goto out;
    }
    double ms = cli_now_ms() - t0;
    if (ad_adapter_save(ad, out)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        goto out;
    }
    fprintf(stderr, "tasam: adapter generated in %.2f ms, wrote %s\n", ms, out);
    cli_print_adapter(ad);
    status = 0;
out:
    ad_adapter_destroy(ad);
    hn_text_destroy(text);
    hn_hypernet_destroy(h);
    eng_backend_destroy(be);
    return status;
}
