/*
 * train/cmd_embed.c: `tasam-train embed`: fill a dataset's embedding cache
 * (train/embed.h) ahead of `run` or `eval`, e.g. on a GPU machine, and say
 * how fast the encoder went.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/error.h"
#include "train/embed.h"
#include "train/io.h"
#include "train/model.h"
#include "train/train.h"

static void embed_usage(FILE *f)
{
    fprintf(f, "usage: tasam-train embed --checkpoint CK --data DIR [options]\n"
               "\n"
               "Compute SAM's image embedding of every image of DIR (instances.json + images/)\n"
               "that the cache lacks, and store it there (f16, keyed by the image's SHA-256\n"
               "and the model). `run` and `eval` do the same on their own; this command does\n"
               "it ahead of time, e.g. on a GPU machine, and reports the encoder's throughput.\n"
               "\n"
               "  --checkpoint CK         SAM weights (.pth or safetensors)\n"
               "  --data DIR              the dataset folder\n"
               "  --cache DIR             the cache (default: .tasam-cache beside DIR)\n"
               "  --device auto|cpu|cuda  where the encoder runs (default auto)\n"
               "  --batch N               images per encoder call on a GPU (default 8)\n"
               "  --threads N             CPU threads (default: all cores)\n"
               "  --json FILE             write {images, computed, seconds, images_per_s, device}\n"
               "\n"
               "example:\n"
               "  tasam-train embed --checkpoint ../shared/fixtures/sam_tiny.safetensors \\\n"
               "      --data data/synth/train\n");
}

static double embed_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void embed_progress(void *ctx, int done, int total, double ips)
{
    (void)ctx;
    fprintf(stderr, "%sembed: %d/%d images, %.2f images/s%s", isatty(2) ? "\r" : "", done, total,
            ips, isatty(2) && done < total ? "" : "\n");
}

int tr_cmd_embed(int argc, char **argv)
{
    const char *ckpt = NULL, *data = NULL, *cache = NULL, *device = "auto", *batch = NULL,
               *threads = NULL, *json = NULL;
    const tr_opt opts[] = {{"--checkpoint", &ckpt, NULL}, {"--data", &data, NULL},
                           {"--cache", &cache, NULL},     {"--device", &device, NULL},
                           {"--batch", &batch, NULL},     {"--threads", &threads, NULL},
                           {"--json", &json, NULL},       {NULL, NULL, NULL}};
    int rc = tr_opts_parse("embed", argc, argv, opts);
    if (rc == 1)
        embed_usage(stdout);
    if (rc)
        return rc == 1 ? 0 : 2;
    long long nb = 8, nt = 0;
    if (tr_opt_int("embed", "--batch", batch, 1, 64, &nb) ||
        tr_opt_int("embed", "--threads", threads, 0, 1024, &nt))
        return 2;
    if (!ckpt || !data) {
        fprintf(stderr, "tasam-train embed: --checkpoint and --data are required (see --help)\n");
        return 2;
    }
    char dir[4096];
    if (cache)
        snprintf(dir, sizeof dir, "%s", cache);
    else if (tr_embed_default_dir(data, dir, sizeof dir)) {
        fprintf(stderr, "tasam-train embed: %s\n", eng_last_error());
        return 1;
    }
    tr_coco *ds = NULL;
    tr_embed *e = NULL;
    tr_model tm = {0};
    int missing = 0;
    double t0 = 0, secs = 0;
    if ((rc = tr_coco_open_dir(&ds, data, 0)) ||
        (rc = tr_model_open(&tm, ckpt, device, (int)nt, (int)nb, 0, 0)) ||
        (rc = tr_embed_open(&e, ds, dir, eng_sam_model_id(tm.m), &missing)))
        goto out;
    fprintf(stderr, "embed: %d images, %d cached, %d to compute on %s\n", ds->n_images,
            ds->n_images - missing, missing, eng_backend_describe(tm.enc));
    t0 = embed_now();
    rc = tr_embed_fill(e, tm.m, tr_model_on_gpu(&tm) ? (int)nb : 1, embed_progress, NULL, NULL);
    secs = embed_now() - t0;
    if (!rc) {
        printf("embedded %d images in %.2f s (%.3f images/s) on %s; cache %s\n", missing, secs,
               missing ? missing / secs : 0.0, eng_backend_describe(tm.enc), dir);
        if (json) {
            json_t *j = json_object();
            json_object_set_new(j, "images", json_integer(ds->n_images));
            json_object_set_new(j, "computed", json_integer(missing));
            json_object_set_new(j, "seconds", json_real(secs));
            json_object_set_new(j, "images_per_s", json_real(missing ? missing / secs : 0.0));
            json_object_set_new(j, "device", json_string(eng_backend_describe(tm.enc)));
            json_object_set_new(j, "model_id", json_string(eng_sam_model_id(tm.m)));
            rc = tr_mkdirs_parent(json);
            if (!rc)
                rc = tr_write_json(json, j, JSON_INDENT(2));
            json_decref(j);
        }
    }
out:
    if (rc)
        fprintf(stderr, "tasam-train embed: %s\n", eng_last_error());
    tr_embed_destroy(e);
    tr_model_close(&tm);
    tr_coco_destroy(ds);
    return rc ? 1 : 0;
}
