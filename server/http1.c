/*
 * server/http1.c: strict HTTP/1.1 request framing. See http1.h.
 */
#include "server/http1.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static int fail(srv_h1_error *e, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(srv_h1_error *e, int status, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* RFC 9110 tchar: the characters of a token. */
static int tchar(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

long srv_h1_head_scan(const uint8_t *buf, size_t len, size_t *scanned, size_t max_head,
                      srv_h1_error *e)
{
    size_t i = *scanned;
    for (; i < len; i++) {
        uint8_t c = buf[i];
        if (i + 1 > max_head) {
            if (!memchr(buf, '\n', i))
                return fail(e, 414, "the request line is longer than max-header-bytes (%zu)",
                            max_head);
            return fail(e, 431, "the request head is larger than max-header-bytes (%zu)", max_head);
        }
        if (i > 0 && buf[i - 1] == '\r' && c != '\n')
            return fail(e, 400, "a CR not followed by LF in the request head");
        if (c == '\n') {
            if (i == 0 || buf[i - 1] != '\r')
                return fail(e, 400, "a bare LF in the request head (lines end with CR LF)");
            if (i >= 3 && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
                *scanned = i + 1;
                return (long)(i + 1);
            }
        } else if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
            return fail(e, 400, "control character 0x%02x in the request head", c);
        }
    }
    *scanned = i;
    return 0;
}

/* Contract: parses a comma-separated Content-Length value into *v;
 * 0, or -1 with *e set (400 malformed or conflicting, 413 overflowing). */
static int content_length(const uint8_t *p, size_t n, int *seen, uint64_t *v, srv_h1_error *e)
{
    size_t i = 0;
    for (;;) {
        uint64_t x = 0;
        size_t digits = 0;
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        for (; i < n && p[i] >= '0' && p[i] <= '9'; i++, digits++) {
            if (x > (UINT64_MAX - 9) / 10)
                return fail(e, 413, "Content-Length is too large");
            x = x * 10 + (uint64_t)(p[i] - '0');
        }
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        if (!digits || (i < n && p[i] != ','))
            return fail(e, 400, "Content-Length is not a decimal number");
        if (*seen && x != *v)
            return fail(e, 400,
                        "two different Content-Length values (%llu and %llu): ambiguous framing",
                        (unsigned long long)*v, (unsigned long long)x);
        *seen = 1;
        *v = x;
        if (i == n)
            return 0;
        i++; /* ',' */
    }
}

/* Transfer-Encoding codings seen in a head. */
typedef struct te_state {
    int present;    /* any Transfer-Encoding field */
    int chunked;    /* times "chunked" was listed */
    int last_chunk; /* the last coding listed is chunked */
    char other[33]; /* the first coding that is not chunked, "" if none */
} te_state;

/* Contract: adds the codings of one Transfer-Encoding value to *t;
 * 0, or -1 with *e set for a malformed list. */
static int transfer_encoding(const uint8_t *p, size_t n, te_state *t, srv_h1_error *e)
{
    size_t i = 0;
    t->present = 1;
    for (;;) {
        size_t s;
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        for (s = i; i < n && tchar(p[i]); i++)
            ;
        if (i == s)
            return fail(e, 400, "Transfer-Encoding is not a list of codings");
        int is_chunked = i - s == 7 && strncasecmp((const char *)p + s, "chunked", 7) == 0;
        t->chunked += is_chunked;
        t->last_chunk = is_chunked;
        if (!is_chunked && !t->other[0])
            snprintf(t->other, sizeof t->other, "%.*s", (int)(i - s > 32 ? 32 : i - s),
                     (const char *)p + s);
        /* parameters of a coding (";q=...") are not part of any we accept */
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        if (i == n)
            return 0;
        if (p[i] != ',') {
            if (!t->other[0])
                snprintf(t->other, sizeof t->other, "%.*s", (int)(i - s > 32 ? 32 : i - s),
                         (const char *)p + s);
            return 0;
        }
        i++;
    }
}

static int name_is(const uint8_t *p, size_t n, const char *name)
{
    return n == strlen(name) && strncasecmp((const char *)p, name, n) == 0;
}

int srv_h1_parse_head(const uint8_t *buf, size_t head_len, uint64_t max_body, srv_h1_head *h,
                      srv_h1_error *e)
{
    const uint8_t *p = buf, *end = buf + head_len;
    const uint8_t *eol = memchr(p, '\r', (size_t)(end - p));
    size_t i = 0, n;
    int cl_seen = 0, hosts = 0, fields = 0, cookies = 0;
    te_state te = {0};

    memset(h, 0, sizeof *h);
    h->head_len = head_len;
    if (!eol || eol + 1 >= end || eol[1] != '\n')
        return fail(e, 400, "malformed request line");
    n = (size_t)(eol - p);
    /* method SP request-target SP HTTP-version */
    for (; i < n && tchar(p[i]); i++)
        ;
    if (i == 0 || i >= sizeof h->method || i >= n || p[i] != ' ')
        return fail(e, 400, "malformed request line: expected METHOD /path HTTP/1.1");
    memcpy(h->method, p, i);
    h->method[i] = 0;
    size_t ts = ++i, args = 0;
    int query = 0, any = 0;
    for (; i < n && p[i] > 0x20 && p[i] < 0x7f; i++) {
        if (p[i] == '?' && !query) {
            query = 1;
            any = 0;
        } else if (query && p[i] == '&') {
            args += any;
            any = 0;
        } else if (query) {
            any = 1;
        }
    }
    args += query && any;
    if (i == ts || i >= n || p[i] != ' ')
        return fail(e, 400,
                    "malformed request line: the target must be printable ASCII without "
                    "spaces");
    if (p[ts] != '/' && !(i - ts == 1 && p[ts] == '*' && !strcmp(h->method, "OPTIONS")))
        return fail(e, 400, "the request target must be a path starting with '/'");
    if (args > SRV_H1_MAX_QUERY_ARGS)
        return fail(e, 400, "more than %d query arguments", SRV_H1_MAX_QUERY_ARGS);
    const uint8_t *v = p + i + 1;
    if ((size_t)(eol - v) != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' ||
        v[6] != '.' || v[7] < '0' || v[7] > '9')
        return fail(e, 400, "malformed request line: the version must be HTTP/1.1 or HTTP/1.0");
    if (v[5] != '1')
        return fail(e, 505, "HTTP/%c.%c is not supported (HTTP/1.1 and HTTP/1.0 are)", v[5], v[7]);
    h->minor = v[7] - '0';

    /* field lines until the empty line */
    for (p = eol + 2; p < end;) {
        eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol || eol + 1 >= end)
            return fail(e, 400, "malformed header section");
        n = (size_t)(eol - p);
        if (n == 0)
            break;
        if (p[0] == ' ' || p[0] == '\t')
            return fail(e, 400, "a header line starts with whitespace (obsolete line folding)");
        if (++fields > SRV_H1_MAX_FIELDS)
            return fail(e, 431, "more than %d header fields", SRV_H1_MAX_FIELDS);
        for (i = 0; i < n && tchar(p[i]); i++)
            ;
        if (i == 0 || i >= n || p[i] != ':')
            return fail(e, 400, "malformed header line %d: expected `Name: value`", fields);
        size_t nl = i, vs = i + 1, ve = n;
        while (vs < ve && (p[vs] == ' ' || p[vs] == '\t'))
            vs++;
        while (ve > vs && (p[ve - 1] == ' ' || p[ve - 1] == '\t'))
            ve--;
        if (name_is(p, nl, "content-length")) {
            if (content_length(p + vs, ve - vs, &cl_seen, &h->content_length, e) != 0)
                return -1;
        } else if (name_is(p, nl, "transfer-encoding")) {
            if (transfer_encoding(p + vs, ve - vs, &te, e) != 0)
                return -1;
        } else if (name_is(p, nl, "host")) {
            hosts++;
        } else if (name_is(p, nl, "cookie") && !cookies++) {
            /* libmicrohttpd splits the first Cookie field at ';' and ','
             * into entries of its per-connection memory pool; past what the
             * pool holds it answers with its own error page */
            size_t pieces = 1;
            for (size_t k = vs; k < ve; k++)
                pieces += p[k] == ';' || p[k] == ',';
            if (pieces > SRV_H1_MAX_FIELDS)
                return fail(e, 431, "more than %d cookies", SRV_H1_MAX_FIELDS);
        }
        p = eol + 2;
    }
    if (te.present) {
        if (h->minor == 0)
            return fail(e, 400, "Transfer-Encoding in an HTTP/1.0 request");
        if (cl_seen)
            return fail(e, 400, "both Content-Length and Transfer-Encoding: ambiguous framing");
        if (te.other[0])
            return fail(e, 501, "Transfer-Encoding '%s' is not supported (only chunked)", te.other);
        if (te.chunked != 1 || !te.last_chunk)
            return fail(e, 400, "chunked must be listed once, last, in Transfer-Encoding");
        h->chunked = 1;
        h->content_length = 0;
    }
    if (hosts > 1)
        return fail(e, 400, "more than one Host header");
    if (h->minor >= 1 && hosts == 0)
        return fail(e, 400, "an HTTP/1.1 request needs a Host header");
    if (!h->chunked && h->content_length > max_body)
        return fail(e, 413, "the body is larger than max-body-bytes (%llu)",
                    (unsigned long long)max_body);
    return 0;
}

/* Chunked-body grammar positions (RFC 9112 section 7.1). */
enum {
    CH_SIZE = 0,  /* chunk-size hex digits */
    CH_EXT,       /* chunk extensions up to CR */
    CH_SIZE_LF,   /* the LF after the size line */
    CH_DATA,      /* chunk-data (left bytes) */
    CH_DATA_CR,   /* the CR after the data */
    CH_DATA_LF,   /* the LF after the data */
    CH_TRAILER0,  /* start of a trailer line, or the final CRLF */
    CH_TRAILER,   /* inside a trailer field line */
    CH_TRAILER_LF /* the LF ending a trailer line */
};

void srv_h1_body_begin(srv_h1_body *b, const srv_h1_head *h, uint64_t max_body)
{
    memset(b, 0, sizeof *b);
    b->chunked = h->chunked;
    b->max = max_body;
    b->state = CH_SIZE;
    b->left = h->chunked ? 0 : h->content_length;
    b->done = !h->chunked && h->content_length == 0;
}

long srv_h1_body_feed(srv_h1_body *b, const uint8_t *p, size_t n, srv_h1_error *e)
{
    size_t i = 0;
    if (!b->chunked) {
        size_t k = b->left < n ? (size_t)b->left : n;
        b->left -= k;
        b->done = b->left == 0;
        return (long)k;
    }
    while (i < n && !b->done) {
        uint8_t c = p[i];
        switch (b->state) {
        case CH_DATA: {
            size_t k = b->left < n - i ? (size_t)b->left : n - i;
            b->left -= k;
            i += k;
            if (b->left == 0)
                b->state = CH_DATA_CR;
            continue;
        }
        case CH_SIZE:
            if (++b->line > SRV_H1_MAX_CHUNK_LINE)
                return fail(e, 400, "a chunk-size line is longer than %d bytes",
                            SRV_H1_MAX_CHUNK_LINE);
            if (hexval(c) >= 0) {
                if (++b->digits > 16)
                    return fail(e, 413, "a chunk is larger than max-body-bytes (%llu)",
                                (unsigned long long)b->max);
                b->size = b->size << 4 | (uint64_t)hexval(c);
            } else if (b->digits && c == ';') {
                /* no whitespace before ';': libmicrohttpd reads the size up to
                 * ';' or CR and would refuse it with its own error page */
                b->state = CH_EXT;
                b->ext_quote = 0;
            } else if (b->digits && c == '\r') {
                b->state = CH_SIZE_LF;
            } else {
                return fail(e, 400, "a chunk size is not a hex number");
            }
            break;
        case CH_EXT:
            if (++b->line > SRV_H1_MAX_CHUNK_LINE)
                return fail(e, 400, "a chunk-size line is longer than %d bytes",
                            SRV_H1_MAX_CHUNK_LINE);
            if (c == '"')
                b->ext_quote = !b->ext_quote;
            if (c == '\r' && !b->ext_quote)
                b->state = CH_SIZE_LF;
            else if ((c < 0x20 && c != '\t') || c == 0x7f)
                return fail(e, 400, "control character 0x%02x in a chunk extension", c);
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                return fail(e, 400, "a chunk-size line does not end with CR LF");
            if (b->size > b->max - b->total)
                return fail(e, 413, "the chunked body is larger than max-body-bytes (%llu)",
                            (unsigned long long)b->max);
            b->total += b->size;
            b->left = b->size;
            b->line = 0;
            b->digits = 0;
            if (b->size == 0) {
                b->state = CH_TRAILER0;
            } else {
                b->state = CH_DATA;
            }
            b->size = 0;
            break;
        case CH_DATA_CR:
            if (c != '\r')
                return fail(e, 400, "chunk data longer than its size");
            b->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                return fail(e, 400, "chunk data does not end with CR LF");
            b->state = CH_SIZE;
            break;
        case CH_TRAILER0:
        case CH_TRAILER:
            if (++b->trailers > 16384)
                return fail(e, 431, "the trailer section is larger than 16384 bytes");
            if (c == '\r') {
                if (b->state == CH_TRAILER0) {
                    b->state = CH_TRAILER_LF;
                    b->line = 1; /* marks the final CRLF */
                } else {
                    if (!b->ext_quote) /* no ':' seen on this line */
                        return fail(e, 400, "malformed trailer line: expected `Name: value`");
                    b->state = CH_TRAILER_LF;
                    b->line = 0;
                }
            } else if (b->state == CH_TRAILER0) {
                if (!tchar(c))
                    return fail(e, 400, "malformed trailer line: expected `Name: value`");
                if (++b->fields > SRV_H1_MAX_FIELDS)
                    return fail(e, 431, "more than %d trailer fields", SRV_H1_MAX_FIELDS);
                b->state = CH_TRAILER;
                b->ext_quote = 0; /* reused: 1 once this line's ':' went by */
            } else if (!b->ext_quote && c == ':') {
                b->ext_quote = 1;
            } else if (!b->ext_quote && !tchar(c)) {
                return fail(e, 400, "malformed trailer line: expected `Name: value`");
            } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
                return fail(e, 400, "control character 0x%02x in a trailer", c);
            }
            break;
        case CH_TRAILER_LF:
            if (c != '\n')
                return fail(e, 400, "a trailer line does not end with CR LF");
            if (b->line == 1)
                b->done = 1;
            b->state = CH_TRAILER0;
            b->line = 0;
            break;
        }
        i++;
    }
    return (long)i;
}
