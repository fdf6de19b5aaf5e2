/*
 * server/routes.h: the HTTP API v1 (schema/openapi.yaml): route matching,
 * the handlers and their JSON bodies. The HTTP plumbing (http.c) calls
 * these; they never touch libmicrohttpd.
 */
#ifndef TASAM_SERVER_ROUTES_H
#define TASAM_SERVER_ROUTES_H

#include <stddef.h>
#include <stdint.h>

#include "engine/image.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/scheduler.h"
#include "server/server.h"

/* A response to send. */
typedef struct srv_reply {
    int status;               /* HTTP status */
    char *body;               /* malloc'd body (may be NULL for an empty body) */
    size_t len;               /* bytes at body */
    const char *content_type; /* static string */
    const char *allow;        /* Allow header for 405, or NULL */
    int retry_after;          /* Retry-After seconds (429/503), 0 for none */
    int auth_challenge;       /* 1: add WWW-Authenticate: Bearer (401) */
    char disposition[128];    /* Content-Disposition value, or "" */
} srv_reply;

#define SRV_QUERY_MAX 8

/* The request header a client (or a proxy hashing on it) names the image
 * with: the SHA-256 hex of the image bytes, as image_id. */
#define SRV_IMAGE_ID_HEADER "X-Tasam-Image-Id"

/* One query argument, percent-decoded by the HTTP layer (borrowed). */
typedef struct srv_query_arg {
    const char *key; /* NUL-terminated name */
    const char *val; /* value (len bytes, may hold NUL), NULL for `?key` without '=' */
    size_t len;      /* bytes at val */
} srv_query_arg;

/* What the HTTP layer hands the routes besides the path and the body. */
typedef struct srv_http_in {
    const char *content_type;           /* Content-Type header or NULL */
    const char *authorization;          /* Authorization header or NULL */
    const char *image_id;               /* the first X-Tasam-Image-Id header, or NULL */
    int image_id_count;                 /* how many X-Tasam-Image-Id headers came */
    int n_query;                        /* entries in query */
    int query_overflow;                 /* 1: more than SRV_QUERY_MAX arguments were sent */
    srv_query_arg query[SRV_QUERY_MAX]; /* the query string's arguments in order */
} srv_http_in;

/* State of one POST /v1/segment or /v1/embeddings while it runs. */
typedef struct srv_post {
    srv_request req;     /* parsed body (borrows the connection's body buffer) */
    srv_prompts prompts; /* engine prompts (segment) */
    uint8_t *resized;    /* resized RGB for the encoder, or NULL (owned) */
    eng_image pixels;    /* the decoded image, kept for everything mode's crop layers (owned) */
    srv_job job;         /* the scheduler job */
    int queued;          /* 1 once submitted */
} srv_post;

/*
 * Match a request line. Returns 0 with *route set, 404 for an unknown path,
 * or 405 with *allow set to the methods the path accepts. HEAD counts as GET.
 */
int srv_route_match(const char *method, const char *url, srv_route *route, const char **allow);

/* 1 for routes whose request has a body we read (the POSTs). */
int srv_route_has_body(srv_route r);

/* 1 for routes answered through a worker job (the POSTs and DELETE
 * /admin/adapters); the others are answered at once by srv_routes_get. */
int srv_route_uses_job(srv_route r);

/* Fill *out with the JSON error body for e (status e->status), with the
 * headers the status implies (Retry-After for 429 and 503,
 * WWW-Authenticate for 401). The one place errors become replies. */
void srv_reply_error(srv_reply *out, const srv_error *e);
/* Same from parts. */
void srv_reply_errorf(srv_reply *out, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Answer a GET route at once. `url` is the path, `in` the headers and
 * query arguments. */
void srv_routes_get(srv_server *srv, srv_route route, const char *url, const srv_http_in *in,
                    srv_reply *out);

/*
 * First half of a job route: check the admin token (DELETE /admin/adapters),
 * parse and validate the body, hash the image, decode and resize it unless
 * its embedding is cached, compute the task's adapter id, and fill p->job
 * (without done/done_arg). Returns 0 when the job is ready to submit, or -1
 * with *e set. The request borrows `body`, which must stay alive until
 * srv_post_free().
 */
int srv_routes_post_prepare(srv_server *srv, srv_route route, const srv_http_in *in,
                            const uint8_t *body, size_t len, double t_start, srv_post *p,
                            srv_error *e);

/* Second half: the response for a completed job. */
void srv_routes_post_finish(srv_server *srv, srv_route route, srv_post *p, double t_start,
                            srv_reply *out);

/* Free everything a srv_post holds (not the struct). */
void srv_post_free(srv_post *p);

#endif
