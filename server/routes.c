/*
 * server/routes.c: the v1 API handlers. See schema/openapi.yaml for the
 * contract each one keeps.
 */
#include "server/routes.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <microhttpd.h>
#include <sqlite3.h>
#include <uv.h>

#include "adapters/adapter.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/rle.h"
#include "engine/sha256.h"
#include "server/base64.h"
#include "server/everything.h"
#include "server/log.h"

static const char *const JSON_TYPE = "application/json";

int srv_route_match(const char *method, const char *url, srv_route *route, const char **allow)
{
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    int post = !strcmp(method, "POST");
    static const struct {
        const char *path;
        srv_route route;
        int is_post;
    } fixed[] = {
        {"/v1/segment", SRV_ROUTE_SEGMENT, 1}, {"/v1/embeddings", SRV_ROUTE_EMBED_POST, 1},
        {"/healthz", SRV_ROUTE_HEALTHZ, 0},    {"/readyz", SRV_ROUTE_READYZ, 0},
        {"/metrics", SRV_ROUTE_METRICS, 0},    {"/v1/info", SRV_ROUTE_INFO, 0},
    };
    *allow = NULL;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (strcmp(url, fixed[i].path) != 0)
            continue;
        *route = fixed[i].route;
        if (fixed[i].is_post ? post : get)
            return 0;
        *allow = fixed[i].is_post ? "POST" : "GET, HEAD";
        return 405;
    }
    if (strcmp(url, "/v1/adapters") == 0) {
        *route = post ? SRV_ROUTE_ADAPTERS_POST : SRV_ROUTE_ADAPTERS;
        if (get || post)
            return 0;
        *allow = "GET, HEAD, POST";
        return 405;
    }
    if (strcmp(url, "/admin/adapters") == 0) {
        *route = SRV_ROUTE_ADMIN;
        if (!strcmp(method, "DELETE"))
            return 0;
        *allow = "DELETE";
        return 405;
    }
    static const char pre[] = "/v1/embeddings/";
    if (strncmp(url, pre, sizeof pre - 1) == 0 && url[sizeof pre - 1] &&
        !strchr(url + sizeof pre - 1, '/')) {
        *route = SRV_ROUTE_EMBED_GET;
        if (get)
            return 0;
        *allow = "GET, HEAD";
        return 405;
    }
    static const char apre[] = "/v1/adapters/";
    if (strncmp(url, apre, sizeof apre - 1) == 0 && url[sizeof apre - 1]) {
        const char *id = url + sizeof apre - 1, *slash = strchr(id, '/');
        if (!slash)
            *route = SRV_ROUTE_ADAPTER_GET;
        else if (slash > id && strcmp(slash, "/weights") == 0)
            *route = SRV_ROUTE_ADAPTER_WEIGHTS;
        else
            goto none;
        if (get)
            return 0;
        *allow = "GET, HEAD";
        return 405;
    }
none:
    *route = SRV_ROUTE_OTHER;
    return 404;
}

int srv_route_has_body(srv_route r)
{
    return r == SRV_ROUTE_SEGMENT || r == SRV_ROUTE_EMBED_POST || r == SRV_ROUTE_ADAPTERS_POST;
}

int srv_route_uses_job(srv_route r) { return srv_route_has_body(r) || r == SRV_ROUTE_ADMIN; }

/* Contract: serialises j (stolen) into out as the body; on failure a
 * plain 500 text. */
static void reply_json(srv_reply *out, int status, json_t *j)
{
    memset(out, 0, sizeof *out);
    out->status = status;
    out->content_type = JSON_TYPE;
    out->body = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(j);
    if (!out->body) {
        out->status = 500;
        out->body =
            strdup("{\"error\":{\"code\":500,\"message\":\"out of memory\",\"field\":\"\"}}");
    }
    out->len = out->body ? strlen(out->body) : 0;
    /* Newline-terminated, friendlier for curl users. */
    if (out->body) {
        char *b = realloc(out->body, out->len + 2);
        if (b) {
            b[out->len++] = '\n';
            b[out->len] = 0;
            out->body = b;
        }
    }
}

void srv_reply_error(srv_reply *out, const srv_error *e)
{
    json_t *err =
        json_pack("{s:i,s:s,s:s}", "code", e->status, "message", e->message, "field", e->field);
    reply_json(out, e->status, json_pack("{s:o}", "error", err));
    if (e->status == 429 || e->status == 503)
        out->retry_after = 1;
    /* RFC 9110: a 401 says how to authenticate */
    out->auth_challenge = e->status == 401;
}

void srv_reply_errorf(srv_reply *out, int status, const char *field, const char *fmt, ...)
{
    srv_error e;
    va_list ap;
    e.status = status;
    snprintf(e.field, sizeof e.field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    srv_reply_error(out, &e);
}

/* Contract: the reply from a handler's outcome: rc 0 keeps *out, else the
 * error e. */
static void reply_outcome(srv_reply *out, int rc, const srv_error *e)
{
    if (rc != 0)
        srv_reply_error(out, e);
}

/* Contract: the /v1/info "hypernetwork" object. */
static json_t *hypernet_json(srv_server *srv, int ready)
{
    const srv_model_info *mi = &srv->sched->info;
    const char *path = srv_config_str(srv->cfg, SRV_OPT_HYPERNET);
    if (!path[0])
        return json_pack("{s:b,s:s}", "available", 0, "note",
                         "no hypernetwork configured (start tasamd with --hypernet FILE): requests "
                         "with `task` answer 501");
    if (!ready || !mi->has_hypernet)
        return json_pack("{s:b,s:s,s:s}", "available", 0, "path", path, "note",
                         "the hypernetwork is still loading");
    return json_pack(
        "{s:b,s:s,s:s,s:s,s:i,s:f,s:i,s:I,s:s,s:s,s:b,s:s,s:I,s:I}", "available", 1, "path", path,
        "id", mi->hypernet_id, "version", mi->hypernet_version, "rank", mi->hypernet_rank, "alpha",
        mi->hypernet_alpha, "targets", mi->hypernet_targets, "parameters",
        (json_int_t)mi->hypernet_params, "text_model", mi->text_model, "text_encoder",
        mi->text_describe, "text_fallback", mi->text_fallback, "adapters",
        mi->adapter_merged ? "merged" : "unmerged", "adapter_slots",
        (json_int_t)srv_config_int(srv->cfg, SRV_OPT_ADAPTER_SLOTS), "adapter_cache_bytes",
        (json_int_t)srv_config_int(srv->cfg, SRV_OPT_ADAPTER_CACHE_BYTES));
}

static json_t *info_json(srv_server *srv)
{
    srv_sched *s = srv->sched;
    srv_config *cfg = srv->cfg;
    int ready = srv_sched_is_ready(s);
    json_t *model = json_null(), *o;
    if (ready) {
        const srv_model_info *mi = &s->info;
        model = json_pack("{s:s,s:s,s:i,s:i,s:s,s:I,s:f}", "model_id", mi->model_id, "arch",
                          mi->arch, "embed_dim", mi->embed_dim, "depth", mi->depth, "checkpoint",
                          srv_config_str(cfg, SRV_OPT_CHECKPOINT), "workspace_bytes",
                          (json_int_t)mi->workspace_bytes, "load_seconds", mi->load_seconds);
    }
    o = json_pack("{s:s,s:s,s:s,s:b,s:s,s:o,s:s?,s:s?,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I},"
                  "s:{s:s,s:s,s:s,s:s},s:o,s:o,s:f}",
                  "name", "tasamd", "version", TASAMD_VERSION_STRING, "instance", srv->instance,
                  "ready", ready, "state",
                  s->failed ? "failed"
                  : ready   ? "ready"
                            : "loading",
                  "model", model, "device", ready ? s->info.device : NULL, "precision",
                  ready ? s->info.precision : NULL, "limits", "max_body_bytes",
                  (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_BODY_BYTES), "max_pixels",
                  (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_PIXELS), "max_points",
                  (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_POINTS), "max_prompts",
                  (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_PROMPTS), "max_mask_bytes",
                  (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_MASK_BYTES), "queue_depth",
                  (json_int_t)srv_config_int(cfg, SRV_OPT_QUEUE_DEPTH), "max_batch",
                  (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_BATCH), "request_timeout_ms",
                  (json_int_t)srv_config_int(cfg, SRV_OPT_REQUEST_TIMEOUT_MS), "versions",
                  "libmicrohttpd", MHD_get_version(), "jansson", JANSSON_VERSION, "sqlite",
                  sqlite3_libversion(), "libuv", uv_version_string(), "hypernetwork",
                  hypernet_json(srv, ready), "config", srv_config_to_json(cfg), "uptime_seconds",
                  srv_now() - srv->t_start);
    return o;
}

/* GET /v1/embeddings/{id}. */
static int get_embedding(srv_server *srv, const char *url, srv_reply *out, srv_error *e)
{
    const char *id = url + strlen("/v1/embeddings/");
    char sha[65];
    srv_cache_meta m;
    if (strlen(id) != 64 || !srv_sha_hex_valid(id, sha))
        return srv_fail(e, 400, "id", "the id must be a 64-digit sha256 hex string");
    if (!srv_sched_is_ready(srv->sched))
        return srv_fail(e, 503, "", "the model is still loading");
    int rc = srv_cache_meta_get(srv->cache, sha, &m);
    if (rc < 0)
        return srv_fail(e, 500, "", "cache lookup failed");
    if (rc == 1)
        return srv_fail(e, 404, "id", "no cached embedding for %s", sha);
    json_t *o = json_pack("{s:s,s:i,s:i,s:s,s:s,s:I,s:I,s:I,s:I,s:b}", "image_id", m.image_id,
                          "width", m.width, "height", m.height, "model_id", m.model_id, "precision",
                          m.precision, "bytes", (json_int_t)m.bytes, "created_ms",
                          (json_int_t)m.created_ms, "last_used_ms", (json_int_t)m.last_used_ms,
                          "hits", (json_int_t)m.hits, "in_memory", m.in_memory);
    reply_json(out, 200, o);
    return 0;
}

/* ---- adapters ---- */

/* Contract: the JSON of one adapter row (NULL when out of memory). */
static json_t *adapter_meta_json(srv_server *srv, const srv_adapter_meta *m)
{
    const srv_model_info *mi = &srv->sched->info;
    int current = srv_sched_is_ready(srv->sched) && mi->has_hypernet &&
                  !strcmp(m->hypernet_id, mi->hypernet_id);
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:f,s:I,s:I,s:I,s:I,s:b}", "id", m->id, "task",
                     m->task, "task_normalized", m->task_normalized, "hypernet_id", m->hypernet_id,
                     "hypernet_version", m->hypernet_version, "text_model", m->text_model, "rank",
                     m->rank, "alpha", m->alpha, "bytes", (json_int_t)m->bytes, "created_ms",
                     (json_int_t)m->created_ms, "last_used_ms", (json_int_t)m->last_used_ms, "hits",
                     (json_int_t)m->hits, "current", current);
}

/* Contract: the argument `key` of the query, or NULL. */
static const srv_query_arg *query_get(const srv_http_in *in, const char *key)
{
    for (int i = 0; in && i < in->n_query; i++)
        if (!strcmp(in->query[i].key, key))
            return &in->query[i];
    return NULL;
}

/* Contract: every query argument is one of `allowed` and given once.
 * Returns 0, or -1 with *e set (400 naming the argument). */
static int query_check(const srv_http_in *in, const char *const *allowed, srv_error *e)
{
    if (!in)
        return 0;
    if (in->query_overflow)
        return srv_fail(e, 400, "", "too many query arguments (at most %d)", SRV_QUERY_MAX);
    for (int i = 0; i < in->n_query; i++) {
        const char *k = in->query[i].key;
        int ok = 0;
        for (int a = 0; allowed[a]; a++)
            ok |= !strcmp(allowed[a], k);
        if (!ok)
            return srv_fail(e, 400, k, "unknown query argument '%.60s'", k);
        for (int j = 0; j < i; j++)
            if (!strcmp(in->query[j].key, k))
                return srv_fail(e, 400, k, "query argument '%.60s' given twice", k);
    }
    return 0;
}

/* Contract: a decimal integer argument in [lo, hi]; 0, or -1 with *e set. */
static int query_int(const srv_query_arg *a, int64_t lo, int64_t hi, int64_t *v, srv_error *e)
{
    char buf[24], *end;
    if (!a->val || a->len == 0 || a->len >= sizeof buf || memchr(a->val, 0, a->len))
        goto bad;
    memcpy(buf, a->val, a->len);
    buf[a->len] = 0;
    if (buf[0] < '0' || buf[0] > '9')
        goto bad;
    long long x = strtoll(buf, &end, 10);
    if (*end || x < lo || x > hi)
        goto bad;
    *v = x;
    return 0;
bad:
    return srv_fail(e, 400, a->key, "%s must be an integer in [%lld, %lld]", a->key, (long long)lo,
                    (long long)hi);
}

/* Contract: 0 when the model is loaded; else -1 with *e set (503). */
static int model_ready(srv_server *srv, srv_error *e)
{
    if (srv_sched_is_ready(srv->sched))
        return 0;
    return srv_fail(e, 503, "",
                    srv->sched->failed ? "the model failed to load" : "the model is still loading");
}

/* Contract: -1 with *e set (501) when no hypernetwork is loaded, else 0. */
static int need_hypernet(srv_server *srv, srv_error *e)
{
    if (srv->sched->info.has_hypernet)
        return 0;
    return srv_fail(e, 501, "task",
                    "no hypernetwork configured (start tasamd with --hypernet FILE)");
}

#define ADAPTER_LIST_MAX 500

/* GET /v1/adapters?task=... (one lookup, never generates) or the paged list. */
static int get_adapters(srv_server *srv, const srv_http_in *in, srv_reply *out, srv_error *e)
{
    static const char *const allowed[] = {"task", "limit", "after", "offset", NULL};
    const srv_query_arg *task, *lim, *after, *off;
    srv_adapter_meta m, *rows;
    char id[AD_ID_LEN + 1], after_id[65] = "";
    int64_t limit = 50, offset = 0, total = 0;
    int n = 0, rc;

    if (query_check(in, allowed, e))
        return -1;
    task = query_get(in, "task");
    lim = query_get(in, "limit");
    after = query_get(in, "after");
    off = query_get(in, "offset");
    if (task) {
        if (lim || after || off)
            return srv_fail(e, 400, "task",
                            "task looks up one adapter; limit, after and offset page the list");
        if (model_ready(srv, e) || need_hypernet(srv, e))
            return -1;
        if (ad_task_id(task->val ? task->val : "", task->val ? task->len : 0,
                       srv->sched->info.hypernet_id, id) != 0)
            return srv_fail(e, 400, "task", "task: %s", eng_last_error());
        rc = srv_cache_adapter_meta(srv->cache, id, &m);
        if (rc < 0)
            return srv_fail(e, 500, "", "adapter cache lookup failed");
        if (rc == 1)
            return srv_fail(e, 404, "task",
                            "no cached adapter for this task under hypernetwork %.16s (adapter id "
                            "%s); POST /v1/adapters generates one",
                            srv->sched->info.hypernet_id, id);
        reply_json(out, 200, adapter_meta_json(srv, &m));
        return 0;
    }
    if (lim && query_int(lim, 1, ADAPTER_LIST_MAX, &limit, e))
        return -1;
    if (off && query_int(off, 0, INT64_MAX / 2, &offset, e))
        return -1;
    if (after) {
        if (off)
            return srv_fail(e, 400, "offset",
                            "give after (the last id of a page) or offset, not both");
        if (!after->val || after->len != 64 || !srv_sha_hex_valid(after->val, after_id))
            return srv_fail(e, 400, "after", "after must be an adapter id (64 hex digits)");
    }
    rows = calloc((size_t)limit + 1, sizeof *rows);
    if (!rows)
        return srv_fail(e, 503, "", "out of memory; retry later");
    if (srv_cache_adapter_list(srv->cache, after_id, offset, (int)limit + 1, rows, &n, &total) !=
        0) {
        free(rows);
        return srv_fail(e, 500, "", "adapter cache listing failed");
    }
    json_t *arr = json_array();
    int more = n > limit;
    if (more)
        n = (int)limit;
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, adapter_meta_json(srv, &rows[i]));
    json_t *o = json_pack("{s:o,s:I,s:I,s:o}", "adapters", arr, "total", (json_int_t)total, "limit",
                          (json_int_t)limit, "next_after",
                          more ? json_string(rows[n - 1].id) : json_null());
    free(rows);
    reply_json(out, 200, o);
    return 0;
}

/* GET /v1/adapters/{id} and /v1/adapters/{id}/weights. */
static int get_adapter(srv_server *srv, const char *url, int weights, srv_reply *out, srv_error *e)
{
    const char *p = url + strlen("/v1/adapters/");
    char id[65];
    srv_adapter_meta m;
    uint8_t *blob = NULL;
    size_t n = strcspn(p, "/"), len = 0;
    int rc;
    if (n != 64 || (memcpy(id, p, 64), id[64] = 0, !srv_sha_hex_valid(id, id)))
        return srv_fail(e, 400, "id", "the id must be a 64-digit adapter id (hex)");
    rc = weights ? srv_cache_adapter_get(srv->cache, id, 0, &blob, &len, NULL)
                 : srv_cache_adapter_meta(srv->cache, id, &m);
    if (rc == 1)
        return srv_fail(e, 404, "id", "no cached adapter %s", id);
    if (rc < 0)
        return srv_fail(e, 500, "", "adapter cache lookup failed");
    if (!weights) {
        reply_json(out, 200, adapter_meta_json(srv, &m));
        return 0;
    }
    memset(out, 0, sizeof *out);
    out->status = 200;
    out->body = (char *)blob;
    out->len = len;
    out->content_type = "application/octet-stream";
    snprintf(out->disposition, sizeof out->disposition,
             "attachment; filename=\"adapter-%.16s.safetensors\"", id);
    return 0;
}

void srv_routes_get(srv_server *srv, srv_route route, const char *url, const srv_http_in *in,
                    srv_reply *out)
{
    srv_error e;
    memset(out, 0, sizeof *out);
    switch (route) {
    case SRV_ROUTE_HEALTHZ:
        reply_json(out, 200, json_pack("{s:s}", "status", "ok"));
        return;
    case SRV_ROUTE_READYZ: {
        int draining = __atomic_load_n(&srv->draining, __ATOMIC_RELAXED);
        int ready = srv_sched_is_ready(srv->sched);
        const char *st = draining             ? "draining"
                         : ready              ? "ready"
                         : srv->sched->failed ? "failed"
                                              : "loading";
        reply_json(out, ready && !draining ? 200 : 503, json_pack("{s:s}", "status", st));
        return;
    }
    case SRV_ROUTE_METRICS: {
        char *text;
        size_t len;
        if (srv_metrics_render(srv->metrics, &text, &len) != 0) {
            srv_reply_errorf(out, 500, "", "out of memory");
            return;
        }
        out->status = 200;
        out->body = text;
        out->len = len;
        out->content_type = "text/plain; version=0.0.4; charset=utf-8";
        return;
    }
    case SRV_ROUTE_INFO:
        reply_json(out, 200, info_json(srv));
        return;
    case SRV_ROUTE_EMBED_GET:
        reply_outcome(out, get_embedding(srv, url, out, &e), &e);
        return;
    case SRV_ROUTE_ADAPTERS:
        reply_outcome(out, get_adapters(srv, in, out, &e), &e);
        return;
    case SRV_ROUTE_ADAPTER_GET:
    case SRV_ROUTE_ADAPTER_WEIGHTS:
        reply_outcome(out, get_adapter(srv, url, route == SRV_ROUTE_ADAPTER_WEIGHTS, out, &e), &e);
        return;
    default:
        srv_reply_errorf(out, 404, "", "no such route");
        return;
    }
}

void srv_post_free(srv_post *p)
{
    srv_job_free_results(&p->job);
    srv_prompts_free(&p->prompts);
    srv_request_free(&p->req);
    free(p->resized);
    p->resized = NULL;
    eng_image_free(&p->pixels);
}

/* Contract: 0 when the request carries the admin token (Authorization:
 * Bearer TOKEN); else -1 with *e set: 401 without a usable token, 403 with
 * a wrong one or when no token is configured. The comparison is constant
 * time (srv_config_check_token). */
static int check_admin(srv_server *srv, const srv_http_in *in, srv_error *e)
{
    const char *h = in ? in->authorization : NULL, *tok = NULL;
    int configured = 0;
    if (h) {
        while (*h == ' ')
            h++;
        if (strncasecmp(h, "Bearer ", 7) == 0) {
            tok = h + 7;
            while (*tok == ' ')
                tok++;
        }
    }
    if (srv_config_check_token(srv->cfg, tok, &configured))
        return 0;
    if (!configured)
        return srv_fail(e, 403, "",
                        "admin routes are disabled: no admin token is configured (admin-token or "
                        "admin-token-file)");
    if (!tok || !*tok)
        return srv_fail(e, 401, "",
                        "this route needs the admin token: send `Authorization: Bearer <token>`");
    return srv_fail(e, 403, "", "the admin token is wrong");
}

/* Contract: when the request names its image in X-Tasam-Image-Id (as a
 * client does for a proxy that hashes on it), the name must be a sha256
 * hex string, sent once, equal to `sha` (the image's own hash, or the
 * body's image_id). Returns 0, or -1 with a 400 in *e. */
static int check_image_id_header(const srv_http_in *in, const char *sha, int by_id, srv_error *e)
{
    char h[65], t[65];
    if (!in || !in->image_id_count)
        return 0;
    if (in->image_id_count > 1)
        return srv_fail(e, 400, SRV_IMAGE_ID_HEADER, "%s was sent %d times; send it once",
                        SRV_IMAGE_ID_HEADER, in->image_id_count);
    /* Field values exclude surrounding whitespace (RFC 9110 5.5); MHD
     * strips the leading part only. */
    const char *v = in->image_id;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n == 64) {
        memcpy(t, v, 64);
        t[64] = 0;
    }
    if (n != 64 || !srv_sha_hex_valid(t, h))
        return srv_fail(e, 400, SRV_IMAGE_ID_HEADER,
                        "%s must be the 64-digit sha256 hex of the image bytes",
                        SRV_IMAGE_ID_HEADER);
    if (strcmp(h, sha) != 0)
        return srv_fail(e, 400, SRV_IMAGE_ID_HEADER, "%s %s does not match %s %s",
                        SRV_IMAGE_ID_HEADER, h,
                        by_id ? "the body's image_id" : "the image's sha256", sha);
    return 0;
}

int srv_routes_post_prepare(srv_server *srv, srv_route route, const srv_http_in *in,
                            const uint8_t *body, size_t len, double t_start, srv_post *p,
                            srv_error *e)
{
    srv_limits lim;
    srv_kind kind = route == SRV_ROUTE_SEGMENT         ? SRV_KIND_SEGMENT
                    : route == SRV_ROUTE_EMBED_POST    ? SRV_KIND_EMBED
                    : route == SRV_ROUTE_ADAPTERS_POST ? SRV_KIND_ADAPTER
                                                       : SRV_KIND_ADAPTER_FLUSH;
    srv_job *j = &p->job;
    int w = 0, h = 0;

    memset(j, 0, sizeof *j);
    if (kind == SRV_KIND_ADAPTER_FLUSH && check_admin(srv, in, e))
        return -1;
    lim.max_points = (int)srv_config_int(srv->cfg, SRV_OPT_MAX_POINTS);
    lim.max_prompts = (int)srv_config_int(srv->cfg, SRV_OPT_MAX_PROMPTS);
    /* everything mode's defaults (checked when the option was set) */
    srv_everything ev_defaults;
    srv_everything_defaults(srv_config_str(srv->cfg, SRV_OPT_EVERYTHING_DEFAULTS), &ev_defaults, e);
    lim.everything = &ev_defaults;
    int bad = kind != SRV_KIND_ADAPTER_FLUSH &&
              srv_request_parse(in ? in->content_type : NULL, body, len, kind, &lim, &p->req, e);
    srv_everything_free(&ev_defaults);
    if (bad)
        return -1;
    if (p->req.has_task && srv_sched_is_ready(srv->sched) && need_hypernet(srv, e))
        return -1;
    if (__atomic_load_n(&srv->draining, __ATOMIC_RELAXED))
        return srv_fail(e, 503, "", "the server is shutting down");
    if (model_ready(srv, e))
        return -1;
    j->kind = kind;
    j->deadline = t_start + (double)srv_config_int(srv->cfg, SRV_OPT_REQUEST_TIMEOUT_MS) * 1e-3;
    if (p->req.has_task) {
        j->task = p->req.task;
        j->task_len = p->req.task_len;
        j->task_norm = p->req.task_norm;
        if (ad_task_id_normalized(j->task_norm, srv->sched->info.hypernet_id, j->adapter_id) != 0)
            return srv_fail(e, 500, "", "adapter id: %s", eng_last_error());
    }
    if (kind == SRV_KIND_ADAPTER || kind == SRV_KIND_ADAPTER_FLUSH)
        return 0;
    j->multimask = p->req.multimask;
    j->max_pixels = srv_config_int(srv->cfg, SRV_OPT_MAX_PIXELS);
    /* everything mode's crop layers encode crops of the image itself */
    int crops = p->req.everything && p->req.amg->p.crop_n_layers > 0;
    if (crops && !p->req.image)
        return srv_fail(e, 400, "everything.crop_n_layers",
                        "crop layers encode crops of the image: send the image itself, not only "
                        "its image_id (or set crop_n_layers to 0)");
    if (p->req.image) {
        uint8_t d[32];
        double t = srv_now();
        eng_sha256(p->req.image, p->req.image_len, d);
        eng_sha256_hex(d, j->sha);
        if (check_image_id_header(in, j->sha, 0, e))
            return -1;
        j->raw = p->req.image;
        j->raw_len = p->req.image_len;
        int cached = srv_cache_peek(srv->cache, j->sha, &w, &h) == 0;
        if (!cached || crops) {
            if (srv_image_prepare(p->req.image, p->req.image_len, j->max_pixels,
                                  cached ? NULL : &p->resized, &j->info, crops ? &p->pixels : NULL,
                                  e) != 0)
                return -1;
            j->resized = p->resized;
            w = j->info.orig_w;
            h = j->info.orig_h;
        }
        j->t.decode = (srv_now() - t) * 1e3;
    } else {
        memcpy(j->sha, p->req.image_id, sizeof j->sha);
        if (check_image_id_header(in, j->sha, 1, e))
            return -1;
        if (srv_cache_peek(srv->cache, j->sha, &w, &h) != 0)
            return srv_fail(e, 404, "image_id",
                            "no cached embedding for image_id %s; send the image itself", j->sha);
    }
    j->info.orig_w = w;
    j->info.orig_h = h;
    if (p->req.everything) {
        j->everything = p->req.amg;
        j->pixels = crops ? &p->pixels : NULL;
        j->max_mask_bytes = srv_config_int(srv->cfg, SRV_OPT_MAX_MASK_BYTES);
    } else if (kind == SRV_KIND_SEGMENT) {
        if (srv_request_prompts(&p->req, w, h, &p->prompts, e) != 0)
            return -1;
        double bytes = (double)p->prompts.n * (p->req.multimask ? 3 : 1) * (double)w * (double)h;
        int64_t maxb = srv_config_int(srv->cfg, SRV_OPT_MAX_MASK_BYTES);
        if (bytes > (double)maxb)
            return srv_fail(e, 413, p->req.n_boxes > 1 ? "boxes" : "",
                            "the masks of this request would take %.0f bytes (prompts x masks x "
                            "pixels); the limit is %lld",
                            bytes, (long long)maxb);
        j->prompts = &p->prompts;
    }
    return 0;
}

static json_t *num3(double v) { return json_real(round(v * 1000.0) / 1000.0); }

/* Contract: one mask's JSON, or NULL (out of memory / encoder error). */
static json_t *mask_json(const srv_job *j, srv_output fmt, int i, int prompt)
{
    int w = j->info.orig_w, h = j->info.orig_h;
    const uint8_t *mask = j->masks + (size_t)i * (size_t)w * (size_t)h;
    eng_rle rle = {0};
    double bbox[4];
    json_t *o = NULL;

    if (eng_rle_encode(mask, h, w, &rle) != 0)
        return NULL;
    eng_rle_bbox(&rle, bbox);
    o = json_pack("{s:i,s:[f,f,f,f],s:I,s:o,s:o}", "prompt", prompt, "bbox", bbox[0], bbox[1],
                  bbox[2], bbox[3], "area", (json_int_t)eng_rle_area(&rle), "predicted_iou",
                  json_real(j->iou[i]), "stability_score", json_real(j->stability[i]));
    if (o && srv_mask_json_encode(o, mask, &rle, fmt) != 0) {
        json_decref(o);
        o = NULL;
    }
    eng_rle_free(&rle);
    return o;
}

void srv_routes_post_finish(srv_server *srv, srv_route route, srv_post *p, double t_start,
                            srv_reply *out)
{
    srv_job *j = &p->job;
    json_t *o, *masks;
    memset(out, 0, sizeof *out);
    if (j->status != 200) {
        srv_reply_error(out, &j->err);
        return;
    }
    if (j->kind == SRV_KIND_ADAPTER_FLUSH) {
        reply_json(out, 200,
                   json_pack("{s:{s:I,s:I}}", "flushed", "memory", (json_int_t)j->flushed_mem,
                             "disk", (json_int_t)j->flushed_disk));
        return;
    }
    if (j->kind == SRV_KIND_ADAPTER) {
        srv_adapter_meta m;
        /* The row as it is now (hits and last_used), when it is on disk. */
        if (srv_cache_adapter_meta(srv->cache, j->adapter_id, &m) != 0)
            m = j->ad_meta;
        o = adapter_meta_json(srv, &m);
        if (o) {
            json_object_set_new(o, "source", json_string(srv_adapter_source_name(j->ad_source)));
            json_object_set_new(o, "timings_ms",
                                json_pack("{s:o,s:o,s:o}", "queue", num3(j->t.queue), "adapter",
                                          num3(j->t.adapter), "total",
                                          num3((srv_now() - t_start) * 1e3)));
        }
        reply_json(out, 200, o);
        return;
    }
    json_t *cache = json_pack("{s:s,s:s?}", "embedding", j->cache_hit ? "hit" : "miss", "tier",
                              j->tier == SRV_TIER_MEMORY ? "memory"
                              : j->tier == SRV_TIER_DISK ? "disk"
                                                         : NULL);
    o = json_pack("{s:s,s:i,s:i,s:o}", "image_id", j->sha, "width", j->info.orig_w, "height",
                  j->info.orig_h, "cache", cache);
    if (!o) {
        srv_reply_errorf(out, 500, "", "out of memory");
        return;
    }
    if (j->task && j->ad_source != SRV_AD_NONE)
        json_object_set_new(o, "adapter",
                            json_pack("{s:s,s:s,s:s,s:s,s:s}", "id", j->ad_meta.id,
                                      "task_normalized", j->ad_meta.task_normalized, "source",
                                      srv_adapter_source_name(j->ad_source), "hypernet_id",
                                      j->ad_meta.hypernet_id, "hypernet_version",
                                      j->ad_meta.hypernet_version));
    if (route == SRV_ROUTE_SEGMENT && j->everything) {
        masks = json_array();
        json_object_set_new(o, "masks", masks);
        for (size_t i = 0; i < j->amg.n; i++) {
            json_t *m = srv_everything_mask_json(&j->amg.masks[i], p->req.output);
            if (!m) {
                json_decref(o);
                srv_reply_errorf(out, 500, "", "encoding mask %zu failed: %s", i, eng_last_error());
                return;
            }
            json_array_append_new(masks, m);
        }
        const eng_amg_stats *st = &j->amg.stats;
        json_object_set_new(o, "mode", json_string("everything"));
        json_object_set_new(o, "everything", srv_everything_params_json(&j->everything->p));
        json_object_set_new(o, "everything_stats",
                            json_pack("{s:i,s:I,s:I,s:I,s:I}", "crops", st->crops, "prompts",
                                      (json_int_t)st->prompts, "upscaled", (json_int_t)st->upscaled,
                                      "candidates", (json_int_t)st->candidates, "masks",
                                      (json_int_t)j->amg.n));
    } else if (route == SRV_ROUTE_SEGMENT) {
        masks = json_array();
        json_object_set_new(o, "masks", masks);
        for (int i = 0; i < j->n_masks; i++) {
            json_t *m = mask_json(j, p->req.output, i, i / (j->per_prompt ? j->per_prompt : 1));
            if (!m) {
                json_decref(o);
                srv_reply_errorf(out, 500, "", "encoding mask %d failed: %s", i, eng_last_error());
                return;
            }
            json_array_append_new(masks, m);
        }
        json_object_set_new(o, "multimask", json_boolean(j->per_prompt == 3));
    } else {
        json_object_set_new(o, "model_id", json_string(srv->sched->info.model_id));
        json_object_set_new(o, "precision", json_string(srv->sched->info.precision));
    }
    json_object_set_new(o, "timings_ms",
                        json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "decode", num3(j->t.decode),
                                  "queue", num3(j->t.queue), "encode", num3(j->t.encode), "adapter",
                                  num3(j->t.adapter), "decode_masks", num3(j->t.decode_masks),
                                  "postprocess", num3(j->t.postprocess), "total",
                                  num3((srv_now() - t_start) * 1e3)));
    reply_json(out, 200, o);
}
