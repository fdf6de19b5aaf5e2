/*
 * server/http.h: the libmicrohttpd server.
 *
 * The gate (gate.h) owns the listening socket and hands libmicrohttpd only
 * connections whose request heads passed its checks. MHD runs its own
 * thread pool (the `threads` option). On a request's headers the handler
 * checks the tokens, the client's rate, a full queue and the body limits
 * before reading anything; it reads the body into a buffer bounded by
 * max-body-bytes (413 as soon as a chunked body passes it) and by
 * max-inflight-body-bytes over all requests (503), hands GET routes to
 * routes.c, and for the POST routes prepares a job, suspends the connection
 * and submits it; the inference worker's completion callback resumes the
 * connection and the handler answers from the job's result. Every request
 * is logged (method, path, status, ms) and counted in the metrics when it
 * completes.
 */
#ifndef TASAM_SERVER_HTTP_H
#define TASAM_SERVER_HTTP_H

#include "server/server.h"

typedef struct srv_http srv_http;

/*
 * Bind `listen` ("HOST:PORT", "[v6]:PORT"; port 0 picks one) and start
 * serving. *port gets the bound port. Returns 0 or a negative code with a
 * message in err.
 */
int srv_http_start(srv_http **out, srv_server *srv, const char *listen, int *port, char *err,
                   size_t errlen);

/* Stop accepting new connections (the listening socket is closed);
 * connections already open keep being served. */
void srv_http_quiesce(srv_http *h);

/* Periodic work (the control loop calls it every 50 ms): drop queued jobs
 * whose client closed its connection (499, tasam_jobs_abandoned_total), and
 * give freed heap memory back to the system after large requests. */
void srv_http_sweep(srv_http *h);

/* Requests in progress (being read, waiting or being answered). */
int srv_http_open_connections(srv_http *h);

/* Stop the server: closes every connection. Call only when no connection
 * is suspended (the scheduler has completed every job). NULL ok. */
void srv_http_stop(srv_http *h);

#endif
