/*
 * train/cmd_synth.c: `tasam-train synth`: write the procedural synthetic
 * dataset (train/synth.h) with progress on stderr.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/error.h"
#include "train/io.h"
#include "train/synth.h"
#include "train/train.h"

static void synth_usage(FILE *f)
{
    tr_synth_config d;
    tr_synth_config_default(&d);
    fprintf(f,
            "usage: tasam-train synth --out DIR [options]\n"
            "\n"
            "Write a procedural, deterministic dataset of coloured, textured shapes as COCO\n"
            "instances: DIR/train/instances.json + DIR/train/images/*.png and DIR/val/...\n"
            "(masks as compressed RLE). Shapes: circle, square, triangle, star, ring,\n"
            "hexagon; colours: red, green, blue, yellow, purple; textures: solid, striped,\n"
            "dotted; sizes: small, large; several per image, occluding each other, on\n"
            "textured backgrounds. Categories are attribute combinations (\"red circle\",\n"
            "\"small striped triangle\", ...), each with phrasings in a `tasks` list.\n"
            "The validation split adds held-out phrasings (`heldout_tasks`), colour+shape\n"
            "combinations never drawn in train (split \"heldout_combination\") and\n"
            "combinations drawn nowhere (split \"no_objects\"). The same seed and options\n"
            "give the same bytes; image i depends only on (seed, split, i).\n"
            "\n"
            "  --out DIR             output folder (created)\n"
            "  --seed S              random seed, 0..2^63-1 (default %llu)\n"
            "  --train-images N      training images (default %d)\n"
            "  --val-images M        validation images (default %d)\n"
            "  --size WxH            image size, 64..4096 each (default %dx%d)\n"
            "  --objects MIN-MAX     objects per image, 1..%d (default %d-%d)\n"
            "  --force               overwrite an existing dataset in DIR\n"
            "  --quiet               no progress output\n"
            "\n"
            "example:\n"
            "  tasam-train synth --out data/synth --seed 1 --train-images 200 --val-images 50\n",
            (unsigned long long)d.seed, d.train_images, d.val_images, d.width, d.height,
            TR_SYNTH_MAX_OBJECTS, d.min_objects, d.max_objects);
}

typedef struct {
    double t0, last;
    int tty, quiet;
} synth_progress;

static double synth_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One line a second at most (and at the end of each split); on a terminal
 * the line is rewritten in place. */
static void synth_on_image(void *ctx, const char *split, int done, int total)
{
    synth_progress *p = ctx;
    double now = synth_now();
    if (p->quiet || (done < total && now - p->last < 1.0))
        return;
    p->last = now;
    double rate = done / (now - p->t0 > 1e-9 ? now - p->t0 : 1e-9);
    fprintf(stderr, "%ssynth: %s %d/%d images (%.0f%%), %.1f images/s%s", p->tty ? "\r" : "", split,
            done, total, 100.0 * done / (total ? total : 1), rate,
            p->tty && done < total ? "" : "\n");
    if (done == total)
        p->t0 = now;
}

int tr_cmd_synth(int argc, char **argv)
{
    tr_synth_config c;
    tr_synth_config_default(&c);
    const char *out = NULL, *seed = NULL, *ntrain = NULL, *nval = NULL, *size = NULL,
               *objects = NULL;
    int force = 0, quiet = 0;
    const tr_opt opts[] = {
        {"--out", &out, NULL},         {"--seed", &seed, NULL},   {"--train-images", &ntrain, NULL},
        {"--val-images", &nval, NULL}, {"--size", &size, NULL},   {"--objects", &objects, NULL},
        {"--force", NULL, &force},     {"--quiet", NULL, &quiet}, {NULL, NULL, NULL}};
    int rc = tr_opts_parse("synth", argc, argv, opts);
    if (rc == 1)
        synth_usage(stdout);
    if (rc)
        return rc == 1 ? 0 : 2;
    long long n;
    int a, b;
    char extra;
    const char *bad = NULL;
    if (seed && (tr_parse_int(seed, 0, INT64_MAX, &n) || (c.seed = (uint64_t)n, 0)))
        bad = "--seed";
    if (ntrain && (tr_parse_int(ntrain, 0, 10000000, &n) || (c.train_images = (int)n, 0)))
        bad = "--train-images";
    if (nval && (tr_parse_int(nval, 0, 10000000, &n) || (c.val_images = (int)n, 0)))
        bad = "--val-images";
    if (size && tr_parse_size(size, 64, 4096, &c.width, &c.height))
        bad = "--size";
    if (objects && (sscanf(objects, "%d-%d%c", &a, &b, &extra) != 2 || a < 1 || b < a ||
                    b > TR_SYNTH_MAX_OBJECTS || (c.min_objects = a, c.max_objects = b, 0)))
        bad = "--objects";
    if (bad) {
        fprintf(stderr, "tasam-train synth: bad value for %s (see --help)\n", bad);
        return 2;
    }
    if (!out) {
        fprintf(stderr, "tasam-train synth: --out DIR is required (see --help)\n");
        return 2;
    }
    synth_progress p = {.t0 = synth_now(), .tty = isatty(2), .quiet = quiet};
    p.last = p.t0;
    const double t0 = p.t0;
    if (!quiet)
        fprintf(stderr,
                "synth: %s: seed %llu, %d train + %d val images of %dx%d, %d-%d objects each\n",
                out, (unsigned long long)c.seed, c.train_images, c.val_images, c.width, c.height,
                c.min_objects, c.max_objects);
    if (tr_synth_write(&c, out, force, synth_on_image, &p)) {
        fprintf(stderr, "tasam-train synth: %s\n", eng_last_error());
        return 1;
    }
    if (!quiet)
        fprintf(stderr, "synth: wrote %s/train and %s/val in %.1f s\n", out, out, synth_now() - t0);
    return 0;
}
