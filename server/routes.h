/*
 * server/routes.h: the HTTP API v1 (schema/openapi.yaml): route matching,
 * the handlers and their JSON bodies. The HTTP plumbing (http.c) calls
 * these; they never touch libmicrohttpd.
 */
#ifndef TASAM_SERVER_ROUTES_H
#define TASAM_SERVER_ROUTES_H

#include <stddef.h>
#include <stdint.h>

#include "server/metrics.h"
#include "server/request.h"
#include "server/scheduler.h"
#include "server/server.h"

/* A response to send. */
typedef struct srv_reply {
    int status;                /* HTTP status */
    char *body;                /* malloc'd body (may be NULL for an empty body) */
    size_t len;                /* bytes at body */
    const char *content_type;  /* static string */
    const char *allow;         /* Allow header for 405, or NULL */
    int retry_after;           /* Retry-After seconds (429/503), 0 for none */
} srv_reply;

/* State of one POST /v1/segment or /v1/embeddings while it runs. */
typedef struct srv_post {
    srv_request req;           /* parsed body (borrows the connection's body buffer) */
    srv_prompts prompts;       /* engine prompts (segment) */
    uint8_t *resized;          /* resized RGB for the encoder, or NULL (owned) */
    srv_job job;               /* the scheduler job */
    int queued;                /* 1 once submitted */
} srv_post;

/*
 * Match a request line. Returns 0 with *route set, 404 for an unknown path,
 * or 405 with *allow set to the methods the path accepts. HEAD counts as GET.
 */
int srv_route_match(const char *method, const char *url, srv_route *route, const char **allow);

/* 1 for routes whose request has a body we read (the POSTs). */
int srv_route_has_body(srv_route r);

/* Fill *out with the JSON error body for e (status e->status). */
void srv_reply_error(srv_reply *out, const srv_error *e);
/* Same from parts. */
void srv_reply_errorf(srv_reply *out, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Answer a GET route at once. `url` is the path. */
void srv_routes_get(srv_server *srv, srv_route route, const char *url, srv_reply *out);

/*
 * First half of a POST: parse and validate the body, hash the image, decode
 * and resize it unless its embedding is cached, and fill p->job (without
 * done/done_arg). Returns 0 when the job is ready to submit, or 1 with *out
 * holding the reply (an error). The request borrows `body`, which must
 * stay alive until srv_post_free().
 */
int srv_routes_post_prepare(srv_server *srv, srv_route route, const char *content_type,
                            const uint8_t *body, size_t len, double t_start, srv_post *p,
                            srv_reply *out);

/* Second half: the response for a completed job. */
void srv_routes_post_finish(srv_server *srv, srv_route route, srv_post *p, double t_start,
                            srv_reply *out);

/* Free everything a srv_post holds (not the struct). */
void srv_post_free(srv_post *p);

#endif
