/*
 * server/routes_admin.c: the admin routes of training and hot swap
 * (schema/openapi.yaml): POST/GET /admin/train, GET/DELETE
 * /admin/train/{id}, GET /admin/train/{id}/log, GET /admin/hypernet and
 * POST /admin/hypernet/rollback. Every one needs the admin token.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "server/hypernet_swap.h"
#include "server/routes.h"
#include "server/train_jobs.h"

#define LIST_DEFAULT 50
#define LOG_DEFAULT  200

/* Contract: the {id} of /admin/train/{id}[/log] into id (cap bytes). */
static void path_id(const char *url, char *id, size_t cap)
{
    const char *p = url + strlen("/admin/train/");
    size_t n = strcspn(p, "/");
    snprintf(id, cap, "%.*s", (int)(n < cap ? n : cap - 1), p);
}

/* Contract: 0 when the body is declared JSON; else -1 with *e (415). */
static int need_json(const srv_http_in *in, srv_error *e)
{
    const char *ct = in->content_type;
    if (ct && !strncasecmp(ct, "application/json", 16) &&
        (!ct[16] || ct[16] == ';' || ct[16] == ' '))
        return 0;
    return srv_fail(e, 415, "", "send the job as application/json (Content-Type was %.80s)",
                    ct ? ct : "absent");
}

static int train_post(srv_server *srv, const srv_http_in *in, srv_reply *out, srv_error *e)
{
    json_t *job = NULL;
    if (need_json(in, e))
        return -1;
    if (__atomic_load_n(&srv->draining, __ATOMIC_RELAXED))
        return srv_fail(e, 503, "", "the server is shutting down");
    if (!srv->train)
        return srv_fail(e, 403, "",
                        "training is off: tasamd runs without --hypernet (training starts from "
                        "the active hypernetwork)");
    if (srv_train_submit(srv->train, (const char *)in->body, in->body_len, &job, e) != 0)
        return -1;
    const char *id = json_string_value(json_object_get(job, "id"));
    snprintf(out->location, sizeof out->location, "/admin/train/%s", id ? id : "");
    char loc[sizeof out->location];
    memcpy(loc, out->location, sizeof loc);
    srv__reply_json(out, 202, job);
    memcpy(out->location, loc, sizeof loc);
    return 0;
}

static int train_list(srv_server *srv, const srv_http_in *in, srv_reply *out, srv_error *e)
{
    static const char *const allowed[] = {"state", "limit", "before", NULL};
    const srv_query_arg *st, *lim, *bef;
    char state[16];
    int64_t limit = LIST_DEFAULT, before = 0;
    json_t *o = NULL;
    if (srv__query_check(in, allowed, e))
        return -1;
    st = srv__query_get(in, "state");
    lim = srv__query_get(in, "limit");
    bef = srv__query_get(in, "before");
    if (lim && srv__query_int(lim, 1, 500, &limit, e))
        return -1;
    if (bef && srv__query_int(bef, 1, INT64_MAX / 2, &before, e))
        return -1;
    if (st && (!st->val || st->len == 0 || st->len >= sizeof state || memchr(st->val, 0, st->len)))
        return srv_fail(e, 400, "state",
                        "state must be queued, running, succeeded, failed or cancelled");
    if (st) {
        memcpy(state, st->val, st->len);
        state[st->len] = 0;
    }
    if (srv_train_list(srv->train, st ? state : NULL, (int)limit, before, &o, e) != 0)
        return -1;
    srv__reply_json(out, 200, o);
    return 0;
}

static int train_log(srv_server *srv, const char *url, const srv_http_in *in, srv_reply *out,
                     srv_error *e)
{
    static const char *const allowed[] = {"lines", NULL};
    const srv_query_arg *l;
    int64_t lines = LOG_DEFAULT;
    char id[32], *text = NULL;
    size_t len = 0;
    if (srv__query_check(in, allowed, e))
        return -1;
    if ((l = srv__query_get(in, "lines")) && srv__query_int(l, 1, 100000, &lines, e))
        return -1;
    path_id(url, id, sizeof id);
    if (srv_train_log(srv->train, id, (int)lines, &text, &len, e) != 0)
        return -1;
    memset(out, 0, sizeof *out);
    out->status = 200;
    out->body = text;
    out->len = len;
    out->content_type = "text/plain; charset=utf-8";
    return 0;
}

static int rollback(srv_server *srv, srv_reply *out, srv_error *e)
{
    srv_hn_result res;
    if (__atomic_load_n(&srv->draining, __ATOMIC_RELAXED))
        return srv_fail(e, 503, "", "the server is shutting down");
    if (!srv->hnswap)
        return srv_fail(e, 409, "", "tasamd runs without --hypernet: nothing to roll back");
    if (srv_hnswap_rollback(srv->hnswap, &res, e) != 0)
        return -1;
    json_t *o = json_pack("{s:o,s:o,s:b}", "hypernetwork", srv_hn_info_json(&res.active),
                          "previous", srv_hn_info_json(&res.previous), "published", res.published);
    if (o && res.note[0])
        json_object_set_new(o, "note", json_string(res.note));
    srv__reply_json(out, 200, o);
    return 0;
}

void srv__routes_admin(srv_server *srv, srv_route route, const char *url, const srv_http_in *in,
                       srv_reply *out)
{
    srv_error e;
    char id[32];
    json_t *o = NULL;
    int rc, status = 200;
    memset(out, 0, sizeof *out);
    if (srv__check_admin(srv, in, "this is an admin route", &e) != 0) {
        srv_reply_error(out, &e);
        return;
    }
    switch (route) {
    case SRV_ROUTE_TRAIN_POST:
        rc = train_post(srv, in, out, &e);
        break;
    case SRV_ROUTE_TRAIN_LIST:
        rc = train_list(srv, in, out, &e);
        break;
    case SRV_ROUTE_TRAIN_GET:
    case SRV_ROUTE_TRAIN_CANCEL:
        path_id(url, id, sizeof id);
        rc = route == SRV_ROUTE_TRAIN_GET ? srv_train_get(srv->train, id, &o, &e)
                                          : srv_train_cancel(srv->train, id, &o, &status, &e);
        if (rc == 0)
            srv__reply_json(out, status, o);
        break;
    case SRV_ROUTE_TRAIN_LOG:
        rc = train_log(srv, url, in, out, &e);
        break;
    case SRV_ROUTE_HYPERNET_GET:
        if (!srv->hnswap) {
            rc = srv_fail(&e, 404, "", "tasamd runs without --hypernet");
            break;
        }
        srv__reply_json(out, 200, srv_hnswap_json(srv->hnswap));
        rc = 0;
        break;
    case SRV_ROUTE_HYPERNET_ROLLBACK:
        rc = rollback(srv, out, &e);
        break;
    default:
        rc = srv_fail(&e, 404, "", "no such route");
        break;
    }
    if (rc != 0)
        srv_reply_error(out, &e);
}
