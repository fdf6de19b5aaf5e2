/*
 * server/train_parse.h: what tasamd reads from outside for training jobs:
 * the body of POST /admin/train, the dataset paths in it (confined to
 * --train-data-dir), and the trainer's progress lines. All of it is treated
 * as hostile: every field is type- and range-checked, unknown request
 * fields and duplicate keys are refused, and a progress line that is not
 * what `tasam-train run --progress-fd` writes is an error, never a crash.
 * tests/fuzz/fuzz_train.c fuzzes the three parsers.
 */
#ifndef TASAM_SERVER_TRAIN_PARSE_H
#define TASAM_SERVER_TRAIN_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "server/error.h"
#include "server/train_db.h"

/* Longest dataset path accepted in a request (bytes, relative). */
#define SRV_TRAIN_REL_MAX 512
/* Longest progress line accepted from the trainer (bytes, newline excluded). */
#define SRV_TRAIN_LINE_MAX 65536

/* A training request, validated, with the defaults filled in. */
typedef struct srv_train_req {
    char data[SRV_TRAIN_REL_MAX + 1]; /* training split, relative to --train-data-dir */
    char val[SRV_TRAIN_REL_MAX + 1];  /* validation split, "" for none */
    int64_t steps;                    /* optimiser steps (default 100, as tasam-train run) */
    int64_t batch;                    /* examples per step (default 8, as tasam-train run) */
    double lr;                        /* peak learning rate, NaN: the trainer's default */
    int64_t warmup;                   /* warmup steps, -1: the trainer's default */
    double weight_decay;              /* AdamW decay, NaN: default */
    double clip;                      /* gradient-norm clip, NaN: default */
    int64_t seed;                     /* -1: default */
    int publish_if_better;            /* publish only if validation is not worse */
} srv_train_req;

/*
 * Parse a POST /admin/train body (a JSON object: data, val, steps, batch,
 * lr, warmup, weight_decay, clip, seed, publish_if_better). Returns 0, or
 * -1 with *e set (400 naming the field).
 */
int srv_train_req_parse(const char *body, size_t len, srv_train_req *out, srv_error *e);

/* The canonical JSON of a request (every field, defaults included), what
 * the job row stores and the job JSON shows. Returns bytes written (< cap),
 * or -1 when it does not fit. */
int srv_train_req_json(const srv_train_req *r, char *out, size_t cap);

/*
 * A dataset path of a request: `rel` must be relative, without a ".."
 * component, without control characters, and must resolve (symlinks
 * followed) to a folder inside `root` (itself a resolved path) holding an
 * instances.json, with an images/ folder inside `root` too when present.
 * Returns 0 with the resolved path in abs (cap bytes), or -1 with *e set
 * (400 naming `field`).
 */
int srv_train_resolve(const char *root, const char *rel, const char *field, char *abs, size_t cap,
                      srv_error *e);

/* The trainer's progress events. */
typedef enum srv_tevent_type {
    SRV_TEV_OTHER = 0, /* an event this daemon does not know: ignored */
    SRV_TEV_START,
    SRV_TEV_STEP,
    SRV_TEV_VAL,
    SRV_TEV_CHECKPOINT,
    SRV_TEV_DONE,
    SRV_TEV_ERROR
} srv_tevent_type;

/* One progress line, parsed. Numbers absent from the line are NaN or -1. */
typedef struct srv_tevent {
    srv_tevent_type type;       /* which event */
    int64_t step;               /* step, val, checkpoint */
    int64_t steps;              /* start, step */
    int64_t batch;              /* start */
    int64_t train_images;       /* start */
    int64_t val_images;         /* start */
    double loss, focal, dice;   /* step: the loss and its parts */
    double iou_mse;             /* step */
    double lr;                  /* step */
    double samples_per_s;       /* step */
    double eta_s;               /* step */
    char init_id[65];           /* start: the hypernetwork it starts from */
    char init_version[64];      /* start */
    char path[SRV_TJOB_PATH];   /* start, checkpoint, done: out / path */
    int published;              /* done */
    char id[65];                /* done, published: content id */
    char version[64];           /* done, published */
    char text[SRV_TJOB_REASON]; /* done unpublished: reason; error: message */
    char val[SRV_TJOB_VAL];     /* val: {"step":k,"metrics":{...}} as compact JSON */
} srv_tevent;

/*
 * Parse one progress line (len bytes, no newline). Unknown keys are
 * ignored; an unknown event is SRV_TEV_OTHER. Returns 0, or -1 with a
 * one-line reason in err (a malformed line: the caller fails the job).
 */
int srv_tevent_parse(const char *line, size_t len, srv_tevent *ev, char *err, size_t errlen);

#endif
