/*
 * server/http.c: libmicrohttpd plumbing: the listening socket (handed to
 * the gate, gate.c, which passes valid connections on), the access
 * handler's state machine, the checks made on a request's headers before
 * its body is read (tokens, the per-client rate limit, a full queue, body
 * limits), suspend/resume around jobs, the sweep that drops jobs whose
 * client left, responses, and the per-request log line and metrics.
 */
#include "server/http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "server/clients.h"
#include "server/gate.h"
#include "server/log.h"
#include "server/routes.h"

typedef struct conn conn;

struct srv_http {
    struct MHD_Daemon *d; /* the daemon (owns its threads) */
    srv_server *srv;      /* borrowed */
    srv_gate *gate;       /* the front door (owns the listening socket) */
    srv_clients *clients; /* per-client connection counts and rate buckets */
    int open;             /* requests alive (atomic) */
    int64_t body_bytes;   /* request-body bytes reserved (atomic; max-inflight-body-bytes) */
    int trim;             /* atomic: a large buffer was freed; srv_http_sweep trims the heap */
    double t_trim;        /* when srv_http_sweep last trimmed */
    pthread_mutex_t mu;   /* guards the list of requests */
    conn *reqs;           /* requests alive (for the sweep) */
};

/* Buffers at least this large make srv_http_sweep give freed heap memory
 * back to the system. */
#define TRIM_BYTES ((size_t)1 << 20)

/* State of one request on a connection (MHD's con_cls). */
struct conn {
    srv_http *h;               /* the server */
    struct MHD_Connection *mc; /* MHD's connection (borrowed) */
    srv_route route;           /* matched route */
    double t_start;            /* srv_now() when the headers were in */
    char method[8];            /* for the log line */
    char path[160];            /* sanitised, truncated path for the log line */
    uint8_t *body;             /* request body (malloc'd) */
    size_t len, cap;           /* body bytes used / allocated */
    int too_large;             /* the body passed max-body-bytes */
    int responded;             /* a response was queued */
    int status;                /* its status */
    int waiting;               /* suspended for a job */
    int job_done;              /* the job completed (set by the worker under mu) */
    pthread_mutex_t mu;        /* orders suspend (handler) before resume (worker) */
    srv_post post;             /* POST state */
    int64_t reserved;          /* body bytes reserved from h->body_bytes */
    srv_client_key key;        /* the client (rate limit) */
    conn *prev, *next;         /* h->reqs */
};

static void sanitize(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src && *src && i + 1 < n; src++)
        dst[i++] = (*src >= 0x21 && *src < 0x7f) ? *src : '?';
    if (src && *src && n > 4)
        memcpy(dst + n - 4, "...", 3), i = n - 1;
    dst[i] = 0;
}

/* Contract: queues r's body (ownership passes to MHD) with status r->status;
 * returns MHD's verdict. */
static enum MHD_Result send_reply(conn *c, srv_reply *r)
{
    struct MHD_Response *resp;
    enum MHD_Result ok;
    char ra[16];
    if (r->body)
        resp = MHD_create_response_from_buffer(
            r->len, r->body, r->body_static ? MHD_RESPMEM_PERSISTENT : MHD_RESPMEM_MUST_FREE);
    else
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        if (!r->body_static)
            free(r->body);
        r->body = NULL;
        return MHD_NO;
    }
    r->body = NULL;
    if (r->content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    if (r->allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (r->auth_challenge)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"tasamd\"");
    if (r->disposition[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_DISPOSITION, r->disposition);
    if (r->etag)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, r->etag);
    for (const char *const *hh = r->headers; hh && hh[0] && hh[1]; hh += 2)
        MHD_add_response_header(resp, hh[0], hh[1]);
    if (r->location[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, r->location);
    if (r->retry_after > 0) {
        snprintf(ra, sizeof ra, "%d", r->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    /* Which replica answered: what a client or proxy behind a fleet needs
     * to see where its image's cache lives. */
    MHD_add_response_header(resp, "X-Tasam-Instance", c->h->srv->instance);
    if (__atomic_load_n(&c->h->srv->draining, __ATOMIC_RELAXED))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    ok = MHD_queue_response(c->mc, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    if (ok == MHD_YES) {
        c->responded = 1;
        c->status = r->status;
    }
    return ok;
}

static enum MHD_Result send_error(conn *c, int status, const char *field, const char *msg)
{
    srv_reply r;
    srv_reply_errorf(&r, status, field, "%s", msg);
    return send_reply(c, &r);
}

/* Worker thread: the job finished; wake the connection. */
static void job_done(srv_job *j, void *arg)
{
    conn *c = arg;
    (void)j;
    pthread_mutex_lock(&c->mu);
    c->job_done = 1;
    MHD_resume_connection(c->mc);
    pthread_mutex_unlock(&c->mu);
}

static int64_t max_body(conn *c) { return srv_config_int(c->h->srv->cfg, SRV_OPT_MAX_BODY_BYTES); }

/* MHD iterator: collects query arguments into a srv_http_in. */
static enum MHD_Result collect_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size)
{
    srv_http_in *in = cls;
    (void)kind;
    (void)key_size;
    if (in->n_query >= SRV_QUERY_MAX) {
        in->query_overflow = 1;
        return MHD_NO;
    }
    srv_query_arg *a = &in->query[in->n_query++];
    a->key = key ? key : "";
    a->val = value;
    a->len = value ? value_size : 0;
    return MHD_YES;
}

/* MHD iterator: the first X-Tasam-Image-Id and how many were sent. */
static enum MHD_Result collect_image_id(void *cls, enum MHD_ValueKind kind, const char *key,
                                        size_t key_size, const char *value, size_t value_size)
{
    srv_http_in *in = cls;
    (void)kind;
    (void)key_size;
    (void)value_size;
    if (key && !strcasecmp(key, SRV_IMAGE_ID_HEADER) && in->image_id_count++ == 0)
        in->image_id = value ? value : "";
    return MHD_YES;
}

/* Contract: the headers and query arguments the routes read (borrowed
 * from MHD, valid while the request lives). */
static void request_in(conn *c, srv_http_in *in)
{
    memset(in, 0, sizeof *in);
    MHD_get_connection_values_n(c->mc, MHD_HEADER_KIND, collect_image_id, in);
    in->content_type =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    in->authorization =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    in->if_none_match =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    MHD_get_connection_values_n(c->mc, MHD_GET_ARGUMENT_KIND, collect_arg, in);
    in->body = c->body;
    in->body_len = c->len;
}

/* Contract: reserves n more body bytes from max-inflight-body-bytes;
 * 0, or -1 when that budget would be passed (nothing reserved then). */
static int reserve_body(conn *c, int64_t n)
{
    srv_http *h = c->h;
    int64_t cap = srv_config_int(h->srv->cfg, SRV_OPT_MAX_INFLIGHT_BODY_BYTES);
    int64_t now = __atomic_add_fetch(&h->body_bytes, n, __ATOMIC_RELAXED);
    if (now > cap) {
        __atomic_sub_fetch(&h->body_bytes, n, __ATOMIC_RELAXED);
        srv_metrics_add(&h->srv->metrics->rejected_body_budget, 1);
        return -1;
    }
    c->reserved += n;
    srv_metrics_gauge_set(&h->srv->metrics->body_bytes_inflight, now);
    return 0;
}

static enum MHD_Result send_body_budget(conn *c)
{
    srv_reply r;
    srv_reply_errorf(&r, 503, "",
                     "the server is receiving as many request bodies as it holds at once "
                     "(max-inflight-body-bytes %lld); retry later",
                     (long long)srv_config_int(c->h->srv->cfg, SRV_OPT_MAX_INFLIGHT_BODY_BYTES));
    return send_reply(c, &r);
}

/* Contract: the body is complete: run the route. */
static enum MHD_Result handle(conn *c)
{
    srv_server *srv = c->h->srv;
    srv_reply r;
    srv_http_in in;
    srv_error e;
    request_in(c, &in);
    if (!srv_route_uses_job(c->route)) {
        srv_routes_get(srv, c->route, c->path[0] ? c->path : "/", &in, &r);
        return send_reply(c, &r);
    }
    if (srv_route_has_body(c->route) && !c->len)
        return send_error(c, 400, "", "the request body is empty");
    if (srv_routes_post_prepare(srv, c->route, &in, c->body, c->len, c->t_start, &c->post, &e)) {
        srv_reply_error(&r, &e);
        return send_reply(c, &r);
    }
    c->post.job.done = job_done;
    c->post.job.done_arg = c;
    pthread_mutex_lock(&c->mu);
    int rc = srv_sched_submit(srv->sched, &c->post.job, &e);
    if (rc == 0) {
        MHD_suspend_connection(c->mc);
        __atomic_store_n(&c->waiting, 1, __ATOMIC_RELEASE);
        c->post.queued = 1;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc == 0)
        return MHD_YES;
    srv_reply_error(&r, &e);
    return send_reply(c, &r);
}

/*
 * Contract: the checks a request gets on its headers, before any of its
 * body is read, cheapest refusal first: who may call the route (401/403),
 * the client's rate on routes that create work (429 + Retry-After), a
 * full queue (429: checked here so that a refused upload is neither read
 * nor decoded), the body's size (413) and the bytes all bodies in flight
 * may take (503 + Retry-After). Returns MHD_YES to go on reading, or the
 * result of queueing the refusal.
 */
static enum MHD_Result on_headers(conn *c)
{
    srv_server *srv = c->h->srv;
    srv_http_in in;
    srv_reply r;
    srv_error e;
    request_in(c, &in);
    if (srv_routes_authorize(srv, c->route, &in, &e) != 0) {
        srv_reply_error(&r, &e);
        return send_reply(c, &r);
    }
    if (srv_route_has_body(c->route)) {
        int64_t rate = srv_config_int(srv->cfg, SRV_OPT_RATE_LIMIT);
        int wait = rate > 0 ? srv_clients_take(c->h->clients, &c->key, (double)rate,
                                               (double)srv_config_int(srv->cfg, SRV_OPT_RATE_BURST),
                                               srv_now())
                            : 0;
        if (wait > 0) {
            srv_metrics_add(&srv->metrics->rejected_rate_limit, 1);
            srv_reply_errorf(&r, 429, "",
                             "this client passed rate-limit (%lld requests a second, bursts of "
                             "%lld); retry in %d s",
                             (long long)rate,
                             (long long)srv_config_int(srv->cfg, SRV_OPT_RATE_BURST), wait);
            r.retry_after = wait;
            return send_reply(c, &r);
        }
    }
    if (srv_route_uses_job(c->route) && srv_sched_full(srv->sched)) {
        srv_metrics_add(&srv->metrics->rejected_queue_full, 1);
        srv_reply_errorf(&r, 429, "", "the queue is full (%lld jobs); retry later",
                         (long long)srv_config_int(srv->cfg, SRV_OPT_QUEUE_DEPTH));
        return send_reply(c, &r);
    }
    if (!srv_route_has_body(c->route))
        return MHD_YES;
    const char *cl =
        MHD_lookup_connection_value(c->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        /* the gate checked the framing: one decimal Content-Length */
        unsigned long long n = strtoull(cl, NULL, 10);
        if (n > (unsigned long long)max_body(c)) {
            char msg[160];
            snprintf(msg, sizeof msg, "the body is larger than max-body-bytes (%lld)",
                     (long long)max_body(c));
            return send_error(c, 413, "", msg);
        }
        if (reserve_body(c, (int64_t)(n ? n : 1)) != 0)
            return send_body_budget(c);
        c->cap = (size_t)n;
        c->body = malloc(c->cap ? c->cap : 1);
        if (!c->body)
            return send_error(c, 503, "", "out of memory for the body; retry later");
    }
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    srv_http *h = cls;
    conn *c = *con_cls;
    (void)version;

    if (!c) {
        const char *allow = NULL;
        int m;
        c = calloc(1, sizeof *c);
        if (!c)
            return MHD_NO;
        pthread_mutex_init(&c->mu, NULL);
        c->h = h;
        c->mc = mc;
        c->t_start = srv_now();
        sanitize(c->method, sizeof c->method, method);
        sanitize(c->path, sizeof c->path, url);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        srv_client_key_of(ci ? ci->client_addr : NULL,
                          ci && ci->client_addr ? (socklen_t)sizeof(struct sockaddr_storage) : 0,
                          &c->key);
        *con_cls = c;
        pthread_mutex_lock(&h->mu);
        c->next = h->reqs;
        if (h->reqs)
            h->reqs->prev = c;
        h->reqs = c;
        pthread_mutex_unlock(&h->mu);
        __atomic_fetch_add(&h->open, 1, __ATOMIC_RELAXED);
        srv_metrics_gauge_add(&h->srv->metrics->inflight, 1);
        m = srv_route_match(method, url, &c->route, &allow);
        if (m == 404) {
            c->route = SRV_ROUTE_OTHER;
            return send_error(c, 404, "",
                              "no such route (see GET /v1/info and schema/openapi.yaml)");
        }
        if (m == 405) {
            srv_reply r;
            srv_reply_errorf(&r, 405, "", "method %s is not allowed here (allowed: %s)", c->method,
                             allow);
            r.allow = allow;
            c->route = SRV_ROUTE_OTHER;
            return send_reply(c, &r);
        }
        return on_headers(c);
    }

    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (c->too_large || c->responded || !srv_route_has_body(c->route))
            return MHD_YES;
        if ((int64_t)(c->len + n) > max_body(c)) {
            char msg[160];
            c->too_large = 1;
            free(c->body);
            c->body = NULL;
            c->len = c->cap = 0;
            snprintf(msg, sizeof msg, "the body is larger than max-body-bytes (%lld)",
                     (long long)max_body(c));
            /* MHD may refuse a response mid-upload; then the rest is read
             * and discarded and the 413 goes out at the end. */
            send_error(c, 413, "", msg);
            return MHD_YES;
        }
        if (c->len + n > c->cap) {
            size_t nc = c->cap ? c->cap : 65536;
            while (nc < c->len + n)
                nc *= 2;
            if ((int64_t)nc > max_body(c))
                nc = (size_t)max_body(c);
            /* a chunked body reserves its growth as it comes */
            if (reserve_body(c, (int64_t)(nc - c->cap)) != 0) {
                free(c->body);
                c->body = NULL;
                c->len = c->cap = 0;
                c->too_large = 1;
                send_body_budget(c);
                return MHD_YES;
            }
            uint8_t *b = realloc(c->body, nc);
            if (!b)
                return send_error(c, 503, "", "out of memory for the body; retry later") == MHD_YES
                           ? MHD_YES
                           : MHD_NO;
            c->body = b;
            c->cap = nc;
        }
        memcpy(c->body + c->len, upload_data, n);
        c->len += n;
        return MHD_YES;
    }

    if (c->responded)
        return MHD_YES;
    if (__atomic_load_n(&c->waiting, __ATOMIC_ACQUIRE)) {
        srv_reply r;
        /* Resumed: wait until the worker has left job_done's critical section. */
        pthread_mutex_lock(&c->mu);
        int done = c->job_done;
        pthread_mutex_unlock(&c->mu);
        if (!done)
            return MHD_YES;
        __atomic_store_n(&c->waiting, 0, __ATOMIC_RELEASE);
        if (c->post.job.status == 499)
            return MHD_NO; /* the client is gone: close without an answer */
        srv_routes_post_finish(h->srv, c->route, &c->post, c->t_start, &r);
        if (r.len >= TRIM_BYTES)
            __atomic_store_n(&h->trim, 1, __ATOMIC_RELAXED);
        return send_reply(c, &r);
    }
    if (c->too_large) {
        char msg[160];
        snprintf(msg, sizeof msg, "the body is larger than max-body-bytes (%lld)",
                 (long long)max_body(c));
        return send_error(c, 413, "", msg);
    }
    return handle(c);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    srv_http *h = cls;
    conn *c = *con_cls;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    /* the gate waits for this count before it answers a later request itself */
    srv_gate_link_completed(ci ? ci->socket_context : NULL);
    if (!c)
        return;
    *con_cls = NULL;
    pthread_mutex_lock(&h->mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        h->reqs = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&h->mu);
    double secs = srv_now() - c->t_start;
    int status = c->responded ? c->status : 0;
    if (c->responded)
        srv_log_info("%s %s %d %.1f ms%s", c->method, c->path, status, secs * 1e3,
                     toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (not delivered)");
    else
        srv_log_info("%s %s - %.1f ms (connection closed before a response)", c->method, c->path,
                     secs * 1e3);
    srv_metrics_request(h->srv->metrics, c->route, status ? status : 499, secs);
    srv_metrics_gauge_add(&h->srv->metrics->inflight, -1);
    __atomic_fetch_sub(&h->open, 1, __ATOMIC_RELAXED);
    if (c->reserved)
        srv_metrics_gauge_set(&h->srv->metrics->body_bytes_inflight,
                              __atomic_sub_fetch(&h->body_bytes, c->reserved, __ATOMIC_RELAXED));
    /* A job still queued would later call job_done on freed memory; MHD
     * never completes a suspended connection, so this holds by construction. */
    if (__atomic_load_n(&c->waiting, __ATOMIC_ACQUIRE))
        srv_log_error("http: request %s %s completed while its job was pending", c->method,
                      c->path);
    if (c->cap >= TRIM_BYTES)
        __atomic_store_n(&h->trim, 1, __ATOMIC_RELAXED);
    srv_post_free(&c->post);
    free(c->body);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* libmicrohttpd opened or closed a connection (the gate handed it over):
 * the link to the gate travels in the socket context. */
static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    srv_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = ci ? srv_gate_link_take(h->gate, ci->connect_fd) : NULL;
    } else {
        srv_gate_link_release(*socket_context);
        *socket_context = NULL;
    }
}

void srv_http_sweep(srv_http *h)
{
    if (!h)
        return;
    /* A suspended request is not polled by libmicrohttpd; the gate closes
     * the socketpair when the client leaves, so EOF there means gone. */
    pthread_mutex_lock(&h->mu);
    for (conn *c = h->reqs; c; c = c->next) {
        if (!__atomic_load_n(&c->waiting, __ATOMIC_ACQUIRE))
            continue;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        char b;
        ssize_t n = ci ? recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) : 1;
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            if (srv_sched_cancel(h->srv->sched, &c->post.job))
                srv_log_info("%s %s: the client left; its queued job is dropped", c->method,
                             c->path);
        }
    }
    pthread_mutex_unlock(&h->mu);
    /* give large freed buffers (masks, responses, bodies) back at once */
    double now = srv_now();
    if (now - h->t_trim >= 1.0 && __atomic_exchange_n(&h->trim, 0, __ATOMIC_RELAXED)) {
        malloc_trim(0);
        h->t_trim = now;
    }
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    (void)cls;
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    srv_log_debug("libmicrohttpd: %s", buf);
}

/* Contract: a bound, listening, non-blocking socket for "HOST:PORT". */
static int bind_listen(const char *listen_s, int *port, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(listen_s, ':');
    struct addrinfo hints, *res = NULL, *ai;
    int fd = -1, rc, one = 1;
    size_t hl;

    if (!colon) {
        snprintf(err, errlen, "listen '%s' is not HOST:PORT", listen_s);
        return -1;
    }
    hl = (size_t)(colon - listen_s);
    if (listen_s[0] == '[' && hl >= 2 && listen_s[hl - 1] == ']') {
        listen_s++;
        hl -= 2;
    }
    if (hl >= sizeof host) {
        snprintf(err, errlen, "listen host is too long");
        return -1;
    }
    memcpy(host, listen_s, hl);
    host[hl] = 0;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    rc = getaddrinfo(hl ? host : NULL, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "listen '%s': %s", host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0)
            continue;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 256) == 0)
            break;
        snprintf(err, errlen, "cannot listen on %s:%s: %s", host, colon + 1, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (!err[0])
            snprintf(err, errlen, "cannot listen on '%s'", host);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

/* Contract: srv->instance from the instance option, else HOSTNAME:PORT
 * (the host name cut to what the option allows), before any request. */
static void set_instance(srv_server *srv, int port)
{
    const char *opt = srv_config_str(srv->cfg, SRV_OPT_INSTANCE);
    char host[256] = "";
    if (opt[0]) {
        snprintf(srv->instance, sizeof srv->instance, "%s", opt);
        return;
    }
    if (gethostname(host, sizeof host) != 0 || !host[0])
        snprintf(host, sizeof host, "tasamd");
    host[sizeof host - 1] = 0;
    for (char *p = host; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._-", *p))
            *p = '_';
    /* HOST cut so that ":PORT" (at most 6 bytes) still fits. */
    snprintf(srv->instance, sizeof srv->instance, "%.*s:%d", SRV_INSTANCE_MAX - 6, host, port);
}

int srv_http_start(srv_http **out, srv_server *srv, const char *listen_s, int *port, char *err,
                   size_t errlen)
{
    srv_config *cfg = srv->cfg;
    srv_http *h = calloc(1, sizeof *h);
    if (err && errlen)
        err[0] = 0;
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->srv = srv;
    pthread_mutex_init(&h->mu, NULL);
    int listen_fd = bind_listen(listen_s, port, err, errlen);
    if (listen_fd < 0)
        goto fail;
    int64_t maxc = srv_config_int(cfg, SRV_OPT_MAX_CONNECTIONS);
    if (srv_clients_create(&h->clients, (int)(4 * maxc + 1024)) != 0) {
        snprintf(err, errlen, "out of memory");
        close(listen_fd);
        goto fail;
    }
    set_instance(srv, *port);
    /* libmicrohttpd listens on nothing: the gate accepts, checks each
     * request's framing and hands valid connections over. Its pool holds a
     * head the gate let through (max-header-bytes) with room to parse it;
     * its connection limit is the option's maximum (the gate enforces the
     * configured, reloadable one); its idle timeout closes kept-alive
     * connections with nothing to do. */
    size_t max_head = (size_t)srv_config_int(cfg, SRV_OPT_MAX_HEADER_BYTES);
    unsigned idle_s = (unsigned)((srv_config_int(cfg, SRV_OPT_IDLE_TIMEOUT_MS) + 999) / 1000);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)srv_config_int(cfg, SRV_OPT_THREADS), MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)65536 + 64, MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(4 * max_head + 64 * 1024),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        h, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL, MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "libmicrohttpd failed to start on %s", listen_s);
        close(listen_fd);
        goto fail;
    }
    if (srv_gate_start(&h->gate, srv, h->d, listen_fd, h->clients, err, errlen) != 0) {
        close(listen_fd);
        goto fail;
    }
    *out = h;
    return 0;
fail:
    if (h->d)
        MHD_stop_daemon(h->d);
    srv_clients_destroy(h->clients);
    pthread_mutex_destroy(&h->mu);
    free(h);
    return -1;
}

void srv_http_quiesce(srv_http *h)
{
    if (h)
        srv_gate_quiesce(h->gate);
}

int srv_http_open_connections(srv_http *h)
{
    return h ? __atomic_load_n(&h->open, __ATOMIC_RELAXED) : 0;
}

void srv_http_stop(srv_http *h)
{
    if (!h)
        return;
    /* the gate first: its sockets close, libmicrohttpd sees the hang-ups */
    srv_gate_stop(h->gate);
    MHD_stop_daemon(h->d);
    srv_clients_destroy(h->clients);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
