/*
 * train/run.h: the training loop (`tasam-train run`), and the contract a
 * supervisor (the daemon's training worker) relies on.
 *
 * A run, in order:
 *   1. loads SAM (CPU: the decoder's backward exists there only), the
 *      initial hypernetwork (--init), its text encoder, the train and val
 *      datasets;
 *   2. embeds every image once with the frozen image encoder (on the GPU
 *      with --device cuda, or auto where one is usable; else the CPU) into
 *      the on-disk cache (train/embed.h), so a second run skips the encoder,
 *      and every phrasing once with the text encoder (train/tasks.h);
 *   3. steps: each draws `batch` examples (an image uniformly, then a task
 *      and a prompt as train/sample.h draws them: clicks anywhere, boxes on
 *      the task's instances, absent tasks), runs them grouped by task through
 *      train/step.h, optionally `refine` more rounds (a click from the
 *      previous answer's error region, its logits as the mask input, one
 *      mask), sums the rounds' losses, averages over the batch, and takes
 *      one AdamW step (train/optim.h: warmup, cosine, clipping). Step k
 *      draws from the generator (seed, k), so a resumed run repeats an
 *      uninterrupted one; on one thread the result is bit-for-bit the same;
 *   4. validates (train/evaluate.h) every val_every steps and at the end,
 *      writes the training state every checkpoint_every steps, and finally
 *      writes the hypernetwork.
 *
 * The contract of `tasam-train run` (what train/cmd_run.c exposes):
 *
 *   --progress-fd N: one JSON object per line on descriptor N (the same
 *   lines go to --log FILE; a human progress line goes to stderr). Readers
 *   must ignore keys they do not know.
 *     {"event":"start","steps":S,"batch":B,"train_images":n,"val_images":m,
 *      "init":{"id":"..","version":".."},"out":"path","step":k0}
 *         first (k0 > 0 when resuming);
 *     {"event":"embed","done":i,"total":n,"images_per_s":x}
 *         while the image encoder fills the cache (only when it must);
 *     {"event":"step","step":k,"steps":S,"loss":x,"focal":x,"dice":x,
 *      "iou_mse":x,"l2":x,"lr":x,"grad_norm":x,"samples_per_s":x,"eta_s":x}
 *         after each step (k = steps done, 1..S);
 *     {"event":"val","step":k,"metrics":{"miou":x,"ap":x|null,"pairs":n,
 *      "groups":{"seen":{...},"heldout_phrasing":{...},
 *      "heldout_combination":{...},"no_objects":{...}}}}
 *         after each validation (step 0: the initial hypernetwork, with
 *         --publish-if-better);
 *     {"event":"checkpoint","step":k,"path":"..."}
 *         after each training-state write;
 *     and last exactly one of
 *     {"event":"done","out":"path","id":"hex","version":"V","published":true}
 *     {"event":"done","published":false,"reason":"..."}   (the gate refused)
 *     {"event":"error","message":"..."}                    (failed, or
 *                                                           "cancelled")
 *   The output file (--out) is written atomically (a temporary file in its
 *   folder, fsync, rename, fsync of the folder) with version = the input's
 *   version + 1 (decimal strings; "0" from `tasam hypernet init`) and the
 *   training configuration in its metadata ("training", JSON); nothing is
 *   written at --out unless the run succeeds and the gate, when asked,
 *   allows it. --out may name the --init file (it is replaced).
 *   SIGTERM or SIGINT stops the run at the next step boundary (a running
 *   validation or embedding pass stops between tasks or images, the CPU
 *   image encoder after its current image): nothing is published, the last
 *   event is {"event":"error","message":"cancelled"}, and the exit status
 *   is 3. A failed run exits 1, a usage error 2, success 0 (including a
 *   refusal by the gate, which is not a failure).
 *   --threads N bounds the CPU threads; --nice N lowers the priority at
 *   start; --device cpu|cuda|auto picks where the image encoder runs;
 *   --publish-if-better validates --init before training and publishes
 *   only if the final validation mIoU is not below it.
 *
 * Training state (--state, every --checkpoint-every steps; --resume FILE
 * continues from one): a safetensors file with the hypernetwork's
 * parameters and AdamW's moments as flat f32 tensors ("params", "adam.m",
 * "adam.v"), and metadata: format "tasam-train-state", format_version "1",
 * step, the hypernetwork configuration, the initial hypernetwork's id and
 * version, and the run's result-affecting configuration ("config", JSON),
 * which a resume must match key for key.
 */
#ifndef TASAM_TRAIN_RUN_H
#define TASAM_TRAIN_RUN_H

#include <signal.h>
#include <stdint.h>

#include "train/evaluate.h"
#include "train/optim.h"
#include "train/sample.h"

typedef struct tr_run_config {
    const char *checkpoint; /* SAM weights (.pth or safetensors) */
    const char *data;       /* training set folder: instances.json + images/ */
    const char *val;        /* validation set folder, or NULL */
    const char *init;       /* hypernetwork to start from */
    const char *out;        /* where the trained hypernetwork goes */
    const char *cache;      /* embedding cache folder (NULL: beside the data) */
    const char *text_model; /* text model folder (NULL: as the hypernetwork names it) */
    const char *log;        /* JSON-lines log (NULL: none); the curve beside it */
    const char *state;      /* training-state file (NULL: OUT.state) */
    const char *resume;     /* a training-state file to continue from, or NULL */
    const char *device;     /* where the image encoder runs: "auto", "cpu", "cuda" */
    long steps;             /* optimiser steps (100) */
    int batch;              /* examples a step (8) */
    tr_optim_config optim;  /* lr 1e-3, warmup min(100, steps/10), weight decay 0.01, clip 1 */
    float l2;               /* lambda of the L2 on the generated factors (0) */
    int refine;             /* refinement rounds after the first prompt (0) */
    tr_sample_config sample;
    uint64_t seed;          /* (0) */
    int threads;            /* CPU threads, 0: all cores */
    long val_every;         /* validate every N steps, 0: only at the end (0) */
    long checkpoint_every;  /* write the state every N steps, 0: never (0) */
    tr_eval_config val_cfg; /* how validation evaluates (AP off by default: it is slow) */
    int publish_if_better;  /* the gate above */
    int shuffle_tasks;      /* the control: every category trained with another's texts */
    int progress_fd;        /* -1: none */
    int quiet;              /* 1: no human progress line on stderr */
} tr_run_config;

void tr_run_config_default(tr_run_config *c);

/* Run. 0 when the run ended as it should (the hypernetwork published, or
 * the gate refused: see the done event), ENG_ECANCELED when *stop was set
 * (stop may be NULL), or another negative code; the matching last event
 * has been written and the message is in eng_last_error(). */
int tr_run(const tr_run_config *c, volatile sig_atomic_t *stop);

#endif
