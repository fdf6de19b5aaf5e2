/*
 * tests/test_ckpt.c: checkpoint reader and writer (engine/ckpt.h).
 *
 * The fixture checkpoints must agree tensor for tensor; the writer must
 * round-trip; and hostile files built here (truncations, corrupt headers,
 * crafted pickles and zips) must each be an error naming the file, never a
 * crash. Crafted .pth files are made with the small pickle and zip writers
 * below.
 */
#include <unistd.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "tests/harness.h"

/* ---- byte buffer ---- */

typedef struct tb {
    uint8_t *b;
    size_t n, cap;
} tb;

static void tb_put(tb *t, const void *p, size_t n)
{
    if (t->n + n > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->n + n)
            cap *= 2;
        t->b = realloc(t->b, cap);
        if (!t->b)
            abort(); /* test-side allocation: nothing sensible to recover */
        t->cap = cap;
    }
    if (n)
        memcpy(t->b + t->n, p, n);
    t->n += n;
}

static void tb_u8(tb *t, unsigned v)
{
    uint8_t b = (uint8_t)v;
    tb_put(t, &b, 1);
}

static void tb_le(tb *t, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        tb_u8(t, (unsigned)(v >> (8 * i)) & 0xff);
}

static void tb_str(tb *t, const char *s) { tb_put(t, s, strlen(s)); }

/* ---- pickle writer (protocol 2 opcodes as torch.save emits them) ---- */

static void pk_str(tb *t, const char *s)
{
    tb_u8(t, 'X');
    tb_le(t, strlen(s), 4);
    tb_str(t, s);
}

static void pk_int(tb *t, int64_t v)
{
    if (v >= 0 && v < 256) {
        tb_u8(t, 'K');
        tb_u8(t, (unsigned)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        tb_u8(t, 'J');
        tb_le(t, (uint64_t)v, 4);
    } else {
        tb_u8(t, 0x8a);
        tb_u8(t, 8);
        tb_le(t, (uint64_t)v, 8);
    }
}

static void pk_global(tb *t, const char *mod, const char *name)
{
    tb_u8(t, 'c');
    tb_str(t, mod);
    tb_u8(t, '\n');
    tb_str(t, name);
    tb_u8(t, '\n');
}

static void pk_ints(tb *t, int n, const int64_t *v)
{
    tb_u8(t, '(');
    for (int i = 0; i < n; i++)
        pk_int(t, v[i]);
    tb_u8(t, 't');
}

/* _rebuild_tensor_v2((storage, cls, key, 'cpu', numel), off, size, stride,
 * False, OrderedDict()) */
static void pk_tensor(tb *t, const char *cls, const char *key, int64_t numel, int64_t off, int nd,
                      const int64_t *size, const int64_t *stride)
{
    pk_global(t, "torch._utils", "_rebuild_tensor_v2");
    tb_u8(t, '(');
    tb_u8(t, '(');
    pk_str(t, "storage");
    pk_global(t, "torch", cls);
    pk_str(t, key);
    pk_str(t, "cpu");
    pk_int(t, numel);
    tb_u8(t, 't');
    tb_u8(t, 'Q');
    pk_int(t, off);
    pk_ints(t, nd, size);
    pk_ints(t, nd, stride);
    tb_u8(t, 0x89);
    pk_global(t, "collections", "OrderedDict");
    tb_u8(t, ')');
    tb_u8(t, 'R');
    tb_u8(t, 't');
    tb_u8(t, 'R');
}

/* ---- zip writer: stored entries, optionally with zip64 records ---- */

typedef struct zent {
    const char *name;
    const void *data;
    size_t len;
    int method;
} zent;

static uint8_t *mkzip(const zent *e, size_t n, int zip64, size_t *len)
{
    tb z = {0}, cd = {0};
    for (size_t i = 0; i < n; i++) {
        uint64_t lho = z.n;
        size_t nl = strlen(e[i].name);
        tb_str(&z, "PK\x03\x04");
        tb_le(&z, 20, 2);
        tb_le(&z, 0x0808, 2); /* data descriptor flag, as torch writes */
        tb_le(&z, (uint64_t)e[i].method, 2);
        tb_le(&z, 0, 4); /* time, date */
        tb_le(&z, 0, 4); /* crc (not checked) */
        tb_le(&z, 0, 4); /* sizes left zero, as torch does */
        tb_le(&z, 0, 4);
        tb_le(&z, nl, 2);
        tb_le(&z, 4, 2); /* an extra field of padding */
        tb_str(&z, e[i].name);
        tb_le(&z, 0x4246, 2);
        tb_le(&z, 0, 2);
        tb_put(&z, e[i].data, e[i].len);

        tb_str(&cd, "PK\x01\x02");
        tb_le(&cd, 20, 2);
        tb_le(&cd, 20, 2);
        tb_le(&cd, 0x0808, 2);
        tb_le(&cd, (uint64_t)e[i].method, 2);
        tb_le(&cd, 0, 4);
        tb_le(&cd, 0, 4);
        tb_le(&cd, zip64 ? 0xffffffffu : e[i].len, 4);
        tb_le(&cd, zip64 ? 0xffffffffu : e[i].len, 4);
        tb_le(&cd, nl, 2);
        tb_le(&cd, zip64 ? 28 : 0, 2);
        tb_le(&cd, 0, 2); /* comment */
        tb_le(&cd, 0, 2); /* disk */
        tb_le(&cd, 0, 2);
        tb_le(&cd, 0, 4);
        tb_le(&cd, zip64 ? 0xffffffffu : lho, 4);
        tb_str(&cd, e[i].name);
        if (zip64) {
            tb_le(&cd, 1, 2);
            tb_le(&cd, 24, 2);
            tb_le(&cd, e[i].len, 8);
            tb_le(&cd, e[i].len, 8);
            tb_le(&cd, lho, 8);
        }
    }
    uint64_t cd_off = z.n, cd_size = cd.n;
    tb_put(&z, cd.b, cd.n);
    free(cd.b);
    if (zip64) {
        uint64_t rec = z.n;
        tb_str(&z, "PK\x06\x06");
        tb_le(&z, 44, 8);
        tb_le(&z, 45, 2);
        tb_le(&z, 45, 2);
        tb_le(&z, 0, 4);
        tb_le(&z, 0, 4);
        tb_le(&z, n, 8);
        tb_le(&z, n, 8);
        tb_le(&z, cd_size, 8);
        tb_le(&z, cd_off, 8);
        tb_str(&z, "PK\x06\x07");
        tb_le(&z, 0, 4);
        tb_le(&z, rec, 8);
        tb_le(&z, 1, 4);
    }
    tb_str(&z, "PK\x05\x06");
    tb_le(&z, 0, 4);
    tb_le(&z, zip64 ? 0xffff : n, 2);
    tb_le(&z, zip64 ? 0xffff : n, 2);
    tb_le(&z, zip64 ? 0xffffffffu : cd_size, 4);
    tb_le(&z, zip64 ? 0xffffffffu : cd_off, 4);
    tb_le(&z, 0, 2);
    *len = z.n;
    return z.b;
}

/* Storage records of the crafted checkpoints:
 *   "0": 6 f32 (0..5)   "1": 12 f32 (100..111)   "2": 4 f16   "3": 3 bf16
 *   "4": 2 f64          "5": 3 i64 */
static float rec0[6], rec1[12];
static uint16_t rec2[4], rec3[3];
static double rec4[2] = {1.5, -2.25};
static int64_t rec5[3] = {1, 2, 3};

static void init_records(void)
{
    for (int i = 0; i < 6; i++)
        rec0[i] = (float)i;
    for (int i = 0; i < 12; i++)
        rec1[i] = 100.0f + (float)i;
    const float h[4] = {0.5f, -1.0f, 65504.0f, 3.140625f};
    for (int i = 0; i < 4; i++)
        rec2[i] = eng_f32_to_f16(h[i]);
    const float b[3] = {1.0f, -0.5f, 256.0f};
    for (int i = 0; i < 3; i++)
        rec3[i] = eng_f32_to_bf16(b[i]);
}

/* A .pth holding the pickle `pkl` under "archive/", plus the records. */
static uint8_t *mkpth(const tb *pkl, int zip64, int pkl_method, size_t *len)
{
    zent e[] = {
        {"archive/data.pkl", pkl->b, pkl->n, pkl_method},
        {"archive/data/0", rec0, sizeof rec0, 0},
        {"archive/data/1", rec1, sizeof rec1, 0},
        {"archive/data/2", rec2, sizeof rec2, 0},
        {"archive/data/3", rec3, sizeof rec3, 0},
        {"archive/data/4", rec4, sizeof rec4, 0},
        {"archive/data/5", rec5, sizeof rec5, 0},
        {"archive/version", "3\n", 2, 0},
        {"archive/byteorder", "little", 6, 0},
    };
    return mkzip(e, sizeof e / sizeof e[0], zip64, len);
}

/* The body of a state_dict (inside MARK ... SETITEMS) with one tensor of
 * each kind, including a strided view and a _rebuild_parameter. */
static void pk_body(tb *t)
{
    int64_t s23[2] = {2, 3}, c23[2] = {3, 1};
    pk_str(t, "a");
    pk_tensor(t, "FloatStorage", "0", 6, 0, 2, s23, c23);
    /* a transposed-and-offset view: v[i][j] = rec1[1 + i + 4j] */
    int64_t s32[2] = {3, 2}, st[2] = {1, 4};
    pk_str(t, "view");
    pk_tensor(t, "FloatStorage", "1", 12, 1, 2, s32, st);
    int64_t s4[1] = {4}, c1[1] = {1};
    pk_str(t, "half");
    pk_tensor(t, "HalfStorage", "2", 4, 0, 1, s4, c1);
    int64_t s3[1] = {3};
    pk_str(t, "bf");
    pk_tensor(t, "BFloat16Storage", "3", 3, 0, 1, s3, c1);
    pk_str(t, "dbl");
    pk_global(t, "torch._utils", "_rebuild_parameter");
    tb_u8(t, '(');
    int64_t s2[1] = {2};
    pk_tensor(t, "DoubleStorage", "4", 2, 0, 1, s2, c1);
    tb_u8(t, 0x88);
    pk_global(t, "collections", "OrderedDict");
    tb_u8(t, ')');
    tb_u8(t, 'R');
    tb_u8(t, 't');
    tb_u8(t, 'R');
    pk_str(t, "long");
    pk_tensor(t, "LongStorage", "5", 3, 0, 1, s3, c1);
    /* a 0-d scalar: element 5 of record 0 */
    pk_str(t, "scalar");
    pk_tensor(t, "FloatStorage", "0", 6, 5, 0, NULL, NULL);
}

/* OrderedDict state_dict with a BUILD of _metadata, as torch.save(sd). */
static void pk_state_dict(tb *t)
{
    tb_u8(t, 0x80);
    tb_u8(t, 2);
    pk_global(t, "collections", "OrderedDict");
    tb_u8(t, ')');
    tb_u8(t, 'R');
    tb_u8(t, 'q');
    tb_u8(t, 0);
    tb_u8(t, '(');
    pk_body(t);
    tb_u8(t, 'u');
    tb_u8(t, '}');
    pk_str(t, "_metadata");
    pk_global(t, "collections", "OrderedDict");
    tb_u8(t, ')');
    tb_u8(t, 'R');
    pk_str(t, "");
    tb_u8(t, '}');
    pk_str(t, "version");
    pk_int(t, 1);
    tb_u8(t, 's');
    tb_u8(t, 's');
    tb_u8(t, 's');
    tb_u8(t, 'b');
    tb_u8(t, '.');
}

/* Open a copy of buf[0..len) in an exact-size allocation, so that ASan sees
 * any read past the end. */
static int open_copy(eng_ckpt **c, const void *buf, size_t len, const char *label, uint8_t **keep)
{
    *keep = malloc(len ? len : 1);
    if (len)
        memcpy(*keep, buf, len);
    return eng_ckpt_open_mem(c, *keep, len, label);
}

/* buf must be refused with a message naming `label` and containing `want`. */
#define EXPECT_FAIL(buf, len, label, want)                                                         \
    do {                                                                                           \
        eng_ckpt *c_ = (eng_ckpt *)1;                                                              \
        uint8_t *k_;                                                                               \
        eng_clear_error();                                                                         \
        int rc_ = open_copy(&c_, (buf), (len), (label), &k_);                                      \
        const char *m_ = eng_last_error();                                                         \
        T_CHECK(rc_ < 0 && c_ == NULL, "%s: accepted (rc %d)", (label), rc_);                      \
        T_CHECK(strstr(m_, (label)) != NULL, "%s: message does not name the file: '%s'", (label),  \
                m_);                                                                               \
        T_CHECK(!(want) || strstr(m_, (want) ? (want) : "") != NULL,                               \
                "%s: message '%s' lacks '%s'", (label), m_, (want) ? (want) : "");                 \
        eng_ckpt_close(rc_ < 0 ? NULL : c_);                                                       \
        free(k_);                                                                                  \
    } while (0)

/* ---- fixtures ---- */

static void test_fixtures_agree(void)
{
    T_NEED_FIXTURES();
    eng_ckpt *st = NULL, *pt = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s", t_fixture("sam_tiny.safetensors"));
    int rc = eng_ckpt_open(&st, path);
    T_REQUIRE(rc == 0, "%s", eng_last_error());
    snprintf(path, sizeof path, "%s", t_fixture("sam_tiny.pth"));
    rc = eng_ckpt_open(&pt, path);
    T_CHECK(rc == 0, "%s", eng_last_error());
    if (rc) {
        eng_ckpt_close(st);
        return;
    }
    T_CHECK(strstr(eng_ckpt_path(pt), "sam_tiny.pth") != NULL, "path %s", eng_ckpt_path(pt));
    T_CHECK(eng_ckpt_count(st) == 174, "safetensors has %zu tensors", eng_ckpt_count(st));
    T_CHECK(eng_ckpt_count(pt) == 174, "pth has %zu tensors", eng_ckpt_count(pt));
    size_t same = 0;
    for (size_t i = 0; i < eng_ckpt_count(st); i++) {
        const eng_ckpt_tensor *a = eng_ckpt_at(st, i), *b = eng_ckpt_find(pt, a->name);
        T_CHECK(b != NULL, "'%s' missing from the .pth", a->name);
        if (!b)
            continue;
        T_CHECK(eng_ckpt_at(pt, i) && strcmp(eng_ckpt_at(pt, i)->name, a->name) == 0,
                "tensor %zu in a different order", i);
        T_CHECK(a->dtype == ENG_F32 && b->dtype == ENG_F32, "'%s' not f32", a->name);
        int ok = a->ndim == b->ndim && a->numel == b->numel;
        for (int d = 0; ok && d < a->ndim; d++)
            ok = a->shape[d] == b->shape[d];
        T_CHECK(ok, "'%s' shapes differ", a->name);
        if (!ok)
            continue;
        float *x = malloc((size_t)a->numel * 4 + 4), *y = malloc((size_t)b->numel * 4 + 4);
        int r1 = eng_ckpt_read_f32(st, a, x), r2 = eng_ckpt_read_f32(pt, b, y);
        T_CHECK(r1 == 0 && r2 == 0, "read '%s': %s", a->name, eng_last_error());
        if (r1 == 0 && r2 == 0 && memcmp(x, y, (size_t)a->numel * 4) == 0)
            same++;
        free(x);
        free(y);
    }
    T_CHECK(same == 174, "%zu of 174 tensors byte-identical", same);
    const eng_ckpt_tensor *pe = eng_ckpt_find(st, "image_encoder.patch_embed.proj.weight");
    T_CHECK(pe && pe->ndim == 4 && pe->shape[0] == 64 && pe->shape[1] == 3 && pe->shape[2] == 16,
            "patch_embed shape");
    T_CHECK(eng_ckpt_find(st, "no.such.tensor") == NULL, "found a missing tensor");
    eng_ckpt_close(st);
    eng_ckpt_close(pt);
}

static void test_load_f32_errors(void)
{
    T_NEED_FIXTURES();
    eng_ckpt *c = NULL;
    T_REQUIRE(eng_ckpt_open(&c, t_fixture("sam_tiny.safetensors")) == 0, "%s", eng_last_error());
    float buf[64];
    int64_t good[1] = {64}, bad[2] = {256, 128};
    T_CHECK(eng_ckpt_load_f32(c, "image_encoder.patch_embed.proj.bias", 1, good, buf) == 0, "%s",
            eng_last_error());
    int rc = eng_ckpt_load_f32(c, "nope", 1, good, buf);
    T_CHECK(rc == ENG_ENOTFOUND &&
                strstr(eng_last_error(), "sam_tiny.safetensors: tensor 'nope': missing"),
            "missing: %d '%s'", rc, eng_last_error());
    rc = eng_ckpt_load_f32(c, "image_encoder.patch_embed.proj.bias", 2, bad, buf);
    T_CHECK(rc == ENG_ESHAPE && strstr(eng_last_error(), "shape [64] expected [256,128]"),
            "shape: %d '%s'", rc, eng_last_error());
    eng_ckpt_close(c);
}

/* ---- writer ---- */

static void test_writer_roundtrip(void)
{
    float f[6] = {1, -2, 3.5f, 0, 1e-3f, 65000};
    uint16_t h[3] = {eng_f32_to_f16(0.5f), eng_f32_to_f16(-3.0f), eng_f32_to_f16(1024.0f)};
    uint16_t b[2] = {eng_f32_to_bf16(7.0f), eng_f32_to_bf16(-0.125f)};
    uint8_t u[5] = {0, 1, 2, 254, 255};
    int64_t l[2] = {-1, 1LL << 40};
    eng_st_entry e[] = {
        {"w.f32", ENG_F32, 2, {2, 3}, f},   {"odd \"name\"\\\n\x01", ENG_F16, 1, {3}, h},
        {"bf", ENG_BF16, 2, {1, 2}, b},     {"bytes", ENG_U8, 1, {5}, u},
        {"ids", ENG_I64, 1, {2}, l},        {"empty", ENG_F32, 2, {0, 4}, NULL},
        {"scalar", ENG_F32, 0, {0}, &f[2]},
    };
    const char *meta[] = {"format", "pt", "note", "quote\" and \\ and \t"};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = eng_safetensors_serialize(e, 7, meta, 2, &buf, &len);
    T_REQUIRE(rc == 0, "%s", eng_last_error());
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)buf[i] << (8 * i);
    T_CHECK(hlen % 8 == 0, "header length %llu not a multiple of 8", (unsigned long long)hlen);
    T_CHECK(buf[8 + hlen - 1] == ' ' || buf[8 + hlen - 1] == '}', "header padding");

    for (int pass = 0; pass < 2; pass++) {
        eng_ckpt *c = NULL;
        char path[256];
        snprintf(path, sizeof path, "/tmp/tasam_test_ckpt_%d.safetensors", (int)getpid());
        if (pass == 0) {
            rc = eng_ckpt_open_mem(&c, buf, len, "roundtrip");
        } else {
            rc = eng_safetensors_write(path, e, 7, meta, 2);
            T_REQUIRE(rc == 0, "%s", eng_last_error());
            char tmp[300];
            snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
            T_CHECK(access(tmp, F_OK) != 0, "temp file left behind");
            size_t flen = 0;
            uint8_t *fb = t_read_file(path, &flen);
            T_CHECK(fb && flen == len && memcmp(fb, buf, len) == 0, "file differs from buffer");
            free(fb);
            rc = eng_ckpt_open(&c, path);
        }
        T_REQUIRE(rc == 0, "pass %d: %s", pass, eng_last_error());
        T_CHECK(eng_ckpt_count(c) == 7, "count %zu", eng_ckpt_count(c));
        for (size_t i = 0; i < eng_ckpt_count(c) && i < 7; i++) {
            const eng_ckpt_tensor *t = eng_ckpt_at(c, i);
            T_CHECK(strcmp(t->name, e[i].name) == 0, "order/name %zu: '%s'", i, t->name);
            T_CHECK(t->dtype == e[i].dtype && t->ndim == e[i].ndim, "'%s' dtype/rank", t->name);
            size_t nb = eng_dtype_size(t->dtype) * (size_t)t->numel;
            T_CHECK(nb == 0 || memcmp(t->data, e[i].data, nb) == 0, "'%s' data", t->name);
        }
        T_CHECK(eng_ckpt_meta(c, "format") && strcmp(eng_ckpt_meta(c, "format"), "pt") == 0,
                "meta format");
        T_CHECK(eng_ckpt_meta(c, "note") && strcmp(eng_ckpt_meta(c, "note"), meta[3]) == 0,
                "meta note");
        T_CHECK(eng_ckpt_meta(c, "absent") == NULL, "absent meta");
        float out[6];
        const eng_ckpt_tensor *t = eng_ckpt_find(c, e[1].name);
        T_CHECK(t && eng_ckpt_read_f32(c, t, out) == 0 && out[0] == 0.5f && out[1] == -3.0f &&
                    out[2] == 1024.0f,
                "f16 read");
        t = eng_ckpt_find(c, "bf");
        T_CHECK(t && eng_ckpt_read_f32(c, t, out) == 0 && out[0] == 7.0f && out[1] == -0.125f,
                "bf16 read");
        t = eng_ckpt_find(c, "scalar");
        T_CHECK(t && t->numel == 1 && eng_ckpt_read_f32(c, t, out) == 0 && out[0] == 3.5f,
                "scalar read");
        t = eng_ckpt_find(c, "empty");
        T_CHECK(t && t->numel == 0 && eng_ckpt_read_f32(c, t, out) == 0, "empty read");
        int64_t sh[1] = {2};
        rc = eng_ckpt_load_f32(c, "ids", 1, sh, out);
        T_CHECK(rc == ENG_EUNSUP && strstr(eng_last_error(), "tensor 'ids': dtype I64 is not a "
                                                             "float type"),
                "i64 load: %d '%s'", rc, eng_last_error());
        T_CHECK(strstr(eng_last_error(), pass ? "tasam_test_ckpt" : "roundtrip") != NULL,
                "message names the file: %s", eng_last_error());
        eng_ckpt_close(c);
        if (pass)
            unlink(path);
    }
    /* The writer refuses duplicate and reserved names. */
    eng_st_entry dup[2] = {{"x", ENG_U8, 1, {5}, u}, {"x", ENG_U8, 1, {5}, u}};
    uint8_t *ob = NULL;
    size_t ol = 0;
    T_CHECK(eng_safetensors_serialize(dup, 2, NULL, 0, &ob, &ol) != 0 && ob == NULL,
            "duplicate names written");
    eng_st_entry res[1] = {{"__metadata__", ENG_U8, 1, {5}, u}};
    T_CHECK(eng_safetensors_serialize(res, 1, NULL, 0, &ob, &ol) != 0, "reserved name written");
    T_CHECK(eng_safetensors_write("/nonexistent-dir/x.safetensors", e, 1, NULL, 0) == ENG_EIO,
            "write to a missing folder");
    free(buf);
}

/* ---- crafted .pth ---- */

static void check_crafted(eng_ckpt *c)
{
    float out[12];
    T_REQUIRE(eng_ckpt_count(c) == 7, "count %zu", eng_ckpt_count(c));
    const char *order[7] = {"a", "view", "half", "bf", "dbl", "long", "scalar"};
    for (int i = 0; i < 7; i++)
        T_CHECK(strcmp(eng_ckpt_at(c, (size_t)i)->name, order[i]) == 0, "order %d", i);
    int64_t s23[2] = {2, 3};
    T_CHECK(eng_ckpt_load_f32(c, "a", 2, s23, out) == 0, "%s", eng_last_error());
    for (int i = 0; i < 6; i++)
        T_CHECK(out[i] == (float)i, "a[%d] = %g", i, out[i]);
    const eng_ckpt_tensor *v = eng_ckpt_find(c, "view");
    T_REQUIRE(v && v->ndim == 2 && v->stride[0] == 1 && v->stride[1] == 4, "view strides");
    T_CHECK(eng_ckpt_read_f32(c, v, out) == 0, "%s", eng_last_error());
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++)
            T_CHECK(out[i * 2 + j] == rec1[1 + i + 4 * j], "view[%d][%d] = %g", i, j,
                    out[i * 2 + j]);
    int64_t s4[1] = {4}, s3[1] = {3}, s2[1] = {2};
    T_CHECK(eng_ckpt_load_f32(c, "half", 1, s4, out) == 0, "%s", eng_last_error());
    T_CHECK(out[0] == 0.5f && out[1] == -1.0f && out[2] == 65504.0f && out[3] == 3.140625f,
            "half %g %g %g %g", out[0], out[1], out[2], out[3]);
    T_CHECK(eng_ckpt_load_f32(c, "bf", 1, s3, out) == 0, "%s", eng_last_error());
    T_CHECK(out[0] == 1.0f && out[1] == -0.5f && out[2] == 256.0f, "bf16");
    T_CHECK(eng_ckpt_load_f32(c, "dbl", 1, s2, out) == 0, "%s", eng_last_error());
    T_CHECK(out[0] == 1.5f && out[1] == -2.25f, "f64");
    const eng_ckpt_tensor *l = eng_ckpt_find(c, "long");
    T_CHECK(l && l->dtype == ENG_I64 && memcmp(l->data, rec5, sizeof rec5) == 0, "i64 record");
    T_CHECK(eng_ckpt_load_f32(c, "long", 1, s3, out) == ENG_EUNSUP &&
                strstr(eng_last_error(), "dtype I64 is not a float type"),
            "i64 as f32: %s", eng_last_error());
    const eng_ckpt_tensor *s = eng_ckpt_find(c, "scalar");
    T_CHECK(s && s->ndim == 0 && s->numel == 1 && eng_ckpt_read_f32(c, s, out) == 0 &&
                out[0] == 5.0f,
            "scalar");
}

static void test_crafted_pth(void)
{
    tb p = {0};
    pk_state_dict(&p);
    for (int zip64 = 0; zip64 < 2; zip64++) {
        size_t len;
        uint8_t *z = mkpth(&p, zip64, 0, &len), *keep;
        eng_ckpt *c = NULL;
        int rc = open_copy(&c, z, len, "crafted.pth", &keep);
        T_CHECK(rc == 0, "zip64=%d: %s", zip64, eng_last_error());
        if (rc == 0)
            check_crafted(c);
        eng_ckpt_close(c);
        free(keep);
        free(z);
    }
    free(p.b);
}

static void pk_short(tb *t, const char *s)
{
    tb_u8(t, 0x8c);
    tb_u8(t, (unsigned)strlen(s));
    tb_str(t, s);
}

/* Protocol 4 spelling (FRAME, SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE,
 * LONG_BINPUT/LONG_BINGET, BINFLOAT, LONG1) of a training checkpoint:
 *   {"epoch": 7, "model": OrderedDict(body),
 *    "extra": (((0.0,), [model]), 0, (True, None, (-200,)))} */
static void test_wrapped_proto4(void)
{
    tb p = {0};
    tb_u8(&p, 0x80);
    tb_u8(&p, 4);
    tb_u8(&p, 0x95);
    tb_le(&p, 0, 8);
    tb_u8(&p, '}');
    tb_u8(&p, 0x94);
    pk_short(&p, "epoch");
    pk_int(&p, 7);
    tb_u8(&p, 's');
    pk_short(&p, "model");
    pk_short(&p, "collections");
    pk_short(&p, "OrderedDict");
    tb_u8(&p, 0x93);
    tb_u8(&p, 0x94);
    tb_u8(&p, ')');
    tb_u8(&p, 'R');
    tb_u8(&p, 'r');
    tb_le(&p, 1000, 4);
    tb_u8(&p, '(');
    pk_body(&p);
    tb_u8(&p, 'u');
    tb_u8(&p, 's');
    pk_short(&p, "extra");
    tb_u8(&p, 'G');
    tb_le(&p, 0, 8);
    tb_u8(&p, 0x85);
    tb_u8(&p, ']');
    tb_u8(&p, 'j');
    tb_le(&p, 1000, 4);
    tb_u8(&p, 'a');
    tb_u8(&p, 0x86);
    tb_u8(&p, 0x8a);
    tb_u8(&p, 0);
    tb_u8(&p, 0x88);
    tb_u8(&p, 'N');
    tb_u8(&p, '(');
    tb_u8(&p, 0x8a);
    tb_u8(&p, 2);
    tb_le(&p, 0xff38, 2); /* LONG1 -200 */
    tb_u8(&p, 't');
    tb_u8(&p, 0x87);
    tb_u8(&p, 0x87);
    tb_u8(&p, 's');
    tb_u8(&p, '.');
    for (int zip64 = 0; zip64 < 2; zip64++) {
        size_t len;
        uint8_t *z = mkpth(&p, zip64, 0, &len), *keep;
        eng_ckpt *c = NULL;
        int rc = open_copy(&c, z, len, "wrapped.pth", &keep);
        T_CHECK(rc == 0, "%s", eng_last_error());
        if (rc == 0)
            check_crafted(c);
        eng_ckpt_close(c);
        free(keep);
        free(z);
    }
    free(p.b);
}

/* Views torch can save: broadcast (stride 0), a huge stride on a size-1
 * dimension, and a 3-D permutation. */
static void test_odd_views(void)
{
    tb p = {0};
    int64_t bs[2] = {3, 2}, bst[2] = {0, 1};
    int64_t hs[2] = {2, 1}, hst[2] = {5, 1LL << 62};
    int64_t ps[3] = {2, 2, 2}, pst[3] = {1, 6, 2};
    tb_u8(&p, 0x80);
    tb_u8(&p, 2);
    tb_u8(&p, '}');
    tb_u8(&p, '(');
    pk_str(&p, "bcast");
    pk_tensor(&p, "FloatStorage", "0", 6, 2, 2, bs, bst);
    pk_str(&p, "huge");
    pk_tensor(&p, "FloatStorage", "0", 6, 0, 2, hs, hst);
    pk_str(&p, "perm");
    pk_tensor(&p, "FloatStorage", "1", 12, 0, 3, ps, pst);
    tb_u8(&p, 'u');
    tb_u8(&p, '.');
    size_t len;
    uint8_t *z = mkpth(&p, 0, 0, &len), *keep;
    eng_ckpt *c = NULL;
    int rc = open_copy(&c, z, len, "views.pth", &keep);
    T_CHECK(rc == 0, "%s", eng_last_error());
    if (rc == 0) {
        float out[8];
        T_CHECK(eng_ckpt_load_f32(c, "bcast", 2, bs, out) == 0, "%s", eng_last_error());
        for (int i = 0; i < 6; i++)
            T_CHECK(out[i] == (float)(2 + i % 2), "bcast[%d] = %g", i, out[i]);
        T_CHECK(eng_ckpt_load_f32(c, "huge", 2, hs, out) == 0, "%s", eng_last_error());
        T_CHECK(out[0] == 0.0f && out[1] == 5.0f, "huge %g %g", out[0], out[1]);
        T_CHECK(eng_ckpt_load_f32(c, "perm", 3, ps, out) == 0, "%s", eng_last_error());
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
                for (int k = 0; k < 2; k++)
                    T_CHECK(out[i * 4 + j * 2 + k] == rec1[i + 6 * j + 2 * k], "perm[%d][%d][%d]",
                            i, j, k);
    }
    eng_ckpt_close(c);
    free(keep);
    free(z);
    free(p.b);
}

/* A small valid .pth whose data.pkl is replaced by `pkl`. */
static void expect_pickle_fails(const tb *pkl, const char *label, const char *want)
{
    size_t len;
    uint8_t *z = mkpth(pkl, 0, 0, &len);
    EXPECT_FAIL(z, len, label, want);
    free(z);
}

static void test_hostile_pickles(void)
{
    int64_t s4[1] = {4}, c1[1] = {1};
    tb p = {0};
#define PK_BEGIN()                                                                                 \
    do {                                                                                           \
        p.n = 0;                                                                                   \
        tb_u8(&p, 0x80);                                                                           \
        tb_u8(&p, 2);                                                                              \
        tb_u8(&p, '}');                                                                            \
        tb_u8(&p, '(');                                                                            \
    } while (0)
#define PK_END()                                                                                   \
    do {                                                                                           \
        tb_u8(&p, 'u');                                                                            \
        tb_u8(&p, '.');                                                                            \
    } while (0)

    PK_BEGIN();
    pk_str(&p, "x");
    pk_global(&p, "os", "system");
    pk_str(&p, "echo pwned");
    tb_u8(&p, 0x85);
    tb_u8(&p, 'R');
    PK_END();
    expect_pickle_fails(&p, "global.pth", "forbidden global 'os.system'");

    PK_BEGIN();
    tb_u8(&p, 0x8c);
    tb_u8(&p, 8);
    tb_str(&p, "builtins");
    tb_u8(&p, 0x8c);
    tb_u8(&p, 4);
    tb_str(&p, "eval");
    tb_u8(&p, 0x93);
    PK_END();
    expect_pickle_fails(&p, "stackglobal.pth", "forbidden global 'builtins.eval'");

    /* The allow-list is exact: module and name both, never "anything under
     * torch". Each of these must be refused by name, as a GLOBAL and as a
     * STACK_GLOBAL, even though the rest of the pickle is a valid call. */
    static const char *const near[][2] = {
        {"torch", "load"},
        {"torch.hub", "load"},
        {"torch._utils", "evil"},
        {"torchvision", "x"},
        {"torch._utils", "_rebuild_tensor"},
        {"torch", "Storage"},
        {"torch.serialization", "_load"},
        {"torch", "FloatStorage_"},
    };
    for (size_t i = 0; i < sizeof near / sizeof near[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "forbidden global '%s.%s'", near[i][0], near[i][1]);
        for (int stack = 0; stack <= 1; stack++) {
            PK_BEGIN();
            pk_str(&p, "x");
            if (stack) {
                tb_u8(&p, 0x8c);
                tb_u8(&p, (uint8_t)strlen(near[i][0]));
                tb_str(&p, near[i][0]);
                tb_u8(&p, 0x8c);
                tb_u8(&p, (uint8_t)strlen(near[i][1]));
                tb_str(&p, near[i][1]);
                tb_u8(&p, 0x93);
            } else {
                pk_global(&p, near[i][0], near[i][1]);
            }
            pk_str(&p, "/etc/passwd");
            tb_u8(&p, 0x85);
            tb_u8(&p, 'R');
            PK_END();
            expect_pickle_fails(&p, stack ? "stack_near.pth" : "near.pth", want);
        }
    }

    PK_BEGIN();
    pk_str(&p, "x");
    tb_u8(&p, 0xff);
    PK_END();
    expect_pickle_fails(&p, "opcode.pth", "opcode 0xff");

    PK_BEGIN();
    tb_u8(&p, 'i'); /* INST: a protocol-0 way to call anything */
    tb_str(&p, "os\nsystem\n");
    PK_END();
    expect_pickle_fails(&p, "inst.pth", "opcode 0x69");

    PK_BEGIN();
    pk_str(&p, "x");
    pk_tensor(&p, "FloatStorage", "99", 4, 0, 1, s4, c1);
    PK_END();
    expect_pickle_fails(&p, "norecord.pth", "archive/data/99");

    PK_BEGIN();
    pk_str(&p, "x");
    pk_tensor(&p, "FloatStorage", "0", 7, 0, 1, s4, c1); /* record 0 holds 6 */
    PK_END();
    expect_pickle_fails(&p, "bignumel.pth", "exceeds");

    PK_BEGIN();
    pk_str(&p, "x");
    pk_tensor(&p, "FloatStorage", "0", 6, 3, 1, s4, c1); /* elements 3..6 of 6 */
    PK_END();
    expect_pickle_fails(&p, "view.pth", "past its storage");

    {
        int64_t big[2] = {3, 3}, bst[2] = {INT64_MAX, INT64_MAX};
        PK_BEGIN();
        pk_str(&p, "x");
        pk_tensor(&p, "FloatStorage", "0", 6, 0, 2, big, bst);
        PK_END();
        expect_pickle_fails(&p, "stride.pth", "overflow");
        int64_t hs[3] = {1LL << 31, 1LL << 31, 1LL << 31}, hst[3] = {0, 0, 0};
        PK_BEGIN();
        pk_str(&p, "x");
        pk_tensor(&p, "FloatStorage", "0", 6, 0, 3, hs, hst);
        PK_END();
        expect_pickle_fails(&p, "shape.pth", "overflow");
        int64_t neg[1] = {-1};
        PK_BEGIN();
        pk_str(&p, "x");
        pk_tensor(&p, "FloatStorage", "0", 6, 0, 1, neg, c1);
        PK_END();
        expect_pickle_fails(&p, "negative.pth", "negative");
    }

    PK_BEGIN();
    for (int i = 0; i < 100000; i++)
        tb_u8(&p, '(');
    PK_END();
    expect_pickle_fails(&p, "marks.pth", "nested");

    PK_BEGIN();
    for (int i = 0; i < 2000000; i++)
        tb_u8(&p, ']');
    PK_END();
    expect_pickle_fails(&p, "stack.pth", NULL);

    PK_BEGIN();
    tb_u8(&p, ']');
    tb_u8(&p, 'r');
    tb_le(&p, 0xffffffffu, 4);
    PK_END();
    expect_pickle_fails(&p, "memo.pth", "memo");

    PK_BEGIN();
    tb_u8(&p, 'h');
    tb_u8(&p, 3);
    PK_END();
    expect_pickle_fails(&p, "binget.pth", "memo");

    PK_BEGIN();
    pk_str(&p, "x");
    tb_u8(&p, 'X');
    tb_le(&p, 0xfffffff0u, 4);
    PK_END();
    expect_pickle_fails(&p, "bigstr.pth", NULL);

    p.n = 0;
    tb_u8(&p, 0x80);
    tb_u8(&p, 2);
    tb_u8(&p, ']');
    tb_u8(&p, '.');
    expect_pickle_fails(&p, "list.pth", "not a dict");

    PK_BEGIN();
    pk_str(&p, "x");
    pk_int(&p, 5);
    PK_END();
    expect_pickle_fails(&p, "notensor.pth", "'x' is not a tensor");

    PK_BEGIN();
    pk_str(&p, "x");
    pk_tensor(&p, "FloatStorage", "0", 6, 0, 1, s4, c1);
    pk_str(&p, "x");
    pk_tensor(&p, "FloatStorage", "0", 6, 0, 1, s4, c1);
    PK_END();
    expect_pickle_fails(&p, "dup.pth", "duplicate tensor name 'x'");

    PK_BEGIN();
    pk_str(&p, "x");
    pk_global(&p, "torch", "FloatStorage");
    pk_int(&p, 4);
    tb_u8(&p, 0x85);
    tb_u8(&p, 'R');
    PK_END();
    expect_pickle_fails(&p, "callstorage.pth", "callable");

    PK_BEGIN();
    pk_str(&p, "x");
    PK_END();
    expect_pickle_fails(&p, "odd.pth", "odd");

    PK_BEGIN();
    pk_str(&p, "x");
    pk_int(&p, 1);
    tb_u8(&p, 'u'); /* no STOP */
    expect_pickle_fails(&p, "nostop.pth", "truncated");

    /* Every prefix of a valid pickle is refused. */
    p.n = 0;
    pk_state_dict(&p);
    size_t full = p.n;
    int accepted = 0;
    for (size_t cut = 0; cut < full; cut++) {
        tb q = {p.b, cut, cut};
        size_t len;
        uint8_t *z = mkpth(&q, 0, 0, &len), *keep;
        eng_ckpt *c = NULL;
        if (open_copy(&c, z, len, "cut.pth", &keep) == 0)
            accepted++;
        eng_ckpt_close(c);
        free(keep);
        free(z);
    }
    T_CHECK(accepted == 0, "%d truncated pickles accepted", accepted);
    /* Flipping any byte is at worst an error (ASan checks the rest). */
    for (size_t i = 0; i < full; i++) {
        for (int v = 0; v < 3; v++) {
            static const uint8_t vals[3] = {0xff, 0x00, 0x80};
            uint8_t old = p.b[i];
            p.b[i] = (uint8_t)(v == 0 ? old ^ 0xff : vals[v]);
            size_t len;
            uint8_t *z = mkpth(&p, 0, 0, &len), *keep;
            eng_ckpt *c = NULL;
            if (open_copy(&c, z, len, "flip.pth", &keep) == 0) {
                float out[64];
                for (size_t t = 0; t < eng_ckpt_count(c); t++) {
                    const eng_ckpt_tensor *ct = eng_ckpt_at(c, t);
                    if (ct->numel <= 64)
                        eng_ckpt_read_f32(c, ct, out);
                }
            }
            eng_ckpt_close(c);
            free(keep);
            free(z);
            p.b[i] = old;
        }
    }
    free(p.b);
#undef PK_BEGIN
#undef PK_END
}

static void test_hostile_zips(void)
{
    tb p = {0};
    pk_state_dict(&p);
    size_t len;
    uint8_t *z = mkpth(&p, 0, 8, &len);
    EXPECT_FAIL(z, len, "deflated.pth", "entry 'archive/data.pkl' is compressed");
    free(z);

    /* no data.pkl at all */
    zent e1[] = {{"archive/data/0", rec0, sizeof rec0, 0}};
    z = mkzip(e1, 1, 0, &len);
    EXPECT_FAIL(z, len, "nopkl.pth", "data.pkl");
    free(z);

    /* a record's local header pointing past the end */
    z = mkpth(&p, 1, 0, &len);
    {
        /* corrupt the zip64 local-header offset of the last central entry */
        uint8_t *cd = NULL;
        for (size_t i = len - 4; i-- > 0;)
            if (memcmp(z + i, "PK\x01\x02", 4) == 0) {
                cd = z + i;
                break;
            }
        T_REQUIRE(cd != NULL, "no central directory");
        size_t nl = (size_t)(cd[28] | cd[29] << 8);
        uint8_t *lho = cd + 46 + nl + 4 + 16;
        memset(lho, 0x7f, 8);
        EXPECT_FAIL(z, len, "lho.pth", NULL);
    }
    free(z);

    /* Truncating the crafted archive anywhere is an error. */
    z = mkpth(&p, 1, 0, &len);
    int accepted = 0;
    for (size_t cut = 0; cut < len; cut++) {
        eng_ckpt *c = NULL;
        uint8_t *keep;
        if (open_copy(&c, z, cut, "cutzip.pth", &keep) == 0)
            accepted++;
        eng_ckpt_close(c);
        free(keep);
    }
    T_CHECK(accepted == 0, "%d truncated zips accepted", accepted);
    /* Mutating any byte of the directory and end records is at worst an error. */
    size_t from = len > 1200 ? len - 1200 : 0;
    for (size_t i = from; i < len; i++) {
        uint8_t old = z[i];
        for (int v = 0; v < 2; v++) {
            z[i] = v ? 0xff : (uint8_t)(old ^ 0x01);
            eng_ckpt *c = NULL;
            uint8_t *keep;
            open_copy(&c, z, len, "mutzip.pth", &keep);
            eng_ckpt_close(c);
            free(keep);
        }
        z[i] = old;
    }
    free(z);
    free(p.b);
}

static void test_truncated_fixtures(void)
{
    T_NEED_FIXTURES();
    const char *names[2] = {"sam_tiny.safetensors", "sam_tiny.pth"};
    for (int f = 0; f < 2; f++) {
        size_t len = 0;
        uint8_t *buf = t_read_file(t_fixture(names[f]), &len);
        T_REQUIRE(buf && len > 30000, "cannot read %s", names[f]);
        int accepted = 0, tried = 0;
        /* Dense over the first 24 KiB (header / data.pkl) and the last 24 KiB
         * (zip directory), sparse in between. */
        for (size_t cut = 0; cut < len; cut += (cut < 24576 || cut > len - 24576) ? 7 : len / 37) {
            eng_ckpt *c = NULL;
            uint8_t *keep;
            char label[64];
            snprintf(label, sizeof label, "cut-%s", names[f]);
            eng_clear_error();
            int rc = open_copy(&c, buf, cut, label, &keep);
            if (rc == 0)
                accepted++;
            else if (!strstr(eng_last_error(), label))
                T_CHECK(0, "cut %zu: message '%s' does not name the file", cut, eng_last_error());
            tried++;
            eng_ckpt_close(c);
            free(keep);
        }
        T_CHECK(accepted == 0, "%s: %d of %d truncations accepted", names[f], accepted, tried);
        free(buf);
    }
}

/* ---- hostile safetensors ---- */

static uint8_t *mkst(const char *json, size_t data_len, size_t *len)
{
    tb t = {0};
    tb_le(&t, strlen(json), 8);
    tb_str(&t, json);
    for (size_t i = 0; i < data_len; i++)
        tb_u8(&t, (unsigned)i);
    *len = t.n;
    return t.b;
}

static void test_hostile_safetensors(void)
{
    static const struct {
        const char *json;
        size_t data;
        const char *want;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "expected"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-1,7]}}", 8, "integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 12"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         16, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}",
         8, "overflow"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}", 8,
         "too large"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "unknown dtype 'Q4'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
         16, "duplicate tensor name 'a'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[[[[[[[[[[[[2]]]]]]]]]]]],\"data_offsets\":[0,8]}}",
         8, "expected"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
         "unknown key 'x'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "missing data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
         "more than 8"},
        {"{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "surrogate"},
        {"{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "NUL"},
        {"{\"a\\q\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "escape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8, "trailing"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8, "leading zero"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "string"},
        {"{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, "duplicate metadata"},
        {"[1,2,3]", 0, "not a checkpoint"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        uint8_t *b = mkst(cases[i].json, cases[i].data, &len);
        char label[32];
        snprintf(label, sizeof label, "case%zu.safetensors", i);
        EXPECT_FAIL(b, len, label, cases[i].want);
        free(b);
    }
    /* header length past EOF, absurd, and files too short for one */
    uint8_t hdr[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    EXPECT_FAIL(hdr, 16, "absurd.safetensors", "header length");
    hdr[7] = 0;
    hdr[0] = 200;
    hdr[1] = hdr[2] = hdr[3] = hdr[4] = hdr[5] = hdr[6] = 0;
    EXPECT_FAIL(hdr, 16, "pasteof.safetensors", "header length");
    EXPECT_FAIL(hdr, 3, "tiny.safetensors", "not a checkpoint");
    EXPECT_FAIL(hdr, 0, "empty.safetensors", "not a checkpoint");
    EXPECT_FAIL("GIF89a\0\0\0\0\0\0", 12, "gif.safetensors", "not a checkpoint");

    /* Valid oddities: escaped names, empty header, zero-size tensors. */
    size_t len;
    uint8_t *b = mkst("{\"a\\u00e9\\\"b\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[2],"
                      "\"data_offsets\":[0,2]}, \"z\" : { \"dtype\" : \"F32\", \"shape\" : [0,3],"
                      " \"data_offsets\" : [2,2] } }   ",
                      2, &len);
    eng_ckpt *c = NULL;
    T_CHECK(eng_ckpt_open_mem(&c, b, len, "escapes") == 0, "%s", eng_last_error());
    T_CHECK(c && eng_ckpt_find(c, "a\xc3\xa9\"b\xf0\x9f\x98\x80") != NULL, "escaped name");
    T_CHECK(c && eng_ckpt_find(c, "z") && eng_ckpt_find(c, "z")->numel == 0, "empty tensor");
    eng_ckpt_close(c);
    free(b);
    b = mkst("{}", 0, &len);
    T_CHECK(eng_ckpt_open_mem(&c, b, len, "empty") == 0 && eng_ckpt_count(c) == 0, "%s",
            eng_last_error());
    eng_ckpt_close(c);
    free(b);

    /* Missing files. */
    T_CHECK(eng_ckpt_open(&c, "/nonexistent/x.pth") == ENG_ENOTFOUND && c == NULL &&
                strstr(eng_last_error(), "/nonexistent/x.pth"),
            "missing file: %s", eng_last_error());
    T_CHECK(eng_ckpt_open(&c, "/tmp") != 0 && c == NULL, "a directory opened");
}

int main(void)
{
    init_records();
    T_RUN(test_fixtures_agree);
    T_RUN(test_load_f32_errors);
    T_RUN(test_writer_roundtrip);
    T_RUN(test_crafted_pth);
    T_RUN(test_wrapped_proto4);
    T_RUN(test_odd_views);
    T_RUN(test_hostile_pickles);
    T_RUN(test_hostile_zips);
    T_RUN(test_truncated_fixtures);
    T_RUN(test_hostile_safetensors);
    return t_summary("test_ckpt");
}
