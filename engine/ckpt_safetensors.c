/*
 * engine/ckpt_safetensors.c: safetensors reader (strict JSON header parser)
 * and writer.
 *
 * Layout: u64 LE header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [a, b], "data_offsets": [begin, end]},
 *    ..., "__metadata__": {"key": "value", ...}}
 * then the data section; offsets are relative to its start. The header
 * grammar is fixed, so the parser accepts exactly that shape and nothing
 * else (no floats, no negative numbers, no nesting beyond it).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_internal.h"
#include "error.h"

typedef struct eng__js {
    const eng_ckpt *c;
    const uint8_t *start, *p, *end;
} eng__js;

static int eng__js_err(eng__js *j, const char *what)
{
    return eng__ckerr(j->c, ENG_EFORMAT, "safetensors header: %s at byte %zu", what,
                      (size_t)(j->p - j->start));
}

static void eng__js_ws(eng__js *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

/* Skip whitespace and consume `ch`; error if it is not next. */
static int eng__js_expect(eng__js *j, char ch)
{
    char what[32];
    eng__js_ws(j);
    if (j->p < j->end && *j->p == (uint8_t)ch) {
        j->p++;
        return 0;
    }
    snprintf(what, sizeof what, "expected '%c'", ch);
    return eng__js_err(j, what);
}

/* After a member: consume ',' (returns 1) or `close` (returns 0). */
static int eng__js_next(eng__js *j, char close, int *more)
{
    char what[40];
    eng__js_ws(j);
    if (j->p < j->end && *j->p == ',') {
        j->p++;
        *more = 1;
        return 0;
    }
    if (j->p < j->end && *j->p == (uint8_t)close) {
        j->p++;
        *more = 0;
        return 0;
    }
    snprintf(what, sizeof what, "expected ',' or '%c'", close);
    return eng__js_err(j, what);
}

static int eng__hex4(const uint8_t *p, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int d;
        if (p[i] >= '0' && p[i] <= '9')
            d = p[i] - '0';
        else if (p[i] >= 'a' && p[i] <= 'f')
            d = p[i] - 'a' + 10;
        else if (p[i] >= 'A' && p[i] <= 'F')
            d = p[i] - 'A' + 10;
        else
            return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* Parse a JSON string into a malloc'd NUL-terminated UTF-8 copy. Escapes
 * (including \uXXXX surrogate pairs) are decoded; raw control bytes and
 * \u0000 are refused (names are C strings). The decoded form is never
 * longer than the source, which bounds the allocation. */
static int eng__js_string(eng__js *j, char **out)
{
    *out = NULL;
    eng__js_ws(j);
    if (j->p >= j->end || *j->p != '"')
        return eng__js_err(j, "expected a string");
    const uint8_t *s = ++j->p;
    const uint8_t *q = s;
    while (q < j->end && *q != '"') {
        if (*q == '\\')
            q++;
        q++;
    }
    if (q >= j->end)
        return eng__js_err(j, "unterminated string");
    size_t srclen = (size_t)(q - s);
    if (srclen > ENG__MAX_NAME)
        return eng__js_err(j, "string too long");
    char *o = malloc(srclen + 1);
    if (!o)
        return eng__ckerr(j->c, ENG_ENOMEM, "out of memory");
    size_t n = 0;
    while (j->p < q) {
        uint8_t ch = *j->p;
        if (ch < 0x20) {
            free(o);
            return eng__js_err(j, "control character in string");
        }
        if (ch != '\\') {
            o[n++] = (char)ch;
            j->p++;
            continue;
        }
        j->p++; /* the scan above guarantees an escaped byte before q */
        uint8_t e = *j->p++;
        uint32_t cp;
        switch (e) {
        case '"':
            o[n++] = '"';
            continue;
        case '\\':
            o[n++] = '\\';
            continue;
        case '/':
            o[n++] = '/';
            continue;
        case 'b':
            o[n++] = '\b';
            continue;
        case 'f':
            o[n++] = '\f';
            continue;
        case 'n':
            o[n++] = '\n';
            continue;
        case 'r':
            o[n++] = '\r';
            continue;
        case 't':
            o[n++] = '\t';
            continue;
        case 'u':
            break;
        default:
            free(o);
            j->p--;
            return eng__js_err(j, "bad escape");
        }
        if (q - j->p < 4 || eng__hex4(j->p, &cp)) {
            free(o);
            return eng__js_err(j, "bad \\u escape");
        }
        j->p += 4;
        if (cp >= 0xd800 && cp < 0xdc00) {
            uint32_t lo;
            if (q - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || eng__hex4(j->p + 2, &lo) ||
                lo < 0xdc00 || lo >= 0xe000) {
                free(o);
                return eng__js_err(j, "unpaired surrogate");
            }
            j->p += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        } else if (cp >= 0xdc00 && cp < 0xe000) {
            free(o);
            return eng__js_err(j, "unpaired surrogate");
        }
        if (cp == 0) {
            free(o);
            return eng__js_err(j, "NUL in string");
        }
        /* "\uXXXX" is 6 source bytes and at most 3 UTF-8 bytes; a surrogate
         * pair is 12 source bytes and 4 UTF-8 bytes. */
        if (cp < 0x80) {
            o[n++] = (char)cp;
        } else if (cp < 0x800) {
            o[n++] = (char)(0xc0 | cp >> 6);
            o[n++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            o[n++] = (char)(0xe0 | cp >> 12);
            o[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            o[n++] = (char)(0x80 | (cp & 0x3f));
        } else {
            o[n++] = (char)(0xf0 | cp >> 18);
            o[n++] = (char)(0x80 | ((cp >> 12) & 0x3f));
            o[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            o[n++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    j->p = q + 1;
    o[n] = '\0';
    *out = o;
    return 0;
}

/* A non-negative JSON integer that fits in int64 (no sign, fraction or
 * exponent; no leading zeros). */
static int eng__js_uint(eng__js *j, int64_t *v)
{
    eng__js_ws(j);
    const uint8_t *s = j->p;
    uint64_t x = 0;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        if (eng__mul_u64(x, 10, &x) || eng__add_u64(x, (uint64_t)(*j->p - '0'), &x) ||
            x > INT64_MAX)
            return eng__ckerr(j->c, ENG_ELIMIT, "safetensors header: integer too large at byte %zu",
                              (size_t)(s - j->start));
        j->p++;
    }
    if (j->p == s)
        return eng__js_err(j, "expected a non-negative integer");
    if (j->p - s > 1 && *s == '0')
        return eng__js_err(j, "leading zero");
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
        return eng__js_err(j, "expected an integer");
    *v = (int64_t)x;
    return 0;
}

/* [int, ...] into v (at most max items); *n gets the count. */
static int eng__js_uint_array(eng__js *j, int64_t *v, int max, int *n, const char *what)
{
    int rc, more;
    *n = 0;
    if ((rc = eng__js_expect(j, '[')))
        return rc;
    eng__js_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        return 0;
    }
    do {
        if (*n == max)
            return eng__ckerr(j->c, ENG_ELIMIT, "safetensors header: %s has more than %d items",
                              what, max);
        if ((rc = eng__js_uint(j, &v[*n])))
            return rc;
        (*n)++;
        if ((rc = eng__js_next(j, ']', &more)))
            return rc;
    } while (more);
    return 0;
}

static int eng__st_meta(eng__js *j, eng_ckpt *c)
{
    int rc, more;
    char *k = NULL, *v = NULL;
    if ((rc = eng__js_expect(j, '{')))
        return rc;
    eng__js_ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return 0;
    }
    do {
        if ((rc = eng__js_string(j, &k)))
            goto err;
        if ((rc = eng__js_expect(j, ':')))
            goto err;
        if ((rc = eng__js_string(j, &v)))
            goto err;
        if (eng_ckpt_meta(c, k)) {
            rc = eng__ckerr(c, ENG_EFORMAT, "duplicate metadata key '%s'", k);
            goto err;
        }
        rc = eng__ckpt_add_meta(c, k, v);
        k = v = NULL;
        if (rc)
            return rc;
        if ((rc = eng__js_next(j, '}', &more)))
            return rc;
    } while (more);
    return 0;
err:
    free(k);
    free(v);
    return rc;
}

/* One tensor entry {dtype, shape, data_offsets}; offsets go to off[0..2). */
static int eng__st_entry(eng__js *j, const char *name, eng_ckpt_tensor *t, int64_t off[2])
{
    int rc, more, have = 0, n;
    char *k = NULL, *dt = NULL;
    if ((rc = eng__js_expect(j, '{')))
        return rc;
    do {
        if ((rc = eng__js_string(j, &k)))
            goto out;
        if ((rc = eng__js_expect(j, ':')))
            goto out;
        int bit = strcmp(k, "dtype") == 0          ? 1
                  : strcmp(k, "shape") == 0        ? 2
                  : strcmp(k, "data_offsets") == 0 ? 4
                                                   : 0;
        if (!bit || (have & bit)) {
            rc = eng__ckerr(j->c, ENG_EFORMAT, "tensor '%s': %s key '%s'", name,
                            bit ? "duplicate" : "unknown", k);
            goto out;
        }
        have |= bit;
        if (bit == 1) {
            if ((rc = eng__js_string(j, &dt)))
                goto out;
            int d = eng_dtype_parse(dt, strlen(dt));
            if (d < 0) {
                rc = eng__ckerr(j->c, ENG_EUNSUP, "tensor '%s': unknown dtype '%s'", name, dt);
                goto out;
            }
            t->dtype = (eng_dtype)d;
        } else if (bit == 2) {
            if ((rc = eng__js_uint_array(j, t->shape, ENG_CKPT_MAX_DIMS, &n, "shape")))
                goto out;
            t->ndim = n;
        } else {
            if ((rc = eng__js_uint_array(j, off, 2, &n, "data_offsets")))
                goto out;
            if (n != 2) {
                rc = eng__ckerr(j->c, ENG_EFORMAT, "tensor '%s': data_offsets needs 2 items", name);
                goto out;
            }
        }
        free(k);
        k = NULL;
        if ((rc = eng__js_next(j, '}', &more)))
            goto out;
    } while (more);
    if (have != 7)
        rc = eng__ckerr(j->c, ENG_EFORMAT, "tensor '%s': missing %s", name,
                        !(have & 1)   ? "dtype"
                        : !(have & 2) ? "shape"
                                      : "data_offsets");
out:
    free(k);
    free(dt);
    return rc;
}

typedef struct eng__span {
    int64_t begin, end;
    size_t idx;
} eng__span;

static int eng__cmp_span(const void *a, const void *b)
{
    const eng__span *x = a, *y = b;
    return x->begin < y->begin   ? -1
           : x->begin > y->begin ? 1
                                 : (x->end > y->end) - (x->end < y->end);
}

int eng__st_parse(eng_ckpt *c)
{
    int rc, more;
    char *name = NULL;
    eng__span *spans = NULL;
    size_t n_spans = 0, cap_spans = 0;
    int have_meta = 0;

    if (c->len < 8)
        return eng__ckerr(c, ENG_EFORMAT,
                          "not a checkpoint (neither zip nor safetensors): %zu bytes", c->len);
    uint64_t hlen = eng__le64(c->buf);
    if (hlen > ENG__ST_MAX_HEADER || hlen > c->len - 8)
        return eng__ckerr(c, ENG_EFORMAT,
                          "not a checkpoint: safetensors header length %llu exceeds the file (%zu "
                          "bytes) or the %llu-byte limit",
                          (unsigned long long)hlen, c->len, (unsigned long long)ENG__ST_MAX_HEADER);
    if (hlen < 2)
        return eng__ckerr(c, ENG_EFORMAT, "safetensors header too short");
    const uint8_t *data = c->buf + 8 + hlen;
    uint64_t data_len = c->len - 8 - hlen;
    eng__js j = {c, c->buf + 8, c->buf + 8, c->buf + 8 + hlen};

    if (*j.p != '{')
        return eng__ckerr(c, ENG_EFORMAT,
                          "not a checkpoint: no zip magic and no safetensors "
                          "JSON header");
    j.p++;
    eng__js_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
        goto tail;
    }
    do {
        if ((rc = eng__js_string(&j, &name)))
            goto err;
        if ((rc = eng__js_expect(&j, ':')))
            goto err;
        if (strcmp(name, "__metadata__") == 0) {
            if (have_meta) {
                rc = eng__ckerr(c, ENG_EFORMAT, "duplicate __metadata__");
                goto err;
            }
            have_meta = 1;
            free(name);
            name = NULL;
            if ((rc = eng__st_meta(&j, c)))
                goto err;
        } else {
            eng_ckpt_tensor t;
            int64_t off[2];
            uint64_t nbytes;
            memset(&t, 0, sizeof t);
            if ((rc = eng__st_entry(&j, name, &t, off)))
                goto err;
            if ((rc = eng__ckpt_contiguous(c, name, &t)))
                goto err;
            if (eng__mul_u64((uint64_t)t.numel, eng_dtype_size(t.dtype), &nbytes)) {
                rc = eng__ckerr(c, ENG_ELIMIT, "tensor '%s': byte size overflows", name);
                goto err;
            }
            if (off[0] > off[1] || (uint64_t)off[1] > data_len) {
                rc = eng__ckerr(c, ENG_EFORMAT,
                                "tensor '%s': data_offsets [%lld,%lld] outside the %llu-byte data "
                                "section",
                                name, (long long)off[0], (long long)off[1],
                                (unsigned long long)data_len);
                goto err;
            }
            if ((uint64_t)(off[1] - off[0]) != nbytes) {
                rc = eng__ckerr(c, ENG_EFORMAT,
                                "tensor '%s': %lld data bytes but %s x %lld elements needs %llu",
                                name, (long long)(off[1] - off[0]), eng_dtype_name(t.dtype),
                                (long long)t.numel, (unsigned long long)nbytes);
                goto err;
            }
            t.data = data + off[0];
            if (n_spans == cap_spans) {
                size_t cap = cap_spans ? cap_spans * 2 : 64;
                eng__span *ns = realloc(spans, cap * sizeof *ns);
                if (!ns) {
                    rc = eng__ckerr(c, ENG_ENOMEM, "out of memory");
                    goto err;
                }
                spans = ns;
                cap_spans = cap;
            }
            spans[n_spans++] = (eng__span){off[0], off[1], c->n};
            rc = eng__ckpt_add(c, name, &t);
            name = NULL;
            if (rc)
                goto err;
        }
        if ((rc = eng__js_next(&j, '}', &more)))
            goto err;
    } while (more);
tail:
    /* The reference writer pads the header with spaces to a multiple of 8. */
    eng__js_ws(&j);
    if (j.p != j.end) {
        rc = eng__js_err(&j, "trailing bytes after the header object");
        goto err;
    }
    /* Tensors must not share bytes (zero-sized ones occupy nothing). */
    if (n_spans)
        qsort(spans, n_spans, sizeof *spans, eng__cmp_span);
    int64_t prev_end = 0;
    size_t prev = 0;
    for (size_t i = 0; i < n_spans; i++) {
        if (spans[i].begin == spans[i].end)
            continue;
        if (spans[i].begin < prev_end) {
            rc = eng__ckerr(c, ENG_EFORMAT, "tensors '%s' and '%s' overlap in the data section",
                            c->t[prev].name, c->t[spans[i].idx].name);
            goto err;
        }
        prev_end = spans[i].end;
        prev = spans[i].idx;
    }
    free(spans);
    return 0;
err:
    free(name);
    free(spans);
    return rc;
}

/* ---- writer ---- */

typedef struct eng__sb {
    char *b;
    size_t n, cap;
    int oom;
} eng__sb;

static void eng__sb_put(eng__sb *s, const char *p, size_t n)
{
    if (s->oom)
        return;
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->n + n + 1)
            cap *= 2;
        char *nb = realloc(s->b, cap);
        if (!nb) {
            s->oom = 1;
            return;
        }
        s->b = nb;
        s->cap = cap;
    }
    memcpy(s->b + s->n, p, n);
    s->n += n;
    s->b[s->n] = '\0';
}

static void eng__sb_str(eng__sb *s, const char *p) { eng__sb_put(s, p, strlen(p)); }

static void eng__sb_i64(eng__sb *s, int64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    eng__sb_put(s, tmp, (size_t)n);
}

/* JSON string literal: quotes, backslashes and control bytes escaped. */
static void eng__sb_json(eng__sb *s, const char *p)
{
    eng__sb_put(s, "\"", 1);
    for (; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            eng__sb_put(s, e, 2);
        } else if (ch < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", ch);
            eng__sb_put(s, e, 6);
        } else {
            eng__sb_put(s, (const char *)&ch, 1);
        }
    }
    eng__sb_put(s, "\"", 1);
}

/* Header bytes (length prefix included, padded to a multiple of 8) for the
 * entries; *data_len gets the size of the data section. */
static int eng__st_header(const eng_st_entry *e, size_t n, const char *const *meta, size_t n_meta,
                          eng__sb *s, uint64_t *data_len)
{
    uint64_t off = 0;
    eng__sb_put(s, "\0\0\0\0\0\0\0\0", 8);
    eng__sb_put(s, "{", 1);
    if (n_meta) {
        eng__sb_str(s, "\"__metadata__\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (!meta[2 * i] || !meta[2 * i + 1])
                return eng_error(ENG_EINVAL, "safetensors writer: metadata %zu is NULL", i);
            if (i)
                eng__sb_put(s, ",", 1);
            eng__sb_json(s, meta[2 * i]);
            eng__sb_put(s, ":", 1);
            eng__sb_json(s, meta[2 * i + 1]);
        }
        eng__sb_put(s, "}", 1);
    }
    for (size_t i = 0; i < n; i++) {
        const eng_st_entry *t = &e[i];
        uint64_t numel = 1, nbytes;
        if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0)
            return eng_error(ENG_EINVAL, "safetensors writer: entry %zu has an invalid name", i);
        if ((unsigned)t->dtype >= ENG_DTYPE_COUNT || t->ndim < 0 || t->ndim > ENG_CKPT_MAX_DIMS)
            return eng_error(ENG_EINVAL, "safetensors writer: tensor '%s': bad dtype or rank",
                             t->name);
        for (size_t k = 0; k < i; k++)
            if (strcmp(e[k].name, t->name) == 0)
                return eng_error(ENG_EINVAL, "safetensors writer: duplicate tensor name '%s'",
                                 t->name);
        for (int d = 0; d < t->ndim; d++)
            if (t->shape[d] < 0 || eng__mul_u64(numel, (uint64_t)t->shape[d], &numel))
                return eng_error(ENG_EINVAL, "safetensors writer: tensor '%s': bad shape", t->name);
        if (eng__mul_u64(numel, eng_dtype_size(t->dtype), &nbytes) ||
            eng__add_u64(off, nbytes, &off) || off > INT64_MAX)
            return eng_error(ENG_ELIMIT, "safetensors writer: tensor '%s': too large", t->name);
        if (nbytes && !t->data)
            return eng_error(ENG_EINVAL, "safetensors writer: tensor '%s': no data", t->name);
        if (n_meta || i)
            eng__sb_put(s, ",", 1);
        eng__sb_json(s, t->name);
        eng__sb_str(s, ":{\"dtype\":\"");
        eng__sb_str(s, eng_dtype_name(t->dtype));
        eng__sb_str(s, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d)
                eng__sb_put(s, ",", 1);
            eng__sb_i64(s, t->shape[d]);
        }
        eng__sb_str(s, "],\"data_offsets\":[");
        eng__sb_i64(s, (int64_t)(off - nbytes));
        eng__sb_put(s, ",", 1);
        eng__sb_i64(s, (int64_t)off);
        eng__sb_str(s, "]}");
    }
    eng__sb_put(s, "}", 1);
    while (!s->oom && s->n % 8)
        eng__sb_put(s, " ", 1);
    if (s->oom)
        return eng_error(ENG_ENOMEM, "safetensors writer: out of memory for the header");
    uint64_t hlen = s->n - 8;
    for (int b = 0; b < 8; b++)
        s->b[b] = (char)(hlen >> (8 * b));
    *data_len = off;
    return 0;
}

static size_t eng__entry_bytes(const eng_st_entry *t)
{
    size_t nb = eng_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++)
        nb *= (size_t)t->shape[d]; /* validated by eng__st_header */
    return nb;
}

int eng_safetensors_serialize(const eng_st_entry *e, size_t n, const char *const *meta,
                              size_t n_meta, uint8_t **out, size_t *out_len)
{
    eng__sb s = {0};
    uint64_t data_len;
    int rc;
    uint8_t *buf = NULL;
    *out = NULL;
    *out_len = 0;
    if ((rc = eng__st_header(e, n, meta, n_meta, &s, &data_len)))
        goto err;
    if (data_len > SIZE_MAX - s.n) {
        rc = eng_error(ENG_ELIMIT, "safetensors writer: output too large");
        goto err;
    }
    buf = malloc(s.n + (size_t)data_len + 1);
    if (!buf) {
        rc = eng_error(ENG_ENOMEM, "safetensors writer: out of memory for %llu bytes",
                       (unsigned long long)(s.n + data_len));
        goto err;
    }
    memcpy(buf, s.b, s.n);
    size_t o = s.n;
    for (size_t i = 0; i < n; i++) {
        size_t nb = eng__entry_bytes(&e[i]);
        if (nb)
            memcpy(buf + o, e[i].data, nb);
        o += nb;
    }
    free(s.b);
    *out = buf;
    *out_len = o;
    return 0;
err:
    free(s.b);
    free(buf);
    return rc;
}

static int eng__write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int eng_fsync_dir_of(const char *path)
{
    /* the folder part of path: everything before the last '/', "." without one */
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        return eng_error(ENG_ELIMIT, "%s: path too long", path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return eng_error(ENG_EIO, "%s: cannot open its folder to sync it: %s", path,
                         strerror(errno));
    int rc = 0;
    /* some file systems refuse fsync on a folder (EINVAL): nothing to sync there */
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = eng_error(ENG_EIO, "%s: cannot sync its folder: %s", path, strerror(errno));
    close(fd);
    return rc;
}

int eng_safetensors_write(const char *path, const eng_st_entry *e, size_t n,
                          const char *const *meta, size_t n_meta)
{
    eng__sb s = {0};
    uint64_t data_len;
    int rc, fd = -1;
    char *tmp = NULL;
    if ((rc = eng__st_header(e, n, meta, n_meta, &s, &data_len)))
        goto err;
    /* the temporary file lives in the destination's folder (rename is atomic
     * only within one file system) and carries the pid, so two writers of
     * one path never write into each other's temporary file */
    size_t tlen = strlen(path) + 32;
    tmp = malloc(tlen);
    if (!tmp) {
        rc = eng_error(ENG_ENOMEM, "%s: out of memory", path);
        goto err;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = eng_error(ENG_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto err;
    }
    if (eng__write_all(fd, s.b, s.n))
        goto io;
    for (size_t i = 0; i < n; i++) {
        size_t nb = eng__entry_bytes(&e[i]);
        if (nb && eng__write_all(fd, e[i].data, nb))
            goto io;
    }
    if (fsync(fd) != 0)
        goto io;
    if (close(fd) != 0) {
        fd = -1;
        goto io;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = eng_error(ENG_EIO, "%s: cannot rename from %s: %s", path, tmp, strerror(errno));
        goto err;
    }
    free(tmp);
    free(s.b);
    return eng_fsync_dir_of(path);
io:
    rc = eng_error(ENG_EIO, "%s: write failed: %s", tmp, strerror(errno));
err:
    if (fd >= 0)
        close(fd);
    if (tmp)
        unlink(tmp);
    free(tmp);
    free(s.b);
    return rc;
}
