/*
 * server/http1.h: strict HTTP/1.1 request framing (RFC 9112), checked by
 * the gate (gate.c) before libmicrohttpd sees a byte of a request.
 *
 * Two pieces, both pure functions over bytes (no I/O, no allocation):
 *   - the head: srv_h1_head_scan() finds where a head ends as bytes arrive
 *     (refusing a bare LF, a control character or an over-long head at
 *     once), srv_h1_parse_head() checks the complete head: the request
 *     line, every field line, Host, Content-Length and Transfer-Encoding;
 *   - the body: srv_h1_body_feed() walks a Content-Length or chunked body
 *     as it arrives and says where it ends, checking the chunk framing and
 *     the size against max-body-bytes.
 * Anything libmicrohttpd would answer with its own (HTML) error page, hang
 * on, or read differently from a proxy in front of us (request smuggling)
 * is refused here with the status it deserves and a message for the
 * client.
 */
#ifndef TASAM_SERVER_HTTP1_H
#define TASAM_SERVER_HTTP1_H

#include <stddef.h>
#include <stdint.h>

/* Fixed limits (the head's byte size is an option: max-header-bytes). */
#define SRV_H1_MAX_FIELDS     100  /* header fields in a head, and trailer fields */
#define SRV_H1_MAX_QUERY_ARGS 64   /* arguments in the query string */
#define SRV_H1_MAX_CHUNK_LINE 4096 /* a chunk-size line with its extensions */

/* A refusal: the HTTP status and a one-line message for the client. */
typedef struct srv_h1_error {
    int status; /* 400, 408, 413, 414, 431, 501, 505 */
    char message[256];
} srv_h1_error;

/* What the checked head says about the request. */
typedef struct srv_h1_head {
    size_t head_len;         /* bytes of the head, the final CRLF CRLF included */
    int minor;               /* HTTP/1.minor */
    int chunked;             /* Transfer-Encoding: chunked */
    uint64_t content_length; /* body bytes when !chunked (0 without Content-Length) */
    char method[16];         /* the method, for logs */
} srv_h1_head;

/*
 * Incremental scan for the end of a head in buf[0..len) (the bytes of one
 * request from its first byte). *scanned carries the position between calls
 * (0 at the start of a head). Returns the head's length once its final
 * CRLF CRLF is in, 0 when more bytes are needed, or -1 with *e set: a bare
 * LF, a NUL or other control character, a request line longer than
 * max_head (414), a head longer than max_head (431).
 */
long srv_h1_head_scan(const uint8_t *buf, size_t len, size_t *scanned, size_t max_head,
                      srv_h1_error *e);

/*
 * Check a complete head (buf[0..head_len), as srv_h1_head_scan found it)
 * and fill *h. max_body bounds Content-Length (413 beyond). Returns 0 or -1
 * with *e set.
 */
int srv_h1_parse_head(const uint8_t *buf, size_t head_len, uint64_t max_body, srv_h1_head *h,
                      srv_h1_error *e);

/* Body framing state of one request. */
typedef struct srv_h1_body {
    int chunked;     /* chunked framing (else Content-Length) */
    int state;       /* chunked: where in the grammar we are */
    int done;        /* 1 once the last byte of the body went by */
    uint64_t left;   /* Content-Length bytes, or bytes of the current chunk, still to come */
    uint64_t total;  /* chunked: data bytes so far */
    uint64_t max;    /* max-body-bytes */
    uint64_t size;   /* the chunk size being read */
    int digits;      /* hex digits of it */
    size_t line;     /* bytes of the current chunk-size or trailer line */
    size_t trailers; /* bytes of the trailer section */
    int fields;      /* trailer fields */
    int ext_quote;   /* inside a quoted chunk-extension value */
} srv_h1_body;

/* Start the body of the request whose head is h. */
void srv_h1_body_begin(srv_h1_body *b, const srv_h1_head *h, uint64_t max_body);

/*
 * Walk n more body bytes. Returns how many belong to this body (fewer than
 * n when it ends inside p: b->done is then 1 and the rest is the next
 * request), or -1 with *e set (a malformed chunk: 400; a chunk that takes
 * the body past max_body: 413).
 */
long srv_h1_body_feed(srv_h1_body *b, const uint8_t *p, size_t n, srv_h1_error *e);

#endif
