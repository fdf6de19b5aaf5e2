/* train/model.c: SAM on the device a command asks for (model.h). */
#include "train/model.h"

#include <stdio.h>
#include <string.h>

#include "engine/error.h"

int tr_model_open(tr_model *t, const char *checkpoint, const char *device, int threads,
                  int max_batch, int max_decode_batch, int quiet)
{
    memset(t, 0, sizeof *t);
    char note[512] = "";
    int rc = eng_sam_open_backends(device, "auto", threads, &t->enc, &t->dec, note, sizeof note);
    if (rc)
        return rc;
    if (note[0] && !quiet)
        fprintf(stderr, "tasam-train: %s\n", note);
    const int gpu = eng_backend_device(t->enc) != ENG_DEV_CPU;
    eng_sam_options o = {.max_batch = gpu ? max_batch : 1,
                         .max_decode_batch = max_decode_batch,
                         .decoder_backend = t->dec};
    if ((rc = eng_sam_load(&t->m, checkpoint, t->enc, &o)))
        tr_model_close(t);
    return rc;
}

void tr_model_close(tr_model *t)
{
    eng_sam_destroy(t->m);
    eng_backend_destroy(t->dec);
    eng_backend_destroy(t->enc);
    memset(t, 0, sizeof *t);
}

int tr_model_on_gpu(const tr_model *t)
{
    return t->enc && eng_backend_device(t->enc) != ENG_DEV_CPU;
}
