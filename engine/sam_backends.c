/*
 * engine/sam_backends.c: the backends for a device and precision choice.
 *
 * Shapes use the letters of sam_internal.h.
 */
#include "sam_internal.h"

#include <stdio.h>
#include <string.h>

int eng_sam_open_backends(const char *device, const char *precision, int cpu_threads,
                          eng_backend **enc, eng_backend **dec, char *note, size_t note_cap)
{
    *enc = *dec = NULL;
    if (note_cap)
        note[0] = '\0';
    int want_cpu = !strcmp(device, "cpu"), want_cuda = !strcmp(device, "cuda");
    if (!want_cpu && !want_cuda && strcmp(device, "auto"))
        return eng_error(ENG_EINVAL, "device '%s': expected auto, cpu or cuda", device);
    eng_dtype dt = ENG_BF16;
    int autop = !strcmp(precision, "auto");
    if (!strcmp(precision, "fp32"))
        dt = ENG_F32;
    else if (!strcmp(precision, "fp16"))
        dt = ENG_F16;
    else if (strcmp(precision, "bf16") && !autop)
        return eng_error(ENG_EINVAL, "precision '%s': expected auto, fp32, fp16 or bf16",
                         precision);
    if (!want_cpu) {
        int rc = eng_backend_cuda_create(enc, 0, dt);
        if (rc && autop) /* no bf16 on this GPU (sm_75): fp16 */
            rc = eng_backend_cuda_create(enc, 0, dt = ENG_F16);
        if (!rc) {
            /* bf16's 8-bit mantissa costs the masks about 1.5% IoU through the
             * decoder; fp16 keeps them within 0.2% at the same speed, and the
             * decoder's activations are small enough for its range */
            if (dt == ENG_BF16 && eng_backend_cuda_create(dec, 0, ENG_F16) != 0)
                *dec = NULL;
            return 0;
        }
        if (want_cuda)
            return rc;
        /* one statement: why not the GPU, in the engine's words */
        if (rc == ENG_EUNSUP)
            snprintf(note, note_cap, "running on the CPU (this build has no CUDA backend)");
        else
            snprintf(note, note_cap, "running on the CPU (%s)", eng_last_error());
    }
    if (!autop && dt != ENG_F32 && note_cap && !note[0])
        snprintf(note, note_cap, "the CPU backend computes in fp32 (precision %s ignored)",
                 precision);
    return eng_backend_cpu_create(enc, cpu_threads);
}
