/*
 * clients/http_client.h: a small blocking HTTP/1.1 client over plain
 * sockets, shared by the load tester (bench/tasam-bench) and the tests that
 * talk to a real daemon (tests/tserver.h).
 *
 * One hc_conn is one keep-alive TCP connection, used by one thread at a
 * time. A request is built once into one buffer (hc_request_build) and sent
 * as is, so a load generator's own work per request is one send and one
 * response parse. No client library sits between the caller and the
 * kernel: what a benchmark measures is the server and the loopback.
 *
 * The server is not trusted: the status line and headers are capped at
 * HC_MAX_HEAD bytes and HC_MAX_HEADERS lines, bodies at the response's
 * max_body (checked against Content-Length and each chunk size before
 * anything is allocated), every wait has a deadline (connect, send and the
 * whole response), conflicting Content-Length headers are refused (a
 * response-splitting shape), and anything unparsable is a negative HC_E*
 * code, never a crash or a hang. hc_parse_response() runs the same parser
 * over a buffer (tests and the fuzz target).
 *
 * Every function that can fail returns 0 or a negative HC_E* code;
 * hc_strerror() names it. Setup errors (URL, multipart) also leave a message
 * in the caller's err buffer.
 */
#ifndef TASAM_CLIENTS_HTTP_CLIENT_H
#define TASAM_CLIENTS_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

struct addrinfo;

/* Failures, kept apart from HTTP statuses so that a caller can say what
 * broke. The values are stable: the load tester reports them by name. */
enum {
    HC_ECONNECT = -1,   /* connect refused or unreachable */
    HC_ETIMEOUT = -2,   /* the deadline passed (connect, send or response) */
    HC_ECLOSED = -3,    /* the server closed or reset the connection mid-response */
    HC_EMALFORMED = -4, /* not HTTP/1.x as we can parse it */
    HC_ETOOLARGE = -5,  /* head over HC_MAX_HEAD or body over max_body */
    HC_ESEND = -6,      /* the request could not be written */
    HC_ENOMEM = -7,     /* allocation failed */
    HC_EINVAL = -8,     /* bad argument (URL, request, multipart part) */
};
#define HC_NERR 9 /* codes are -1 .. -(HC_NERR - 1) */

#define HC_MAX_HEAD      (64 << 10)          /* status line + headers, any one chunk-size line */
#define HC_MAX_HEADERS   256                 /* header lines of one response */
#define HC_MAX_BODY      ((size_t)256 << 20) /* default cap on a response body */
#define HC_TARGET_HOST   300                 /* Host header bytes, with the NUL */
#define HC_TARGET_PREFIX 512                 /* URL path prefix bytes, with the NUL */

/* Short name of a code: "connect", "timeout", "closed", "malformed",
 * "too_large", "send", "nomem", "invalid"; "" for 0, "?" otherwise. */
const char *hc_strerror(int code);

/* CLOCK_MONOTONIC in nanoseconds: the clock every deadline here uses. */
int64_t hc_now_ns(void);

/* Where to connect and what to put in the request line and Host header. */
typedef struct hc_target {
    struct addrinfo *ai;           /* resolved addresses, tried in order (owned) */
    char host_hdr[HC_TARGET_HOST]; /* HOST[:PORT] as given in the URL */
    char prefix[HC_TARGET_PREFIX]; /* path prefix from the URL, no trailing '/' ("" for none) */
} hc_target;

/* Parse "http://HOST[:PORT][/prefix]" (HOST a name, IPv4 or [IPv6]; port
 * default 80) and resolve it. Returns 0, or HC_EINVAL with a message naming
 * what is wrong in err. https is not supported. */
int hc_target_init(hc_target *t, const char *url, char *err, size_t errlen);
/* http://127.0.0.1:PORT, for tests. */
int hc_target_loopback(hc_target *t, int port);
/* Release the addresses. Accepts a zeroed target. */
void hc_target_free(hc_target *t);

/* One keep-alive connection and its read buffer. */
typedef struct hc_conn {
    int fd;      /* socket, -1 when not connected */
    long nresp;  /* responses read on this connection: 0 means fresh */
    size_t rx;   /* bytes received for the current response */
    char *in;    /* read buffer: bytes not yet consumed are in[off, len) */
    size_t cap;  /* bytes allocated at in */
    size_t len;  /* bytes held at in */
    size_t off;  /* bytes of in already consumed */
    int fd_none; /* 1: no socket at all; the buffer is all there is (hc_parse_response) */
} hc_conn;

/* A closed connection (fd -1, no buffer). */
void hc_conn_init(hc_conn *c);
/* Close the socket; the buffer is kept for the next connection. */
void hc_conn_close(hc_conn *c);
/* Close and free the buffer. */
void hc_conn_free(hc_conn *c);

/* One response. Zero it (or hc_response_init) before first use; reuse it
 * across exchanges to keep its buffers; free it with hc_response_free. */
typedef struct hc_response {
    int status;      /* HTTP status (100-599) */
    int close;       /* the server will close (Connection: close, HTTP/1.0, read to EOF) */
    char *body;      /* body bytes, NUL-terminated (NULL until a body arrived) */
    size_t len;      /* body bytes */
    size_t cap;      /* bytes allocated at body */
    size_t max_body; /* cap on the body (0: HC_MAX_BODY) */
    char *hdr;       /* header fields as "name\0value\0" pairs, names lower-cased */
    size_t hdr_len;  /* bytes used at hdr */
    size_t hdr_cap;  /* bytes allocated at hdr */
    int n_hdr;       /* pairs at hdr */
} hc_response;

void hc_response_init(hc_response *r);
void hc_response_free(hc_response *r);
/* Value of the first header `name` (any case), or NULL. Borrowed: valid
 * until the response is reused or freed. */
const char *hc_response_header(const hc_response *r, const char *name);

/* What to send. */
typedef struct hc_request {
    const char *method;       /* "GET", "POST", ... */
    const char *path;         /* after the target's prefix: "/v1/segment?x=1" */
    const char *headers;      /* more header lines, each ending in "\r\n", or NULL */
    const char *content_type; /* Content-Type, or NULL for none */
    const void *body;         /* body bytes, or NULL */
    size_t body_len;          /* bytes at body */
    int chunked;              /* 1: send the body as one chunk with Transfer-Encoding: chunked */
} hc_request;

/* The whole request, head and body, in one malloc'd buffer (*out, NUL after
 * the last byte; *out_len bytes). Returns 0, HC_EINVAL when the method,
 * path or a header line holds CR/LF where it must not (or a header line does
 * not end in CRLF), or HC_ENOMEM. */
int hc_request_build(const hc_target *t, const hc_request *rq, char **out, size_t *out_len);

/*
 * One exchange on c: connect if needed, send req, read the response into r.
 * A reused keep-alive connection that the server had closed while idle
 * (nothing at all came back) is reopened and the request sent again once;
 * *reconnects (may be NULL) counts that. Any failure closes the connection.
 * Returns 0 (r holds the response) or a negative HC_E* code.
 */
int hc_exchange(hc_conn *c, const hc_target *t, const char *req, size_t req_len, hc_response *r,
                double timeout_s, long *reconnects);

/* The response parser over a buffer: `data` as if it were all the server
 * sent before closing. Returns 0 or a negative HC_E* code. */
int hc_parse_response(const void *data, size_t len, hc_response *r);

/* One part of a multipart/form-data body. */
typedef struct hc_part {
    const char *name;         /* form field name (no '"', CR or LF) */
    const char *filename;     /* filename="..." or NULL (no '"', CR or LF) */
    const char *content_type; /* the part's Content-Type, or NULL */
    const void *data;         /* the part's bytes */
    size_t len;               /* bytes at data */
} hc_part;

/* A multipart/form-data body of n parts (malloc'd in *body, *len bytes) and
 * its Content-Type with the boundary (in ctype, at least 80 bytes). The
 * boundary is chosen so that it occurs in no part. Returns 0, HC_EINVAL
 * with a message in err, or HC_ENOMEM. */
int hc_multipart_build(const hc_part *parts, int n, char **body, size_t *len, char *ctype,
                       size_t ctype_len, char *err, size_t errlen);

#endif
