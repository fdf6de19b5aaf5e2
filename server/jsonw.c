/*
 * server/jsonw.c: the streaming JSON writer. See jsonw.h; the number and
 * string forms follow jansson 2.14's dump.c and strconv.c.
 */
#include "server/jsonw.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void srv_jw_init(srv_jw *w, size_t limit)
{
    memset(w, 0, sizeof *w);
    w->limit = limit;
}

void srv_jw_free(srv_jw *w)
{
    free(w->buf);
    w->buf = NULL;
    w->len = w->cap = 0;
}

srv_jw_status srv_jw_error(const srv_jw *w) { return w->status; }

static void put(srv_jw *w, const char *s, size_t n)
{
    if (w->status)
        return;
    if (w->limit && w->len + n > w->limit) {
        w->status = SRV_JW_LIMIT;
        return;
    }
    if (w->len + n + 1 > w->cap) {
        size_t nc = w->cap ? w->cap : 4096;
        while (nc < w->len + n + 1)
            nc *= 2;
        char *b = realloc(w->buf, nc);
        if (!b) {
            w->status = SRV_JW_NOMEM;
            return;
        }
        w->buf = b;
        w->cap = nc;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = 0;
}

/* Contract: the separator before a value (or key) at the current level. */
static void value_start(srv_jw *w)
{
    if (w->after_key) {
        w->after_key = 0;
        return;
    }
    if (w->depth > 0 && w->count[w->depth - 1]++ > 0)
        put(w, ",", 1);
}

static void open_(srv_jw *w, const char *c, char closing)
{
    value_start(w);
    if (w->depth >= SRV_JW_DEPTH) {
        if (!w->status)
            w->status = SRV_JW_NESTING;
        return;
    }
    put(w, c, 1);
    w->close[w->depth] = closing;
    w->count[w->depth++] = 0;
}

void srv_jw_object(srv_jw *w) { open_(w, "{", '}'); }
void srv_jw_array(srv_jw *w) { open_(w, "[", ']'); }

void srv_jw_end(srv_jw *w)
{
    if (w->depth <= 0) {
        if (!w->status)
            w->status = SRV_JW_NESTING;
        return;
    }
    w->depth--;
    put(w, &w->close[w->depth], 1);
}

/* jansson's dump_string: '\\', '"' and control characters escaped (the
 * usual two-character forms, else \u00XX in upper case); everything else,
 * '/' and UTF-8 included, as is. */
static void str(srv_jw *w, const char *s, size_t n)
{
    size_t run = 0;
    put(w, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char seq[8];
        if (c == '\\')
            esc = "\\\\";
        else if (c == '"')
            esc = "\\\"";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20) {
            snprintf(seq, sizeof seq, "\\u%04X", c);
            esc = seq;
        }
        if (!esc) {
            run++;
            continue;
        }
        put(w, s + i - run, run);
        run = 0;
        put(w, esc, strlen(esc));
    }
    put(w, s + n - run, run);
    put(w, "\"", 1);
}

void srv_jw_key(srv_jw *w, const char *key)
{
    value_start(w);
    str(w, key, strlen(key));
    put(w, ":", 1);
    w->after_key = 1;
}

void srv_jw_string(srv_jw *w, const char *s, size_t n)
{
    value_start(w);
    str(w, s, n);
}

void srv_jw_int(srv_jw *w, int64_t v)
{
    char b[32];
    value_start(w);
    int n = snprintf(b, sizeof b, "%" PRId64, v);
    put(w, b, (size_t)n);
}

/* jansson's jsonp_dtostr at precision 6: "%.6g", then ".0" when the text
 * has neither '.' nor 'e', then the exponent without '+' or leading
 * zeros. */
void srv_jw_real(srv_jw *w, double v)
{
    char b[40];
    value_start(w);
    if (!isfinite(v)) {
        if (!w->status)
            w->status = SRV_JW_NUMBER;
        return;
    }
    int n = snprintf(b, sizeof b - 3, "%.6g", v);
    if (n < 0 || n >= (int)sizeof b - 3) {
        if (!w->status)
            w->status = SRV_JW_NUMBER;
        return;
    }
    size_t len = (size_t)n;
    if (!strchr(b, '.') && !strchr(b, 'e')) {
        memcpy(b + len, ".0", 3);
        len += 2;
    }
    char *start = strchr(b, 'e');
    if (start) {
        start++;
        char *end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, len - (size_t)(end - b) + 1);
            len -= (size_t)(end - start);
        }
    }
    put(w, b, len);
}

void srv_jw_bool(srv_jw *w, int v)
{
    value_start(w);
    put(w, v ? "true" : "false", v ? 4 : 5);
}

void srv_jw_null(srv_jw *w)
{
    value_start(w);
    put(w, "null", 4);
}

void srv_jw_raw(srv_jw *w, const char *s, size_t n) { put(w, s, n); }

static int dump_cb(const char *buf, size_t n, void *arg)
{
    srv_jw *w = arg;
    put(w, buf, n);
    return w->status ? -1 : 0;
}

void srv_jw_json(srv_jw *w, const json_t *v)
{
    value_start(w);
    if (w->status)
        return;
    if (!v) {
        w->status = SRV_JW_NOMEM;
        return;
    }
    if (json_dump_callback(v, dump_cb, w,
                           JSON_COMPACT | JSON_REAL_PRECISION(6) | JSON_ENCODE_ANY) &&
        !w->status)
        w->status = SRV_JW_NUMBER;
}
