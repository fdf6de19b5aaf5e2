/*
 * adapters/adapter.c: task text -> adapter, its id, its safetensors form and
 * its engine form. See adapter.h for the contracts and the format.
 */
#include "adapter.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/sha256.h"

#define AD_T ENG_SAM_LORA_TARGETS

/* Every rank a hypernetwork makes must fit the engine's adapters. */
_Static_assert(HN_MIN_RANK >= 1 && HN_MAX_RANK <= ENG_SAM_LORA_MAX_RANK,
               "hypernetwork ranks must fit eng_sam_lora_create's");
#define AD_MAX_ALPHA 1024.0f

/* ------------------------------------------------------------------ */
/* task text                                                            */

/* Decode one UTF-8 sequence at s[i..len): the code point, or -1 when the
 * bytes are not well-formed (overlong forms, surrogates, > U+10FFFF and
 * truncated sequences included). *n gets its length. */
static int32_t ad__utf8(const unsigned char *s, size_t i, size_t len, int *n)
{
    unsigned c = s[i];
    int need;
    uint32_t cp, min;
    if (c < 0x80) {
        *n = 1;
        return (int32_t)c;
    } else if (c >= 0xc2 && c <= 0xdf) {
        need = 1, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (len - i <= (size_t)need)
        return -1;
    for (int k = 1; k <= need; k++) {
        unsigned b = s[i + k];
        if ((b & 0xc0) != 0x80)
            return -1;
        cp = (cp << 6) | (b & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *n = need + 1;
    return (int32_t)cp;
}

static int ad__is_space(int32_t c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

int ad_normalize_task(const char *s, size_t len, char *out, size_t cap)
{
    if (!s || !out || !cap)
        return eng_error(ENG_EINVAL, "task: no text");
    out[0] = '\0';
    if (len > AD_TASK_MAX)
        return eng_error(ENG_EINVAL, "task is %zu bytes long; at most %d are accepted", len,
                         AD_TASK_MAX);
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    int pending_space = 0;
    for (size_t i = 0; i < len;) {
        int n = 1;
        int32_t c = ad__utf8(u, i, len, &n);
        if (c < 0)
            return eng_error(ENG_EINVAL, "task is not valid UTF-8 (at byte %zu)", i);
        if (c == 0)
            return eng_error(ENG_EINVAL, "task contains a NUL byte (at byte %zu)", i);
        if (ad__is_space(c)) {
            pending_space = o > 0;
            i += (size_t)n;
            continue;
        }
        if (c < 0x20 || c == 0x7f || (c >= 0x80 && c <= 0x9f))
            return eng_error(ENG_EINVAL,
                             "task contains the control character U+%04X (at byte "
                             "%zu)",
                             (unsigned)c, i);
        if (o + (size_t)pending_space + (size_t)n + 1 > cap)
            return eng_error(ENG_EINVAL, "task: normalised text does not fit %zu bytes", cap);
        if (pending_space)
            out[o++] = ' ';
        pending_space = 0;
        for (int k = 0; k < n; k++) {
            char ch = s[i + k];
            out[o++] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
        }
        i += (size_t)n;
    }
    out[o] = '\0';
    if (o == 0)
        return eng_error(ENG_EINVAL, len ? "task is only whitespace" : "task is empty");
    return 0;
}

/* The id from the normalised task and the hypernetwork id. */
static void ad__id(const char *norm, const char *hypernet_id, char id[AD_ID_LEN + 1])
{
    eng_sha256_ctx c;
    uint8_t d[32];
    eng_sha256_init(&c);
    eng_sha256_update(&c, norm, strlen(norm));
    eng_sha256_update(&c, "", 1);
    eng_sha256_update(&c, hypernet_id, strlen(hypernet_id));
    eng_sha256_final(&c, d);
    eng_sha256_hex(d, id);
}

static int ad__is_hex_id(const char *s)
{
    if (strlen(s) != HN_ID_LEN)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

int ad_task_id_normalized(const char *norm, const char *hypernet_id, char id[AD_ID_LEN + 1])
{
    if (!norm || !norm[0])
        return eng_error(ENG_EINVAL, "task is empty");
    if (!hypernet_id || !ad__is_hex_id(hypernet_id))
        return eng_error(ENG_EINVAL, "hypernetwork id must be %d lower-case hex characters",
                         HN_ID_LEN);
    ad__id(norm, hypernet_id, id);
    return 0;
}

int ad_task_id(const char *task, size_t len, const char *hypernet_id, char id[AD_ID_LEN + 1])
{
    char norm[AD_TASK_MAX + 1];
    int rc = ad_normalize_task(task, len, norm, sizeof norm);
    if (rc)
        return rc;
    return ad_task_id_normalized(norm, hypernet_id, id);
}

/* ------------------------------------------------------------------ */
/* the adapter object                                                   */

/* A new adapter with factor storage for `present` at `rank` (all zero). */
static int ad__new(ad_adapter **out, int rank, const unsigned char *present)
{
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    ad_adapter *a = calloc(1, sizeof *a);
    if (!a)
        return eng_error(ENG_ENOMEM, "out of memory");
    a->rank = rank;
    size_t total = 0;
    for (int t = 0; t < AD_T; t++)
        if (present[t]) {
            a->present[t] = 1;
            a->n_targets++;
            total += (size_t)rank * (size_t)(tt[t].in + tt[t].out);
        }
    a->mem = calloc(total ? total : 1, sizeof(float));
    if (!a->mem) {
        free(a);
        return eng_error(ENG_ENOMEM, "out of memory for an adapter's factors");
    }
    a->n_floats = total;
    size_t off = 0;
    for (int t = 0; t < AD_T; t++)
        if (present[t]) {
            a->A[t] = a->mem + off;
            off += (size_t)rank * (size_t)tt[t].in;
            a->B[t] = a->mem + off;
            off += (size_t)tt[t].out * (size_t)rank;
        }
    *out = a;
    return 0;
}

void ad_adapter_destroy(ad_adapter *a)
{
    if (!a)
        return;
    free(a->task);
    free(a->task_normalized);
    free(a->mem);
    free(a);
}

const char *ad_adapter_id(const ad_adapter *a) { return a->id; }
float ad_adapter_scale(const ad_adapter *a) { return a->alpha / (float)a->rank; }
size_t ad_adapter_bytes(const ad_adapter *a) { return a->n_floats * sizeof(float); }

static char *ad__strndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

int ad_adapter_generate(hn_text *text, hn_hypernet *h, const char *task, size_t len,
                        ad_adapter **out)
{
    *out = NULL;
    if (!text || !h || !task)
        return eng_error(ENG_EINVAL, "ad_adapter_generate: NULL argument");
    char norm[AD_TASK_MAX + 1];
    int rc = ad_normalize_task(task, len, norm, sizeof norm);
    if (rc)
        return rc;
    return ad_adapter_generate_normalized(text, h, task, len, norm, out);
}

int ad_adapter_generate_normalized(hn_text *text, hn_hypernet *h, const char *task, size_t len,
                                   const char *norm, ad_adapter **out)
{
    *out = NULL;
    if (!text || !h || !task || !norm || !norm[0])
        return eng_error(ENG_EINVAL, "ad_adapter_generate_normalized: NULL or empty argument");
    int rc = hn_hypernet_check_text(h, text);
    if (rc)
        return rc;
    const hn_hypernet_config *cfg = hn_hypernet_get_config(h);
    float *emb = malloc((size_t)cfg->text_dim * sizeof(float));
    if (!emb)
        return eng_error(ENG_ENOMEM, "out of memory");
    const char *texts[1] = {norm};
    size_t lens[1] = {strlen(norm)};
    ad_adapter *a = NULL;
    if ((rc = hn_text_embed(text, texts, lens, 1, emb)) ||
        (rc = ad__new(&a, cfg->rank, cfg->present)) ||
        (rc = hn_hypernet_generate(h, emb, a->A, a->B)))
        goto err;
    a->alpha = cfg->alpha;
    a->task = ad__strndup(task, len);
    a->task_normalized = ad__strndup(norm, strlen(norm));
    if (!a->task || !a->task_normalized) {
        rc = eng_error(ENG_ENOMEM, "out of memory");
        goto err;
    }
    snprintf(a->hypernet_id, sizeof a->hypernet_id, "%s", hn_hypernet_id(h));
    snprintf(a->hypernet_version, sizeof a->hypernet_version, "%s", hn_hypernet_version(h));
    hn_hypernet_text_name(text, a->text_model, sizeof a->text_model);
    a->created = (int64_t)time(NULL);
    ad__id(a->task_normalized, a->hypernet_id, a->id);
    free(emb);
    *out = a;
    return 0;
err:
    free(emb);
    ad_adapter_destroy(a);
    return rc;
}

int ad_adapter_to_lora(const ad_adapter *a, eng_sam *m, int merged, eng_sam_lora **out)
{
    *out = NULL;
    if (!a || !m)
        return eng_error(ENG_EINVAL, "ad_adapter_to_lora: NULL argument");
    return eng_sam_lora_create(m, a->rank, ad_adapter_scale(a), (const float *const *)a->A,
                               (const float *const *)a->B, merged, out);
}

/* ------------------------------------------------------------------ */
/* safetensors form                                                     */

typedef struct {
    eng_st_entry e[2 * AD_T];
    char names[2 * AD_T][112]; /* "<target>.lora_A" */
    char rank[16], alpha[32], created[32], targets[4096];
    const char *meta[24];
    size_t n, n_meta;
} ad__st;

static int ad__describe(const ad_adapter *a, ad__st *s)
{
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    memset(s, 0, sizeof *s);
    for (int t = 0; t < AD_T; t++) {
        if (!a->present[t])
            continue;
        for (int k = 0; k < 2; k++) {
            eng_st_entry *e = &s->e[s->n];
            snprintf(s->names[s->n], sizeof s->names[0], "%s.lora_%c", tt[t].name, k ? 'B' : 'A');
            e->name = s->names[s->n];
            e->dtype = ENG_F32;
            e->ndim = 2;
            e->shape[0] = k ? tt[t].out : a->rank;
            e->shape[1] = k ? a->rank : tt[t].in;
            e->data = k ? a->B[t] : a->A[t];
            s->n++;
        }
    }
    snprintf(s->rank, sizeof s->rank, "%d", a->rank);
    snprintf(s->alpha, sizeof s->alpha, "%.9g", (double)a->alpha);
    snprintf(s->created, sizeof s->created, "%lld", (long long)a->created);
    if (hn_targets_format(a->present, s->targets, sizeof s->targets) >= sizeof s->targets)
        return eng_error(ENG_EINVAL, "adapter target list too long");
    const char *m[] = {"format",
                       "tasam-adapter",
                       "format_version",
                       "1",
                       "id",
                       a->id,
                       "task",
                       a->task,
                       "task_normalized",
                       a->task_normalized,
                       "hypernet_id",
                       a->hypernet_id,
                       "hypernet_version",
                       a->hypernet_version,
                       "rank",
                       s->rank,
                       "alpha",
                       s->alpha,
                       "targets",
                       s->targets,
                       "created",
                       s->created,
                       "text_model",
                       a->text_model};
    memcpy(s->meta, m, sizeof m);
    s->n_meta = sizeof m / sizeof m[0] / 2;
    return 0;
}

int ad_adapter_serialize(const ad_adapter *a, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    ad__st *s = malloc(sizeof *s);
    if (!s)
        return eng_error(ENG_ENOMEM, "out of memory");
    int rc = ad__describe(a, s);
    if (!rc)
        rc = eng_safetensors_serialize(s->e, s->n, s->meta, s->n_meta, buf, len);
    free(s);
    return rc;
}

int ad_adapter_save(const ad_adapter *a, const char *path)
{
    ad__st *s = malloc(sizeof *s);
    if (!s)
        return eng_error(ENG_ENOMEM, "out of memory");
    int rc = ad__describe(a, s);
    if (!rc)
        rc = eng_safetensors_write(path, s->e, s->n, s->meta, s->n_meta);
    free(s);
    return rc;
}

/* A short printable metadata string (no control characters). */
static const char *ad__meta_name(const eng_ckpt *c, const char *key, const char *label, int *rc)
{
    const char *v = eng_ckpt_meta(c, key);
    size_t n = v ? strlen(v) : 0;
    int ok = v && n > 0 && n < HN_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)v[i] >= 0x20 && v[i] != 0x7f;
    if (!ok)
        *rc = eng_error(ENG_EFORMAT, "%s: metadata '%s' missing or malformed", label, key);
    return ok ? v : NULL;
}

static int ad__meta_ll(const eng_ckpt *c, const char *key, long long lo, long long hi,
                       const char *label, long long *out)
{
    const char *v = eng_ckpt_meta(c, key);
    char *end = NULL;
    errno = 0;
    long long x = v ? strtoll(v, &end, 10) : 0;
    if (!v || end == v || *end || errno || x < lo || x > hi)
        return eng_error(ENG_EFORMAT,
                         "%s: metadata '%s' missing or not an integer in "
                         "%lld..%lld",
                         label, key, lo, hi);
    *out = x;
    return 0;
}

static int ad__parse(ad_adapter **out, const eng_ckpt *c, const char *label)
{
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    const char *fmt = eng_ckpt_meta(c, "format"), *fv = eng_ckpt_meta(c, "format_version");
    if (!fmt || strcmp(fmt, "tasam-adapter"))
        return eng_error(ENG_EFORMAT, "%s: not a tasam adapter (metadata format '%.40s')", label,
                         fmt ? fmt : "missing");
    if (!fv || strcmp(fv, "1"))
        return eng_error(ENG_EUNSUP, "%s: adapter format_version '%.20s' (this build reads 1)",
                         label, fv ? fv : "missing");
    long long rank, created;
    int rc;
    /* the ranks a hypernetwork makes (tasam hypernet init takes the same) */
    if ((rc = ad__meta_ll(c, "rank", HN_MIN_RANK, HN_MAX_RANK, label, &rank)) ||
        (rc = ad__meta_ll(c, "created", 0, (long long)1 << 40, label, &created)))
        return rc;
    const char *sa = eng_ckpt_meta(c, "alpha");
    char *end = NULL;
    float alpha = sa ? strtof(sa, &end) : NAN;
    if (!sa || end == sa || *end || !isfinite(alpha) || alpha <= 0 || alpha > AD_MAX_ALPHA)
        return eng_error(ENG_EFORMAT, "%s: metadata alpha missing or outside (0, %g]", label,
                         (double)AD_MAX_ALPHA);
    const char *hid = eng_ckpt_meta(c, "hypernet_id");
    if (!hid || !ad__is_hex_id(hid))
        return eng_error(ENG_EFORMAT, "%s: metadata hypernet_id missing or not %d hex digits",
                         label, HN_ID_LEN);
    const char *hver = ad__meta_name(c, "hypernet_version", label, &rc);
    const char *tm = hver ? ad__meta_name(c, "text_model", label, &rc) : NULL;
    if (!hver || !tm)
        return rc;
    const char *task = eng_ckpt_meta(c, "task"), *tn = eng_ckpt_meta(c, "task_normalized");
    if (!task || !tn)
        return eng_error(ENG_EFORMAT, "%s: metadata task or task_normalized missing", label);
    char norm[AD_TASK_MAX + 1];
    if ((rc = ad_normalize_task(task, strlen(task), norm, sizeof norm))) {
        char why[256];
        snprintf(why, sizeof why, "%s", eng_last_error());
        return eng_error(ENG_EFORMAT, "%s: metadata task: %s", label, why);
    }
    if (strcmp(norm, tn))
        return eng_error(ENG_EFORMAT, "%s: metadata task_normalized is not the normalised task",
                         label);
    unsigned char present[AD_T];
    const char *tg = eng_ckpt_meta(c, "targets");
    if (!tg || hn_targets_parse(tg, present)) {
        char why[256];
        snprintf(why, sizeof why, "%s", tg ? eng_last_error() : "missing");
        return eng_error(ENG_EFORMAT, "%s: metadata targets: %s", label, why);
    }
    char id[AD_ID_LEN + 1];
    ad__id(norm, hid, id);
    const char *sid = eng_ckpt_meta(c, "id");
    if (sid && strcmp(sid, id))
        return eng_error(ENG_EFORMAT, "%s: metadata id does not match the task and hypernet_id",
                         label);

    /* Every tensor must be a factor of a listed target with its exact shape;
     * checked before anything is allocated. */
    int n_present = 0;
    for (int t = 0; t < AD_T; t++)
        n_present += present[t];
    for (size_t i = 0; i < eng_ckpt_count(c); i++) {
        const char *nm = eng_ckpt_at(c, i)->name;
        size_t l = strlen(nm);
        int known = 0;
        for (int t = 0; t < AD_T && !known; t++) {
            size_t tl = strlen(tt[t].name);
            known = present[t] && l == tl + 7 && !strncmp(nm, tt[t].name, tl) &&
                    (!strcmp(nm + tl, ".lora_A") || !strcmp(nm + tl, ".lora_B"));
        }
        if (!known)
            return eng_error(ENG_EFORMAT,
                             "%s: unknown tensor '%.120s' (not a factor of a "
                             "listed target)",
                             label, nm);
    }
    for (int t = 0; t < AD_T; t++) {
        if (!present[t])
            continue;
        for (int k = 0; k < 2; k++) {
            char nm[128];
            snprintf(nm, sizeof nm, "%s.lora_%c", tt[t].name, k ? 'B' : 'A');
            const eng_ckpt_tensor *x = eng_ckpt_find(c, nm);
            const int64_t r0 = k ? tt[t].out : rank, r1 = k ? rank : tt[t].in;
            if (!x)
                return eng_error(ENG_EFORMAT, "%s: tensor '%s' missing", label, nm);
            if (x->ndim != 2 || x->shape[0] != r0 || x->shape[1] != r1)
                return eng_error(ENG_ESHAPE,
                                 "%s: tensor '%s' has the wrong shape (expected "
                                 "[%lld,%lld] for rank %lld)",
                                 label, nm, (long long)r0, (long long)r1, rank);
        }
    }
    if (eng_ckpt_count(c) != (size_t)(2 * n_present))
        return eng_error(ENG_EFORMAT, "%s: %zu tensors, expected %d", label, eng_ckpt_count(c),
                         2 * n_present);
    ad_adapter *a = NULL;
    if ((rc = ad__new(&a, (int)rank, present)))
        return rc;
    for (int t = 0; t < AD_T && !rc; t++) {
        if (!present[t])
            continue;
        for (int k = 0; k < 2 && !rc; k++) {
            char nm[128];
            snprintf(nm, sizeof nm, "%s.lora_%c", tt[t].name, k ? 'B' : 'A');
            const eng_ckpt_tensor *x = eng_ckpt_find(c, nm);
            float *dst = k ? a->B[t] : a->A[t];
            if ((rc = eng_ckpt_read_f32(c, x, dst)))
                break;
            for (int64_t i = 0; i < x->numel; i++)
                if (!isfinite(dst[i])) {
                    rc = eng_error(ENG_EFORMAT, "%s: tensor '%s': element %lld is not finite",
                                   label, nm, (long long)i);
                    break;
                }
        }
    }
    if (!rc) {
        a->task = ad__strndup(task, strlen(task));
        a->task_normalized = ad__strndup(norm, strlen(norm));
        if (!a->task || !a->task_normalized)
            rc = eng_error(ENG_ENOMEM, "out of memory");
    }
    if (rc) {
        ad_adapter_destroy(a);
        return rc;
    }
    a->alpha = alpha;
    a->created = created;
    memcpy(a->id, id, sizeof a->id);
    snprintf(a->hypernet_id, sizeof a->hypernet_id, "%s", hid);
    snprintf(a->hypernet_version, sizeof a->hypernet_version, "%s", hver);
    snprintf(a->text_model, sizeof a->text_model, "%s", tm);
    *out = a;
    return 0;
}

int ad_adapter_parse(ad_adapter **out, const void *buf, size_t len, const char *label)
{
    *out = NULL;
    if (!label)
        label = "adapter";
    if (!buf && len)
        return eng_error(ENG_EINVAL, "%s: no data", label);
    if (len > AD_MAX_FILE_BYTES)
        return eng_error(ENG_ELIMIT, "%s: %zu bytes; adapters are at most %u", label, len,
                         AD_MAX_FILE_BYTES);
    eng_ckpt *c = NULL;
    int rc = eng_ckpt_open_mem(&c, buf ? buf : "", len, label);
    if (!rc)
        rc = ad__parse(out, c, label);
    eng_ckpt_close(c);
    return rc;
}

int ad_adapter_load(ad_adapter **out, const char *path)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return eng_error(ENG_EIO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (n == cap) {
            if (cap > AD_MAX_FILE_BYTES) {
                rc = eng_error(ENG_ELIMIT, "%s: larger than %u bytes; not an adapter", path,
                               AD_MAX_FILE_BYTES);
                break;
            }
            cap = cap ? cap * 2 : 1 << 16;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                rc = eng_error(ENG_ENOMEM, "out of memory");
                break;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f))
                rc = eng_error(ENG_EIO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (!rc)
        rc = ad_adapter_parse(out, buf, n, path);
    free(buf);
    return rc;
}
