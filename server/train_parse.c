/*
 * server/train_parse.c: the training request, dataset path confinement and
 * the trainer's progress lines. See train_parse.h.
 */
#include "server/train_parse.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "server/fileio.h"
#include "server/request.h"

/* Largest integer a JSON number carries exactly (2^53). */
#define JSON_INT_EXACT 9007199254740992LL

/* ---- the request ---- */

/* Contract: member `key` as an integer in [lo, hi] (absent: *out kept).
 * 0, or -1 with *e naming the field. */
static int get_int(json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out, srv_error *e)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || d < (double)lo || d > (double)hi)
            return srv_fail(e, 400, key, "%s must be an integer in [%lld, %lld]", key,
                            (long long)lo, (long long)hi);
        *out = (int64_t)d;
        return 0;
    }
    if (!json_is_integer(v))
        return srv_fail(e, 400, key, "%s must be an integer, not %s", key, srv_json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return srv_fail(e, 400, key, "%s must be an integer in [%lld, %lld], not %lld", key,
                        (long long)lo, (long long)hi, (long long)x);
    *out = x;
    return 0;
}

/* Contract: member `key` as a finite number in [lo, hi] (lo excluded when
 * open_lo); absent: *out kept. */
static int get_num(json_t *o, const char *key, double lo, double hi, int open_lo, double *out,
                   srv_error *e)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return srv_fail(e, 400, key, "%s must be a number, not %s", key, srv_json_type_name(v));
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi || (open_lo && d == lo))
        return srv_fail(e, 400, key, "%s must be a number in %c%g, %g], not %g", key,
                        open_lo ? '(' : '[', lo, hi, d);
    *out = d;
    return 0;
}

/* Contract: a relative dataset path's text checks (the file system ones are
 * srv_train_resolve's). */
static int check_rel(const char *s, size_t len, const char *field, srv_error *e)
{
    if (len == 0)
        return srv_fail(e, 400, field, "%s must not be empty", field);
    if (len > SRV_TRAIN_REL_MAX)
        return srv_fail(e, 400, field, "%s is longer than %d bytes", field, SRV_TRAIN_REL_MAX);
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return srv_fail(e, 400, field, "%s holds a control character at byte %zu", field, i);
    if (s[0] == '/')
        return srv_fail(e, 400, field,
                        "%s must be relative to the training data folder, not an absolute path",
                        field);
    for (const char *p = s; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return srv_fail(e, 400, field,
                            "%s must stay inside the training data folder (no '..' component)",
                            field);
        p += n;
        while (*p == '/')
            p++;
    }
    return 0;
}

/* Contract: member `key` as a dataset path (absent: out kept). */
static int get_rel(json_t *o, const char *key, char *out, srv_error *e)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_string(v))
        return srv_fail(e, 400, key,
                        "%s must be a string (a folder relative to the training data "
                        "folder), not %s",
                        key, srv_json_type_name(v));
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (strlen(s) != len)
        return srv_fail(e, 400, key, "%s holds a NUL character", key);
    if (check_rel(s, len, key, e) != 0)
        return -1;
    memcpy(out, s, len + 1);
    return 0;
}

int srv_train_req_parse(const char *body, size_t len, srv_train_req *out, srv_error *e)
{
    static const char *const allowed[] = {
        "data",   "val",          "steps", "batch", "lr",
        "warmup", "weight_decay", "clip",  "seed",  "publish_if_better",
        NULL};
    json_error_t jerr;
    const char *key;
    json_t *v, *root;
    int rc = -1;

    memset(out, 0, sizeof *out);
    out->steps = 100; /* tasam-train run's own defaults */
    out->batch = 8;
    out->lr = out->weight_decay = out->clip = NAN;
    out->warmup = out->seed = -1;
    if (!body || !len)
        return srv_fail(e, 400, "", "the request body is empty: send a JSON object with `data`");
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root)
        return srv_fail(e, 400, "", "malformed JSON at line %d, column %d: %s", jerr.line,
                        jerr.column, jerr.text);
    if (!json_is_object(root)) {
        srv_fail(e, 400, "", "the request must be a JSON object, not %s", srv_json_type_name(root));
        goto out;
    }
    json_object_foreach(root, key, v)
    {
        int ok = 0;
        for (int i = 0; allowed[i]; i++)
            ok |= !strcmp(allowed[i], key);
        if (!ok) {
            char f[64];
            snprintf(f, sizeof f, "%.60s", key);
            srv_fail(e, 400, f, "unknown field '%.100s'", key);
            goto out;
        }
    }
    if (!json_object_get(root, "data")) {
        srv_fail(e, 400, "data",
                 "data is required: the training split, a folder relative to "
                 "the training data folder");
        goto out;
    }
    if (get_rel(root, "data", out->data, e) || get_rel(root, "val", out->val, e) ||
        get_int(root, "steps", 1, 10000000, &out->steps, e) ||
        get_int(root, "batch", 1, 256, &out->batch, e) ||
        get_num(root, "lr", 0, 1, 1, &out->lr, e) ||
        get_int(root, "warmup", 0, 10000000, &out->warmup, e) ||
        get_num(root, "weight_decay", 0, 10, 0, &out->weight_decay, e) ||
        get_num(root, "clip", 0, 1e6, 0, &out->clip, e) ||
        get_int(root, "seed", 0, JSON_INT_EXACT, &out->seed, e))
        goto out;
    if (out->warmup > out->steps) {
        srv_fail(e, 400, "warmup", "warmup (%lld) must not exceed steps (%lld)",
                 (long long)out->warmup, (long long)out->steps);
        goto out;
    }
    v = json_object_get(root, "publish_if_better");
    if (v && !json_is_boolean(v)) {
        srv_fail(e, 400, "publish_if_better", "publish_if_better must be a boolean, not %s",
                 srv_json_type_name(v));
        goto out;
    }
    out->publish_if_better = v && json_is_true(v);
    if (out->publish_if_better && !out->val[0]) {
        srv_fail(e, 400, "publish_if_better",
                 "publish_if_better compares validation results: give `val` too");
        goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int srv_train_req_json(const srv_train_req *r, char *out, size_t cap)
{
    json_t *o = json_pack("{s:s,s:I,s:I,s:b}", "data", r->data, "steps", (json_int_t)r->steps,
                          "batch", (json_int_t)r->batch, "publish_if_better", r->publish_if_better);
    if (!o)
        return -1;
    if (r->val[0])
        json_object_set_new(o, "val", json_string(r->val));
    if (isfinite(r->lr))
        json_object_set_new(o, "lr", json_real(r->lr));
    if (r->warmup >= 0)
        json_object_set_new(o, "warmup", json_integer(r->warmup));
    if (isfinite(r->weight_decay))
        json_object_set_new(o, "weight_decay", json_real(r->weight_decay));
    if (isfinite(r->clip))
        json_object_set_new(o, "clip", json_real(r->clip));
    if (r->seed >= 0)
        json_object_set_new(o, "seed", json_integer(r->seed));
    size_t n = json_dumpb(o, out, cap, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    json_decref(o);
    if (n == 0 || n >= cap)
        return -1;
    out[n] = 0;
    return (int)n;
}

/* ---- paths ---- */

/* Contract: 1 when the resolved path p is root or inside it. */
static int inside(const char *root, const char *p)
{
    size_t n = strlen(root);
    if (n == 1 && root[0] == '/')
        return p[0] == '/';
    return strncmp(p, root, n) == 0 && (p[n] == 0 || p[n] == '/');
}

int srv_train_resolve(const char *root, const char *rel, const char *field, char *abs, size_t cap,
                      srv_error *e)
{
    char joined[PATH_MAX], real[PATH_MAX], sub[PATH_MAX], subreal[PATH_MAX];
    struct stat st;
    if (check_rel(rel, strlen(rel), field, e) != 0)
        return -1;
    if (srv_pathf(joined, sizeof joined, "%s/%s", root, rel) != 0)
        return srv_fail(e, 400, field, "%s is too long", field);
    if (!realpath(joined, real)) {
        int err = errno;
        return srv_fail(e, 400, field, "%s '%s' does not exist in the training data folder%s",
                        field, rel, err == ENOENT ? "" : " (or cannot be read)");
    }
    if (!inside(root, real))
        return srv_fail(e, 400, field,
                        "%s '%s' leads outside the training data folder (through a symbolic "
                        "link)",
                        field, rel);
    if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode))
        return srv_fail(e, 400, field, "%s '%s' is not a folder", field, rel);
    /* what the trainer opens inside it must not lead out either */
    static const char *const parts[] = {"instances.json", "images"};
    for (int i = 0; i < 2; i++) {
        if (srv_pathf(sub, sizeof sub, "%s/%s", real, parts[i]) != 0)
            return srv_fail(e, 400, field, "%s is too long", field);
        if (!realpath(sub, subreal)) {
            if (i == 0)
                return srv_fail(e, 400, field,
                                "%s '%s' holds no instances.json (a COCO instances file: see "
                                "tasam-train check-data)",
                                field, rel);
            continue;
        }
        if (!inside(root, subreal))
            return srv_fail(e, 400, field,
                            "%s '%s': %s leads outside the training data folder (through a "
                            "symbolic link)",
                            field, rel, parts[i]);
        if (i == 0 && (stat(subreal, &st) != 0 || !S_ISREG(st.st_mode)))
            return srv_fail(e, 400, field, "%s '%s': instances.json is not a file", field, rel);
    }
    if (srv_pathf(abs, cap, "%s", real) != 0)
        return srv_fail(e, 400, field, "%s is too long", field);
    return 0;
}

/* ---- progress lines ---- */

/* Contract: an integer member >= 0 (absent: -1, or an error when required). */
static int ev_int(json_t *o, const char *key, int required, int64_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    *out = -1;
    if (!v) {
        if (required)
            return snprintf(err, errlen, "\"%s\" is missing", key), -1;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return snprintf(err, errlen, "\"%s\" must be a non-negative integer", key), -1;
    *out = json_integer_value(v);
    return 0;
}

/* Contract: a number member (absent or null: NaN). */
static int ev_num(json_t *o, const char *key, double *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    *out = NAN;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return snprintf(err, errlen, "\"%s\" must be a number", key), -1;
    *out = json_number_value(v);
    return 0;
}

/* Contract: a string member into out (absent: "" or an error when
 * required; longer than cap-1: an error). */
static int ev_str(json_t *o, const char *key, int required, char *out, size_t cap, char *err,
                  size_t errlen)
{
    json_t *v = json_object_get(o, key);
    out[0] = 0;
    if (!v) {
        if (required)
            return snprintf(err, errlen, "\"%s\" is missing", key), -1;
        return 0;
    }
    if (!json_is_string(v))
        return snprintf(err, errlen, "\"%s\" must be a string", key), -1;
    size_t n = json_string_length(v);
    if (n >= cap)
        return snprintf(err, errlen, "\"%s\" is longer than %zu bytes", key, cap - 1), -1;
    if (strlen(json_string_value(v)) != n)
        return snprintf(err, errlen, "\"%s\" holds a NUL character", key), -1;
    memcpy(out, json_string_value(v), n + 1);
    return 0;
}

/* Contract: a hypernetwork id member: 64 lowercase hex digits. */
static int ev_id(json_t *o, const char *key, int required, char *out, char *err, size_t errlen)
{
    if (ev_str(o, key, required, out, 65, err, errlen) != 0)
        return -1;
    if (!out[0] && !required)
        return 0;
    if (strlen(out) != 64 || strspn(out, "0123456789abcdef") != 64)
        return snprintf(err, errlen, "\"%s\" is not a hypernetwork id (64 hex digits)", key), -1;
    return 0;
}

int srv_tevent_parse(const char *line, size_t len, srv_tevent *ev, char *err, size_t errlen)
{
    json_error_t jerr;
    char name[32];
    int rc = -1;
    memset(ev, 0, sizeof *ev);
    ev->step = ev->steps = ev->batch = ev->train_images = ev->val_images = -1;
    ev->loss = ev->focal = ev->dice = ev->iou_mse = ev->lr = ev->samples_per_s = ev->eta_s = NAN;
    if (len > SRV_TRAIN_LINE_MAX) {
        snprintf(err, errlen, "a progress line of %zu bytes (the limit is %d)", len,
                 SRV_TRAIN_LINE_MAX);
        return -1;
    }
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        snprintf(err, errlen, "a progress line that is not JSON (%s)", jerr.text);
        return -1;
    }
    if (!json_is_object(o)) {
        snprintf(err, errlen, "a progress line that is not a JSON object");
        goto out;
    }
    if (ev_str(o, "event", 1, name, sizeof name, err, errlen) != 0)
        goto out;
    if (!strcmp(name, "start")) {
        json_t *init = json_object_get(o, "init");
        ev->type = SRV_TEV_START;
        if (ev_int(o, "steps", 0, &ev->steps, err, errlen) ||
            ev_int(o, "batch", 0, &ev->batch, err, errlen) ||
            ev_int(o, "train_images", 0, &ev->train_images, err, errlen) ||
            ev_int(o, "val_images", 0, &ev->val_images, err, errlen) ||
            ev_str(o, "out", 0, ev->path, sizeof ev->path, err, errlen))
            goto out;
        if (init && !json_is_object(init)) {
            snprintf(err, errlen, "\"init\" must be an object");
            goto out;
        }
        if (init &&
            (ev_id(init, "id", 0, ev->init_id, err, errlen) ||
             ev_str(init, "version", 0, ev->init_version, sizeof ev->init_version, err, errlen)))
            goto out;
    } else if (!strcmp(name, "step")) {
        ev->type = SRV_TEV_STEP;
        if (ev_int(o, "step", 1, &ev->step, err, errlen) ||
            ev_int(o, "steps", 0, &ev->steps, err, errlen) ||
            ev_num(o, "loss", &ev->loss, err, errlen) ||
            ev_num(o, "focal", &ev->focal, err, errlen) ||
            ev_num(o, "dice", &ev->dice, err, errlen) ||
            ev_num(o, "iou_mse", &ev->iou_mse, err, errlen) ||
            ev_num(o, "lr", &ev->lr, err, errlen) ||
            ev_num(o, "samples_per_s", &ev->samples_per_s, err, errlen) ||
            ev_num(o, "eta_s", &ev->eta_s, err, errlen))
            goto out;
    } else if (!strcmp(name, "val")) {
        json_t *m = json_object_get(o, "metrics");
        ev->type = SRV_TEV_VAL;
        if (ev_int(o, "step", 1, &ev->step, err, errlen))
            goto out;
        if (!json_is_object(m)) {
            snprintf(err, errlen, "\"metrics\" must be an object");
            goto out;
        }
        json_t *v = json_pack("{s:I,s:O}", "step", (json_int_t)ev->step, "metrics", m);
        size_t n =
            v ? json_dumpb(v, ev->val, sizeof ev->val, JSON_COMPACT | JSON_REAL_PRECISION(12)) : 0;
        json_decref(v);
        if (n == 0 || n >= sizeof ev->val) {
            snprintf(err, errlen, "validation metrics larger than %zu bytes", sizeof ev->val - 1);
            goto out;
        }
        ev->val[n] = 0;
    } else if (!strcmp(name, "checkpoint")) {
        ev->type = SRV_TEV_CHECKPOINT;
        if (ev_int(o, "step", 1, &ev->step, err, errlen) ||
            ev_str(o, "path", 0, ev->path, sizeof ev->path, err, errlen))
            goto out;
    } else if (!strcmp(name, "done")) {
        json_t *pub = json_object_get(o, "published");
        ev->type = SRV_TEV_DONE;
        if (!json_is_boolean(pub)) {
            snprintf(err, errlen, "\"published\" must be a boolean");
            goto out;
        }
        ev->published = json_is_true(pub);
        if (ev->published
                ? (ev_id(o, "id", 1, ev->id, err, errlen) ||
                   ev_str(o, "version", 1, ev->version, sizeof ev->version, err, errlen) ||
                   ev_str(o, "out", 1, ev->path, sizeof ev->path, err, errlen))
                : ev_str(o, "reason", 0, ev->text, sizeof ev->text, err, errlen))
            goto out;
    } else if (!strcmp(name, "error")) {
        ev->type = SRV_TEV_ERROR;
        json_t *m = json_object_get(o, "message");
        if (m && json_is_string(m)) {
            /* a long message is cut, not refused: it is what the operator needs */
            snprintf(ev->text, sizeof ev->text, "%s", json_string_value(m));
        } else if (m) {
            snprintf(err, errlen, "\"message\" must be a string");
            goto out;
        }
    } else {
        ev->type = SRV_TEV_OTHER;
    }
    rc = 0;
out:
    json_decref(o);
    return rc;
}
