/*
 * engine/dtype.h: element types shared by tensors, checkpoints and files.
 */
#ifndef TASAM_ENGINE_DTYPE_H
#define TASAM_ENGINE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum eng_dtype {
    ENG_F32 = 0,
    ENG_F16,
    ENG_BF16,
    ENG_F64,
    ENG_U8,
    ENG_I8,
    ENG_I16,
    ENG_I32,
    ENG_I64,
    ENG_BOOL,
    ENG_DTYPE_COUNT
} eng_dtype;

/* Bytes per element. */
size_t eng_dtype_size(eng_dtype t);
/* safetensors spelling: "F32", "F16", "BF16", "U8", ... */
const char *eng_dtype_name(eng_dtype t);
/* Parse a safetensors dtype name; returns -1 if unknown. */
int eng_dtype_parse(const char *s, size_t len);

/* Scalar conversions (round-to-nearest-even for the narrowing ones). */
float eng_f16_to_f32(uint16_t h);
uint16_t eng_f32_to_f16(float f);
float eng_bf16_to_f32(uint16_t b);
uint16_t eng_f32_to_bf16(float f);

#endif
