/* server/base64.c: strict RFC 4648 base64 (see base64.h). */
#include "base64.h"

#include "engine/error.h"

#include <stdlib.h>
#include <string.h>

static const char b64__alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Sextet value of each byte; 0x80 marks anything outside the alphabet
 * ('=' included), so one OR over a quantum tells whether all four are valid. */
/* clang-format off */
static const uint8_t b64__value[256] = {
#define B64__X 0x80
#define B64__X16 B64__X, B64__X, B64__X, B64__X, B64__X, B64__X, B64__X, B64__X, \
                 B64__X, B64__X, B64__X, B64__X, B64__X, B64__X, B64__X, B64__X
    B64__X16, B64__X16,
    /* 0x20 - 0x2f: '+' = 62, '/' = 63 */
    B64__X, B64__X, B64__X, B64__X, B64__X, B64__X, B64__X, B64__X,
    B64__X, B64__X, B64__X, 62, B64__X, B64__X, B64__X, 63,
    /* 0x30 - 0x3f: '0'..'9' = 52..61 */
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, B64__X, B64__X, B64__X, B64__X, B64__X, B64__X,
    /* 0x40 - 0x5f: 'A'..'Z' = 0..25 */
    B64__X, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, B64__X, B64__X, B64__X, B64__X, B64__X,
    /* 0x60 - 0x7f: 'a'..'z' = 26..51 */
    B64__X, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, B64__X, B64__X, B64__X, B64__X, B64__X,
    B64__X16, B64__X16, B64__X16, B64__X16, B64__X16, B64__X16, B64__X16, B64__X16,
#undef B64__X16
#undef B64__X
};
/* clang-format on */

/* Error for the first character in s[from, to) outside the alphabet; the
 * caller knows there is one. Slow path only. */
static int b64__bad_char(const char *s, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        unsigned char c = (unsigned char)s[i];
        if (b64__value[c] & 0x80) {
            if (c == '=')
                return eng_error(ENG_EINVAL, "base64: padding '=' before the end, at offset %zu",
                                 i);
            return eng_error(ENG_EINVAL, "base64: invalid character 0x%02x at offset %zu", c, i);
        }
    }
    return eng_error(ENG_EINVAL, "base64: invalid input");
}

int srv_base64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;

    size_t pad = 0;
    if (len % 4 == 0 && len > 0 && s[len - 1] == '=')
        pad = s[len - 2] == '=' ? 2 : 1;
    const size_t body = len - pad; /* characters carrying data */

    if (len % 4 != 0) {
        /* A stray character is the likelier cause (a line break, say);
         * name it rather than the length. */
        for (size_t i = 0; i < len; i++)
            if ((b64__value[(unsigned char)s[i]] & 0x80) && s[i] != '=')
                return b64__bad_char(s, i, len);
        return eng_error(ENG_EINVAL,
                         "base64: length %zu is not a multiple of 4 (truncated or unpadded) at "
                         "offset %zu",
                         len, len - len % 4);
    }

    const size_t n = len / 4 * 3 - pad;
    uint8_t *o = malloc(n ? n : 1);
    if (!o)
        return eng_error(ENG_ENOMEM, "base64: out of memory for %zu bytes", n);

    /* Whole quanta: all but the last when it is padded. */
    const size_t full = pad ? len - 4 : len;
    const unsigned char *p = (const unsigned char *)s;
    uint8_t *q = o;
    for (size_t i = 0; i < full; i += 4) {
        uint32_t a = b64__value[p[i]], b = b64__value[p[i + 1]], c = b64__value[p[i + 2]],
                 d = b64__value[p[i + 3]];
        if ((a | b | c | d) & 0x80) {
            free(o);
            return b64__bad_char(s, i, body);
        }
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        q[0] = (uint8_t)(v >> 16);
        q[1] = (uint8_t)(v >> 8);
        q[2] = (uint8_t)v;
        q += 3;
    }

    if (pad) {
        const size_t i = len - 4;
        uint32_t a = b64__value[p[i]], b = b64__value[p[i + 1]];
        uint32_t c = pad == 1 ? b64__value[p[i + 2]] : 0;
        if ((a | b | c) & 0x80) {
            free(o);
            return b64__bad_char(s, i, body);
        }
        /* The bits past the last whole byte must be zero: otherwise two
         * strings would decode to the same bytes. */
        if (pad == 2 ? (b & 0x0f) != 0 : (c & 0x03) != 0) {
            free(o);
            return eng_error(ENG_EINVAL, "base64: non-zero bits before the padding at offset %zu",
                             body - 1);
        }
        uint32_t v = a << 18 | b << 12 | c << 6;
        q[0] = (uint8_t)(v >> 16);
        if (pad == 1)
            q[1] = (uint8_t)(v >> 8);
    }

    *out = o;
    *out_len = n;
    return 0;
}

char *srv_base64_encode(const uint8_t *buf, size_t len)
{
    if (len / 3 >= (SIZE_MAX - 1) / 4 - 1) {
        eng_error(ENG_ENOMEM, "base64: %zu bytes is too many to encode", len);
        return NULL;
    }
    const size_t n = (len + 2) / 3 * 4;
    char *s = malloc(n + 1);
    if (!s) {
        eng_error(ENG_ENOMEM, "base64: out of memory for %zu characters", n);
        return NULL;
    }
    char *p = s;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)buf[i] << 16 | (uint32_t)buf[i + 1] << 8 | buf[i + 2];
        p[0] = b64__alphabet[v >> 18];
        p[1] = b64__alphabet[(v >> 12) & 63];
        p[2] = b64__alphabet[(v >> 6) & 63];
        p[3] = b64__alphabet[v & 63];
        p += 4;
    }
    if (i < len) {
        uint32_t v = (uint32_t)buf[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)buf[i + 1] << 8;
        p[0] = b64__alphabet[v >> 18];
        p[1] = b64__alphabet[(v >> 12) & 63];
        p[2] = i + 1 < len ? b64__alphabet[(v >> 6) & 63] : '=';
        p[3] = '=';
        p += 4;
    }
    *p = '\0';
    return s;
}

/* ASCII case-insensitive prefix test (no locale). */
static int b64__ieq(const char *s, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lit[i])
            return 0;
    }
    return 1;
}

const char *srv_base64_strip_data_url(const char *s, size_t *len)
{
    if (*len < 5 || !b64__ieq(s, "data:", 5))
        return s;
    const char *comma = memchr(s, ',', *len);
    if (!comma)
        return NULL;
    size_t head = (size_t)(comma - s);
    if (head < 5 + 7 || !b64__ieq(comma - 7, ";base64", 7))
        return NULL;
    *len -= head + 1;
    return comma + 1;
}
