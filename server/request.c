/*
 * server/request.c: request bodies -> srv_request, with precise 400s.
 */
#include "server/request.h"

#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "adapters/adapter.h"
#include "engine/error.h"
#include "engine/image.h"
#include "server/base64.h"
#include "server/everything.h"

int srv_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned c = *p;
        size_t n;
        unsigned cp;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            p++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if ((size_t)(end - p) <= n)
            return 0;
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        /* overlong forms, surrogates, beyond U+10FFFF */
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        p += n + 1;
    }
    return 1;
}

int srv_sha_hex_valid(const char *s, char out[65])
{
    for (int i = 0; i < 64; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return 0;
        out[i] = (char)tolower((unsigned char)s[i]);
    }
    if (s[64])
        return 0;
    out[64] = 0;
    return 1;
}

void srv_request_free(srv_request *r)
{
    if (!r)
        return;
    if (r->image_owned)
        free(r->image);
    free(r->points);
    free(r->labels);
    free(r->boxes);
    free(r->task);
    free(r->task_norm);
    srv_everything_free(r->amg);
    free(r->amg);
    memset(r, 0, sizeof *r);
}

void srv_prompts_free(srv_prompts *p)
{
    if (!p)
        return;
    free(p->p);
    p->p = NULL;
    p->n = 0;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "unknown";
}

/* Contract: a JSON number within float range (coordinates are stored as
 * float: 1e300 would become inf), as double; 0 on success. */
static int get_num(const json_t *v, double *out)
{
    if (!json_is_number(v))
        return -1;
    *out = json_number_value(v);
    return isfinite(*out) && fabs(*out) <= FLT_MAX ? 0 : -1;
}

static int parse_points(const json_t *v, const srv_limits *lim, srv_request *r, srv_error *e)
{
    size_t n;
    if (!json_is_array(v))
        return srv_fail(e, 400, "points", "points must be an array of [x, y, label], not %s",
                        type_name(v));
    n = json_array_size(v);
    if (n > (size_t)lim->max_points)
        return srv_fail(e, 400, "points", "%zu points given; at most %d are allowed per request", n,
                        lim->max_points);
    if (n == 0)
        return 0;
    r->points = malloc(n * 2 * sizeof(float));
    r->labels = malloc(n * sizeof(int));
    if (!r->points || !r->labels)
        return srv_fail(e, 500, "", "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *p = json_array_get(v, i);
        char f[64];
        double x, y;
        snprintf(f, sizeof f, "points[%zu]", i);
        if (!json_is_array(p) || json_array_size(p) != 3)
            return srv_fail(e, 400, f, "%s must be [x, y, label] (3 numbers)", f);
        if (get_num(json_array_get(p, 0), &x) || get_num(json_array_get(p, 1), &y))
            return srv_fail(e, 400, f, "%s: x and y must be numbers", f);
        const json_t *l = json_array_get(p, 2);
        if (!json_is_integer(l) || (json_integer_value(l) != 0 && json_integer_value(l) != 1))
            return srv_fail(e, 400, f, "%s: label must be 1 (foreground) or 0 (background)", f);
        r->points[2 * i] = (float)x;
        r->points[2 * i + 1] = (float)y;
        r->labels[i] = (int)json_integer_value(l);
    }
    r->n_points = (int)n;
    return 0;
}

static int parse_boxes(const json_t *v, const srv_limits *lim, srv_request *r, srv_error *e)
{
    size_t n;
    if (!json_is_array(v))
        return srv_fail(e, 400, "boxes", "boxes must be an array of [x0, y0, x1, y1], not %s",
                        type_name(v));
    n = json_array_size(v);
    if (n > (size_t)lim->max_prompts)
        return srv_fail(e, 400, "boxes", "%zu boxes given; at most %d are allowed per request", n,
                        lim->max_prompts);
    if (n == 0)
        return 0;
    r->boxes = malloc(n * 4 * sizeof(float));
    if (!r->boxes)
        return srv_fail(e, 500, "", "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *b = json_array_get(v, i);
        char f[64];
        double c[4];
        snprintf(f, sizeof f, "boxes[%zu]", i);
        if (!json_is_array(b) || json_array_size(b) != 4)
            return srv_fail(e, 400, f, "%s must be [x0, y0, x1, y1] (4 numbers)", f);
        for (int k = 0; k < 4; k++)
            if (get_num(json_array_get(b, (size_t)k), &c[k]))
                return srv_fail(e, 400, f, "%s: coordinates must be numbers", f);
        if (c[0] > c[2] || c[1] > c[3])
            return srv_fail(e, 400, f, "%s: need x0 <= x1 and y0 <= y1", f);
        for (int k = 0; k < 4; k++)
            r->boxes[4 * i + (size_t)k] = (float)c[k];
    }
    r->n_boxes = (int)n;
    return 0;
}

/* Contract: image bytes from a base64 string or data URL into r (owned). */
static int parse_image(const json_t *v, srv_request *r, srv_error *e)
{
    const char *s;
    size_t len;
    if (!json_is_string(v))
        return srv_fail(e, 400, "image", "image must be a base64 string, not %s", type_name(v));
    s = json_string_value(v);
    len = json_string_length(v);
    s = srv_base64_strip_data_url(s, &len);
    if (!s)
        return srv_fail(e, 400, "image", "image is a data URL that is not base64");
    if (len == 0)
        return srv_fail(e, 400, "image", "image is empty");
    if (srv_base64_decode(s, len, &r->image, &r->image_len) != 0)
        return srv_fail(e, 400, "image", "image is not valid base64: %s", eng_last_error());
    r->image_owned = 1;
    if (r->image_len == 0)
        return srv_fail(e, 400, "image", "image is empty");
    return 0;
}

/* Contract: length of the one well-formed UTF-8 character at p (at most
 * `left` bytes), or 0 when the bytes there are not one. */
static size_t utf8_char_len(const unsigned char *p, size_t left)
{
    return left && srv_utf8_valid((const char *)p, 1)                                        ? 1
           : left >= 2 && p[0] >= 0xC2 && p[0] <= 0xDF && srv_utf8_valid((const char *)p, 2) ? 2
           : left >= 3 && p[0] >= 0xE0 && p[0] <= 0xEF && srv_utf8_valid((const char *)p, 3) ? 3
           : left >= 4 && p[0] >= 0xF0 && p[0] <= 0xF4 && srv_utf8_valid((const char *)p, 4) ? 4
                                                                                             : 0;
}

static int hex4(const unsigned char *p, size_t left, unsigned *v)
{
    unsigned x = 0;
    if (left < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        int c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        x = x << 4 | (unsigned)d;
    }
    *v = x;
    return 0;
}

/*
 * Contract: rewrites the JSON text so that each piece of string content
 * jansson refuses (a lone UTF-16 surrogate escape, bytes that are not UTF-8,
 * a raw control character) becomes the escape \u0000. With `out` NULL only
 * counts; returns the length of the rewritten text.
 */
static size_t mark_bad_text(const unsigned char *in, size_t len, char *out)
{
    size_t i = 0, k = 0;
    int in_str = 0;
#define EMIT(ptr, n)                                                                               \
    do {                                                                                           \
        if (out)                                                                                   \
            memcpy(out + k, (ptr), (n));                                                           \
        k += (n);                                                                                  \
    } while (0)
    while (i < len) {
        unsigned char c = in[i];
        if (!in_str) {
            in_str = c == '"';
            EMIT(&in[i], 1);
            i++;
            continue;
        }
        if (c == '"') {
            in_str = 0;
            EMIT(&in[i], 1);
            i++;
        } else if (c == '\\' && i + 1 < len && in[i + 1] == 'u') {
            unsigned u, u2;
            if (hex4(in + i + 2, len - i - 2, &u) != 0) {
                EMIT(&in[i], 2);
                i += 2;
            } else if (u >= 0xD800 && u <= 0xDBFF && i + 11 < len && in[i + 6] == '\\' &&
                       in[i + 7] == 'u' && hex4(in + i + 8, len - i - 8, &u2) == 0 &&
                       u2 >= 0xDC00 && u2 <= 0xDFFF) {
                EMIT(&in[i], 12);
                i += 12;
            } else if (u >= 0xD800 && u <= 0xDFFF) {
                EMIT("\\u0000", 6);
                i += 6;
            } else {
                EMIT(&in[i], 6);
                i += 6;
            }
        } else if (c == '\\') {
            size_t n = i + 1 < len ? 2 : 1;
            EMIT(&in[i], n);
            i += n;
        } else if (c < 0x20) {
            EMIT("\\u0000", 6);
            i++;
        } else {
            size_t n = utf8_char_len(in + i, len - i);
            if (n == 0) {
                EMIT("\\u0000", 6);
                i++;
            } else {
                EMIT(&in[i], n);
                i += n;
            }
        }
    }
#undef EMIT
    return k;
}

static int json_has_nul(const json_t *v)
{
    size_t i;
    const char *key;
    json_t *x;
    if (json_is_string(v))
        return memchr(json_string_value(v), 0, json_string_length(v)) != NULL;
    if (json_is_array(v)) {
        json_array_foreach(v, i, x) if (json_has_nul(x)) return 1;
    }
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, key, x) if (json_has_nul(x)) return 1;
    }
    return 0;
}

/*
 * Contract: jansson refused `json` for its string content; find the
 * top-level member that holds the bad text (see mark_bad_text) and copy its
 * name to field. 0 when found, -1 otherwise.
 */
static int locate_bad_text(const char *json, size_t len, char *field, size_t cap)
{
    size_t n = mark_bad_text((const unsigned char *)json, len, NULL);
    char *buf = malloc(n ? n : 1);
    json_t *root;
    const char *key;
    json_t *v;
    int rc = -1;
    if (!buf)
        return -1;
    mark_bad_text((const unsigned char *)json, len, buf);
    root = json_loadb(buf, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
    free(buf);
    if (json_is_object(root)) {
        json_object_foreach(root, key, v)
        {
            if (json_has_nul(v)) {
                snprintf(field, cap, "%.60s", key);
                rc = 0;
                break;
            }
        }
    }
    json_decref(root);
    return rc;
}

/*
 * Contract: everything mode: `everything` (true, false or the generator's
 * parameters over the configured defaults), or a task with no prompt at
 * all, which means every object the task names. Called once the rest of
 * the request is parsed.
 */
static int parse_everything(const json_t *root, const srv_limits *lim, srv_request *r, srv_error *e)
{
    const json_t *v = json_object_get(root, "everything");
    int prompts = r->n_points > 0 || r->n_boxes > 0;
    if (v && json_is_false(v))
        return 0;
    if (!v && !(r->has_task && !prompts))
        return 0;
    if (v && prompts)
        return srv_fail(e, 400, "everything",
                        "everything mode prompts the whole image with a point grid: drop `points` "
                        "and `boxes`, or drop `everything`");
    if (v && json_object_get(root, "multimask"))
        return srv_fail(e, 400, "multimask",
                        "multimask does not apply to everything mode (it always takes SAM's three "
                        "masks per point)");
    r->amg = calloc(1, sizeof *r->amg);
    if (!r->amg)
        return srv_fail(e, 503, "", "out of memory; retry later");
    r->everything = 1;
    return srv_everything_parse(v, lim ? lim->everything : NULL, "everything", r->amg, e);
}

/* Contract: checks task text and keeps a copy of it and of its normal
 * form in r (the only place a request's task is normalised). */
static int take_task(const char *s, size_t len, srv_request *r, srv_error *e)
{
    char norm[AD_TASK_MAX + 1];
    if (ad_normalize_task(s, len, norm, sizeof norm) != 0)
        return srv_fail(e, 400, "task", "task: %s", eng_last_error());
    r->task = malloc(len + 1);
    r->task_norm = strdup(norm);
    if (!r->task || !r->task_norm)
        return srv_fail(e, 500, "task", "out of memory");
    memcpy(r->task, s, len);
    r->task[len] = 0;
    r->task_len = len;
    r->has_task = 1;
    return 0;
}

int srv_request_parse_json(const char *json, size_t len, srv_kind kind, const uint8_t *image_part,
                           size_t image_part_len, const uint8_t *task_part, size_t task_part_len,
                           const srv_limits *lim, srv_request *out, srv_error *e)
{
    json_t *root = NULL;
    json_error_t jerr;
    const char *key;
    json_t *v;
    int rc = -1;

    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->multimask = 1;
    out->output = SRV_OUT_RLE;
    if (json && len) {
        /* NUL is allowed here so that "\u0000" in `task` gets the task's
         * own 400; every string member is checked for it. */
        root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
        if (!root) {
            char f[64];
            if ((strstr(jerr.text, "invalid Unicode") || strstr(jerr.text, "unable to decode") ||
                 strstr(jerr.text, "control character")) &&
                locate_bad_text(json, len, f, sizeof f) == 0) {
                srv_fail(e, 400, f,
                         "%s is not valid text: %s (strings must be UTF-8 without lone UTF-16 "
                         "surrogates or raw control characters)",
                         f, jerr.text);
                goto out;
            }
            srv_fail(e, 400, "", "malformed JSON at line %d, column %d: %s", jerr.line, jerr.column,
                     jerr.text);
            goto out;
        }
        if (!json_is_object(root)) {
            srv_fail(e, 400, "", "the request must be a JSON object, not %s", type_name(root));
            goto out;
        }
    } else {
        root = json_object();
        if (!root) {
            srv_fail(e, 500, "", "out of memory");
            goto out;
        }
    }

    /* Unknown fields first: a typo must not be silently ignored. */
    json_object_foreach(root, key, v)
    {
        static const char *const seg[] = {"image",         "image_id",  "points", "boxes",
                                          "mask_input_id", "multimask", "output", "task",
                                          "everything",    NULL};
        static const char *const emb[] = {"image", NULL};
        static const char *const ad[] = {"task", NULL};
        const char *const *allowed = kind == SRV_KIND_SEGMENT ? seg
                                     : kind == SRV_KIND_EMBED ? emb
                                                              : ad;
        int ok = 0;
        for (int i = 0; allowed[i]; i++)
            ok |= strcmp(allowed[i], key) == 0;
        if (!ok) {
            char f[64];
            snprintf(f, sizeof f, "%.60s", key);
            srv_fail(e, 400, f, "unknown field '%.100s'", key);
            goto out;
        }
    }

    v = json_object_get(root, "image");
    if (v && image_part) {
        srv_fail(e, 400, "image", "image given both as a file part and in the request JSON");
        goto out;
    }
    if (v && parse_image(v, out, e) != 0)
        goto out;
    if (image_part) {
        out->image = (uint8_t *)image_part;
        out->image_len = image_part_len;
        out->image_owned = 0;
        if (image_part_len == 0) {
            srv_fail(e, 400, "image", "the image part is empty");
            goto out;
        }
    }
    v = json_object_get(root, "image_id");
    if (v) {
        if (out->image) {
            srv_fail(e, 400, "image_id", "give either image or image_id, not both");
            goto out;
        }
        if (!json_is_string(v) || json_string_length(v) != 64 ||
            !srv_sha_hex_valid(json_string_value(v), out->image_id)) {
            srv_fail(e, 400, "image_id", "image_id must be a 64-digit sha256 hex string");
            goto out;
        }
    }
    if (!out->image && !out->image_id[0] && kind != SRV_KIND_ADAPTER) {
        srv_fail(e, 400, "image",
                 kind == SRV_KIND_SEGMENT ? "an image is required (image, image_id, or a multipart "
                                            "`image` file part)"
                                          : "an image is required (image or a multipart `image` "
                                            "file part)");
        goto out;
    }
    if ((v = json_object_get(root, "points")) && parse_points(v, lim, out, e) != 0)
        goto out;
    if ((v = json_object_get(root, "boxes")) && parse_boxes(v, lim, out, e) != 0)
        goto out;
    if (out->n_boxes > 1 && out->n_points > 0) {
        srv_fail(e, 400, "points",
                 "points can be combined with one box only; with several boxes each box is its own "
                 "prompt");
        goto out;
    }
    if ((v = json_object_get(root, "multimask"))) {
        if (!json_is_boolean(v)) {
            srv_fail(e, 400, "multimask", "multimask must be true or false, not %s", type_name(v));
            goto out;
        }
        out->multimask = json_is_true(v);
    }
    if ((v = json_object_get(root, "output"))) {
        const char *s = json_string_value(v);
        if (!s || strlen(s) != json_string_length(v) ||
            (strcmp(s, "rle") && strcmp(s, "png") && strcmp(s, "polygon"))) {
            srv_fail(e, 400, "output", "output must be \"rle\", \"png\" or \"polygon\"");
            goto out;
        }
        out->output = !strcmp(s, "rle")   ? SRV_OUT_RLE
                      : !strcmp(s, "png") ? SRV_OUT_PNG
                                          : SRV_OUT_POLYGON;
    }
    if ((v = json_object_get(root, "mask_input_id"))) {
        srv_fail(e, 400, "mask_input_id", "mask_input_id is not supported yet");
        goto out;
    }
    v = json_object_get(root, "task");
    if (v && task_part) {
        srv_fail(e, 400, "task", "task given both as a form part and in the request JSON");
        goto out;
    }
    if (v) {
        if (!json_is_string(v)) {
            srv_fail(e, 400, "task", "task must be a string, not %s", type_name(v));
            goto out;
        }
        if (take_task(json_string_value(v), json_string_length(v), out, e) != 0)
            goto out;
    } else if (task_part) {
        if (take_task((const char *)task_part, task_part_len, out, e) != 0)
            goto out;
    } else if (kind == SRV_KIND_ADAPTER) {
        srv_fail(e, 400, "task", "task is required: {\"task\": \"segment every ...\"}");
        goto out;
    }
    if (kind == SRV_KIND_SEGMENT && parse_everything(root, lim, out, e) != 0)
        goto out;
    rc = 0;
out:
    json_decref(root);
    if (rc != 0)
        srv_request_free(out);
    return rc;
}

/* Contract: 1 when the media type of a Content-Type header is `type`
 * (case-insensitive, parameters ignored). */
static int media_is(const char *ct, const char *type)
{
    size_t n = strlen(type);
    while (*ct == ' ')
        ct++;
    return strncasecmp(ct, type, n) == 0 && (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ');
}

int srv_request_parse(const char *content_type, const uint8_t *body, size_t len, srv_kind kind,
                      const srv_limits *lim, srv_request *out, srv_error *e)
{
    memset(out, 0, sizeof *out);
    if (!content_type || media_is(content_type, "application/json"))
        return srv_request_parse_json((const char *)body, len, kind, NULL, 0, NULL, 0, lim, out, e);
    if (media_is(content_type, "multipart/form-data")) {
        srv_part parts[SRV_MULTIPART_MAX_PARTS];
        const srv_part *img = NULL, *req = NULL, *task = NULL;
        int n = srv_multipart_parse(content_type, body, len, parts, SRV_MULTIPART_MAX_PARTS, e);
        if (n < 0)
            return -1;
        for (int i = 0; i < n; i++) {
            const srv_part **slot =
                !strcmp(parts[i].name, "image") && kind != SRV_KIND_ADAPTER ? &img
                : !strcmp(parts[i].name, "request")                         ? &req
                : !strcmp(parts[i].name, "task") && kind != SRV_KIND_EMBED  ? &task
                                                                            : NULL;
            if (!slot)
                return srv_fail(e, 400, parts[i].name, "unknown form part '%s' (expected %s)",
                                parts[i].name,
                                kind == SRV_KIND_SEGMENT ? "`image`, `request` and `task`"
                                : kind == SRV_KIND_EMBED ? "`image` and `request`"
                                                         : "`task` or `request`");
            if (*slot)
                return srv_fail(e, 400, parts[i].name, "form part '%s' given twice", parts[i].name);
            *slot = &parts[i];
        }
        if (!img && kind != SRV_KIND_ADAPTER)
            return srv_fail(e, 400, "image", "multipart request without an `image` file part");
        return srv_request_parse_json(req ? (const char *)req->data : NULL, req ? req->len : 0,
                                      kind, img ? img->data : NULL, img ? img->len : 0,
                                      task ? task->data : NULL, task ? task->len : 0, lim, out, e);
    }
    return srv_fail(e, 415, "",
                    "unsupported Content-Type '%.100s' (use application/json or "
                    "multipart/form-data)",
                    content_type);
}

int srv_image_prepare(const uint8_t *bytes, size_t len, int64_t max_pixels, uint8_t **rgb,
                      eng_sam_imginfo *info, eng_image *keep, srv_error *e)
{
    eng_image img = {0};
    int rc = eng_image_decode(bytes, len, max_pixels, &img);
    if (rgb)
        *rgb = NULL;
    if (rc == ENG_ELIMIT)
        return srv_fail(e, 413, "image", "image: %s (limit %lld pixels)", eng_last_error(),
                        (long long)max_pixels);
    if (rc == ENG_ENOMEM)
        return srv_fail(e, 503, "image", "not enough memory to decode the image; retry later");
    if (rc == ENG_EUNSUP)
        return srv_fail(e, 415, "image", "image: %s", eng_last_error());
    if (rc != 0)
        return srv_fail(e, srv_status_of(rc, SRV_BLAME_INPUT), "image",
                        "image is corrupt or truncated: %s", eng_last_error());
    info->orig_w = img.w;
    info->orig_h = img.h;
    eng_resize_shape(img.w, img.h, ENG_SAM_IMG, &info->input_w, &info->input_h);
    if (!rgb) {
        if (keep)
            *keep = img;
        else
            eng_image_free(&img);
        return 0;
    }
    *rgb = malloc((size_t)info->input_w * (size_t)info->input_h * 3);
    if (!*rgb) {
        eng_image_free(&img);
        return srv_fail(e, 503, "image", "not enough memory to resize the image; retry later");
    }
    rc = eng_resize_bilinear_aa(img.rgb, img.w, img.h, *rgb, info->input_w, info->input_h);
    if (keep && rc == 0)
        *keep = img;
    else
        eng_image_free(&img);
    if (rc != 0) {
        free(*rgb);
        *rgb = NULL;
        return srv_fail_eng(e, rc, SRV_BLAME_SERVER, "image", "resizing failed");
    }
    return 0;
}

int srv_request_prompts(const srv_request *r, int w, int h, srv_prompts *out, srv_error *e)
{
    int n = r->n_boxes > 0 ? r->n_boxes : 1;
    out->n = 0;
    out->p = NULL;
    for (int i = 0; i < r->n_points; i++) {
        float x = r->points[2 * i], y = r->points[2 * i + 1];
        if (!(x >= 0 && x <= (float)w && y >= 0 && y <= (float)h)) {
            char f[64];
            snprintf(f, sizeof f, "points[%d]", i);
            return srv_fail(e, 400, f, "%s = (%g, %g) is outside the %dx%d image", f, x, y, w, h);
        }
    }
    for (int i = 0; i < r->n_boxes; i++) {
        const float *b = &r->boxes[4 * i];
        if (!(b[0] >= 0 && b[2] <= (float)w && b[1] >= 0 && b[3] <= (float)h)) {
            char f[64];
            snprintf(f, sizeof f, "boxes[%d]", i);
            return srv_fail(e, 400, f, "%s = [%g, %g, %g, %g] is outside the %dx%d image", f, b[0],
                            b[1], b[2], b[3], w, h);
        }
    }
    out->p = calloc((size_t)n, sizeof *out->p);
    if (!out->p)
        return srv_fail(e, 500, "", "out of memory");
    out->n = n;
    for (int i = 0; i < n; i++) {
        eng_sam_prompt *p = &out->p[i];
        if (r->n_boxes > 0) {
            p->has_box = 1;
            memcpy(p->box, &r->boxes[4 * i], sizeof p->box);
        }
        if (r->n_boxes <= 1 && r->n_points > 0) {
            p->n_points = r->n_points;
            p->points = r->points;
            p->labels = r->labels;
        }
    }
    return 0;
}

/* ---- multipart ---- */

/* Contract: finds `needle` in [h, h+hl); NULL when absent. */
static const uint8_t *find_bytes(const uint8_t *h, size_t hl, const char *needle, size_t nl)
{
    if (nl == 0 || hl < nl)
        return NULL;
    const uint8_t *end = h + hl - nl;
    for (const uint8_t *p = h; p <= end; p++) {
        p = memchr(p, needle[0], (size_t)(end - p) + 1);
        if (!p)
            return NULL;
        if (memcmp(p, needle, nl) == 0)
            return p;
    }
    return NULL;
}

/* Contract: copies parameter `param` (e.g. "name") of a header value into
 * out (quoted or bare). 0 found, -1 absent or too long. */
static int header_param(const char *v, size_t vl, const char *param, char *out, size_t outlen)
{
    size_t pl = strlen(param);
    for (size_t i = 0; i + pl < vl; i++) {
        if ((i == 0 || v[i - 1] == ';' || v[i - 1] == ' ') && strncasecmp(v + i, param, pl) == 0 &&
            v[i + pl] == '=') {
            size_t j = i + pl + 1, k = 0;
            int quoted = j < vl && v[j] == '"';
            if (quoted)
                j++;
            while (j < vl && (quoted ? v[j] != '"' : (v[j] != ';' && v[j] != ' '))) {
                if (k + 1 >= outlen)
                    return -1;
                out[k++] = v[j++];
            }
            out[k] = 0;
            return 0;
        }
    }
    return -1;
}

int srv_multipart_parse(const char *content_type, const uint8_t *body, size_t len, srv_part *parts,
                        int max, srv_error *e)
{
    char boundary[80], delim[96];
    size_t dl;
    const uint8_t *p, *end = body + len;
    int n = 0;

    if (header_param(content_type, strlen(content_type), "boundary", boundary, sizeof boundary) !=
            0 ||
        !boundary[0])
        return srv_fail(e, 400, "", "multipart/form-data without a usable boundary parameter");
    /* Parts are separated by CRLF "--" boundary; the first may start the body. */
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    dl = strlen(delim);
    if (len >= dl - 2 && memcmp(body, delim + 2, dl - 2) == 0) {
        p = body + dl - 2;
    } else {
        const uint8_t *f = find_bytes(body, len, delim, dl);
        if (!f)
            return srv_fail(e, 400, "", "multipart body has no boundary line");
        p = f + dl;
    }
    for (;;) {
        /* After a boundary: "--" ends the body, else CRLF then headers. */
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            return n;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
            return srv_fail(e, 400, "", "malformed multipart boundary line");
        p += 2;
        const uint8_t *hend = find_bytes(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!hend)
            return srv_fail(e, 400, "", "multipart part without a header end");
        if (n >= max)
            return srv_fail(e, 400, "", "too many multipart parts (at most %d)", max);
        srv_part *pt = &parts[n];
        memset(pt, 0, sizeof *pt);
        int have_disp = 0;
        const uint8_t *h = p;
        while (h < hend + 2) {
            const uint8_t *eol = find_bytes(h, (size_t)(hend + 2 - h), "\r\n", 2);
            if (!eol)
                break;
            size_t hl = (size_t)(eol - h);
            static const char cd[] = "content-disposition:";
            if (hl > sizeof cd - 1 && strncasecmp((const char *)h, cd, sizeof cd - 1) == 0) {
                const char *v = (const char *)h + sizeof cd - 1;
                size_t vl = hl - (sizeof cd - 1);
                if (header_param(v, vl, "name", pt->name, sizeof pt->name) != 0 || !pt->name[0])
                    return srv_fail(e, 400, "", "multipart part without a (short) name");
                if (header_param(v, vl, "filename", pt->filename, sizeof pt->filename) != 0)
                    pt->filename[0] = 0;
                have_disp = 1;
            }
            h = eol + 2;
        }
        if (!have_disp)
            return srv_fail(e, 400, "", "multipart part without Content-Disposition");
        p = hend + 4;
        const uint8_t *next = find_bytes(p, (size_t)(end - p), delim, dl);
        if (!next)
            return srv_fail(e, 400, pt->name,
                            "multipart part '%s' is not terminated by the boundary", pt->name);
        pt->data = p;
        pt->len = (size_t)(next - p);
        n++;
        p = next + dl;
    }
}
