/* engine/dtype.c: element type table and half/bfloat16 conversions. */
#include "dtype.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} eng__dtypes[ENG_DTYPE_COUNT] = {
    [ENG_F32] = {"F32", 4},   [ENG_F16] = {"F16", 2}, [ENG_BF16] = {"BF16", 2},
    [ENG_F64] = {"F64", 8},   [ENG_U8] = {"U8", 1},   [ENG_I8] = {"I8", 1},
    [ENG_I16] = {"I16", 2},   [ENG_I32] = {"I32", 4}, [ENG_I64] = {"I64", 8},
    [ENG_BOOL] = {"BOOL", 1},
};

size_t eng_dtype_size(eng_dtype t)
{
    return (unsigned)t < ENG_DTYPE_COUNT ? eng__dtypes[t].size : 0;
}

const char *eng_dtype_name(eng_dtype t)
{
    return (unsigned)t < ENG_DTYPE_COUNT ? eng__dtypes[t].name : "?";
}

int eng_dtype_parse(const char *s, size_t len)
{
    for (int i = 0; i < ENG_DTYPE_COUNT; i++)
        if (strlen(eng__dtypes[i].name) == len && memcmp(eng__dtypes[i].name, s, len) == 0)
            return i;
    return -1;
}

static float eng__bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t eng__f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float eng_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return eng__bits_f32(sign | 0x7f800000u | (man << 13));
    return eng__bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t eng_f32_to_f16(float f)
{
    uint32_t x = eng__f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) {                        /* below 2^-14: subnormal half */
        float v = eng__bits_f32(absx) * 16777216.0f; /* scale by 2^24 */
        /* round half to even via the FPU's default rounding */
        uint32_t m = (uint32_t)__builtin_nearbyintf(v);
        return (uint16_t)(sign | m);
    }
    uint32_t e = ((absx >> 23) - 112) << 10;
    uint32_t m = (absx >> 13) & 0x3ff;
    uint32_t rest = absx & 0x1fff;
    uint32_t h = e | m;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float eng_bf16_to_f32(uint16_t b) { return eng__bits_f32((uint32_t)b << 16); }

uint16_t eng_f32_to_bf16(float f)
{
    uint32_t x = eng__f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
