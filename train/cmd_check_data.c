/*
 * train/cmd_check_data.c: `tasam-train check-data`: load a COCO dataset as
 * training would (train/coco.h), optionally decode every image, and
 * describe it, so bad data shows up before a run rather than in the middle
 * of one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/error.h"
#include "engine/image.h"
#include "train/coco.h"
#include "train/io.h"
#include "train/train.h"

static void check_data_usage(FILE *f)
{
    fprintf(f, "usage: tasam-train check-data --data DIR [--decode]\n"
               "       tasam-train check-data --json FILE [--images DIR | --no-images] [--decode]\n"
               "\n"
               "Load a COCO instances dataset the way training loads it and describe it:\n"
               "images, categories and their task phrasings, instances, crowd regions, held-out\n"
               "splits, empty masks. Any bad entry stops it with the file and the entry named\n"
               "(exit status 1).\n"
               "\n"
               "  --data DIR     a dataset folder: DIR/instances.json and DIR/images/ (as\n"
               "                 `tasam-train synth` writes them)\n"
               "  --json FILE    a COCO instances file ...\n"
               "  --images DIR   ... and its image folder (default: FILE's folder/images)\n"
               "  --no-images    do not look for image files (ground truth for evaluation)\n"
               "  --decode       decode every image and check its size against the JSON\n"
               "\n"
               "example:\n"
               "  tasam-train check-data --data data/synth/train --decode\n");
}

static int check_data_cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x > y ? 1 : x < y ? -1 : 0;
}

static double check_data_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void check_data_describe(const tr_coco *c)
{
    int n_tasks = 0, n_held = 0, n_gen = 0, split[3] = {0, 0, 0}, n_crowd = 0, n_empty = 0;
    int *per_cat = calloc((size_t)c->n_categories + 1, sizeof *per_cat);
    int *per_img = malloc(((size_t)c->n_images + 1) * sizeof *per_img);
    for (int k = 0; k < c->n_categories; k++) {
        n_tasks += c->categories[k].n_tasks;
        n_gen += c->categories[k].tasks_generated;
        split[c->categories[k].split]++;
        for (int t = 0; t < c->categories[k].n_tasks; t++)
            n_held += c->categories[k].task_heldout[t];
    }
    for (int a = 0; a < c->n_anns; a++) {
        n_crowd += c->anns[a].iscrowd;
        n_empty += eng_rle_area(&c->anns[a].mask) == 0;
        if (per_cat && !c->anns[a].iscrowd)
            per_cat[c->anns[a].category]++;
    }
    printf("%s: %d images, %d categories, %d annotations (%d crowd regions)\n", c->json_path,
           c->n_images, c->n_categories, c->n_anns, n_crowd);
    printf("  tasks: %d phrasings (%d held out from training); %d categories without `tasks` "
           "get the default phrasings\n",
           n_tasks, n_held, n_gen);
    printf("  category splits: %d seen, %d heldout_combination, %d no_objects\n", split[0],
           split[1], split[2]);
    if (per_img && c->n_images > 0) {
        int bare = 0;
        for (int i = 0; i < c->n_images; i++) {
            per_img[i] = c->images[i].n_anns;
            bare += per_img[i] == 0;
        }
        qsort(per_img, (size_t)c->n_images, sizeof *per_img, check_data_cmp_int);
        printf("  annotations per image: min %d, median %d, max %d; %d images without any\n",
               per_img[0], per_img[c->n_images / 2], per_img[c->n_images - 1], bare);
    }
    if (per_cat) {
        int none = 0, first = -1;
        for (int k = 0; k < c->n_categories; k++)
            if (per_cat[k] == 0 && none++ == 0)
                first = k;
        if (none)
            printf("  %d categories have no instance (their tasks only ever target nothing), "
                   "e.g. \"%s\"\n",
                   none, c->categories[first].name);
    }
    if (n_empty)
        printf("  note: %d annotations have an empty mask (no pixel centre inside)\n", n_empty);
    free(per_cat);
    free(per_img);
}

int tr_cmd_check_data(int argc, char **argv)
{
    const char *data = NULL, *json = NULL, *images = NULL;
    int decode = 0, no_images = 0;
    const tr_opt opts[] = {{"--data", &data, NULL},           {"--json", &json, NULL},
                           {"--images", &images, NULL},       {"--decode", NULL, &decode},
                           {"--no-images", NULL, &no_images}, {NULL, NULL, NULL}};
    int prc = tr_opts_parse("check-data", argc, argv, opts);
    if (prc == 1)
        check_data_usage(stdout);
    if (prc)
        return prc == 1 ? 0 : 2;
    if (!data == !json || (data && images) || (no_images && (decode || images))) {
        fprintf(stderr, "tasam-train check-data: give --data DIR or --json FILE [--images DIR | "
                        "--no-images] (see --help)\n");
        return 2;
    }
    char dflt[4096];
    if (json && !images && !no_images) {
        const char *slash = strrchr(json, '/');
        snprintf(dflt, sizeof dflt, "%.*s%simages", slash ? (int)(slash - json) : 0, json,
                 slash ? "/" : "");
        images = dflt;
    }
    tr_coco *c = NULL;
    const double t0 = check_data_now();
    int rc = data ? tr_coco_open_dir(&c, data, 0)
                  : tr_coco_load(&c, json, images, no_images ? TR_COCO_NO_IMAGES : 0);
    if (rc) {
        fprintf(stderr, "tasam-train check-data: %s\n", eng_last_error());
        return 1;
    }
    fprintf(stderr, "check-data: loaded in %.2f s\n", check_data_now() - t0);
    check_data_describe(c);
    int status = 0;
    if (decode) {
        const int tty = isatty(2);
        double last = check_data_now();
        for (int i = 0; i < c->n_images; i++) {
            eng_image im;
            if (tr_coco_load_image(c, i, &im)) {
                fprintf(stderr, "%stasam-train check-data: %s\n", tty ? "\n" : "",
                        eng_last_error());
                status = 1;
                break;
            }
            eng_image_free(&im);
            if (check_data_now() - last > 1.0 || i + 1 == c->n_images) {
                last = check_data_now();
                fprintf(stderr, "%scheck-data: decoded %d/%d images%s", tty ? "\r" : "", i + 1,
                        c->n_images, tty && i + 1 < c->n_images ? "" : "\n");
            }
        }
        if (!status)
            printf("  every image decodes at its declared size\n");
    }
    tr_coco_destroy(c);
    return status;
}
