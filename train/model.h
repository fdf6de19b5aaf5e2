/*
 * train/model.h: SAM loaded on the device a trainer command asks for
 * ("auto": the GPU where one is usable, else the CPU; "cpu"; "cuda").
 */
#ifndef TASAM_TRAIN_MODEL_H
#define TASAM_TRAIN_MODEL_H

#include "engine/sam.h"

typedef struct tr_model {
    eng_backend *enc; /* the model's backend */
    eng_backend *dec; /* a second decoder backend on a bf16 GPU, else NULL */
    eng_sam *m;
} tr_model;

/* Load `checkpoint` on `device` with `threads` CPU threads (0: all),
 * max_batch images per encoder call on a GPU (1 on the CPU) and
 * max_decode_batch prompts per decoder pass (0: the engine's default).
 * A line saying where it fell back to the CPU goes to stderr unless quiet. */
int tr_model_open(tr_model *t, const char *checkpoint, const char *device, int threads,
                  int max_batch, int max_decode_batch, int quiet);
void tr_model_close(tr_model *t);

/* 1 when the model runs on a GPU. */
int tr_model_on_gpu(const tr_model *t);

#endif
