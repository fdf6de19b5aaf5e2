/*
 * hypernet/hypernet.c: task embedding -> LoRA factors for the mask decoder.
 * See hypernet.h for the architecture, the file format and the id.
 *
 * Letters: d text width, H hidden, r rank, n present targets, S shapes.
 * Rows of the per-target activations are ordered by shape group (all
 * targets of shape 0, then shape 1, ...), so each head is one GEMM over a
 * contiguous block of rows.
 */
#include "hypernet.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/sha256.h"

#define HN_T            ENG_SAM_LORA_TARGETS
#define HN_ALIGN        256 /* byte alignment of each weight in the device block */
#define HN_LN_EPS       1e-5f
#define HN_MAX_TEXT_DIM 65536
#define HN_MIN_HIDDEN   8
#define HN_MAX_HIDDEN   4096
#define HN_MAX_ALPHA    1024.0f

/* ------------------------------------------------------------------ */
/* target types and shapes                                              */

static const char *const hn__type_names[HN_TYPES] = {
    "attn.q",  "attn.k",  "attn.v",  "attn.out", "mlp.lin1", "mlp.lin2",
    "hyper.0", "hyper.1", "hyper.2", "iou.0",    "iou.1",    "iou.2",
};

static int hn__type[HN_T];           /* target -> type */
static int hn__shape_of[HN_T];       /* target -> shape index */
static int hn__shapes[HN_SHAPES][2]; /* shape -> [out, in], in order of first appearance */
static pthread_once_t hn__tables_once = PTHREAD_ONCE_INIT;

static int hn__ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static void hn__tables_init(void)
{
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    int ns = 0;
    for (int i = 0; i < HN_T; i++) {
        const char *n = t[i].name;
        int ty = -1;
        if (hn__ends_with(n, ".q_proj"))
            ty = 0;
        else if (hn__ends_with(n, ".k_proj"))
            ty = 1;
        else if (hn__ends_with(n, ".v_proj"))
            ty = 2;
        else if (hn__ends_with(n, ".out_proj"))
            ty = 3;
        else if (hn__ends_with(n, "mlp.lin1"))
            ty = 4;
        else if (hn__ends_with(n, "mlp.lin2"))
            ty = 5;
        else if (strstr(n, "output_hypernetworks_mlps"))
            ty = 6 + (n[strlen(n) - 1] - '0');
        else if (strstr(n, "iou_prediction_head"))
            ty = 9 + (n[strlen(n) - 1] - '0');
        /* The engine's table and this classification must agree; a new
         * target kind is a programming change, not an input error. */
        if (ty < 0 || ty >= HN_TYPES)
            abort();
        hn__type[i] = ty;
        int s = 0;
        while (s < ns && !(hn__shapes[s][0] == t[i].out && hn__shapes[s][1] == t[i].in))
            s++;
        if (s == ns) {
            if (ns == HN_SHAPES)
                abort();
            hn__shapes[ns][0] = t[i].out;
            hn__shapes[ns][1] = t[i].in;
            ns++;
        }
        hn__shape_of[i] = s;
    }
    if (ns != HN_SHAPES)
        abort();
}

static void hn__tables(void) { pthread_once(&hn__tables_once, hn__tables_init); }

int hn_target_type(int t)
{
    hn__tables();
    return t >= 0 && t < HN_T ? hn__type[t] : -1;
}

const char *hn_type_name(int type)
{
    return type >= 0 && type < HN_TYPES ? hn__type_names[type] : "?";
}

int hn_target_shape(int t)
{
    hn__tables();
    return t >= 0 && t < HN_T ? hn__shape_of[t] : -1;
}

void hn_shape(int s, int *out, int *in)
{
    hn__tables();
    *out = s >= 0 && s < HN_SHAPES ? hn__shapes[s][0] : 0;
    *in = s >= 0 && s < HN_SHAPES ? hn__shapes[s][1] : 0;
}

/* ------------------------------------------------------------------ */
/* target lists                                                         */

static int hn__in_group(int t, const char *g)
{
    int ty = hn_target_type(t);
    if (!strcmp(g, "attn"))
        return ty <= 3;
    if (!strcmp(g, "mlp"))
        return ty == 4 || ty == 5;
    if (!strcmp(g, "hyper"))
        return ty >= 6 && ty <= 8;
    if (!strcmp(g, "iou"))
        return ty >= 9;
    return -1;
}

int hn_targets_parse(const char *s, unsigned char *present)
{
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    memset(present, 0, HN_T);
    if (!s)
        return eng_error(ENG_EINVAL, "no target list");
    const char *p = s;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char item[128];
        while (len && isspace((unsigned char)*p)) {
            p++;
            len--;
        }
        while (len && isspace((unsigned char)p[len - 1]))
            len--;
        if (len == 0 || len >= sizeof item)
            return eng_error(ENG_EINVAL, "target list '%.80s': empty or over-long item", s);
        memcpy(item, p, len);
        item[len] = '\0';
        int neg = item[0] == '-';
        const char *name = item + neg;
        int hit = 0;
        for (int t = 0; t < HN_T; t++) {
            int g = hn__in_group(t, name);
            if (!strcmp(name, "all") || g == 1 || (g < 0 && !strcmp(name, tt[t].name))) {
                present[t] = !neg;
                hit = 1;
            }
        }
        if (!hit && strcmp(name, "attn") && strcmp(name, "mlp") && strcmp(name, "hyper") &&
            strcmp(name, "iou"))
            return eng_error(ENG_EINVAL,
                             "target list: unknown target '%s' (use all, attn, mlp, "
                             "hyper, iou or a decoder layer name; '-' removes)",
                             name);
        if (!e)
            break;
        p = e + 1;
    }
    int n = 0;
    for (int t = 0; t < HN_T; t++)
        n += present[t];
    if (!n)
        return eng_error(ENG_EINVAL, "target list '%.80s' selects no target", s);
    return 0;
}

size_t hn_targets_format(const unsigned char *present, char *out, size_t cap)
{
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    int all = 1;
    for (int t = 0; t < HN_T; t++)
        all &= present[t] != 0;
    size_t n = 0;
    if (cap)
        out[0] = '\0';
    if (all) {
        n = 3;
        if (cap)
            snprintf(out, cap, "all");
        return n;
    }
    for (int t = 0; t < HN_T; t++) {
        if (!present[t])
            continue;
        size_t l = strlen(tt[t].name) + (n ? 1 : 0);
        if (n + l < cap)
            snprintf(out + n, cap - n, "%s%s", n ? "," : "", tt[t].name);
        n += l;
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* configuration                                                        */

void hn_hypernet_config_default(hn_hypernet_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->text_dim = 384;
    cfg->hidden = HN_DEFAULT_HIDDEN;
    cfg->rank = HN_DEFAULT_RANK;
    cfg->alpha = 2.0f * HN_DEFAULT_RANK;
    snprintf(cfg->text_model, sizeof cfg->text_model, "%s", HN_TEXT_DEFAULT_MODEL);
    memset(cfg->present, 1, sizeof cfg->present);
}

/* A short printable name (text_model, version): no control characters,
 * no commas' trouble, 1..HN_NAME_MAX-1 bytes. */
static int hn__name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= HN_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

int hn_hypernet_config_check(const hn_hypernet_config *c)
{
    if (c->text_dim < 1 || c->text_dim > HN_MAX_TEXT_DIM)
        return eng_error(ENG_EINVAL, "hypernetwork text_dim %d outside 1..%d", c->text_dim,
                         HN_MAX_TEXT_DIM);
    if (c->hidden < HN_MIN_HIDDEN || c->hidden > HN_MAX_HIDDEN)
        return eng_error(ENG_EINVAL, "hypernetwork hidden %d outside %d..%d", c->hidden,
                         HN_MIN_HIDDEN, HN_MAX_HIDDEN);
    if (c->rank < HN_MIN_RANK || c->rank > HN_MAX_RANK)
        return eng_error(ENG_EINVAL, "hypernetwork rank %d outside %d..%d", c->rank, HN_MIN_RANK,
                         HN_MAX_RANK);
    if (!isfinite(c->alpha) || c->alpha <= 0 || c->alpha > HN_MAX_ALPHA)
        return eng_error(ENG_EINVAL, "hypernetwork alpha %g outside (0, %g]", (double)c->alpha,
                         (double)HN_MAX_ALPHA);
    if (!memchr(c->text_model, '\0', sizeof c->text_model) || !hn__name_ok(c->text_model))
        return eng_error(ENG_EINVAL, "hypernetwork text_model must be 1..%d printable bytes",
                         HN_NAME_MAX - 1);
    int n = 0;
    for (int t = 0; t < HN_T; t++)
        n += c->present[t] != 0;
    if (!n)
        return eng_error(ENG_EINVAL, "hypernetwork has no target");
    return 0;
}

/* ------------------------------------------------------------------ */
/* host parameters                                                      */

/* One tensor of a parameter set, for the walks below (write, read, id,
 * upload). `shape` [ndim]. */
typedef struct {
    char name[64];
    int ndim;
    int64_t shape[2];
    float **slot; /* the hn_params field pointing at its data */
    int head;     /* 1 for head tensors (parameter counts) */
} hn__tdesc;

/* The tensors of config c in their canonical order; returns the count
 * (at most 8 + 4 * HN_SHAPES). `slots` may come from p (NULL: slot NULL). */
static int hn__tensors(const hn_hypernet_config *c, hn_params *p, hn__tdesc *d)
{
    hn__tables();
    int n = 0;
    const int64_t H = c->hidden, D = c->text_dim, R = c->rank;
#define HN__ADD(nm, nd, a, b, field, hd)                                                           \
    do {                                                                                           \
        snprintf(d[n].name, sizeof d[n].name, "%s", nm);                                           \
        d[n].ndim = (nd);                                                                          \
        d[n].shape[0] = (a);                                                                       \
        d[n].shape[1] = (b);                                                                       \
        d[n].slot = p ? &p->field : NULL;                                                          \
        d[n].head = (hd);                                                                          \
        n++;                                                                                       \
    } while (0)
    HN__ADD("trunk.in.weight", 2, H, D, w_in, 0);
    HN__ADD("trunk.in.bias", 1, H, 0, b_in, 0);
    HN__ADD("trunk.norm.weight", 1, H, 0, ln_g, 0);
    HN__ADD("trunk.norm.bias", 1, H, 0, ln_b, 0);
    HN__ADD("trunk.mix.weight", 2, H, H, w_mix, 0);
    HN__ADD("trunk.mix.bias", 1, H, 0, b_mix, 0);
    HN__ADD("embed.type", 2, HN_TYPES, H, e_type, 0);
    HN__ADD("embed.layer", 2, HN_T, H, e_layer, 0);
    for (int s = 0; s < HN_SHAPES; s++) {
        int used = 0;
        for (int t = 0; t < HN_T; t++)
            used |= c->present[t] && hn__shape_of[t] == s;
        if (!used)
            continue;
        const int64_t O = hn__shapes[s][0], I = hn__shapes[s][1];
        char nm[64];
        snprintf(nm, sizeof nm, "head.%dx%d.A.weight", (int)O, (int)I);
        HN__ADD(nm, 2, R * I, H, wa[s], 1);
        snprintf(nm, sizeof nm, "head.%dx%d.A.bias", (int)O, (int)I);
        HN__ADD(nm, 1, R * I, 0, ba[s], 1);
        snprintf(nm, sizeof nm, "head.%dx%d.B.weight", (int)O, (int)I);
        HN__ADD(nm, 2, O * R, H, wb[s], 1);
        snprintf(nm, sizeof nm, "head.%dx%d.B.bias", (int)O, (int)I);
        HN__ADD(nm, 1, O * R, 0, bb[s], 1);
    }
#undef HN__ADD
    return n;
}

#define HN__MAX_TENSORS (8 + 4 * HN_SHAPES)

static size_t hn__numel(const hn__tdesc *d)
{
    return (size_t)d->shape[0] * (size_t)(d->ndim == 2 ? d->shape[1] : 1);
}

int hn_params_create(hn_params **out, const hn_hypernet_config *cfg)
{
    *out = NULL;
    int rc = hn_hypernet_config_check(cfg);
    if (rc)
        return rc;
    hn_params *p = calloc(1, sizeof *p);
    if (!p)
        return eng_error(ENG_ENOMEM, "out of memory");
    p->cfg = *cfg;
    hn__tdesc d[HN__MAX_TENSORS];
    int n = hn__tensors(cfg, p, d);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += hn__numel(&d[i]);
    p->mem = calloc(total, sizeof(float));
    if (!p->mem) {
        free(p);
        return eng_error(ENG_ENOMEM, "out of memory for %zu MiB of hypernetwork parameters",
                         (total * sizeof(float)) >> 20);
    }
    p->n_floats = total;
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        *d[i].slot = p->mem + off;
        off += hn__numel(&d[i]);
    }
    *out = p;
    return 0;
}

void hn_params_destroy(hn_params *p)
{
    if (!p)
        return;
    free(p->mem);
    free(p);
}

/* splitmix64: a small, well-mixed generator; uniform in [-1, 1). */
static float hn__urand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / 16777216.0 * 2.0 - 1.0);
}

static void hn__fill(float *x, size_t n, float bound, uint64_t *s)
{
    for (size_t i = 0; i < n; i++)
        x[i] = bound * hn__urand(s);
}

void hn_params_init(hn_params *p, uint64_t seed, int random)
{
    const hn_hypernet_config *c = &p->cfg;
    const size_t H = (size_t)c->hidden, D = (size_t)c->text_dim, R = (size_t)c->rank;
    uint64_t s = seed ^ 0x7461736d686e6574ull; /* "tasmhnet": seed 0 is not a weak state */
    memset(p->mem, 0, p->n_floats * sizeof(float));
    /* PyTorch's nn.Linear default: U(+-1/sqrt(fan_in)) for weight and bias. */
    hn__fill(p->w_in, H * D, 1.0f / sqrtf((float)D), &s);
    hn__fill(p->b_in, H, 1.0f / sqrtf((float)D), &s);
    for (size_t i = 0; i < H; i++)
        p->ln_g[i] = 1.0f;
    hn__fill(p->w_mix, H * H, 1.0f / sqrtf((float)H), &s);
    hn__fill(p->b_mix, H, 1.0f / sqrtf((float)H), &s);
    /* Embeddings of unit scale, like the LayerNormed z they are added to. */
    hn__fill(p->e_type, HN_TYPES * H, 1.0f, &s);
    hn__fill(p->e_layer, HN_T * H, 1.0f, &s);
    for (int k = 0; k < HN_SHAPES; k++) {
        if (!p->wa[k])
            continue;
        const float in = (float)hn__shapes[k][1];
        const size_t O = (size_t)hn__shapes[k][0], I = (size_t)hn__shapes[k][1];
        /* A = W_A h + b_A: b_A carries LoRA's Kaiming-uniform init (bound
         * 1/sqrt(in)); W_A's part has about the same spread for h of unit
         * scale, so tasks give different A from the start. */
        hn__fill(p->wa[k], R * I * H, 1.0f / (sqrtf(in) * sqrtf((float)H)), &s);
        hn__fill(p->ba[k], R * I, 1.0f / sqrtf(in), &s);
        if (random) {
            /* Large enough that (alpha/r) B A visibly moves the masks. */
            hn__fill(p->wb[k], O * R * H, 0.25f / sqrtf((float)H), &s);
            hn__fill(p->bb[k], O * R, 0.25f, &s);
        }
    }
}

void hn_params_count(const hn_params *p, size_t *trunk, size_t *heads)
{
    hn__tdesc d[HN__MAX_TENSORS];
    int n = hn__tensors(&p->cfg, NULL, d);
    size_t tr = 0, hd = 0;
    for (int i = 0; i < n; i++)
        *(d[i].head ? &hd : &tr) += hn__numel(&d[i]);
    if (trunk)
        *trunk = tr;
    if (heads)
        *heads = hd;
}

static void hn__hex(const uint8_t dg[32], char id[HN_ID_LEN + 1]) { eng_sha256_hex(dg, id); }

void hn_params_id(const hn_params *p, char id[HN_ID_LEN + 1])
{
    const hn_hypernet_config *c = &p->cfg;
    char head[4096], tg[4096];
    hn_targets_format(c->present, tg, sizeof tg);
    int hl = snprintf(head, sizeof head,
                      "tasam-hypernet/1\ntext_dim=%d\nhidden=%d\nrank=%d\nalpha=%.9g\n"
                      "text_model=%s\ntargets=%s\n",
                      c->text_dim, c->hidden, c->rank, (double)c->alpha, c->text_model, tg);
    eng_sha256_ctx h;
    eng_sha256_init(&h);
    eng_sha256_update(&h, head, (size_t)hl < sizeof head ? (size_t)hl : sizeof head - 1);
    hn__tdesc d[HN__MAX_TENSORS];
    int n = hn__tensors(c, (hn_params *)p, d);
    for (int i = 0; i < n; i++) {
        char line[160];
        int l = snprintf(line, sizeof line, "%s [%lld,%lld]\n", d[i].name, (long long)d[i].shape[0],
                         (long long)(d[i].ndim == 2 ? d[i].shape[1] : 0));
        eng_sha256_update(&h, line, (size_t)l);
        /* f32 little-endian, the file's byte order (x86 and aarch64 hosts). */
        eng_sha256_update(&h, *d[i].slot, hn__numel(&d[i]) * sizeof(float));
    }
    uint8_t dg[32];
    eng_sha256_final(&h, dg);
    hn__hex(dg, id);
}

int hn_params_write(const hn_params *p, const char *path, const char *version,
                    char id_out[HN_ID_LEN + 1])
{
    return hn_params_write_meta(p, path, version, NULL, 0, id_out);
}

/* Metadata keys the writer sets itself. */
static const char *const hn__reserved_meta[] = {
    "format", "format_version", "version", "id",         "rank",
    "alpha",  "text_dim",       "hidden",  "text_model", "targets"};

int hn_params_write_meta(const hn_params *p, const char *path, const char *version,
                         const char *const *extra, size_t n_extra, char id_out[HN_ID_LEN + 1])
{
    if (n_extra > HN_MAX_EXTRA_META || (n_extra && !extra))
        return eng_error(ENG_EINVAL, "hypernetwork metadata: at most %d extra entries",
                         HN_MAX_EXTRA_META);
    for (size_t i = 0; i < n_extra; i++) {
        const char *k = extra[2 * i], *v = extra[2 * i + 1];
        if (!k || !v || !*k)
            return eng_error(ENG_EINVAL, "hypernetwork metadata entry %zu: empty key or value", i);
        for (size_t r = 0; r < sizeof hn__reserved_meta / sizeof *hn__reserved_meta; r++)
            if (!strcmp(k, hn__reserved_meta[r]))
                return eng_error(ENG_EINVAL,
                                 "hypernetwork metadata '%s' is set by the writer itself", k);
    }
    if (!version || !hn__name_ok(version))
        return eng_error(ENG_EINVAL, "hypernetwork version must be 1..%d printable bytes",
                         HN_NAME_MAX - 1);
    int rc = hn_hypernet_config_check(&p->cfg);
    if (rc)
        return rc;
    for (size_t i = 0; i < p->n_floats; i++)
        if (!isfinite(p->mem[i]))
            return eng_error(ENG_EINVAL, "hypernetwork parameter %zu is not finite", i);
    hn__tdesc d[HN__MAX_TENSORS];
    int n = hn__tensors(&p->cfg, (hn_params *)p, d);
    eng_st_entry e[HN__MAX_TENSORS];
    memset(e, 0, sizeof e);
    for (int i = 0; i < n; i++) {
        e[i].name = d[i].name;
        e[i].dtype = ENG_F32;
        e[i].ndim = d[i].ndim;
        e[i].shape[0] = d[i].shape[0];
        e[i].shape[1] = d[i].shape[1];
        e[i].data = *d[i].slot;
    }
    char id[HN_ID_LEN + 1], sdim[16], shid[16], srank[16], salpha[32], tg[4096];
    hn_params_id(p, id);
    snprintf(sdim, sizeof sdim, "%d", p->cfg.text_dim);
    snprintf(shid, sizeof shid, "%d", p->cfg.hidden);
    snprintf(srank, sizeof srank, "%d", p->cfg.rank);
    snprintf(salpha, sizeof salpha, "%.9g", (double)p->cfg.alpha);
    hn_targets_format(p->cfg.present, tg, sizeof tg);
    const char *meta[20 + 2 * HN_MAX_EXTRA_META] = {"format",
                                                    "tasam-hypernet",
                                                    "format_version",
                                                    "1",
                                                    "version",
                                                    version,
                                                    "id",
                                                    id,
                                                    "rank",
                                                    srank,
                                                    "alpha",
                                                    salpha,
                                                    "text_dim",
                                                    sdim,
                                                    "hidden",
                                                    shid,
                                                    "text_model",
                                                    p->cfg.text_model,
                                                    "targets",
                                                    tg};
    size_t n_meta = 10;
    for (size_t i = 0; i < n_extra; i++, n_meta++) {
        meta[2 * n_meta] = extra[2 * i];
        meta[2 * n_meta + 1] = extra[2 * i + 1];
    }
    rc = eng_safetensors_write(path, e, (size_t)n, meta, n_meta);
    if (!rc && id_out)
        memcpy(id_out, id, HN_ID_LEN + 1);
    return rc;
}

/* A whole-string decimal integer in [lo, hi]. */
static int hn__meta_int(const eng_ckpt *c, const char *key, long lo, long hi, int *out)
{
    const char *v = eng_ckpt_meta(c, key);
    if (!v)
        return eng_error(ENG_EFORMAT, "%s: metadata '%s' missing", eng_ckpt_path(c), key);
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi)
        return eng_error(ENG_EFORMAT, "%s: metadata %s='%.40s' is not an integer in %ld..%ld",
                         eng_ckpt_path(c), key, v, lo, hi);
    *out = (int)x;
    return 0;
}

static int hn__read(hn_params **out, eng_ckpt *c, char version[HN_NAME_MAX])
{
    const char *path = eng_ckpt_path(c);
    const char *fmt = eng_ckpt_meta(c, "format"), *fv = eng_ckpt_meta(c, "format_version");
    if (!fmt || strcmp(fmt, "tasam-hypernet"))
        return eng_error(ENG_EFORMAT, "%s: not a tasam hypernetwork (metadata format is '%.40s')",
                         path, fmt ? fmt : "missing");
    if (!fv || strcmp(fv, "1"))
        return eng_error(ENG_EUNSUP,
                         "%s: hypernetwork format_version '%.20s' (this build "
                         "reads 1)",
                         path, fv ? fv : "missing");
    hn_hypernet_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc;
    if ((rc = hn__meta_int(c, "text_dim", 1, HN_MAX_TEXT_DIM, &cfg.text_dim)) ||
        (rc = hn__meta_int(c, "hidden", HN_MIN_HIDDEN, HN_MAX_HIDDEN, &cfg.hidden)) ||
        (rc = hn__meta_int(c, "rank", HN_MIN_RANK, HN_MAX_RANK, &cfg.rank)))
        return rc;
    const char *sa = eng_ckpt_meta(c, "alpha"), *tm = eng_ckpt_meta(c, "text_model");
    const char *tg = eng_ckpt_meta(c, "targets"), *ver = eng_ckpt_meta(c, "version");
    const char *sid = eng_ckpt_meta(c, "id");
    char *end = NULL;
    cfg.alpha = sa ? strtof(sa, &end) : NAN;
    if (!sa || end == sa || *end)
        return eng_error(ENG_EFORMAT, "%s: metadata alpha missing or not a number", path);
    if (!tm || !hn__name_ok(tm))
        return eng_error(ENG_EFORMAT, "%s: metadata text_model missing or malformed", path);
    snprintf(cfg.text_model, sizeof cfg.text_model, "%s", tm);
    if (!ver || !hn__name_ok(ver))
        return eng_error(ENG_EFORMAT, "%s: metadata version missing or malformed", path);
    if (!tg)
        return eng_error(ENG_EFORMAT, "%s: metadata targets missing", path);
    if ((rc = hn_targets_parse(tg, cfg.present)) || (rc = hn_hypernet_config_check(&cfg))) {
        char why[256];
        snprintf(why, sizeof why, "%s", eng_last_error());
        return eng_error(ENG_EFORMAT, "%s: %s", path, why);
    }

    /* Check every tensor's presence and shape before allocating anything
     * the metadata asks for. */
    hn__tdesc d[HN__MAX_TENSORS];
    int n = hn__tensors(&cfg, NULL, d);
    for (int i = 0; i < n; i++) {
        const eng_ckpt_tensor *t = eng_ckpt_find(c, d[i].name);
        if (!t)
            return eng_error(ENG_EFORMAT, "%s: tensor '%s' missing", path, d[i].name);
        if (t->ndim != d[i].ndim || t->shape[0] != d[i].shape[0] ||
            (d[i].ndim == 2 && t->shape[1] != d[i].shape[1]))
            return eng_error(ENG_ESHAPE,
                             "%s: tensor '%s' has the wrong shape (expected "
                             "[%lld%s%lld])",
                             path, d[i].name, (long long)d[i].shape[0], d[i].ndim == 2 ? "," : "",
                             d[i].ndim == 2 ? (long long)d[i].shape[1] : 0LL);
    }
    if (eng_ckpt_count(c) != (size_t)n)
        return eng_error(ENG_EFORMAT, "%s: %zu tensors, expected %d (unknown tensor present)", path,
                         eng_ckpt_count(c), n);
    hn_params *p = NULL;
    if ((rc = hn_params_create(&p, &cfg)))
        return rc;
    n = hn__tensors(&cfg, p, d);
    for (int i = 0; i < n && !rc; i++) {
        const int64_t *sh = d[i].shape;
        rc = eng_ckpt_load_f32(c, d[i].name, d[i].ndim, sh, *d[i].slot);
        for (size_t k = 0; !rc && k < hn__numel(&d[i]); k++)
            if (!isfinite((*d[i].slot)[k]))
                rc = eng_error(ENG_EFORMAT, "%s: tensor '%s': element %zu is not finite", path,
                               d[i].name, k);
    }
    if (!rc && sid) {
        char id[HN_ID_LEN + 1];
        hn_params_id(p, id);
        if (strcmp(id, sid))
            rc = eng_error(ENG_EFORMAT,
                           "%s: stored id %.64s does not match the content (%s): "
                           "the file was modified or damaged",
                           path, sid, id);
    }
    if (rc) {
        hn_params_destroy(p);
        return rc;
    }
    if (version)
        snprintf(version, HN_NAME_MAX, "%s", ver);
    *out = p;
    return 0;
}

int hn_params_read(hn_params **out, const char *path, char version[HN_NAME_MAX])
{
    *out = NULL;
    eng_ckpt *c = NULL;
    int rc = eng_ckpt_open(&c, path);
    if (!rc)
        rc = hn__read(out, c, version);
    eng_ckpt_close(c);
    return rc;
}

int hn_params_read_mem(hn_params **out, const void *buf, size_t len, const char *label,
                       char version[HN_NAME_MAX])
{
    *out = NULL;
    eng_ckpt *c = NULL;
    int rc = eng_ckpt_open_mem(&c, buf, len, label ? label : "hypernetwork");
    if (!rc)
        rc = hn__read(out, c, version);
    eng_ckpt_close(c);
    return rc;
}

/* ------------------------------------------------------------------ */
/* the loaded hypernetwork                                              */

struct hn_hypernet {
    hn_hypernet_config cfg;
    char id[HN_ID_LEN + 1];
    char version[HN_NAME_MAX];
    eng_backend *be;                         /* borrowed */
    size_t trunk_n, heads_n;                 /* parameter counts */
    int n;                                   /* present targets = rows */
    int order[HN_T];                         /* row -> target, grouped by shape */
    int s_off[HN_SHAPES], s_n[HN_SHAPES];    /* row block of each shape */
    void *wmem;                              /* device: every weight below */
    eng_tensor w_in, b_in;                   /* [H, d], [H] */
    eng_tensor ln_g, ln_b;                   /* [H] */
    eng_tensor w_mix, b_mix;                 /* [H, H], [H] */
    eng_tensor pe;                           /* [n, H]: E_type[type(t)] + E_layer[t] per row */
    eng_tensor wa[HN_SHAPES], ba[HN_SHAPES]; /* [r*in, H], [r*in] */
    eng_tensor wb[HN_SHAPES], bb[HN_SHAPES]; /* [out*r, H], [out*r] */
    eng_ctx ctx;                             /* workspace, planned at load */
    float *stage;                            /* host [max over shapes of s_n * max(r*in, out*r)] */
};

/* Forward for one embedding; in measure mode only plans the workspace.
 * A/B may be NULL when measuring. */
static int hn__forward(hn_hypernet *h, const float *emb, float *const *A, float *const *B)
{
    eng_ctx *ctx = &h->ctx;
    const int64_t H = h->cfg.hidden, D = h->cfg.text_dim, R = h->cfg.rank;
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor e = eng_new2(ctx, 1, D); /* [1, d] */
    if (!ctx->measure && !ctx->status) {
        int rc = eng_backend_upload(h->be, e.data, emb, (size_t)D);
        if (rc)
            eng_ctx_fail(ctx, rc);
    }
    eng_tensor z = eng_new2(ctx, 1, H); /* [1, H] */
    eng_linear(ctx, &z, &e, &h->w_in, &h->b_in, ENG_ACT_GELU, NULL);
    eng_layernorm(ctx, &z, &z, NULL, &h->ln_g, &h->ln_b, HN_LN_EPS);
    eng_tensor x = eng_new2(ctx, h->n, H); /* [n, H]: z + embeddings, z broadcast per row */
    eng_add(ctx, &x, &h->pe, &z);
    eng_tensor hh = eng_new2(ctx, h->n, H); /* [n, H] */
    eng_linear(ctx, &hh, &x, &h->w_mix, &h->b_mix, ENG_ACT_GELU, NULL);
    eng_tensor ya[HN_SHAPES], yb[HN_SHAPES];
    memset(ya, 0, sizeof ya);
    memset(yb, 0, sizeof yb);
    for (int s = 0; s < HN_SHAPES; s++) {
        if (!h->s_n[s])
            continue;
        const int64_t O = hn__shapes[s][0], I = hn__shapes[s][1];
        eng_tensor hs = eng_rows(hh, h->s_off[s], h->s_n[s]); /* [n_s, H] */
        ya[s] = eng_new2(ctx, h->s_n[s], R * I);              /* [n_s, r*in] */
        yb[s] = eng_new2(ctx, h->s_n[s], O * R);              /* [n_s, out*r] */
        eng_linear(ctx, &ya[s], &hs, &h->wa[s], &h->ba[s], ENG_ACT_NONE, NULL);
        eng_linear(ctx, &yb[s], &hs, &h->wb[s], &h->bb[s], ENG_ACT_NONE, NULL);
    }
    int rc = eng_ctx_status(ctx);
    if (!ctx->measure && !rc)
        rc = eng_backend_sync(h->be);
    for (int s = 0; s < HN_SHAPES && !ctx->measure && !rc; s++) {
        if (!h->s_n[s])
            continue;
        const size_t O = (size_t)hn__shapes[s][0], I = (size_t)hn__shapes[s][1];
        const size_t an = (size_t)R * I, bn = O * (size_t)R;
        if ((rc = eng_backend_download(h->be, h->stage, ya[s].data, h->s_n[s] * an)))
            break;
        for (int j = 0; j < h->s_n[s]; j++)
            memcpy(A[h->order[h->s_off[s] + j]], h->stage + j * an, an * sizeof(float));
        if ((rc = eng_backend_download(h->be, h->stage, yb[s].data, h->s_n[s] * bn)))
            break;
        for (int j = 0; j < h->s_n[s]; j++)
            memcpy(B[h->order[h->s_off[s] + j]], h->stage + j * bn, bn * sizeof(float));
    }
    eng_ctx_release(ctx, mark);
    /* The sticky error belongs to this call only. */
    ctx->status = 0;
    return rc;
}

/* Contract: hn_hypernet_create, with the content id given (already
 * computed from p by the caller) or, when id is NULL, computed here. */
static int hn__create(hn_hypernet **out, const hn_params *p, const char *version, const char *id,
                      eng_backend *be)
{
    *out = NULL;
    if (!p || !be)
        return eng_error(ENG_EINVAL, "hn_hypernet_create: no parameters or backend");
    int rc = hn_hypernet_config_check(&p->cfg);
    if (rc)
        return rc;
    hn_hypernet *h = calloc(1, sizeof *h);
    if (!h)
        return eng_error(ENG_ENOMEM, "out of memory");
    h->cfg = p->cfg;
    h->be = be;
    snprintf(h->version, sizeof h->version, "%s", version && *version ? version : "0");
    if (id)
        snprintf(h->id, sizeof h->id, "%s", id);
    else
        hn_params_id(p, h->id);
    hn_params_count(p, &h->trunk_n, &h->heads_n);
    eng_ctx_init(&h->ctx, be, 0);

    const int64_t H = h->cfg.hidden, D = h->cfg.text_dim, R = h->cfg.rank;
    hn__tables();
    h->n = hn_rows_by_shape(&h->cfg, h->order, h->s_off, h->s_n);
    float *pe = malloc((size_t)h->n * H * sizeof(float));
    size_t stage_n = 0;
    for (int s = 0; s < HN_SHAPES; s++) {
        size_t w = (size_t)R * (size_t)(hn__shapes[s][0] > hn__shapes[s][1] ? hn__shapes[s][0]
                                                                            : hn__shapes[s][1]);
        if ((size_t)h->s_n[s] * w > stage_n)
            stage_n = (size_t)h->s_n[s] * w;
    }
    h->stage = malloc(stage_n * sizeof(float));
    if (!pe || !h->stage) {
        free(pe);
        rc = eng_error(ENG_ENOMEM, "out of memory");
        goto err;
    }
    for (int r = 0; r < h->n; r++) {
        const int t = h->order[r];
        const float *ty = p->e_type + (size_t)hn__type[t] * H, *ly = p->e_layer + (size_t)t * H;
        for (int64_t k = 0; k < H; k++)
            pe[(size_t)r * H + k] = ty[k] + ly[k];
    }

    /* Device block: each tensor 256-byte aligned; host sources alongside. */
    struct {
        eng_tensor *dst;
        const float *src;
        int64_t a, b;
    } w[8 + 4 * HN_SHAPES];
    int nw = 0;
#define HN__W(d, s, x, y) (w[nw].dst = (d), w[nw].src = (s), w[nw].a = (x), w[nw].b = (y), nw++)
    HN__W(&h->w_in, p->w_in, H, D);
    HN__W(&h->b_in, p->b_in, H, 0);
    HN__W(&h->ln_g, p->ln_g, H, 0);
    HN__W(&h->ln_b, p->ln_b, H, 0);
    HN__W(&h->w_mix, p->w_mix, H, H);
    HN__W(&h->b_mix, p->b_mix, H, 0);
    HN__W(&h->pe, pe, h->n, H);
    for (int s = 0; s < HN_SHAPES; s++) {
        if (!h->s_n[s])
            continue;
        const int64_t O = hn__shapes[s][0], I = hn__shapes[s][1];
        HN__W(&h->wa[s], p->wa[s], R * I, H);
        HN__W(&h->ba[s], p->ba[s], R * I, 0);
        HN__W(&h->wb[s], p->wb[s], O * R, H);
        HN__W(&h->bb[s], p->bb[s], O * R, 0);
    }
#undef HN__W
    const size_t esz = eng_dtype_size(eng_backend_dtype(be));
    size_t bytes = 0;
    for (int i = 0; i < nw; i++)
        bytes += ((size_t)w[i].a * (size_t)(w[i].b ? w[i].b : 1) * esz + HN_ALIGN - 1) &
                 ~(size_t)(HN_ALIGN - 1);
    h->wmem = eng_backend_alloc(be, bytes);
    if (!h->wmem) {
        free(pe);
        rc = eng_error(ENG_ENOMEM, "cannot allocate %zu MiB for the hypernetwork on %s",
                       bytes >> 20, eng_backend_describe(be));
        goto err;
    }
    size_t off = 0;
    for (int i = 0; i < nw && !rc; i++) {
        int64_t shape[2] = {w[i].a, w[i].b};
        *w[i].dst = eng_view((uint8_t *)h->wmem + off, eng_backend_dtype(be),
                             eng_backend_device(be), w[i].b ? 2 : 1, shape);
        size_t numel = (size_t)eng_numel(w[i].dst);
        rc = eng_backend_upload(be, w[i].dst->data, w[i].src, numel);
        off += (numel * esz + HN_ALIGN - 1) & ~(size_t)(HN_ALIGN - 1);
    }
    free(pe);
    if (rc)
        goto err;
    if ((rc = hn__forward(h, NULL, NULL, NULL)) || (rc = eng_ctx_commit(&h->ctx)))
        goto err;
    *out = h;
    return 0;
err:
    hn_hypernet_destroy(h);
    return rc;
}

int hn_hypernet_create(hn_hypernet **out, const hn_params *p, const char *version, eng_backend *be)
{
    return hn__create(out, p, version, NULL, be);
}

int hn_hypernet_create_id(hn_hypernet **out, const hn_params *p, const char *version,
                          const char *id, eng_backend *be)
{
    if (!id || strlen(id) != HN_ID_LEN)
        return eng_error(ENG_EINVAL, "hn_hypernet_create_id: not a content id");
    return hn__create(out, p, version, id, be);
}

int hn_hypernet_load(hn_hypernet **out, const char *path, eng_backend *be)
{
    *out = NULL;
    hn_params *p = NULL;
    char version[HN_NAME_MAX];
    int rc = hn_params_read(&p, path, version);
    if (!rc)
        rc = hn_hypernet_create(out, p, version, be);
    hn_params_destroy(p);
    return rc;
}

int hn_hypernet_init(const char *path, const hn_hypernet_config *cfg, uint64_t seed, int random)
{
    hn_params *p = NULL;
    int rc = hn_params_create(&p, cfg);
    if (rc)
        return rc;
    hn_params_init(p, seed, random);
    rc = hn_params_write(p, path, "0", NULL);
    hn_params_destroy(p);
    return rc;
}

void hn_hypernet_destroy(hn_hypernet *h)
{
    if (!h)
        return;
    eng_ctx_free(&h->ctx);
    if (h->wmem)
        eng_backend_free(h->be, h->wmem);
    free(h->stage);
    free(h);
}

const char *hn_hypernet_id(const hn_hypernet *h) { return h->id; }
const char *hn_hypernet_version(const hn_hypernet *h) { return h->version; }
const hn_hypernet_config *hn_hypernet_get_config(const hn_hypernet *h) { return &h->cfg; }
int hn_hypernet_rank(const hn_hypernet *h) { return h->cfg.rank; }
float hn_hypernet_alpha(const hn_hypernet *h) { return h->cfg.alpha; }
int hn_hypernet_text_dim(const hn_hypernet *h) { return h->cfg.text_dim; }
const char *hn_hypernet_text_model(const hn_hypernet *h) { return h->cfg.text_model; }

void hn_hypernet_count(const hn_hypernet *h, size_t *trunk, size_t *heads)
{
    if (trunk)
        *trunk = h->trunk_n;
    if (heads)
        *heads = h->heads_n;
}

size_t hn_factor_size(const hn_hypernet_config *cfg, int t, size_t *a_n, size_t *b_n)
{
    size_t a = 0, b = 0;
    if (t >= 0 && t < HN_T && cfg->present[t]) {
        const eng_sam_lora_target *tt = eng_sam_lora_targets();
        a = (size_t)cfg->rank * (size_t)tt[t].in;
        b = (size_t)tt[t].out * (size_t)cfg->rank;
    }
    if (a_n)
        *a_n = a;
    if (b_n)
        *b_n = b;
    return a + b;
}

size_t hn_hypernet_factor_size(const hn_hypernet *h, int t, size_t *a_n, size_t *b_n)
{
    return hn_factor_size(&h->cfg, t, a_n, b_n);
}

int hn_rows_by_shape(const hn_hypernet_config *cfg, int order[ENG_SAM_LORA_TARGETS],
                     int s_off[HN_SHAPES], int s_n[HN_SHAPES])
{
    hn__tables();
    int n = 0;
    for (int s = 0; s < HN_SHAPES; s++) {
        s_off[s] = n;
        for (int t = 0; t < HN_T; t++)
            if (cfg->present[t] && hn__shape_of[t] == s)
                order[n++] = t;
        s_n[s] = n - s_off[s];
    }
    return n;
}

int hn_hypernet_generate(hn_hypernet *h, const float *task_emb, float *const *A, float *const *B)
{
    if (!h || !task_emb || !A || !B)
        return eng_error(ENG_EINVAL, "hn_hypernet_generate: NULL argument");
    for (int i = 0; i < h->cfg.text_dim; i++)
        if (!isfinite(task_emb[i]))
            return eng_error(ENG_EINVAL, "task embedding element %d is not finite", i);
    for (int r = 0; r < h->n; r++)
        if (!A[h->order[r]] || !B[h->order[r]])
            return eng_error(ENG_EINVAL, "hn_hypernet_generate: no buffer for target %s",
                             eng_sam_lora_targets()[h->order[r]].name);
    return hn__forward(h, task_emb, A, B);
}

/* ------------------------------------------------------------------ */
/* text encoder matching                                                */

void hn_hypernet_text_name(const hn_text *t, char *out, size_t cap)
{
    if (!hn_text_wordpiece(t)) {
        snprintf(out, cap, "hashed-%d", hn_text_dim(t));
        return;
    }
    /* hn_text_describe: "<folder name> (bert, ...)" */
    const char *d = hn_text_describe(t), *p = strstr(d, " (bert");
    size_t n = p ? (size_t)(p - d) : strlen(d);
    if (n >= cap)
        n = cap ? cap - 1 : 0;
    if (cap) {
        memcpy(out, d, n);
        out[n] = '\0';
    }
}

int hn_hypernet_check_text(const hn_hypernet *h, const hn_text *t)
{
    return hn_config_check_text(&h->cfg, t);
}

int hn_config_check_text(const hn_hypernet_config *cfg, const hn_text *t)
{
    char name[HN_NAME_MAX + 64];
    hn_hypernet_text_name(t, name, sizeof name);
    if (hn_text_dim(t) != cfg->text_dim)
        return eng_error(ENG_EINVAL,
                         "the hypernetwork takes %d-d embeddings from %s, but the "
                         "text encoder %s gives %d-d",
                         cfg->text_dim, cfg->text_model, name, hn_text_dim(t));
    if (strcasecmp(name, cfg->text_model))
        return eng_error(ENG_EINVAL,
                         "the hypernetwork was built for text model '%s', not '%s' "
                         "(adapters from another encoder would be meaningless)",
                         cfg->text_model, name);
    return 0;
}

int hn_hypernet_open_text(const hn_hypernet *h, const char *spec, eng_backend *be, hn_text **out)
{
    return hn_config_open_text(&h->cfg, spec, be, out);
}

int hn_config_open_text(const hn_hypernet_config *cfg, const char *spec, eng_backend *be,
                        hn_text **out)
{
    *out = NULL;
    int rc = hn_text_open(out, spec && *spec ? spec : cfg->text_model, cfg->text_dim, be, 1);
    if (rc)
        return rc;
    if ((rc = hn_config_check_text(cfg, *out))) {
        hn_text_destroy(*out);
        *out = NULL;
    }
    return rc;
}
