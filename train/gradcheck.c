/*
 * train/gradcheck.c: training golden cases (parse, validate) and their
 * recomputation through the engine's training path (gradcheck.h).
 */
#include "train/gradcheck.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "engine/image.h"

/* ------------------------------------------------------------------ */
/* cases                                                                */

static int tr__num(const json_t *v, double *out)
{
    if (!json_is_number(v))
        return 0;
    *out = json_number_value(v);
    return isfinite(*out);
}

static int tr__name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= TR_GC_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

/* One case's prompt and references. */
static int tr__case(const char *label, int idx, const json_t *jc, tr_gc_case *c)
{
    const json_t *v = json_object_get(jc, "name");
    if (!json_is_object(jc))
        return eng_error(ENG_EFORMAT, "%s: cases[%d] is not an object", label, idx);
    if (!json_is_string(v) || !tr__name_ok(json_string_value(v)))
        return eng_error(ENG_EFORMAT,
                         "%s: cases[%d].name must be 1..%d letters, digits, '_' or '-'", label, idx,
                         TR_GC_NAME_MAX - 1);
    snprintf(c->name, sizeof c->name, "%s", json_string_value(v));
    const json_t *p = json_object_get(jc, "prompt");
    if (!json_is_object(p))
        return eng_error(ENG_EFORMAT, "%s: case %s: 'prompt' missing or not an object", label,
                         c->name);
    const json_t *pts = json_object_get(p, "points"), *lab = json_object_get(p, "labels");
    if ((pts && !json_is_array(pts)) || (lab && !json_is_array(lab)) ||
        json_array_size(pts) != json_array_size(lab))
        return eng_error(ENG_EFORMAT,
                         "%s: case %s: prompt.points and prompt.labels must be arrays of the "
                         "same length",
                         label, c->name);
    if (json_array_size(pts) > TR_GC_MAX_POINTS)
        return eng_error(ENG_ELIMIT, "%s: case %s: %zu points (at most %d)", label, c->name,
                         json_array_size(pts), TR_GC_MAX_POINTS);
    c->n_points = (int)json_array_size(pts);
    for (int i = 0; i < c->n_points; i++) {
        const json_t *pt = json_array_get(pts, (size_t)i), *l = json_array_get(lab, (size_t)i);
        double x, y;
        if (!json_is_array(pt) || json_array_size(pt) != 2 || !tr__num(json_array_get(pt, 0), &x) ||
            !tr__num(json_array_get(pt, 1), &y) || fabs(x) > 1e6 || fabs(y) > 1e6)
            return eng_error(ENG_EFORMAT, "%s: case %s: prompt.points[%d] is not [x, y] (finite)",
                             label, c->name, i);
        if (!json_is_integer(l) || (json_integer_value(l) != 0 && json_integer_value(l) != 1))
            return eng_error(ENG_EFORMAT, "%s: case %s: prompt.labels[%d] is not 0 or 1", label,
                             c->name, i);
        c->points[2 * i] = (float)x;
        c->points[2 * i + 1] = (float)y;
        c->labels[i] = (int)json_integer_value(l);
    }
    const json_t *box = json_object_get(p, "box");
    if (box) {
        if (!json_is_array(box) || json_array_size(box) != 4)
            return eng_error(ENG_EFORMAT, "%s: case %s: prompt.box is not [x0, y0, x1, y1]", label,
                             c->name);
        for (int i = 0; i < 4; i++) {
            double b;
            if (!tr__num(json_array_get(box, (size_t)i), &b) || fabs(b) > 1e6)
                return eng_error(ENG_EFORMAT, "%s: case %s: prompt.box[%d] is not a finite number",
                                 label, c->name, i);
            c->box[i] = (float)b;
        }
        c->has_box = 1;
    }
    c->ref_best = -1;
    c->ref_loss = NAN;
    if ((v = json_object_get(jc, "best"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 2)
            return eng_error(ENG_EFORMAT, "%s: case %s: best is not 0, 1 or 2", label, c->name);
        c->ref_best = (int)json_integer_value(v);
    }
    if ((v = json_object_get(jc, "loss")) && !tr__num(v, &c->ref_loss))
        return eng_error(ENG_EFORMAT, "%s: case %s: loss is not a finite number", label, c->name);
    return 0;
}

/* Cases from a parsed document (consumed). */
static int tr__cases_from_json(json_t *root, const char *label, tr_gc_cases **out)
{
    int rc = 0;
    tr_gc_cases *cs = calloc(1, sizeof *cs);
    if (!cs) {
        json_decref(root);
        return eng_error(ENG_ENOMEM, "out of memory");
    }
    const json_t *sz = json_object_get(root, "image_size"), *cases = json_object_get(root, "cases");
    const json_t *jr = json_object_get(root, "rank");
    double alpha = 0;
    if (!json_is_object(root)) {
        rc = eng_error(ENG_EFORMAT, "%s: not a JSON object", label);
    } else if (!json_is_array(sz) || json_array_size(sz) != 2 ||
               !json_is_integer(json_array_get(sz, 0)) || !json_is_integer(json_array_get(sz, 1)) ||
               json_integer_value(json_array_get(sz, 0)) < 1 ||
               json_integer_value(json_array_get(sz, 1)) < 1 ||
               json_integer_value(json_array_get(sz, 0)) > 65536 ||
               json_integer_value(json_array_get(sz, 1)) > 65536) {
        rc = eng_error(ENG_EFORMAT, "%s: image_size must be [height, width], 1..65536", label);
    } else if (!json_is_integer(jr) || json_integer_value(jr) < 1 ||
               json_integer_value(jr) > ENG_SAM_LORA_MAX_RANK) {
        rc = eng_error(ENG_EFORMAT, "%s: rank must be an integer in 1..%d", label,
                       ENG_SAM_LORA_MAX_RANK);
    } else if (!tr__num(json_object_get(root, "alpha"), &alpha) || alpha <= 0 || alpha > 1e4) {
        rc = eng_error(ENG_EFORMAT, "%s: alpha must be a number in (0, 1e4]", label);
    } else if (!json_is_array(cases) || json_array_size(cases) < 1 ||
               json_array_size(cases) > TR_GC_MAX_CASES) {
        rc = eng_error(ENG_EFORMAT, "%s: cases must be an array of 1..%d cases", label,
                       TR_GC_MAX_CASES);
    }
    if (!rc) {
        cs->img_h = (int)json_integer_value(json_array_get(sz, 0));
        cs->img_w = (int)json_integer_value(json_array_get(sz, 1));
        cs->rank = (int)json_integer_value(jr);
        cs->alpha = (float)alpha;
        cs->n = (int)json_array_size(cases);
        cs->cases = calloc((size_t)cs->n, sizeof *cs->cases);
        if (!cs->cases)
            rc = eng_error(ENG_ENOMEM, "out of memory");
        for (int i = 0; !rc && i < cs->n; i++) {
            rc = tr__case(label, i, json_array_get(cases, (size_t)i), &cs->cases[i]);
            for (int j = 0; !rc && j < i; j++)
                if (!strcmp(cs->cases[j].name, cs->cases[i].name))
                    rc = eng_error(ENG_EFORMAT, "%s: cases[%d].name '%s' repeats cases[%d]", label,
                                   i, cs->cases[i].name, j);
        }
    }
    json_decref(root);
    if (rc) {
        tr_gc_cases_free(cs);
        return rc;
    }
    *out = cs;
    return 0;
}

int tr_gc_cases_parse(const char *json, size_t len, const char *label, tr_gc_cases **out)
{
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return eng_error(ENG_EFORMAT, "%s: line %d: %s", label, jerr.line, jerr.text);
    return tr__cases_from_json(root, label, out);
}

int tr_gc_cases_load(const char *path, tr_gc_cases **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return eng_error(ENG_EIO, "%s: cannot open", path);
    json_error_t jerr;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    if (!root)
        return eng_error(ENG_EFORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    return tr__cases_from_json(root, path, out);
}

void tr_gc_cases_free(tr_gc_cases *c)
{
    if (!c)
        return;
    free(c->cases);
    free(c);
}

/* ------------------------------------------------------------------ */
/* recomputation                                                        */

void tr_gc_result_free(tr_gc_result *r)
{
    if (!r)
        return;
    free(r->logits);
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        free(r->grad_A[t]);
        free(r->grad_B[t]);
    }
    memset(r, 0, sizeof *r);
}

double tr_rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The target [256, 256] of a case (u8, or any float dtype; non-zero is
 * foreground). */
static int tr__target(const eng_ckpt *g, const char *cname, uint8_t *dst)
{
    char nm[160];
    snprintf(nm, sizeof nm, "%s.target", cname);
    const eng_ckpt_tensor *t = eng_ckpt_find(g, nm);
    if (!t)
        return eng_error(ENG_ENOTFOUND, "%s: tensor '%s' missing", eng_ckpt_path(g), nm);
    if (t->ndim != 2 || t->shape[0] != ENG_SAM_LOWRES || t->shape[1] != ENG_SAM_LOWRES)
        return eng_error(ENG_ESHAPE, "%s: tensor '%s' must be [256, 256]", eng_ckpt_path(g), nm);
    if (t->dtype == ENG_U8) { /* safetensors tensors are contiguous */
        for (int64_t i = 0; i < t->numel; i++)
            dst[i] = ((const uint8_t *)t->data)[i] != 0;
        return 0;
    }
    float *f = malloc(ENG_SAM_LOWRES_FLOATS * sizeof *f);
    if (!f)
        return eng_error(ENG_ENOMEM, "out of memory");
    int rc = eng_ckpt_read_f32(g, t, f);
    for (size_t i = 0; !rc && i < ENG_SAM_LOWRES_FLOATS; i++) {
        if (!isfinite(f[i]))
            rc = eng_error(ENG_EFORMAT, "%s: tensor '%s' element %zu is not finite",
                           eng_ckpt_path(g), nm, i);
        dst[i] = f[i] != 0;
    }
    free(f);
    return rc;
}

int tr_gc_run(eng_sam_train *t, const eng_ckpt *golden, const tr_gc_cases *cs, int idx,
              tr_gc_result *res)
{
    memset(res, 0, sizeof *res);
    const tr_gc_case *c = &cs->cases[idx];
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    const int r = cs->rank;
    float *A[ENG_SAM_LORA_TARGETS] = {0}, *B[ENG_SAM_LORA_TARGETS] = {0};
    float *emb = malloc(ENG_SAM_EMB_FLOATS * sizeof *emb);
    float *dl = malloc(3 * ENG_SAM_LOWRES_FLOATS * sizeof *dl);
    uint8_t *target = malloc(ENG_SAM_LOWRES_FLOATS);
    res->logits = malloc(3 * ENG_SAM_LOWRES_FLOATS * sizeof *res->logits);
    int rc = 0, n_adapted = 0;
    if (!emb || !dl || !target || !res->logits)
        rc = eng_error(ENG_ENOMEM, "out of memory");
    if (!rc)
        rc = eng_ckpt_load_f32(golden, "image_embedding", 3, (int64_t[]){256, 64, 64}, emb);
    for (size_t i = 0; !rc && i < ENG_SAM_EMB_FLOATS; i++)
        if (!isfinite(emb[i]))
            rc = eng_error(ENG_EFORMAT, "%s: 'image_embedding' element %zu is not finite",
                           eng_ckpt_path(golden), i);
    if (!rc)
        rc = tr__target(golden, c->name, target);
    /* the case's factors: every layer with a lora_A (and then a lora_B) */
    for (int i = 0; i < ENG_SAM_LORA_TARGETS && !rc; i++) {
        char na[200], nb[200];
        snprintf(na, sizeof na, "%s.%s.lora_A", c->name, tg[i].name);
        snprintf(nb, sizeof nb, "%s.%s.lora_B", c->name, tg[i].name);
        if (!eng_ckpt_find(golden, na)) {
            if (eng_ckpt_find(golden, nb))
                rc = eng_error(ENG_EFORMAT, "%s: '%s' without its lora_A", eng_ckpt_path(golden),
                               nb);
            continue;
        }
        A[i] = malloc((size_t)r * tg[i].in * sizeof(float));
        B[i] = malloc((size_t)r * tg[i].out * sizeof(float));
        res->grad_A[i] = malloc((size_t)r * tg[i].in * sizeof(float));
        res->grad_B[i] = malloc((size_t)r * tg[i].out * sizeof(float));
        if (!A[i] || !B[i] || !res->grad_A[i] || !res->grad_B[i]) {
            rc = eng_error(ENG_ENOMEM, "out of memory");
            break;
        }
        res->adapted[i] = 1;
        n_adapted++;
        rc = eng_ckpt_load_f32(golden, na, 2, (int64_t[]){r, tg[i].in}, A[i]);
        if (!rc)
            rc = eng_ckpt_load_f32(golden, nb, 2, (int64_t[]){tg[i].out, r}, B[i]);
        for (size_t k = 0; !rc && k < (size_t)r * tg[i].in; k++)
            if (!isfinite(A[i][k]))
                rc = eng_error(ENG_EFORMAT, "%s: '%s' element %zu is not finite",
                               eng_ckpt_path(golden), na, k);
        for (size_t k = 0; !rc && k < (size_t)r * tg[i].out; k++)
            if (!isfinite(B[i][k]))
                rc = eng_error(ENG_EFORMAT, "%s: '%s' element %zu is not finite",
                               eng_ckpt_path(golden), nb, k);
    }
    if (!rc && !n_adapted)
        rc = eng_error(ENG_ENOTFOUND, "%s: case %s adapts no layer (no %s.<layer>.lora_A)",
                       eng_ckpt_path(golden), c->name, c->name);
    eng_sam_imginfo info = {cs->img_w, cs->img_h, 0, 0};
    eng_resize_shape(info.orig_w, info.orig_h, ENG_SAM_IMG, &info.input_w, &info.input_h);
    eng_sam_prompt p = {
        .n_points = c->n_points, .points = c->points, .labels = c->labels, .has_box = c->has_box};
    memcpy(p.box, c->box, sizeof p.box);
    tr_loss_weights w;
    tr_loss_weights_default(&w);
    float d_iou[3];
    if (!rc)
        rc = eng_sam_train_set_lora(t, cs->alpha / (float)r, (const float *const *)A,
                                    (const float *const *)B);
    if (!rc)
        rc = eng_sam_train_set_image(t, emb, &info);
    if (!rc)
        rc = eng_sam_train_forward(t, &p, 1, res->iou, res->logits);
    if (!rc)
        rc = tr_loss_mask(res->logits, res->iou, target, 3, ENG_SAM_LOWRES_FLOATS, &w, 1.0f,
                          &res->parts, dl, d_iou);
    if (!rc)
        rc = eng_sam_train_backward(t, dl, d_iou);
    if (!rc)
        rc = eng_sam_train_grads(t, res->grad_A, res->grad_B);
    if (rc) {
        char why[512];
        snprintf(why, sizeof why, "%s", eng_last_error());
        rc = eng_error(rc, "case %s: %s", c->name, why);
        tr_gc_result_free(res);
    }
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        free(A[i]);
        free(B[i]);
    }
    free(emb);
    free(dl);
    free(target);
    return rc;
}
