/*
 * server/http.c: libmicrohttpd plumbing: listening socket, the access
 * handler's state machine, body limits, suspend/resume around jobs,
 * responses, and the per-request log line and metrics.
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
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "server/log.h"
#include "server/routes.h"

struct srv_http {
    struct MHD_Daemon *d; /* the daemon (owns its threads) */
    srv_server *srv;      /* borrowed */
    int listen_fd;        /* our listening socket, -1 once closed */
    int open;             /* requests alive (atomic) */
};

/* State of one request on a connection (MHD's con_cls). */
typedef struct conn {
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
} conn;

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
        resp = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
    else
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
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
    MHD_get_connection_values_n(c->mc, MHD_GET_ARGUMENT_KIND, collect_arg, in);
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
        c->waiting = 1;
        c->post.queued = 1;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc == 0)
        return MHD_YES;
    srv_reply_error(&r, &e);
    return send_reply(c, &r);
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
        *con_cls = c;
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
        if (srv_route_has_body(c->route)) {
            const char *cl =
                MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl) {
                char *end;
                errno = 0;
                unsigned long long n = strtoull(cl, &end, 10);
                if (errno || *end || (int64_t)n > max_body(c) ||
                    n > (unsigned long long)INT64_MAX) {
                    char msg[160];
                    snprintf(msg, sizeof msg, "the body is larger than max-body-bytes (%lld)",
                             (long long)max_body(c));
                    return send_error(c, 413, "", msg);
                }
                c->cap = (size_t)n;
                c->body = malloc(c->cap ? c->cap : 1);
                if (!c->body)
                    return send_error(c, 503, "", "out of memory for the body; retry later");
            }
        }
        return MHD_YES;
    }

    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (c->too_large || !srv_route_has_body(c->route))
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
    if (c->waiting) {
        srv_reply r;
        /* Resumed: wait until the worker has left job_done's critical section. */
        pthread_mutex_lock(&c->mu);
        int done = c->job_done;
        pthread_mutex_unlock(&c->mu);
        if (!done)
            return MHD_YES;
        c->waiting = 0;
        srv_routes_post_finish(h->srv, c->route, &c->post, c->t_start, &r);
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
    (void)mc;
    if (!c)
        return;
    *con_cls = NULL;
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
    /* A job still queued would later call job_done on freed memory; MHD
     * never completes a suspended connection, so this holds by construction. */
    if (c->waiting)
        srv_log_error("http: request %s %s completed while its job was pending", c->method,
                      c->path);
    srv_post_free(&c->post);
    free(c->body);
    pthread_mutex_destroy(&c->mu);
    free(c);
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
    srv_http *h = calloc(1, sizeof *h);
    if (err && errlen)
        err[0] = 0;
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->srv = srv;
    h->listen_fd = bind_listen(listen_s, port, err, errlen);
    if (h->listen_fd < 0) {
        free(h);
        return -1;
    }
    set_instance(srv, *port);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)h->listen_fd,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)srv_config_int(srv->cfg, SRV_OPT_THREADS),
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)srv_config_int(srv->cfg, SRV_OPT_MAX_CONNECTIONS),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL, MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "libmicrohttpd failed to start on %s", listen_s);
        close(h->listen_fd);
        free(h);
        return -1;
    }
    *out = h;
    return 0;
}

void srv_http_quiesce(srv_http *h)
{
    if (!h || h->listen_fd < 0)
        return;
    MHD_socket fd = MHD_quiesce_daemon(h->d);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    h->listen_fd = -1;
}

int srv_http_open_connections(srv_http *h)
{
    return h ? __atomic_load_n(&h->open, __ATOMIC_RELAXED) : 0;
}

void srv_http_stop(srv_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    if (h->listen_fd >= 0)
        close(h->listen_fd);
    free(h);
}
