/*
 * server/error.h: the daemon's one error rule.
 *
 * Every server function that can fail returns 0 on success or a negative
 * code (-1) and fills a srv_error: the HTTP status the client gets, a
 * one-line message and the request field at fault. Only srv_error carries
 * HTTP statuses; return values never do. The routes turn a srv_error into
 * the JSON body {"error":{"code","message","field"}} in one place
 * (srv_reply_error), which also adds the headers a status implies
 * (Retry-After for 429/503, WWW-Authenticate for 401).
 *
 * Engine failures (engine/error.h codes) become statuses through one
 * mapping, srv_status_of, which asks whose fault the failure is: bytes the
 * client sent (an image, a task) or the server itself (model, device,
 * caches):
 *
 *   engine code            client input   server
 *   ENG_EINVAL, EFORMAT,       400          500
 *   ESHAPE, EIO, ENOTFOUND
 *   ENG_EUNSUP                 415          500
 *   ENG_ELIMIT                 413          500
 *   ENG_ENOMEM                 503          503   (retry later)
 *   ENG_ECANCELED              504          504   (a deadline stopped the work)
 *   ENG_EDEVICE                500          500
 */
#ifndef TASAM_SERVER_ERROR_H
#define TASAM_SERVER_ERROR_H

/* An HTTP error: status, message and the request field at fault. */
typedef struct srv_error {
    int status;        /* HTTP status (400, 413, ...) */
    char message[512]; /* human-readable, one line */
    char field[64];    /* "points[2]", "image", or "" */
} srv_error;

/* Whose fault a failed engine call is (see the table above). */
typedef enum srv_blame {
    SRV_BLAME_INPUT = 0, /* the request's own bytes: an image, a task */
    SRV_BLAME_SERVER     /* the model, the device, the caches: never the client's */
} srv_blame;

/* Set *e and return -1, so `return srv_fail(e, 400, "points", "...")`. */
int srv_fail(srv_error *e, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The HTTP status of engine code `eng_code` (< 0) blamed on `who`. */
int srv_status_of(int eng_code, srv_blame who);

/* srv_fail with the status srv_status_of(eng_code, who); the message is
 * fmt's text followed by ": " and eng_last_error(). Returns -1. */
int srv_fail_eng(srv_error *e, int eng_code, srv_blame who, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#endif
