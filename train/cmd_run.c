/*
 * train/cmd_run.c: `tasam-train run`: train a hypernetwork (train/run.h,
 * which states the contract a supervisor relies on: events, exit status,
 * signals, the output file).
 */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/error.h"
#include "train/io.h"
#include "train/progress.h"
#include "train/run.h"
#include "train/train.h"

static void run_usage(FILE *f)
{
    tr_run_config d;
    tr_run_config_default(&d);
    fprintf(f,
            "usage: tasam-train run --checkpoint CK --data DIR --init HN --out HN_OUT [options]\n"
            "\n"
            "Train the hypernetwork --init on the COCO set DIR (instances.json + images/) with\n"
            "SAM frozen, and write it to HN_OUT with version = the input's + 1. Image\n"
            "embeddings are computed once (on the GPU where one is usable) and cached on\n"
            "disk; the decoder's backward runs on the CPU.\n"
            "\n"
            "data and model:\n"
            "  --checkpoint CK         SAM weights (.pth or safetensors)\n"
            "  --data DIR              training set\n"
            "  --val DIR               validation set (periodic and final validation)\n"
            "  --init HN               the hypernetwork to start from (`tasam hypernet init`)\n"
            "  --out HN_OUT            where the trained one goes (may be HN: replaced)\n"
            "  --text-model DIR        text encoder folder (default: what HN names; the\n"
            "                          hashed embedding needs none)\n"
            "  --cache DIR             embedding cache (default: .tasam-cache beside DIR)\n"
            "  --device auto|cpu|cuda  where the image encoder runs (default auto)\n"
            "optimisation:\n"
            "  --steps N               optimiser steps (default %ld)\n"
            "  --batch B               examples a step (default %d)\n"
            "  --lr X                  peak learning rate (default %g)\n"
            "  --warmup N              linear warmup steps (default min(100, steps/10))\n"
            "  --min-lr-ratio X        final rate / peak after the cosine (default %g)\n"
            "  --weight-decay X        AdamW's decoupled decay (default %g)\n"
            "  --clip X                global gradient-norm limit, 0: none (default %g)\n"
            "  --l2 X                  L2 on the generated A and B (default 0)\n"
            "  --refine N              refinement rounds per example (default 0)\n"
            "  --p-box X               box prompts on the task's instances (default %g)\n"
            "  --p-absent X            tasks absent from the image (default %g)\n"
            "  --seed S                seed of everything drawn (default 0)\n"
            "  --shuffle-tasks         control: train each category with another's texts\n"
            "validation, checkpoints, output:\n"
            "  --val-every N           validate every N steps (default: at the end only)\n"
            "  --val-images N          validate on the first N images (default all)\n"
            "  --val-prompts N         clicks per (image, task) (default %d)\n"
            "  --val-ap                also AP of everything mode (slow on a CPU)\n"
            "  --val-points-per-side N its grid (default %d)\n"
            "  --publish-if-better     validate HN first; publish only if not worse\n"
            "  --checkpoint-every N    write the training state every N steps\n"
            "  --state FILE            where (default HN_OUT.state)\n"
            "  --resume FILE           continue from a training state\n"
            "  --log FILE.jsonl        JSON-lines log; the curve goes to FILE.svg\n"
            "  --progress-fd N         the same JSON lines on descriptor N\n"
            "  --threads N             CPU threads (default: all cores)\n"
            "  --nice N                lower the priority by N (0..19) at start\n"
            "  --quiet                 no progress line on stderr\n"
            "\n"
            "Exit status: 0 done (published, or refused by --publish-if-better), 1 failed,\n"
            "2 usage, 3 cancelled (SIGTERM/SIGINT: stops at the next step, publishes\n"
            "nothing). The events on --progress-fd are listed in the README (Training).\n"
            "\n"
            "example (offline, on the synthetic set and the fixture model):\n"
            "  tasam-train synth --out data/synth --seed 1 --train-images 40 --val-images 10\n"
            "  tasam hypernet init --out hn0.safetensors --text-model hashed --hidden 64\n"
            "  tasam-train run --checkpoint ../shared/fixtures/sam_tiny.safetensors \\\n"
            "      --data data/synth/train --val data/synth/val --init hn0.safetensors \\\n"
            "      --out hn1.safetensors --steps 100 --batch 8 --lr 3e-3 --val-every 50 \\\n"
            "      --log out/run.jsonl\n",
            d.steps, d.batch, (double)d.optim.lr, (double)d.optim.min_lr_ratio,
            (double)d.optim.weight_decay, (double)d.optim.clip, d.sample.p_box, d.sample.p_absent,
            d.val_cfg.prompts, d.val_cfg.ap_points_per_side);
}

static volatile sig_atomic_t run_stop;

/* A usage error: on stderr, and as the last event where a progress
 * descriptor was given. */
static int run_usage_error(int fd, const char *msg)
{
    fprintf(stderr, "tasam-train run: %s (see --help)\n", msg);
    tr_progress *p = NULL;
    if (fd >= 0 && tr_progress_open(&p, fd, NULL, 0) == 0) {
        json_t *e = json_object();
        json_object_set_new(e, "event", json_string("error"));
        json_object_set_new(e, "message", json_string(msg));
        tr_progress_emit(p, e);
        tr_progress_close(p);
    }
    return 2;
}

int tr_cmd_run(int argc, char **argv)
{
    tr_run_config c;
    tr_run_config_default(&c);
    const char *steps = NULL, *batch = NULL, *lr = NULL, *warmup = NULL, *minlr = NULL, *wd = NULL,
               *clip = NULL, *l2 = NULL, *refine = NULL, *pbox = NULL, *pabsent = NULL,
               *seed = NULL, *val_every = NULL, *val_images = NULL, *val_prompts = NULL,
               *val_pps = NULL, *ck_every = NULL, *fd = NULL, *threads = NULL, *nice_s = NULL;
    int val_ap = 0, publish = 0, shuffle = 0, quiet = 0;
    const tr_opt opts[] = {{"--checkpoint", &c.checkpoint, NULL},
                           {"--data", &c.data, NULL},
                           {"--val", &c.val, NULL},
                           {"--init", &c.init, NULL},
                           {"--out", &c.out, NULL},
                           {"--text-model", &c.text_model, NULL},
                           {"--cache", &c.cache, NULL},
                           {"--device", &c.device, NULL},
                           {"--steps", &steps, NULL},
                           {"--batch", &batch, NULL},
                           {"--lr", &lr, NULL},
                           {"--warmup", &warmup, NULL},
                           {"--min-lr-ratio", &minlr, NULL},
                           {"--weight-decay", &wd, NULL},
                           {"--clip", &clip, NULL},
                           {"--l2", &l2, NULL},
                           {"--refine", &refine, NULL},
                           {"--p-box", &pbox, NULL},
                           {"--p-absent", &pabsent, NULL},
                           {"--seed", &seed, NULL},
                           {"--shuffle-tasks", NULL, &shuffle},
                           {"--val-every", &val_every, NULL},
                           {"--val-images", &val_images, NULL},
                           {"--val-prompts", &val_prompts, NULL},
                           {"--val-ap", NULL, &val_ap},
                           {"--val-points-per-side", &val_pps, NULL},
                           {"--publish-if-better", NULL, &publish},
                           {"--checkpoint-every", &ck_every, NULL},
                           {"--state", &c.state, NULL},
                           {"--resume", &c.resume, NULL},
                           {"--log", &c.log, NULL},
                           {"--progress-fd", &fd, NULL},
                           {"--threads", &threads, NULL},
                           {"--nice", &nice_s, NULL},
                           {"--quiet", NULL, &quiet},
                           {NULL, NULL, NULL}};
    long long v = -1;
    double x;
    /* the progress descriptor first, so every usage error reaches it */
    for (int i = 0; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--progress-fd"))
            fd = argv[i + 1];
    if (tr_opt_int("run", "--progress-fd", fd, 0, 1 << 20, &v))
        return 2;
    c.progress_fd = fd ? (int)v : -1;
    int rc = tr_opts_parse("run", argc, argv, opts);
    if (rc == 1)
        run_usage(stdout);
    if (rc == 2)
        return run_usage_error(c.progress_fd, "bad command line");
    if (rc)
        return 0;
    const char *cmd = "run";
#define RUN_INT(s, opt, lo, hi, dst)                                                               \
    do {                                                                                           \
        if (tr_opt_int(cmd, opt, s, lo, hi, &v))                                                   \
            return run_usage_error(c.progress_fd, "bad value for " opt);                           \
        if (s)                                                                                     \
            dst = v;                                                                               \
    } while (0)
#define RUN_NUM(s, opt, lo, hi, dst)                                                               \
    do {                                                                                           \
        if (tr_opt_double(cmd, opt, s, lo, hi, &x))                                                \
            return run_usage_error(c.progress_fd, "bad value for " opt);                           \
        if (s)                                                                                     \
            dst = x;                                                                               \
    } while (0)
    RUN_INT(steps, "--steps", 1, 100000000, c.steps);
    RUN_INT(batch, "--batch", 1, 256, c.batch);
    RUN_NUM(lr, "--lr", 1e-9, 10, c.optim.lr);
    RUN_INT(warmup, "--warmup", 0, 100000000, c.optim.warmup);
    RUN_NUM(minlr, "--min-lr-ratio", 0, 1, c.optim.min_lr_ratio);
    RUN_NUM(wd, "--weight-decay", 0, 10, c.optim.weight_decay);
    RUN_NUM(clip, "--clip", 0, 1e6, c.optim.clip);
    RUN_NUM(l2, "--l2", 0, 1e6, c.l2);
    RUN_INT(refine, "--refine", 0, TR_MAX_POINTS - 2, c.refine);
    RUN_NUM(pbox, "--p-box", 0, 1, c.sample.p_box);
    RUN_NUM(pabsent, "--p-absent", 0, 1, c.sample.p_absent);
    RUN_INT(seed, "--seed", 0, INT64_MAX, c.seed);
    RUN_INT(val_every, "--val-every", 0, 100000000, c.val_every);
    RUN_INT(val_images, "--val-images", 0, 10000000, c.val_cfg.max_images);
    RUN_INT(val_prompts, "--val-prompts", 1, 256, c.val_cfg.prompts);
    RUN_INT(val_pps, "--val-points-per-side", 1, 64, c.val_cfg.ap_points_per_side);
    RUN_INT(ck_every, "--checkpoint-every", 0, 100000000, c.checkpoint_every);
    RUN_INT(threads, "--threads", 0, 1024, c.threads);
    int nice_by = 0;
    RUN_INT(nice_s, "--nice", 0, 19, nice_by);
#undef RUN_INT
#undef RUN_NUM
    c.val_cfg.ap = val_ap;
    c.publish_if_better = publish;
    c.shuffle_tasks = shuffle;
    c.quiet = quiet;
    if (!c.checkpoint || !c.data || !c.init || !c.out)
        return run_usage_error(c.progress_fd,
                               "--checkpoint, --data, --init and --out are required");
    if (strcmp(c.device, "auto") && strcmp(c.device, "cpu") && strcmp(c.device, "cuda"))
        return run_usage_error(c.progress_fd, "--device must be auto, cpu or cuda");
    if (c.publish_if_better && !c.val)
        return run_usage_error(c.progress_fd, "--publish-if-better needs --val");
    if (c.optim.warmup > c.steps)
        return run_usage_error(c.progress_fd, "--warmup must not exceed --steps");
    if (nice_by > 0) {
        errno = 0;
        int cur = getpriority(PRIO_PROCESS, 0);
        if ((cur == -1 && errno) ||
            setpriority(PRIO_PROCESS, 0, cur + nice_by > 19 ? 19 : cur + nice_by))
            fprintf(stderr, "tasam-train run: --nice %d: %s (continuing)\n", nice_by,
                    strerror(errno));
    }
    tr_stop_on_signals(&run_stop);
    /* a reader that went away must not kill the run: writes fail instead */
    signal(SIGPIPE, SIG_IGN);
    rc = tr_run(&c, &run_stop);
    if (rc == ENG_ECANCELED) {
        fprintf(stderr, "tasam-train run: cancelled; nothing published\n");
        return 3;
    }
    if (rc) {
        fprintf(stderr, "tasam-train run: %s\n", eng_last_error());
        return 1;
    }
    return 0;
}
