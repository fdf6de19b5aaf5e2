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

#include <jansson.h>
#include <microhttpd.h>
#include <sqlite3.h>
#include <uv.h>

#include "engine/error.h"
#include "engine/image.h"
#include "engine/rle.h"
#include "engine/sha256.h"
#include "server/base64.h"
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
        {"/v1/segment", SRV_ROUTE_SEGMENT, 1},   {"/v1/embeddings", SRV_ROUTE_EMBED_POST, 1},
        {"/healthz", SRV_ROUTE_HEALTHZ, 0},      {"/readyz", SRV_ROUTE_READYZ, 0},
        {"/metrics", SRV_ROUTE_METRICS, 0},      {"/v1/info", SRV_ROUTE_INFO, 0},
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
    static const char pre[] = "/v1/embeddings/";
    if (strncmp(url, pre, sizeof pre - 1) == 0 && url[sizeof pre - 1] &&
        !strchr(url + sizeof pre - 1, '/')) {
        *route = SRV_ROUTE_EMBED_GET;
        if (get)
            return 0;
        *allow = "GET, HEAD";
        return 405;
    }
    *route = SRV_ROUTE_OTHER;
    return 404;
}

int srv_route_has_body(srv_route r)
{
    return r == SRV_ROUTE_SEGMENT || r == SRV_ROUTE_EMBED_POST;
}

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
        out->body = strdup("{\"error\":{\"code\":500,\"message\":\"out of memory\",\"field\":\"\"}}");
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
    json_t *err = json_pack("{s:i,s:s,s:s}", "code", e->status, "message", e->message, "field",
                            e->field);
    reply_json(out, e->status, json_pack("{s:o}", "error", err));
    if (e->status == 429 || e->status == 503)
        out->retry_after = 1;
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
    o = json_pack(
        "{s:s,s:s,s:b,s:s,s:o,s:s?,s:s?,s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I},"
        "s:{s:s,s:s,s:s,s:s},s:{s:b,s:s},s:o,s:f}",
        "name", "tasamd", "version", TASAMD_VERSION_STRING, "ready", ready, "state",
        s->failed ? "failed" : ready ? "ready" : "loading", "model", model, "device",
        ready ? s->info.device : NULL, "precision", ready ? s->info.precision : NULL, "limits",
        "max_body_bytes", (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_BODY_BYTES), "max_pixels",
        (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_PIXELS), "max_points",
        (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_POINTS), "max_prompts",
        (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_PROMPTS), "max_mask_bytes",
        (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_MASK_BYTES), "queue_depth",
        (json_int_t)srv_config_int(cfg, SRV_OPT_QUEUE_DEPTH), "max_batch",
        (json_int_t)srv_config_int(cfg, SRV_OPT_MAX_BATCH), "request_timeout_ms",
        (json_int_t)srv_config_int(cfg, SRV_OPT_REQUEST_TIMEOUT_MS), "versions", "libmicrohttpd",
        MHD_get_version(), "jansson", JANSSON_VERSION, "sqlite", sqlite3_libversion(), "libuv",
        uv_version_string(), "hypernetwork", "available", 0, "note",
        "task-conditioned segmentation is not available yet: requests with `task` answer 501",
        "config", srv_config_to_json(cfg), "uptime_seconds", srv_now() - srv->t_start);
    return o;
}

static void get_embedding(srv_server *srv, const char *url, srv_reply *out)
{
    const char *id = url + strlen("/v1/embeddings/");
    char sha[65];
    srv_cache_meta m;
    if (strlen(id) != 64 || !srv_sha_hex_valid(id, sha)) {
        srv_reply_errorf(out, 400, "id", "the id must be a 64-digit sha256 hex string");
        return;
    }
    if (!srv_sched_is_ready(srv->sched)) {
        srv_reply_errorf(out, 503, "", "the model is still loading");
        return;
    }
    int rc = srv_cache_meta_get(srv->cache, sha, &m);
    if (rc < 0) {
        srv_reply_errorf(out, 500, "", "cache lookup failed");
        return;
    }
    if (rc == 1) {
        srv_reply_errorf(out, 404, "id", "no cached embedding for %s", sha);
        return;
    }
    json_t *o = json_pack("{s:s,s:i,s:i,s:s,s:s,s:I,s:I,s:I,s:I,s:b}", "image_id", m.image_id,
                          "width", m.width, "height", m.height, "model_id", m.model_id, "precision",
                          m.precision, "bytes", (json_int_t)m.bytes, "created_ms",
                          (json_int_t)m.created_ms, "last_used_ms", (json_int_t)m.last_used_ms,
                          "hits", (json_int_t)m.hits, "in_memory", m.in_memory);
    reply_json(out, 200, o);
}

void srv_routes_get(srv_server *srv, srv_route route, const char *url, srv_reply *out)
{
    memset(out, 0, sizeof *out);
    switch (route) {
    case SRV_ROUTE_HEALTHZ:
        reply_json(out, 200, json_pack("{s:s}", "status", "ok"));
        return;
    case SRV_ROUTE_READYZ: {
        int draining = __atomic_load_n(&srv->draining, __ATOMIC_RELAXED);
        int ready = srv_sched_is_ready(srv->sched);
        const char *st = draining ? "draining" : ready ? "ready" : srv->sched->failed ? "failed"
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
        get_embedding(srv, url, out);
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
}

/* Contract: decode the image bytes and resize for the encoder into
 * p->resized / p->job.info. Returns 0 or 1 with *out set. */
static int decode_image(srv_server *srv, srv_post *p, srv_reply *out)
{
    eng_image img = {0};
    int64_t maxpx = srv_config_int(srv->cfg, SRV_OPT_MAX_PIXELS);
    int rc = eng_image_decode(p->req.image, p->req.image_len, maxpx, &img);
    if (rc == ENG_ELIMIT) {
        srv_reply_errorf(out, 413, "image", "image: %s (limit %lld pixels)", eng_last_error(),
                         (long long)maxpx);
        return 1;
    }
    if (rc == ENG_EUNSUP) {
        srv_reply_errorf(out, 415, "image", "image: not a JPEG or PNG we decode: %s",
                         eng_last_error());
        return 1;
    }
    if (rc == ENG_ENOMEM) {
        srv_reply_errorf(out, 503, "image", "not enough memory to decode the image; retry later");
        return 1;
    }
    if (rc != 0) {
        srv_reply_errorf(out, 400, "image", "image is corrupt or truncated: %s", eng_last_error());
        return 1;
    }
    eng_sam_imginfo *in = &p->job.info;
    in->orig_w = img.w;
    in->orig_h = img.h;
    eng_resize_shape(img.w, img.h, ENG_SAM_IMG, &in->input_w, &in->input_h);
    p->resized = malloc((size_t)in->input_w * (size_t)in->input_h * 3);
    if (!p->resized) {
        eng_image_free(&img);
        srv_reply_errorf(out, 503, "image", "not enough memory to resize the image; retry later");
        return 1;
    }
    rc = eng_resize_bilinear_aa(img.rgb, img.w, img.h, p->resized, in->input_w, in->input_h);
    eng_image_free(&img);
    if (rc != 0) {
        srv_reply_errorf(out, 500, "image", "resizing failed: %s", eng_last_error());
        return 1;
    }
    return 0;
}

int srv_routes_post_prepare(srv_server *srv, srv_route route, const char *content_type,
                            const uint8_t *body, size_t len, double t_start, srv_post *p,
                            srv_reply *out)
{
    srv_error e;
    srv_limits lim;
    srv_kind kind = route == SRV_ROUTE_SEGMENT ? SRV_KIND_SEGMENT : SRV_KIND_EMBED;
    srv_job *j = &p->job;
    int w = 0, h = 0;

    memset(out, 0, sizeof *out);
    lim.max_points = (int)srv_config_int(srv->cfg, SRV_OPT_MAX_POINTS);
    lim.max_prompts = (int)srv_config_int(srv->cfg, SRV_OPT_MAX_PROMPTS);
    if (srv_request_parse(content_type, body, len, kind, &lim, &p->req, &e) != 0) {
        srv_reply_error(out, &e);
        return 1;
    }
    if (p->req.has_task) {
        srv_reply_errorf(out, 501, "task",
                         "task-conditioned segmentation is not available yet (the hypernetwork is "
                         "not built); send the request without `task`");
        return 1;
    }
    if (__atomic_load_n(&srv->draining, __ATOMIC_RELAXED)) {
        srv_reply_errorf(out, 503, "", "the server is shutting down");
        return 1;
    }
    if (!srv_sched_is_ready(srv->sched)) {
        srv_reply_errorf(out, 503, "", srv->sched->failed ? "the model failed to load"
                                                          : "the model is still loading");
        return 1;
    }
    memset(j, 0, sizeof *j);
    j->kind = kind;
    j->multimask = p->req.multimask;
    j->max_pixels = srv_config_int(srv->cfg, SRV_OPT_MAX_PIXELS);
    if (p->req.image) {
        uint8_t d[32];
        double t = srv_now();
        eng_sha256(p->req.image, p->req.image_len, d);
        eng_sha256_hex(d, j->sha);
        j->raw = p->req.image;
        j->raw_len = p->req.image_len;
        if (!srv_cache_peek(srv->cache, j->sha, &w, &h)) {
            if (decode_image(srv, p, out))
                return 1;
            j->resized = p->resized;
            w = j->info.orig_w;
            h = j->info.orig_h;
        }
        j->t.decode = (srv_now() - t) * 1e3;
    } else {
        memcpy(j->sha, p->req.image_id, sizeof j->sha);
        if (!srv_cache_peek(srv->cache, j->sha, &w, &h)) {
            srv_reply_errorf(out, 404, "image_id",
                             "no cached embedding for image_id %s; send the image itself", j->sha);
            return 1;
        }
    }
    j->info.orig_w = w;
    j->info.orig_h = h;
    if (kind == SRV_KIND_SEGMENT) {
        if (srv_request_prompts(&p->req, w, h, &p->prompts, &e) != 0) {
            srv_reply_error(out, &e);
            return 1;
        }
        double bytes = (double)p->prompts.n * (p->req.multimask ? 3 : 1) * (double)w * (double)h;
        int64_t maxb = srv_config_int(srv->cfg, SRV_OPT_MAX_MASK_BYTES);
        if (bytes > (double)maxb) {
            srv_reply_errorf(out, 413, p->req.n_boxes > 1 ? "boxes" : "",
                             "the masks of this request would take %.0f bytes (prompts x masks x "
                             "pixels); the limit is %lld",
                             bytes, (long long)maxb);
            return 1;
        }
        j->prompts = &p->prompts;
    }
    j->deadline = t_start + (double)srv_config_int(srv->cfg, SRV_OPT_REQUEST_TIMEOUT_MS) * 1e-3;
    return 0;
}

static json_t *num3(double v)
{
    return json_real(round(v * 1000.0) / 1000.0);
}

/* Contract: one mask's JSON, or NULL (out of memory / encoder error). */
static json_t *mask_json(const srv_job *j, srv_output fmt, int i, int prompt)
{
    int w = j->info.orig_w, h = j->info.orig_h;
    const uint8_t *mask = j->masks + (size_t)i * (size_t)w * (size_t)h;
    eng_rle rle = {0};
    char *counts = NULL;
    double bbox[4];
    json_t *o = NULL;

    if (eng_rle_encode(mask, h, w, &rle) != 0 || eng_rle_to_string(&rle, &counts) != 0)
        goto out;
    eng_rle_bbox(&rle, bbox);
    o = json_pack("{s:i,s:[f,f,f,f],s:I,s:o,s:o}", "prompt", prompt, "bbox", bbox[0], bbox[1],
                  bbox[2], bbox[3], "area", (json_int_t)eng_rle_area(&rle), "predicted_iou",
                  json_real(j->iou[i]), "stability_score", json_real(j->stability[i]));
    if (!o)
        goto out;
    if (fmt == SRV_OUT_RLE) {
        json_object_set_new(o, "rle", json_pack("{s:[i,i],s:s}", "size", h, w, "counts", counts));
    } else if (fmt == SRV_OUT_PNG) {
        uint8_t *pix = malloc((size_t)w * (size_t)h), *png = NULL;
        size_t plen = 0;
        char *b64 = NULL;
        if (pix) {
            for (size_t k = 0; k < (size_t)w * (size_t)h; k++)
                pix[k] = mask[k] ? 255 : 0;
            if (eng_png_encode(pix, w, h, 1, &png, &plen) == 0)
                b64 = srv_base64_encode(png, plen);
        }
        free(pix);
        free(png);
        if (!b64) {
            json_decref(o);
            o = NULL;
            goto out;
        }
        json_object_set_new(o, "png", json_string(b64));
        free(b64);
    } else {
        eng_polygons polys = {0};
        json_t *arr = json_array();
        if (!arr || eng_mask_polygons(mask, h, w, &polys) != 0) {
            json_decref(arr);
            eng_polygons_free(&polys);
            json_decref(o);
            o = NULL;
            goto out;
        }
        for (size_t k = 0; k < polys.n; k++) {
            json_t *pa = json_array();
            for (size_t v = 0; v < 2 * polys.polys[k].n; v++)
                json_array_append_new(pa, json_integer(polys.polys[k].xy[v]));
            json_array_append_new(arr, pa);
        }
        eng_polygons_free(&polys);
        json_object_set_new(o, "polygons", arr);
    }
out:
    free(counts);
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
    if (route == SRV_ROUTE_SEGMENT) {
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
    json_object_set_new(
        o, "timings_ms",
        json_pack("{s:o,s:o,s:o,s:o,s:o,s:o}", "decode", num3(j->t.decode), "queue",
                  num3(j->t.queue), "encode", num3(j->t.encode), "decode_masks",
                  num3(j->t.decode_masks), "postprocess", num3(j->t.postprocess), "total",
                  num3((srv_now() - t_start) * 1e3)));
    reply_json(out, 200, o);
}
