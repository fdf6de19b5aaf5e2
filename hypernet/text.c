/*
 * hypernet/text.c: the task-text encoder (see text.h): a BERT encoder on the
 * engine's ops, pooled as sentence-transformers pools all-MiniLM-L6-v2, and
 * the hashed n-gram fallback.
 *
 * Dimensions, fixed per model:
 *   H  hidden size (384 for MiniLM-L6)    NH heads, D = H / NH per head
 *   I  intermediate (MLP) size            L  layers
 *   V  vocabulary rows                    P  max_position_embeddings
 * and per call: B texts in a batch, T tokens each (the batch's longest).
 *
 * The BERT layer is post-LN (Devlin et al.; Hugging Face's BertLayer):
 *   x = LN(x + attn(x) Wo^T + bo)          attn: softmax(q k^T / sqrt(D) + mask) v
 *   x = LN(x + gelu(x W1^T + b1) W2^T + b2)
 * with GELU the exact (erf) one. The embedding sum (word + position + token
 * type 0) is gathered on the host and uploaded; everything after it runs as
 * engine ops, so the same code serves the CPU and CUDA backends. The last
 * hidden state comes back to the host for mean pooling and the L2 norm (a
 * few KB per text).
 */
#include "text.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "wordpiece_unicode.h"

/* Bounds on what a config.json may ask for: generous for BERT-family
 * encoders (bert-large is H 1024, L 24, I 4096, P 512, V 30522), small enough
 * that sizes cannot overflow the engine's int dimensions. */
#define HN_MAX_HIDDEN 8192
#define HN_MAX_LAYERS 128
#define HN_MAX_INTER  65536
#define HN_MAX_POS    8192
#define HN_MAX_VOCAB  (1 << 22)
#define HN_MAX_TYPES  1024
#define HN_MAX_PARAMS (1LL << 30) /* floats: 4 GiB of fp32 weights */
#define HN_MAX_BATCH  1024
#define HN_ALIGN      256 /* bytes between weights in the device block */

enum { HN_TEXT_BERT = 1, HN_TEXT_HASHED = 2 };

/* One encoder layer's weights: views into the device block. */
typedef struct hn__bert_layer {
    eng_tensor wqkv, bqkv;   /* [3H, H], [3H]: query, key, value rows stacked */
    eng_tensor wo, bo;       /* [H, H], [H]: attention.output.dense */
    eng_tensor ln1_g, ln1_b; /* [H]: attention.output.LayerNorm */
    eng_tensor w1, b1;       /* [I, H], [I]: intermediate.dense */
    eng_tensor w2, b2;       /* [H, I], [H]: output.dense */
    eng_tensor ln2_g, ln2_b; /* [H]: output.LayerNorm */
} hn__bert_layer;

struct hn_text {
    int kind;       /* HN_TEXT_BERT or HN_TEXT_HASHED */
    int dim;        /* embedding width: H */
    char desc[192]; /* hn_text_describe() */

    /* BERT only from here on. */
    hn_wordpiece *wp;
    eng_backend *be; /* borrowed */
    int layers, heads, inter, vocab, max_pos;
    int max_len;                   /* longest sequence taken: P, or sentence-transformers' cap */
    int max_batch;                 /* texts per forward: the workspace is planned for it */
    float eps;                     /* LayerNorm epsilon */
    eng_act act;                   /* hidden_act: GELU (erf) or ReLU */
    float *word_emb;               /* host [V, H] */
    float *pos_emb;                /* host [P, H] */
    float *type_emb;               /* host [H]: token type 0 (all tasam's texts are one segment) */
    void *wmem;                    /* device: every weight below, one allocation */
    eng_tensor emb_ln_g, emb_ln_b; /* [H]: embeddings.LayerNorm */
    hn__bert_layer *layer;         /* [L] */
    eng_ctx ctx;                   /* activation workspace, planned at load */
    float *x_host;                 /* [max_batch * max_len, H]: embeddings up, hidden down */
    float *kb_host;                /* [max_batch * max_len]: additive key mask */
    int32_t *ids, *mask;           /* [max_batch * max_len]: tokens of the batch */
    int *ntok;                     /* [max_batch]: real tokens per text */
    double *pool;                  /* [H]: pooling accumulator */
};

/* ---- config ---- */

static int hn__cfg_int(json_t *root, const char *path, const char *key, long long def, long long lo,
                       long long hi, int *out)
{
    json_t *v = json_object_get(root, key);
    long long x;
    if (!v) {
        if (def < 0)
            return eng_error(ENG_EFORMAT, "%s: no \"%s\"", path, key);
        x = def;
    } else if (!json_is_integer(v)) {
        return eng_error(ENG_EFORMAT, "%s: \"%s\" is not an integer", path, key);
    } else {
        x = json_integer_value(v);
    }
    if (x < lo || x > hi)
        return eng_error(x < lo ? ENG_EFORMAT : ENG_ELIMIT,
                         "%s: \"%s\" is %lld, outside the supported %lld..%lld", path, key, x, lo,
                         hi);
    *out = (int)x;
    return 0;
}

/* A string field that, when present, must be one of the NULL-terminated
 * `ok` values; *out is its index (0 when absent). */
static int hn__cfg_enum(json_t *root, const char *path, const char *key, const char *const *ok,
                        int *out)
{
    json_t *v = json_object_get(root, key);
    *out = 0;
    if (!v)
        return 0;
    if (!json_is_string(v))
        return eng_error(ENG_EFORMAT, "%s: \"%s\" is not a string", path, key);
    for (int i = 0; ok[i]; i++)
        if (strcmp(json_string_value(v), ok[i]) == 0) {
            *out = i;
            return 0;
        }
    return eng_error(ENG_EUNSUP, "%s: \"%s\": \"%s\" is not supported (%s%s%s)", path, key,
                     json_string_value(v), ok[0], ok[1] ? " or " : "", ok[1] ? ok[1] : "");
}

typedef struct {
    int hidden, layers, heads, inter, max_pos, vocab, types;
    float eps;
    eng_act act;
} hn__bert_cfg;

static int hn__read_config(const char *path, hn__bert_cfg *c)
{
    json_error_t jerr;
    struct stat st;
    if (stat(path, &st) != 0)
        return eng_error(ENG_ENOTFOUND,
                         "%s: missing (a Hugging Face model folder has "
                         "config.json, vocab.txt and model.safetensors)",
                         path);
    if (st.st_size > (1 << 20))
        return eng_error(ENG_ELIMIT, "%s: %lld bytes, too large for a config", path,
                         (long long)st.st_size);
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return eng_error(ENG_EFORMAT, "%s:%d: %s", path, jerr.line, jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = eng_error(ENG_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }
    static const char *const model_types[] = {"bert", NULL};
    static const char *const acts[] = {"gelu", "relu", NULL};
    static const char *const pos_types[] = {"absolute", NULL};
    int mt, act, pt;
    if ((rc = hn__cfg_enum(root, path, "model_type", model_types, &mt)) ||
        (rc = hn__cfg_enum(root, path, "hidden_act", acts, &act)) ||
        (rc = hn__cfg_enum(root, path, "position_embedding_type", pos_types, &pt)) ||
        (rc = hn__cfg_int(root, path, "hidden_size", -1, 1, HN_MAX_HIDDEN, &c->hidden)) ||
        (rc = hn__cfg_int(root, path, "num_hidden_layers", -1, 1, HN_MAX_LAYERS, &c->layers)) ||
        (rc = hn__cfg_int(root, path, "num_attention_heads", -1, 1, HN_MAX_HIDDEN, &c->heads)) ||
        (rc = hn__cfg_int(root, path, "intermediate_size", -1, 1, HN_MAX_INTER, &c->inter)) ||
        (rc = hn__cfg_int(root, path, "max_position_embeddings", -1, 2, HN_MAX_POS, &c->max_pos)) ||
        (rc = hn__cfg_int(root, path, "vocab_size", -1, 1, HN_MAX_VOCAB, &c->vocab)) ||
        (rc = hn__cfg_int(root, path, "type_vocab_size", 2, 1, HN_MAX_TYPES, &c->types)))
        goto done;
    c->act = act == 0 ? ENG_ACT_GELU : ENG_ACT_RELU;
    if (c->hidden % c->heads) {
        rc = eng_error(ENG_EFORMAT,
                       "%s: hidden_size %d is not a multiple of "
                       "num_attention_heads %d",
                       path, c->hidden, c->heads);
        goto done;
    }
    json_t *e = json_object_get(root, "layer_norm_eps");
    double eps = 1e-12; /* BertConfig's default */
    if (e && !json_is_number(e)) {
        rc = eng_error(ENG_EFORMAT, "%s: \"layer_norm_eps\" is not a number", path);
        goto done;
    }
    if (e)
        eps = json_number_value(e);
    if (!(eps > 0 && eps < 1)) {
        rc = eng_error(ENG_EFORMAT, "%s: \"layer_norm_eps\" %g is not in (0, 1)", path, eps);
        goto done;
    }
    c->eps = (float)eps;
    long long H = c->hidden, I = c->inter;
    long long params = ((long long)c->vocab + c->max_pos + c->types) * H +
                       c->layers * (4 * H * H + 2 * H * I + 9 * H + I) + 2 * H;
    if (params > HN_MAX_PARAMS)
        rc = eng_error(ENG_ELIMIT, "%s: %lld parameters, over the limit of %lld", path, params,
                       HN_MAX_PARAMS);
done:
    json_decref(root);
    return rc;
}

/* sentence_bert_config.json's max_seq_length, or 0 when the file is absent. */
static int hn__read_st_config(const char *path, int *max_seq)
{
    json_error_t jerr;
    struct stat st;
    *max_seq = 0;
    if (stat(path, &st) != 0)
        return 0;
    if (st.st_size > (1 << 20))
        return eng_error(ENG_ELIMIT, "%s: too large", path);
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return eng_error(ENG_EFORMAT, "%s:%d: %s", path, jerr.line, jerr.text);
    int rc = 0;
    if (!json_is_object(root))
        rc = eng_error(ENG_EFORMAT, "%s: not a JSON object", path);
    else if (json_object_get(root, "max_seq_length"))
        rc = hn__cfg_int(root, path, "max_seq_length", -1, 2, HN_MAX_POS, max_seq);
    json_decref(root);
    return rc;
}

/* ---- weights ---- */

/* Planned place of one weight in the device block and in the host staging
 * buffer. */
typedef struct {
    eng_tensor *t; /* the view to fill in once the block exists */
    int ndim;
    int64_t shape[2];
    size_t off;  /* element offset in the staging buffer */
    size_t boff; /* byte offset in the device block */
} hn__slot;

typedef struct {
    hn__slot *s;
    int n, cap;
    size_t floats, bytes;
    size_t esize; /* bytes per element in the backend's storage */
} hn__plan;

static int hn__plan_add(hn__plan *p, eng_tensor *t, int64_t a, int64_t b)
{
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 64;
        hn__slot *ns = realloc(p->s, (size_t)cap * sizeof *ns);
        if (!ns)
            return eng_error(ENG_ENOMEM, "out of memory");
        p->s = ns;
        p->cap = cap;
    }
    hn__slot *s = &p->s[p->n++];
    s->t = t;
    s->ndim = b ? 2 : 1;
    s->shape[0] = a;
    s->shape[1] = b;
    s->off = p->floats;
    s->boff = p->bytes;
    size_t numel = (size_t)a * (size_t)(b ? b : 1);
    p->floats += numel;
    p->bytes += (numel * p->esize + HN_ALIGN - 1) & ~(size_t)(HN_ALIGN - 1);
    return 0;
}

/* Load `name` (with the export's prefix) of the given shape into dst. */
static int hn__load(const eng_ckpt *ck, const char *prefix, const char *name, int ndim,
                    const int64_t *shape, float *dst)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return eng_ckpt_load_f32(ck, full, ndim, shape, dst);
}

static int hn__load_weights(hn_text *t, const eng_ckpt *ck, const char *prefix, int types)
{
    const int64_t H = t->dim, I = t->inter, L = t->layers;
    int rc;
    t->word_emb = malloc((size_t)t->vocab * H * sizeof(float));
    t->pos_emb = malloc((size_t)t->max_pos * H * sizeof(float));
    float *types_emb = malloc((size_t)types * H * sizeof(float));
    t->type_emb = malloc((size_t)H * sizeof(float));
    t->layer = calloc((size_t)L, sizeof *t->layer);
    if (!t->word_emb || !t->pos_emb || !types_emb || !t->type_emb || !t->layer) {
        free(types_emb);
        return eng_error(ENG_ENOMEM, "out of memory for the text encoder's embeddings");
    }
    if ((rc = hn__load(ck, prefix, "embeddings.word_embeddings.weight", 2, (int64_t[]){t->vocab, H},
                       t->word_emb)) ||
        (rc = hn__load(ck, prefix, "embeddings.position_embeddings.weight", 2,
                       (int64_t[]){t->max_pos, H}, t->pos_emb)) ||
        (rc = hn__load(ck, prefix, "embeddings.token_type_embeddings.weight", 2,
                       (int64_t[]){types, H}, types_emb))) {
        free(types_emb);
        return rc;
    }
    memcpy(t->type_emb, types_emb, (size_t)H * sizeof(float));
    free(types_emb);

    /* Plan the device block, then stage every weight in host f32 and upload
     * them into one allocation. */
    hn__plan p = {0};
    p.esize = eng_dtype_size(eng_backend_dtype(t->be));
    rc = hn__plan_add(&p, &t->emb_ln_g, H, 0);
    rc = rc ? rc : hn__plan_add(&p, &t->emb_ln_b, H, 0);
    for (int l = 0; l < L && !rc; l++) {
        hn__bert_layer *y = &t->layer[l];
        if ((rc = hn__plan_add(&p, &y->wqkv, 3 * H, H)) ||
            (rc = hn__plan_add(&p, &y->bqkv, 3 * H, 0)) || (rc = hn__plan_add(&p, &y->wo, H, H)) ||
            (rc = hn__plan_add(&p, &y->bo, H, 0)) || (rc = hn__plan_add(&p, &y->ln1_g, H, 0)) ||
            (rc = hn__plan_add(&p, &y->ln1_b, H, 0)) || (rc = hn__plan_add(&p, &y->w1, I, H)) ||
            (rc = hn__plan_add(&p, &y->b1, I, 0)) || (rc = hn__plan_add(&p, &y->w2, H, I)) ||
            (rc = hn__plan_add(&p, &y->b2, H, 0)) || (rc = hn__plan_add(&p, &y->ln2_g, H, 0)) ||
            (rc = hn__plan_add(&p, &y->ln2_b, H, 0)))
            break;
    }
    float *stage = rc ? NULL : malloc(p.floats * sizeof(float));
    if (!rc && !stage)
        rc = eng_error(ENG_ENOMEM, "out of memory staging %zu MiB of text encoder weights",
                       (p.floats * sizeof(float)) >> 20);

    /* Slots were planned in this order: emb LN g, b; then per layer the 12
     * above. q, k and v go into the three row blocks of wqkv/bqkv. */
    int si = 2;
#define HN__AT(i) (stage + p.s[(i)].off)
    if (!rc)
        rc = hn__load(ck, prefix, "embeddings.LayerNorm.weight", 1, (int64_t[]){H}, HN__AT(0));
    if (!rc)
        rc = hn__load(ck, prefix, "embeddings.LayerNorm.bias", 1, (int64_t[]){H}, HN__AT(1));
    for (int l = 0; l < L && !rc; l++, si += 12) {
        char n[160];
        static const char *const qkv[3] = {"query", "key", "value"};
        for (int j = 0; j < 3 && !rc; j++) {
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.weight", l, qkv[j]);
            rc = hn__load(ck, prefix, n, 2, (int64_t[]){H, H}, HN__AT(si) + j * H * H);
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.bias", l, qkv[j]);
            if (!rc)
                rc = hn__load(ck, prefix, n, 1, (int64_t[]){H}, HN__AT(si + 1) + j * H);
        }
        static const struct {
            const char *name;
            int rows_is_i; /* first dim I instead of H */
            int cols;      /* 0: a vector; 'H' or 'I': a matrix with that many columns */
        } rest[10] = {
            {"attention.output.dense.weight", 0, 'H'},
            {"attention.output.dense.bias", 0, 0},
            {"attention.output.LayerNorm.weight", 0, 0},
            {"attention.output.LayerNorm.bias", 0, 0},
            {"intermediate.dense.weight", 1, 'H'},
            {"intermediate.dense.bias", 1, 0},
            {"output.dense.weight", 0, 'I'},
            {"output.dense.bias", 0, 0},
            {"output.LayerNorm.weight", 0, 0},
            {"output.LayerNorm.bias", 0, 0},
        };
        for (int j = 0; j < 10 && !rc; j++) {
            int64_t rows = rest[j].rows_is_i ? I : H;
            int64_t cols = rest[j].cols == 'H' ? H : I;
            snprintf(n, sizeof n, "encoder.layer.%d.%s", l, rest[j].name);
            float *dst = HN__AT(si + 2 + j);
            rc = rest[j].cols ? hn__load(ck, prefix, n, 2, (int64_t[]){rows, cols}, dst)
                              : hn__load(ck, prefix, n, 1, (int64_t[]){rows}, dst);
        }
    }
#undef HN__AT

    if (!rc) {
        t->wmem = eng_backend_alloc(t->be, p.bytes);
        if (!t->wmem)
            rc = eng_error(ENG_ENOMEM,
                           "cannot allocate %zu MiB for the text encoder's weights "
                           "on %s",
                           p.bytes >> 20, eng_backend_describe(t->be));
    }
    for (int i = 0; i < p.n && !rc; i++) {
        hn__slot *s = &p.s[i];
        void *dst = (uint8_t *)t->wmem + s->boff;
        *s->t =
            eng_view(dst, eng_backend_dtype(t->be), eng_backend_device(t->be), s->ndim, s->shape);
        rc = eng_backend_upload(t->be, dst, stage + s->off, (size_t)eng_numel(s->t));
    }
    free(stage);
    free(p.s);
    return rc;
}

/* ---- forward ---- */

/* Columns [c0, ...) of a row-major tensor: the same tensor with its data
 * moved by c0 elements (ops take the row stride separately). In measure mode
 * data is NULL and stays so. */
static eng_tensor hn__from_col(eng_tensor t, int64_t c0)
{
    if (t.data)
        t.data = (uint8_t *)t.data + (size_t)c0 * eng_dtype_size(t.dtype);
    return t;
}

/* Run the encoder over the batch in t->ids/t->mask ([B, T]); the last hidden
 * state lands in t->x_host [B*T, H]. In measure mode only plans memory. */
static int hn__forward(hn_text *t, int B, int T)
{
    eng_ctx *ctx = &t->ctx;
    const int H = t->dim, NH = t->heads, D = H / NH;
    const int64_t M = (int64_t)B * T;
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor x = eng_new2(ctx, M, H);  /* [B*T, H] hidden state, updated in place */
    eng_tensor kb = eng_new2(ctx, B, T); /* [B, T] additive key mask */
    if (!ctx->measure && !ctx->status) {
        for (int64_t r = 0; r < M; r++) {
            const int pos = (int)(r % T);
            const float *w = t->word_emb + (size_t)t->ids[r] * H;
            const float *p = t->pos_emb + (size_t)pos * H;
            float *o = t->x_host + r * H;
            for (int h = 0; h < H; h++)
                o[h] = w[h] + p[h] + t->type_emb[h];
            /* 0 keeps a key; -1e4 removes it (exp underflows to exactly 0 in
             * fp32, as Hugging Face's finfo.min does) and stays finite in
             * fp16 storage. */
            t->kb_host[r] = t->mask[r] ? 0.0f : -1e4f;
        }
        int rc = eng_backend_upload(t->be, x.data, t->x_host, (size_t)M * H);
        if (!rc)
            rc = eng_backend_upload(t->be, kb.data, t->kb_host, (size_t)M);
        if (rc)
            eng_ctx_fail(ctx, rc);
    }
    eng_layernorm(ctx, &x, &x, NULL, &t->emb_ln_g, &t->emb_ln_b, t->eps);
    for (int l = 0; l < t->layers; l++) {
        const hn__bert_layer *y = &t->layer[l];
        size_t lm = eng_ctx_mark(ctx);
        eng_tensor qkv = eng_new2(ctx, M, 3 * H); /* [B*T, 3H]: q | k | v per token */
        eng_linear(ctx, &qkv, &x, &y->wqkv, &y->bqkv, ENG_ACT_NONE, NULL);
        eng_tensor q = qkv, k = hn__from_col(qkv, H), v = hn__from_col(qkv, 2 * H);
        eng_tensor att = eng_new2(ctx, M, H); /* [B*T, H] heads side by side */
        eng_attn a = {.B = B,
                      .H = NH,
                      .Tq = T,
                      .Tk = T,
                      .D = D,
                      .q_rs = 3 * H,
                      .kv_rs = 3 * H,
                      .scale = 1.0f / sqrtf((float)D),
                      .relpos = NULL,
                      .key_bias = &kb};
        eng_attention(ctx, &att, &q, &k, &v, &a);
        eng_tensor h1 = eng_new2(ctx, M, H); /* [B*T, H] */
        eng_linear(ctx, &h1, &att, &y->wo, &y->bo, ENG_ACT_NONE, &x);
        eng_layernorm(ctx, &h1, &h1, NULL, &y->ln1_g, &y->ln1_b, t->eps);
        eng_tensor mid = eng_new2(ctx, M, t->inter); /* [B*T, I] */
        eng_linear(ctx, &mid, &h1, &y->w1, &y->b1, t->act, NULL);
        /* x is dead once h1 exists: the block's output goes back into it. */
        eng_linear(ctx, &x, &mid, &y->w2, &y->b2, ENG_ACT_NONE, &h1);
        eng_layernorm(ctx, &x, &x, NULL, &y->ln2_g, &y->ln2_b, t->eps);
        eng_ctx_release(ctx, lm);
    }
    int rc = eng_ctx_status(ctx);
    if (!ctx->measure && !rc) {
        rc = eng_backend_sync(t->be);
        if (!rc)
            rc = eng_backend_download(t->be, t->x_host, x.data, (size_t)M * H);
    }
    eng_ctx_release(ctx, mark);
    /* The sticky error belongs to this call only: the next one starts clean. */
    ctx->status = 0;
    return rc;
}

/* ---- load / destroy ---- */

static void hn__basename(const char *dir, char *out, size_t cap)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t s = n;
    while (s > 0 && dir[s - 1] != '/')
        s--;
    size_t len = n - s < cap - 1 ? n - s : cap - 1;
    memcpy(out, dir + s, len);
    out[len] = '\0';
    if (!out[0] || strcmp(out, ".") == 0)
        snprintf(out, cap, "text model");
}

int hn_text_load(hn_text **out, const char *dir, eng_backend *be, int max_batch)
{
    *out = NULL;
    if (!dir || !be)
        return eng_error(ENG_EINVAL, "hn_text_load: no folder or backend");
    if (max_batch < 1 || max_batch > HN_MAX_BATCH)
        return eng_error(ENG_EINVAL, "text encoder max_batch %d outside 1..%d", max_batch,
                         HN_MAX_BATCH);
    char path[4096];
    hn__bert_cfg cfg;
    int rc, st_max = 0;
    if (strlen(dir) > sizeof path - 64)
        return eng_error(ENG_EINVAL, "text model folder name too long");
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = hn__read_config(path, &cfg)))
        return rc;
    snprintf(path, sizeof path, "%s/sentence_bert_config.json", dir);
    if ((rc = hn__read_st_config(path, &st_max)))
        return rc;

    hn_text *t = calloc(1, sizeof *t);
    if (!t)
        return eng_error(ENG_ENOMEM, "out of memory");
    t->kind = HN_TEXT_BERT;
    t->be = be;
    t->dim = cfg.hidden;
    t->layers = cfg.layers;
    t->heads = cfg.heads;
    t->inter = cfg.inter;
    t->vocab = cfg.vocab;
    t->max_pos = cfg.max_pos;
    t->max_len = st_max && st_max < cfg.max_pos ? st_max : cfg.max_pos;
    t->max_batch = max_batch;
    t->eps = cfg.eps;
    t->act = cfg.act;
    eng_ctx_init(&t->ctx, be, 0);

    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    if ((rc = hn_wordpiece_load(&t->wp, path)))
        goto err;
    if (hn_wordpiece_size(t->wp) > cfg.vocab) {
        rc = eng_error(ENG_ESHAPE, "%s: %d tokens but config.json's vocab_size is %d", path,
                       hn_wordpiece_size(t->wp), cfg.vocab);
        goto err;
    }

    eng_ckpt *ck = NULL;
    struct stat st;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (stat(path, &st) != 0) {
        char alt[4096];
        snprintf(alt, sizeof alt, "%s/pytorch_model.bin", dir);
        if (stat(alt, &st) == 0)
            memcpy(path, alt, sizeof path);
    }
    if ((rc = eng_ckpt_open(&ck, path)))
        goto err;
    const char *prefix = "";
    if (!eng_ckpt_find(ck, "embeddings.word_embeddings.weight") &&
        eng_ckpt_find(ck, "bert.embeddings.word_embeddings.weight"))
        prefix = "bert.";
    rc = hn__load_weights(t, ck, prefix, cfg.types);
    eng_ckpt_close(ck);
    if (rc)
        goto err;

    /* Plan the workspace with the largest batch, then allocate it once. */
    size_t rows = (size_t)max_batch * t->max_len;
    t->x_host = malloc(rows * t->dim * sizeof(float));
    t->kb_host = malloc(rows * sizeof(float));
    t->ids = malloc(rows * sizeof(int32_t));
    t->mask = malloc(rows * sizeof(int32_t));
    t->ntok = malloc((size_t)max_batch * sizeof(int));
    t->pool = malloc((size_t)t->dim * sizeof(double));
    if (!t->x_host || !t->kb_host || !t->ids || !t->mask || !t->ntok || !t->pool) {
        rc = eng_error(ENG_ENOMEM, "out of memory for the text encoder's buffers");
        goto err;
    }
    if ((rc = hn__forward(t, max_batch, t->max_len)) || (rc = eng_ctx_commit(&t->ctx)))
        goto err;

    char name[96];
    hn__basename(dir, name, sizeof name);
    snprintf(t->desc, sizeof t->desc, "%s (bert, %d layers, %d-d)", name, t->layers, t->dim);
    *out = t;
    return 0;
err:
    hn_text_destroy(t);
    return rc;
}

void hn_text_destroy(hn_text *t)
{
    if (!t)
        return;
    if (t->kind == HN_TEXT_BERT) {
        eng_ctx_free(&t->ctx);
        if (t->wmem)
            eng_backend_free(t->be, t->wmem);
    }
    hn_wordpiece_destroy(t->wp);
    free(t->word_emb);
    free(t->pos_emb);
    free(t->type_emb);
    free(t->layer);
    free(t->x_host);
    free(t->kb_host);
    free(t->ids);
    free(t->mask);
    free(t->ntok);
    free(t->pool);
    free(t);
}

int hn_text_dim(const hn_text *t) { return t->dim; }
int hn_text_max_len(const hn_text *t) { return t->kind == HN_TEXT_BERT ? t->max_len : 0; }
const char *hn_text_describe(const hn_text *t) { return t->desc; }
const hn_wordpiece *hn_text_wordpiece(const hn_text *t) { return t->wp; }

int hn_text_tokenize(const hn_text *t, const char *s, size_t len, int max_len, int32_t *ids,
                     int32_t *mask, int *n_tokens)
{
    if (t->kind != HN_TEXT_BERT)
        return eng_error(ENG_EUNSUP, "the %s has no tokenizer", t->desc);
    if (max_len <= 0 || max_len > t->max_len)
        max_len = t->max_len;
    return hn_wordpiece_encode(t->wp, s, len, max_len, ids, mask, n_tokens);
}

/* ---- hashed fallback ---- */

/* FNV-1a over bytes, continued from h. */
static uint64_t hn__fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t hn__fnv_cps(uint64_t h, const uint32_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t b[4] = {(uint8_t)c[i], (uint8_t)(c[i] >> 8), (uint8_t)(c[i] >> 16),
                        (uint8_t)(c[i] >> 24)};
        h = hn__fnv(h, b, 4);
    }
    return h;
}

/* Add weight w, signed, to the bucket of feature hash h. FNV-1a's low bits
 * mix poorly for short keys, so the hash goes through a 64-bit finaliser
 * (splitmix64's) first. */
static void hn__bump(float *v, int dim, uint64_t h, float w)
{
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    v[h % (uint64_t)dim] += (h >> 63) ? -w : w;
}

#define HN_FNV_BASIS 14695981039346656037ull

static int hn__hashed_one(int dim, const char *s, size_t len, float *v)
{
    size_t n = 0;
    if (!s && len)
        return eng_error(ENG_EINVAL, "text is NULL");
    int rc = hn__utf8_decode(s, len, NULL, &n);
    if (rc)
        return rc;
    /* Normalised text, with one space on each side: [m + 2]. */
    uint32_t *c = malloc((n + 2) * sizeof *c);
    if (!c)
        return eng_error(ENG_ENOMEM, "out of memory hashing %zu bytes of text", len);
    hn__utf8_decode(s, len, c + 1, &n);
    size_t m = 1;
    c[0] = ' ';
    for (size_t i = 1; i <= n; i++) {
        uint32_t ch = c[i];
        unsigned f = hn__uflags(ch);
        if (f & HN__U_CTRL)
            continue;
        ch = (f & HN__U_SPACE) ? ' ' : hn__ulower_cp(ch);
        if (ch == ' ' && c[m - 1] == ' ')
            continue; /* collapse runs, drop leading space */
        c[m++] = ch;
    }
    if (c[m - 1] != ' ')
        c[m++] = ' ';
    memset(v, 0, (size_t)dim * sizeof *v);

    /* Character 3-grams over the padded text (so a short word still has its
     * own), weight 0.5. */
    for (size_t i = 0; i + 3 <= m; i++)
        hn__bump(v, dim, hn__fnv_cps(hn__fnv(HN_FNV_BASIS, "c", 1), c + i, 3), 0.5f);
    /* Words: runs of letters and digits (punctuation and spaces separate
     * them); unigrams weight 1, bigrams of neighbouring words weight 0.7. */
    size_t pw0 = 0, pw1 = 0; /* previous word [pw0, pw1), none when equal */
    int words = 0;
    for (size_t i = 0; i < m;) {
        if (c[i] == ' ' || (hn__uflags(c[i]) & HN__U_PUNCT)) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < m && c[j] != ' ' && !(hn__uflags(c[j]) & HN__U_PUNCT))
            j++;
        hn__bump(v, dim, hn__fnv_cps(hn__fnv(HN_FNV_BASIS, "w", 1), c + i, j - i), 1.0f);
        if (pw1 > pw0) {
            uint64_t h = hn__fnv_cps(hn__fnv(HN_FNV_BASIS, "b", 1), c + pw0, pw1 - pw0);
            h = hn__fnv(h, "\0\0\0\0", 4); /* word boundary */
            hn__bump(v, dim, hn__fnv_cps(h, c + i, j - i), 0.7f);
        }
        pw0 = i;
        pw1 = j;
        words++;
        i = j;
    }
    free(c);
    if (m <= 2 && words == 0)
        hn__bump(v, dim, hn__fnv(HN_FNV_BASIS, "empty", 5), 1.0f);
    double ss = 0;
    for (int i = 0; i < dim; i++)
        ss += (double)v[i] * v[i];
    if (ss == 0) /* every feature cancelled: still a unit vector */
        hn__bump(v, dim, hn__fnv(HN_FNV_BASIS, "empty", 5), 1.0f), ss = 1;
    float inv = (float)(1.0 / sqrt(ss));
    for (int i = 0; i < dim; i++)
        v[i] *= inv;
    return 0;
}

int hn_text_create_hashed(hn_text **out, int dim)
{
    *out = NULL;
    if (dim < 16 || dim > 65536)
        return eng_error(ENG_EINVAL, "hashed text embedding dim %d outside 16..65536", dim);
    hn_text *t = calloc(1, sizeof *t);
    if (!t)
        return eng_error(ENG_ENOMEM, "out of memory");
    t->kind = HN_TEXT_HASHED;
    t->dim = dim;
    snprintf(t->desc, sizeof t->desc, "hashed n-gram fallback (%d-d)", dim);
    *out = t;
    return 0;
}

int hn_text_open(hn_text **out, const char *spec, int hashed_dim, eng_backend *be, int max_batch)
{
    struct stat st;
    char path[4096];
    *out = NULL;
    if (!spec || !*spec)
        spec = HN_TEXT_DEFAULT_MODEL;
    if (!strcmp(spec, "hashed"))
        return hn_text_create_hashed(out, hashed_dim > 0 ? hashed_dim : 384);
    if (!strncmp(spec, "hashed-", 7)) {
        char *end;
        long d = strtol(spec + 7, &end, 10);
        if (end == spec + 7 || *end || d < 16 || d > 65536)
            return eng_error(ENG_EINVAL, "text model '%.100s': hashed-D needs D in 16..65536",
                             spec);
        return hn_text_create_hashed(out, (int)d);
    }
    if (stat(spec, &st) == 0 && S_ISDIR(st.st_mode))
        return hn_text_load(out, spec, be, max_batch);
    if (strchr(spec, '/'))
        return eng_error(ENG_ENOTFOUND, "text model folder %.300s does not exist", spec);
    snprintf(path, sizeof path, "%s/%.200s", HN_TEXT_MODELS_DIR, spec);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return hn_text_load(out, path, be, max_batch);
    if (!strcmp(spec, HN_TEXT_DEFAULT_MODEL))
        return eng_error(ENG_ENOTFOUND,
                         "text model '%s' not found in %s: fetch it with "
                         "deploy/fetch-text-model.sh, give its folder with --text-model DIR, or "
                         "use --text-model hashed for the built-in hashed embedding",
                         spec, path);
    return eng_error(ENG_ENOTFOUND,
                     "text model '%.200s' not found in %s: give its folder with --text-model DIR",
                     spec, path);
}

/* ---- embed ---- */

/* Prefix the current message with the text's index. */
static int hn__text_err(int rc, int i)
{
    char msg[900];
    snprintf(msg, sizeof msg, "%s", eng_last_error());
    return eng_error(rc, "text %d: %s", i, msg);
}

int hn_text_embed_debug(hn_text *t, const char *const *texts, const size_t *lens, int n,
                        int seq_len, float *out, float *hidden, int32_t *ids, int32_t *mask)
{
    if (n < 0 || (n > 0 && !texts))
        return eng_error(ENG_EINVAL, "hn_text_embed: %d texts", n);
    if (t->kind == HN_TEXT_HASHED) {
        if (hidden || ids || mask || seq_len)
            return eng_error(ENG_EUNSUP, "the %s has no tokens or hidden states", t->desc);
        for (int i = 0; i < n; i++) {
            size_t len = lens ? lens[i] : texts[i] ? strlen(texts[i]) : 0;
            int rc = hn__hashed_one(t->dim, texts[i], len, out + (size_t)i * t->dim);
            if (rc)
                return hn__text_err(rc, i);
        }
        return 0;
    }
    if (seq_len && (seq_len < 2 || seq_len > t->max_len))
        return eng_error(ENG_EINVAL, "seq_len %d outside 2..%d", seq_len, t->max_len);
    if ((hidden || ids || mask) && !seq_len)
        return eng_error(ENG_EINVAL, "hidden states and tokens need a fixed seq_len");
    const int H = t->dim, cap = seq_len ? seq_len : t->max_len;
    for (int i0 = 0; i0 < n; i0 += t->max_batch) {
        const int B = n - i0 < t->max_batch ? n - i0 : t->max_batch;
        int T = 2;
        for (int b = 0; b < B; b++) {
            const int i = i0 + b;
            size_t len = lens ? lens[i] : texts[i] ? strlen(texts[i]) : 0;
            int rc = hn_wordpiece_encode(t->wp, texts[i], len, cap, t->ids + (size_t)b * cap,
                                         t->mask + (size_t)b * cap, &t->ntok[b]);
            if (rc)
                return hn__text_err(rc, i);
            if (t->ntok[b] > T)
                T = t->ntok[b];
        }
        if (seq_len)
            T = seq_len;
        /* Rows of cap -> rows of T (T <= cap: moving forward never overlaps
         * a row not yet moved). */
        for (int b = 1; b < B && T < cap; b++) {
            memmove(t->ids + (size_t)b * T, t->ids + (size_t)b * cap, (size_t)T * sizeof(int32_t));
            memmove(t->mask + (size_t)b * T, t->mask + (size_t)b * cap,
                    (size_t)T * sizeof(int32_t));
        }
        int rc = hn__forward(t, B, T);
        if (rc)
            return rc;
        for (int b = 0; b < B; b++) {
            const size_t i = (size_t)i0 + b;
            const float *hs = t->x_host + (size_t)b * T * H; /* [T, H] */
            float *o = out + i * H;
            /* Mean over real tokens, then L2 (sentence-transformers' Pooling
             * and Normalize; F.normalize's eps 1e-12). */
            double *acc = t->pool;
            memset(acc, 0, (size_t)H * sizeof acc[0]);
            for (int p = 0; p < T; p++)
                if (t->mask[(size_t)b * T + p])
                    for (int h = 0; h < H; h++)
                        acc[h] += hs[(size_t)p * H + h];
            double ss = 0;
            for (int h = 0; h < H; h++) {
                acc[h] /= t->ntok[b];
                ss += acc[h] * acc[h];
            }
            double nrm = sqrt(ss);
            if (nrm < 1e-12)
                nrm = 1e-12;
            for (int h = 0; h < H; h++)
                o[h] = (float)(acc[h] / nrm);
            if (hidden)
                memcpy(hidden + i * T * H, hs, (size_t)T * H * sizeof(float));
            if (ids)
                memcpy(ids + i * T, t->ids + (size_t)b * T, (size_t)T * sizeof(int32_t));
            if (mask)
                memcpy(mask + i * T, t->mask + (size_t)b * T, (size_t)T * sizeof(int32_t));
        }
    }
    return 0;
}

int hn_text_embed(hn_text *t, const char *const *texts, const size_t *lens, int n, float *out)
{
    return hn_text_embed_debug(t, texts, lens, n, 0, out, NULL, NULL, NULL);
}
