/*
 * server/jsonw.h: a JSON writer that appends text to one growing buffer,
 * for responses too large to build as a jansson tree first (the masks of
 * POST /v1/segment: a tree of polygon vertices takes about ten times the
 * memory of its text).
 *
 * Its output is byte for byte what jansson's json_dumps(JSON_COMPACT |
 * JSON_REAL_PRECISION(6)) gives for the same values in the same order
 * (tests/test_server_units.c checks it against jansson), so a response does
 * not change with the writer that made it. A byte limit makes every later
 * call a no-op once passed; the caller checks srv_jw_error() at the end.
 */
#ifndef TASAM_SERVER_JSONW_H
#define TASAM_SERVER_JSONW_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define SRV_JW_DEPTH 16

/* Why a writer stopped. */
typedef enum srv_jw_status {
    SRV_JW_OK = 0,
    SRV_JW_LIMIT,  /* the text passed the byte limit */
    SRV_JW_NOMEM,  /* out of memory */
    SRV_JW_NUMBER, /* a NaN or infinite real (jansson refuses them too) */
    SRV_JW_NESTING /* more than SRV_JW_DEPTH levels, or unbalanced calls */
} srv_jw_status;

typedef struct srv_jw {
    char *buf;                /* the text (malloc'd; NUL-terminated when ok) */
    size_t len, cap;          /* bytes used / allocated */
    size_t limit;             /* most bytes allowed (0: no limit) */
    srv_jw_status status;     /* first failure */
    int depth;                /* open objects and arrays */
    int count[SRV_JW_DEPTH];  /* values written at each level (for commas) */
    char close[SRV_JW_DEPTH]; /* '}' or ']' closing each level */
    int after_key;            /* a key was written; its value comes next */
} srv_jw;

/* Start an empty writer with a byte limit (0: none). */
void srv_jw_init(srv_jw *w, size_t limit);
/* Free the text (when the caller did not take it). */
void srv_jw_free(srv_jw *w);

void srv_jw_object(srv_jw *w);               /* { */
void srv_jw_array(srv_jw *w);                /* [ */
void srv_jw_end(srv_jw *w);                  /* } or ] of the innermost open one */
void srv_jw_key(srv_jw *w, const char *key); /* "key": inside an object */
void srv_jw_string(srv_jw *w, const char *s, size_t n);
void srv_jw_int(srv_jw *w, int64_t v);
void srv_jw_real(srv_jw *w, double v); /* as jansson at precision 6 */
void srv_jw_bool(srv_jw *w, int v);
void srv_jw_null(srv_jw *w);
/* A small jansson value, dumped in place as json_dumps would (for parts
 * built as trees elsewhere, e.g. everything mode's parameters). */
void srv_jw_json(srv_jw *w, const json_t *v);
/* n bytes of text as they are (no separator; for a trailing newline). */
void srv_jw_raw(srv_jw *w, const char *s, size_t n);

/* SRV_JW_OK, or why the writer stopped. */
srv_jw_status srv_jw_error(const srv_jw *w);

#endif
