/* tests/test_text.c: the WordPiece tokenizer and the BERT text encoder
 * against ../shared/fixtures (text_tiny/, text_cases.json,
 * golden_text_tiny.safetensors), the hashed fallback, hostile text and
 * hostile model folders. */
#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <unistd.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "hypernet/text.h"
#include "tests/harness.h"

#define N_CASES 10
#define GOLD_T  20 /* golden_text_tiny's padded length */
#define TINY_H  64

/* ---- helpers ---- */

/* A tokenizer over an in-memory vocabulary for the unit tests. */
static const char test_vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n" /* 0-3 */
                                 "un\n##want\n##able\nwant\n"   /* 4-7 */
                                 "a\n##b\n##c\nabc\n"           /* 8-11 */
                                 ",\n!\n.\ncafe\n"              /* 12-15 */
                                 "中\n文\nx\n##x\n"             /* 16-19 */
                                 "hello\nworld\n-\n##ing\n"     /* 20-23 */
                                 "σ\n##ος\n";                   /* 24-25 */

static hn_wordpiece *test_wp(void)
{
    hn_wordpiece *wp = NULL;
    if (hn_wordpiece_create(&wp, test_vocab, sizeof test_vocab - 1, "test vocab"))
        return NULL;
    return wp;
}

/* Tokenize s and compare with the expected ids (terminated by -1). */
static int ids_are(const hn_wordpiece *wp, const char *s, const int *want)
{
    int32_t ids[64], mask[64];
    int n = 0, nw = 0;
    while (want[nw] >= 0)
        nw++;
    int rc = hn_wordpiece_encode(wp, s, strlen(s), 64, ids, mask, &n);
    int ok = rc == 0 && n == nw;
    for (int i = 0; ok && i < n; i++)
        ok = ids[i] == want[i] && mask[i] == 1;
    for (int i = n; ok && i < 64; i++)
        ok = ids[i] == 0 && mask[i] == 0;
    if (!ok) {
        fprintf(stderr, "  \"%s\": rc %d (%s), got", s, rc, rc ? eng_last_error() : "");
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    return ok;
}

static json_t *load_cases(void)
{
    const char *p = t_fixture("text_cases.json");
    return p ? json_load_file(p, 0, NULL) : NULL;
}

static int cases_strings(json_t *cases, const char *s[N_CASES], size_t len[N_CASES])
{
    json_t *a = json_object_get(cases, "strings");
    if (!json_is_array(a) || json_array_size(a) != N_CASES)
        return 0;
    for (int i = 0; i < N_CASES; i++) {
        s[i] = json_string_value(json_array_get(a, (size_t)i));
        len[i] = json_string_length(json_array_get(a, (size_t)i));
    }
    return 1;
}

static char tiny_dir[4096];

static const char *tiny_model(void)
{
    const char *p = t_fixture("text_tiny");
    if (!p)
        return NULL;
    snprintf(tiny_dir, sizeof tiny_dir, "%s", p);
    return tiny_dir;
}

/* Read a golden tensor as f32 or i32 (copied into dst of n elements). */
static int golden(eng_ckpt *g, const char *name, void *dst, size_t bytes)
{
    const eng_ckpt_tensor *t = eng_ckpt_find(g, name);
    if (!t || (size_t)t->numel * 4 != bytes)
        return 0;
    memcpy(dst, t->data, bytes);
    return 1;
}

/* A fresh folder under /tmp holding copies of text_tiny's files. */
static int make_model_copy(char *dir, size_t cap)
{
    snprintf(dir, cap, "/tmp/tasam_test_text.XXXXXX");
    if (!mkdtemp(dir))
        return 0;
    static const char *const files[] = {"config.json", "vocab.txt", "model.safetensors"};
    for (int i = 0; i < 3; i++) {
        char src[64], dst[512];
        snprintf(src, sizeof src, "text_tiny/%s", files[i]);
        const char *p = t_fixture(src);
        size_t n;
        uint8_t *b = p ? t_read_file(p, &n) : NULL;
        if (!b)
            return 0;
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        FILE *f = fopen(dst, "wb");
        int ok = f && fwrite(b, 1, n, f) == n;
        if (f)
            fclose(f);
        free(b);
        if (!ok)
            return 0;
    }
    return 1;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int write_text(const char *dir, const char *name, const char *text)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f)
        return 0;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

/* Replace one "key": value in the copied config.json. */
static int set_config(const char *dir, const char *key, json_t *val)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_t *root = json_load_file(p, 0, NULL);
    if (!root)
        return 0;
    json_object_set_new(root, key, val);
    int ok = json_dump_file(root, p, 0) == 0;
    json_decref(root);
    return ok;
}

/* Load dir and expect failure with `code` and every `needle` in the
 * message. */
static int load_fails(const char *dir, int code, const char *needle1, const char *needle2)
{
    eng_backend *be = NULL;
    hn_text *t = NULL;
    if (eng_backend_cpu_create(&be, 1))
        return 0;
    int rc = hn_text_load(&t, dir, be, 2);
    const char *m = eng_last_error();
    /* code 1: any error */
    int ok = (code == 1 ? rc < 0 : rc == code) && !t && strstr(m, needle1) &&
             (!needle2 || strstr(m, needle2));
    if (!ok)
        fprintf(stderr, "  load %s: rc %d, want %d; message \"%s\"\n", dir, rc, code, m);
    hn_text_destroy(t);
    eng_backend_destroy(be);
    return ok;
}

/* ---- tokenizer unit tests (built-in vocabulary) ---- */

static void test_wordpiece_basics(void)
{
    hn_wordpiece *wp = test_wp();
    T_REQUIRE(wp, "test vocab: %s", eng_last_error());
    T_CHECK(hn_wordpiece_size(wp) == 26, "size %d", hn_wordpiece_size(wp));
    T_CHECK(strcmp(hn_wordpiece_token(wp, 5), "##want") == 0, "token 5");
    T_CHECK(hn_wordpiece_token(wp, 26) == NULL && hn_wordpiece_token(wp, -1) == NULL, "range");
    /* greedy longest match with ## pieces */
    T_CHECK(ids_are(wp, "unwantable", (int[]){2, 4, 5, 6, 3, -1}), "unwantable");
    T_CHECK(ids_are(wp, "abc ab", (int[]){2, 11, 8, 9, 3, -1}), "abc ab");
    /* a word that cannot be pieced is one [UNK], whatever pieces matched */
    T_CHECK(ids_are(wp, "abz want", (int[]){2, 1, 7, 3, -1}), "abz");
    /* lower-case, accents stripped, punctuation split, whitespace kinds */
    T_CHECK(ids_are(wp, "  CAFÉ,\tHello!\n\r wORLD. ", (int[]){2, 15, 12, 20, 13, 21, 14, 3, -1}),
            "cafe hello world");
    /* decomposed accent (e + U+0301) gives the same */
    T_CHECK(ids_are(wp, "cafe\xcc\x81", (int[]){2, 15, 3, -1}), "combining acute");
    /* CJK ideographs are words of their own, even inside a word */
    T_CHECK(ids_are(wp, "x中文x", (int[]){2, 18, 16, 17, 18, 3, -1}), "cjk");
    /* controls and format characters vanish; U+2028 and NBSP separate */
    T_CHECK(ids_are(wp, "hel\x01lo\xe2\x80\x8bworld", (int[]){2, 1, 3, -1}), "zwsp joins");
    T_CHECK(ids_are(wp, "hel\x7flo", (int[]){2, 20, 3, -1}), "DEL dropped");
    T_CHECK(ids_are(wp, "hello\xe2\x80\xa8world\xc2\xa0x", (int[]){2, 20, 21, 18, 3, -1}),
            "U+2028 and NBSP separate");
    /* Greek: capital sigma lower-cases to U+03C3 everywhere (tokenizers'
     * per-character rule), final or not */
    T_CHECK(ids_are(wp, "Σ", (int[]){2, 24, 3, -1}), "sigma");
    /* empty and blank */
    T_CHECK(ids_are(wp, "", (int[]){2, 3, -1}), "empty");
    T_CHECK(ids_are(wp, " \t\n ", (int[]){2, 3, -1}), "blank");
    hn_wordpiece_destroy(wp);
}

static void test_wordpiece_long_words(void)
{
    hn_wordpiece *wp = test_wp();
    T_REQUIRE(wp, "test vocab: %s", eng_last_error());
    char w[256];
    /* 100 characters: pieced (x ##x ##x ...); 101: [UNK] */
    memset(w, 'x', 100);
    w[100] = '\0';
    int32_t ids[128];
    int n = 0;
    T_CHECK(hn_wordpiece_encode(wp, w, 100, 128, ids, NULL, &n) == 0 && n == 102 && ids[1] == 18 &&
                ids[2] == 19 && ids[100] == 19 && ids[101] == 3,
            "100 x: n %d", n);
    memset(w, 'x', 101);
    w[101] = '\0';
    T_CHECK(ids_are(wp, w, (int[]){2, 1, 3, -1}), "101 x is [UNK]");
    /* Characters are counted after accents are stripped: 100 x "x" + U+0301
     * (300 bytes) is a 100-character word; 101 of them is [UNK]. */
    char acc[400];
    for (int i = 0; i < 101; i++)
        memcpy(acc + 3 * i, "x\xcc\x81", 3);
    T_CHECK(hn_wordpiece_encode(wp, acc, 300, 128, ids, NULL, &n) == 0 && n == 102 &&
                ids[1] == 18 && ids[101] == 3,
            "100 accented x: n %d", n);
    T_CHECK(hn_wordpiece_encode(wp, acc, 303, 128, ids, NULL, &n) == 0 && n == 3 && ids[1] == 1,
            "101 accented x: n %d", n);
    hn_wordpiece_destroy(wp);
}

static void test_wordpiece_truncation(void)
{
    hn_wordpiece *wp = test_wp();
    T_REQUIRE(wp, "test vocab: %s", eng_last_error());
    int32_t ids[8], mask[8];
    int n = 0;
    /* max_len 5: [CLS] 3 tokens [SEP]; the word "unwantable" may be cut */
    T_CHECK(hn_wordpiece_encode(wp, "hello unwantable world", 22, 5, ids, mask, &n) == 0 &&
                n == 5 && ids[0] == 2 && ids[1] == 20 && ids[2] == 4 && ids[3] == 5 &&
                ids[4] == 3 && mask[4] == 1,
            "truncated: n %d", n);
    T_CHECK(hn_wordpiece_encode(wp, "hello", 5, 2, ids, mask, &n) == 0 && n == 2 && ids[0] == 2 &&
                ids[1] == 3,
            "max_len 2");
    T_CHECK(hn_wordpiece_encode(wp, "hello", 5, 1, ids, mask, &n) == ENG_EINVAL, "max_len 1");
    hn_wordpiece_destroy(wp);
}

static void test_wordpiece_bad_utf8(void)
{
    hn_wordpiece *wp = test_wp();
    T_REQUIRE(wp, "test vocab: %s", eng_last_error());
    static const struct {
        const char *s;
        size_t n;
    } bad[] = {
        {"\x80", 1},             /* lone continuation */
        {"a\xc0\x80", 3},        /* overlong NUL */
        {"\xe0\x80\xaf", 3},     /* overlong '/' */
        {"\xed\xa0\x80", 3},     /* surrogate */
        {"\xf4\x90\x80\x80", 4}, /* over U+10FFFF */
        {"\xf5\x80\x80\x80", 4}, /* invalid lead */
        {"ok \xe2\x82", 5},      /* truncated at the end */
        {"\xe2\x28\xa1", 3},     /* bad continuation */
        {"\xff", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t ids[16];
        int n = -1;
        int rc = hn_wordpiece_encode(wp, bad[i].s, bad[i].n, 16, ids, NULL, &n);
        T_CHECK(rc == ENG_EINVAL && strstr(eng_last_error(), "offset"), "case %zu: rc %d (%s)", i,
                rc, eng_last_error());
    }
    /* valid edge cases */
    int32_t ids[16];
    int n;
    T_CHECK(hn_wordpiece_encode(wp, "\xf4\x8f\xbf\xbf \xef\xbf\xbd", 8, 16, ids, NULL, &n) == 0 &&
                n == 3 && ids[1] == 1,
            "U+10FFFF is [UNK], U+FFFD dropped");
    /* NUL is dropped as BERT's text cleaning drops control characters */
    T_CHECK(hn_wordpiece_encode(wp, "ab\0c", 4, 16, ids, NULL, &n) == 0 && n == 3 && ids[1] == 11,
            "\"ab\\0c\" is \"abc\": n %d id %d", n, ids[1]);
    hn_wordpiece_destroy(wp);
}

static void test_wordpiece_vocab_errors(void)
{
    hn_wordpiece *wp = NULL;
    T_CHECK(hn_wordpiece_create(&wp, "", 0, "v") == ENG_EFORMAT && !wp, "empty vocab");
    T_CHECK(hn_wordpiece_create(&wp, "[CLS]\n[SEP]\nabc\n", 16, "v") == ENG_EFORMAT && !wp &&
                strstr(eng_last_error(), "[UNK]"),
            "no [UNK]: %s", eng_last_error());
    /* CRLF lines, no final newline, a duplicate (the last id wins) */
    const char crlf[] = "[UNK]\r\n[CLS]\r\n[SEP]\r\nab\r\nab";
    T_REQUIRE(hn_wordpiece_create(&wp, crlf, sizeof crlf - 1, "v") == 0, "crlf: %s",
              eng_last_error());
    int32_t ids[4];
    int n;
    T_CHECK(hn_wordpiece_size(wp) == 5, "size %d", hn_wordpiece_size(wp));
    T_CHECK(hn_wordpiece_encode(wp, "AB", 2, 4, ids, NULL, &n) == 0 && n == 3 && ids[0] == 1 &&
                ids[1] == 4 && ids[2] == 2,
            "crlf ids %d %d %d", ids[0], ids[1], ids[2]);
    hn_wordpiece_destroy(wp);
    T_CHECK(hn_wordpiece_load(&wp, "/nonexistent/vocab.txt") == ENG_ENOTFOUND && !wp &&
                strstr(eng_last_error(), "/nonexistent/vocab.txt"),
            "missing file");
}

/* ---- fixtures: tokens ---- */

static void test_golden_tokens(void)
{
    T_NEED_FIXTURES();
    json_t *cases = load_cases();
    T_REQUIRE(cases, "text_cases.json");
    const char *s[N_CASES];
    size_t len[N_CASES];
    hn_wordpiece *wp = NULL;
    eng_ckpt *g = NULL;
    int32_t gid[N_CASES * GOLD_T], gmask[N_CASES * GOLD_T];
    T_REQUIRE(cases_strings(cases, s, len), "strings");
    T_REQUIRE(hn_wordpiece_load(&wp, t_fixture("text_tiny/vocab.txt")) == 0, "vocab: %s",
              eng_last_error());
    if (eng_ckpt_open(&g, t_fixture("golden_text_tiny.safetensors")) ||
        !golden(g, "input_ids", gid, sizeof gid) ||
        !golden(g, "attention_mask", gmask, sizeof gmask)) {
        T_CHECK(0, "golden_text_tiny.safetensors: %s", eng_last_error());
        goto done;
    }
    json_t *toks = json_object_get(cases, "tokens");
    int max_len = (int)json_integer_value(json_object_get(cases, "max_length"));
    T_CHECK(max_len == 64, "max_length %d", max_len);
    for (int i = 0; i < N_CASES; i++) {
        int32_t ids[64], mask[64];
        int n = 0;
        int rc = hn_wordpiece_encode(wp, s[i], len[i], 64, ids, mask, &n);
        T_CHECK(rc == 0, "case %d: %s", i, eng_last_error());
        json_t *want = json_array_get(toks, (size_t)i);
        T_CHECK(n == (int)json_array_size(want), "case %d: %d tokens, want %zu", i, n,
                json_array_size(want));
        for (int k = 0; k < n && k < (int)json_array_size(want); k++) {
            const char *tok = hn_wordpiece_token(wp, ids[k]);
            const char *w = json_string_value(json_array_get(want, (size_t)k));
            T_CHECK(tok && w && strcmp(tok, w) == 0, "case %d token %d: %s, want %s", i, k,
                    tok ? tok : "?", w ? w : "?");
        }
        for (int k = 0; k < 64; k++) {
            int32_t wi = k < GOLD_T ? gid[i * GOLD_T + k] : 0;
            int32_t wm = k < GOLD_T ? gmask[i * GOLD_T + k] : 0;
            T_CHECK(ids[k] == wi && mask[k] == wm, "case %d pos %d: id %d mask %d, want %d %d", i,
                    k, ids[k], mask[k], wi, wm);
        }
    }
done:
    eng_ckpt_close(g);
    hn_wordpiece_destroy(wp);
    json_decref(cases);
}

/* ---- fixtures: encoder ---- */

static void test_golden_encoder(void)
{
    T_NEED_FIXTURES();
    json_t *cases = load_cases();
    T_REQUIRE(cases, "text_cases.json");
    const char *s[N_CASES];
    size_t len[N_CASES];
    eng_backend *be = NULL;
    hn_text *t = NULL;
    eng_ckpt *g = NULL;
    static float gh[N_CASES * GOLD_T * TINY_H], hid[N_CASES * GOLD_T * TINY_H];
    static float ge[N_CASES * TINY_H], emb[N_CASES * TINY_H];
    static int32_t gid[N_CASES * GOLD_T], ids[N_CASES * GOLD_T], mask[N_CASES * GOLD_T];
    T_REQUIRE(cases_strings(cases, s, len), "strings");
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0, "cpu backend");
    if (hn_text_load(&t, tiny_model(), be, 4)) {
        T_CHECK(0, "load: %s", eng_last_error());
        goto done;
    }
    T_CHECK(hn_text_dim(t) == TINY_H && hn_text_max_len(t) == 64, "dim %d max_len %d",
            hn_text_dim(t), hn_text_max_len(t));
    T_CHECK(strcmp(hn_text_describe(t), "text_tiny (bert, 2 layers, 64-d)") == 0, "describe: %s",
            hn_text_describe(t));
    if (eng_ckpt_open(&g, t_fixture("golden_text_tiny.safetensors")) ||
        !golden(g, "last_hidden_state", gh, sizeof gh) || !golden(g, "embeddings", ge, sizeof ge) ||
        !golden(g, "input_ids", gid, sizeof gid)) {
        T_CHECK(0, "golden_text_tiny.safetensors: %s", eng_last_error());
        goto done;
    }
    /* 10 texts with max_batch 4: three forwards of 4, 4 and 2 texts. */
    int rc = hn_text_embed_debug(t, s, len, N_CASES, GOLD_T, emb, hid, ids, mask);
    T_REQUIRE(rc == 0, "embed: %s", eng_last_error());
    T_CHECK(memcmp(ids, gid, sizeof ids) == 0, "input_ids differ");
    size_t w;
    double dh = t_max_abs_diff(hid, gh, sizeof gh / sizeof gh[0], &w);
    printf("  last_hidden_state max |diff| %.3g (at %zu)\n", dh, w);
    T_CHECK(dh <= 1e-4, "last_hidden_state max |diff| %g at %zu: %g vs %g", dh, w, hid[w], gh[w]);
    double de = t_max_abs_diff(emb, ge, sizeof ge / sizeof ge[0], &w);
    printf("  embeddings max |diff| %.3g (at %zu)\n", de, w);
    T_CHECK(de <= 1e-4, "embeddings max |diff| %g at %zu", de, w);

    /* The plain API pads each batch to its longest: same embeddings. */
    static float e2[N_CASES * TINY_H];
    T_REQUIRE(hn_text_embed(t, s, len, N_CASES, e2) == 0, "embed: %s", eng_last_error());
    de = t_max_abs_diff(e2, ge, sizeof ge / sizeof ge[0], &w);
    T_CHECK(de <= 1e-4, "hn_text_embed max |diff| %g", de);
    /* NULL lens: NUL-terminated texts */
    T_REQUIRE(hn_text_embed(t, s, NULL, N_CASES, e2) == 0, "embed: %s", eng_last_error());
    T_CHECK(t_max_abs_diff(e2, ge, sizeof ge / sizeof ge[0], NULL) <= 1e-4, "NULL lens");
done:
    eng_ckpt_close(g);
    hn_text_destroy(t);
    eng_backend_destroy(be);
    json_decref(cases);
}

static void test_batch_equals_singles(void)
{
    T_NEED_FIXTURES();
    json_t *cases = load_cases();
    T_REQUIRE(cases, "text_cases.json");
    const char *s[N_CASES];
    size_t len[N_CASES];
    eng_backend *be = NULL;
    hn_text *t = NULL;
    float batch[N_CASES * TINY_H], one[N_CASES * TINY_H];
    T_REQUIRE(cases_strings(cases, s, len), "strings");
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0, "cpu backend");
    if (hn_text_load(&t, tiny_model(), be, N_CASES)) {
        T_CHECK(0, "load: %s", eng_last_error());
        goto done;
    }
    T_REQUIRE(hn_text_embed(t, s, len, N_CASES, batch) == 0, "batch: %s", eng_last_error());
    for (int i = 0; i < N_CASES; i++)
        T_CHECK(hn_text_embed(t, &s[i], &len[i], 1, one + i * TINY_H) == 0, "single %d", i);
    double d = t_max_abs_diff(batch, one, N_CASES * TINY_H, NULL);
    printf("  batch of 10 vs 10 singles: max |diff| %.3g\n", d);
    T_CHECK(d <= 1e-5, "batch vs singles max |diff| %g", d);
    for (int i = 0; i < N_CASES; i++) {
        double ss = 0;
        for (int h = 0; h < TINY_H; h++)
            ss += (double)batch[i * TINY_H + h] * batch[i * TINY_H + h];
        T_CHECK(fabs(ss - 1) < 1e-5, "text %d: norm^2 %g", i, ss);
    }
    /* n = 0 is a no-op */
    T_CHECK(hn_text_embed(t, NULL, NULL, 0, NULL) == 0, "n = 0");
done:
    hn_text_destroy(t);
    eng_backend_destroy(be);
    json_decref(cases);
}

static void test_hostile_text(void)
{
    T_NEED_FIXTURES();
    eng_backend *be = NULL;
    hn_text *t = NULL;
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0, "cpu backend");
    if (hn_text_load(&t, tiny_model(), be, 2)) {
        T_CHECK(0, "load: %s", eng_last_error());
        hn_text_destroy(t);
        eng_backend_destroy(be);
        return;
    }
    float e[2 * TINY_H];
    const char *bad[2] = {"fine text", "bad \xc3\x28 text"};
    size_t bl[2] = {9, 12};
    int rc = hn_text_embed(t, bad, bl, 2, e);
    T_CHECK(rc == ENG_EINVAL && strstr(eng_last_error(), "text 1:") &&
                strstr(eng_last_error(), "UTF-8"),
            "invalid UTF-8: rc %d, %s", rc, eng_last_error());
    /* a NUL byte is dropped like other control characters: "a\0b" is "ab" */
    const char *nul[2] = {"a\0b", "ab"};
    size_t nl[2] = {3, 2};
    rc = hn_text_embed(t, nul, nl, 2, e);
    T_CHECK(rc == 0 && t_max_abs_diff(e, e + TINY_H, TINY_H, NULL) == 0, "NUL: rc %d, %s", rc,
            rc ? eng_last_error() : "embeddings differ");
    /* a good call after the errors still works */
    T_CHECK(hn_text_embed(t, bad, bl, 1, e) == 0, "after errors: %s", eng_last_error());

    /* 100 KB: tokenized to the maximum length, then embedded */
    size_t big = 100 * 1024;
    char *s = malloc(big);
    T_REQUIRE(s, "malloc");
    for (size_t i = 0; i < big; i++)
        s[i] = "segment the orange fruits, "[i % 27];
    int32_t ids[64], mask[64];
    int n = 0;
    rc = hn_text_tokenize(t, s, big, 0, ids, mask, &n);
    T_CHECK(rc == 0 && n == 64 && ids[0] == 3 && ids[63] == 4 && mask[63] == 1,
            "100 KB: rc %d n %d", rc, n);
    const char *bs[1] = {s};
    T_CHECK(hn_text_embed(t, bs, &big, 1, e) == 0, "embed 100 KB: %s", eng_last_error());
    /* one 100 KB word: [UNK] */
    memset(s, 'q', big);
    rc = hn_text_tokenize(t, s, big, 0, ids, mask, &n);
    T_CHECK(rc == 0 && n == 3 && ids[1] == 2, "100 KB word: rc %d n %d id %d", rc, n, ids[1]);
    /* 100 KB of combining marks and CJK */
    for (size_t i = 0; i + 3 <= big; i += 3)
        memcpy(s + i, (i / 3) % 2 ? "\xe4\xb8\xad" : "\xe3\x80\x80", 3);
    rc = hn_text_tokenize(t, s, big - big % 3, 16, ids, mask, &n);
    T_CHECK(rc == 0 && n == 16, "100 KB CJK: rc %d n %d", rc, n);
    for (size_t i = 0; i + 2 <= big; i += 2)
        memcpy(s + i, "\xcc\x81", 2);
    rc = hn_text_tokenize(t, s, big, 16, ids, mask, &n);
    T_CHECK(rc == 0 && n == 2, "100 KB of accents: rc %d n %d", rc, n);
    free(s);

    /* empty -> [CLS] [SEP], padded */
    rc = hn_text_tokenize(t, "", 0, 8, ids, mask, &n);
    T_CHECK(rc == 0 && n == 2 && ids[0] == 3 && ids[1] == 4 && ids[2] == 0 && mask[2] == 0,
            "empty: rc %d n %d", rc, n);
    /* seq_len out of range, hidden without seq_len */
    float h[TINY_H * 2];
    T_CHECK(hn_text_embed_debug(t, bad, bl, 1, 65, e, NULL, NULL, NULL) == ENG_EINVAL,
            "seq_len 65");
    T_CHECK(hn_text_embed_debug(t, bad, bl, 1, 0, e, h, NULL, NULL) == ENG_EINVAL,
            "hidden without seq_len");
    hn_text_destroy(t);
    eng_backend_destroy(be);
}

/* ---- hashed fallback ---- */

static void test_hashed(void)
{
    hn_text *t = NULL;
    T_REQUIRE(hn_text_create_hashed(&t, 384) == 0, "create: %s", eng_last_error());
    T_CHECK(strcmp(hn_text_describe(t), "hashed n-gram fallback (384-d)") == 0, "describe %s",
            hn_text_describe(t));
    T_CHECK(hn_text_dim(t) == 384 && hn_text_wordpiece(t) == NULL, "dim");
    const char *s[5] = {"segment all round orange fruits", "Segment  ALL round\torange fruits ",
                        "highlight every suitcase", "", "segment all round orange fruit"};
    static float a[5 * 384], b[5 * 384];
    T_REQUIRE(hn_text_embed(t, s, NULL, 5, a) == 0, "embed: %s", eng_last_error());
    T_REQUIRE(hn_text_embed(t, s, NULL, 5, b) == 0, "embed again");
    T_CHECK(memcmp(a, b, sizeof a) == 0, "not deterministic");
    double dot01 = 0, dot02 = 0, dot04 = 0;
    for (int i = 0; i < 5; i++) {
        double ss = 0;
        for (int h = 0; h < 384; h++)
            ss += (double)a[i * 384 + h] * a[i * 384 + h];
        T_CHECK(fabs(ss - 1) < 1e-5, "text %d norm^2 %g", i, ss);
    }
    for (int h = 0; h < 384; h++) {
        dot01 += (double)a[h] * a[384 + h];
        dot02 += (double)a[h] * a[2 * 384 + h];
        dot04 += (double)a[h] * a[4 * 384 + h];
    }
    T_CHECK(dot01 > 0.99999, "case and whitespace should not matter: cos %g", dot01);
    T_CHECK(dot02 < 0.5, "different texts too close: cos %g", dot02);
    T_CHECK(dot04 > 0.5 && dot04 < 0.99, "similar texts: cos %g", dot04);
    /* fixed values: the fallback must not drift between builds */
    hn_text *t2 = NULL;
    T_REQUIRE(hn_text_create_hashed(&t2, 384) == 0, "create 2");
    T_REQUIRE(hn_text_embed(t2, s, NULL, 1, b) == 0, "embed 2");
    T_CHECK(memcmp(a, b, 384 * sizeof(float)) == 0, "second handle differs");
    hn_text_destroy(t2);
    const char *badv[1] = {"\xc3"};
    T_CHECK(hn_text_embed(t, badv, NULL, 1, a) == ENG_EINVAL, "invalid UTF-8");
    int32_t ids[4];
    int n;
    T_CHECK(hn_text_tokenize(t, "a", 1, 4, ids, NULL, &n) == ENG_EUNSUP, "tokenize");
    T_CHECK(hn_text_create_hashed(&t2, 0) == ENG_EINVAL && !t2, "dim 0");
    hn_text_destroy(t);
    hn_text_destroy(NULL);
}

/* ---- hostile model folders ---- */

static void test_bad_folders(void)
{
    T_NEED_FIXTURES();
    char dir[256];
    T_REQUIRE(load_fails("/nonexistent/model", ENG_ENOTFOUND, "config.json", NULL), "no folder");

    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    char p[400];
    snprintf(p, sizeof p, "%s/vocab.txt", dir);
    unlink(p);
    T_CHECK(load_fails(dir, ENG_ENOTFOUND, "vocab.txt", NULL), "missing vocab");
    remove_dir(dir);

    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    T_CHECK(load_fails(dir, 1, "model.safetensors", NULL), "missing weights");
    remove_dir(dir);

    static const struct {
        const char *key;
        long long val;
        int code;
        const char *needle;
    } ints[] = {
        {"hidden_size", 0, ENG_EFORMAT, "hidden_size"},
        {"hidden_size", 1000000, ENG_ELIMIT, "hidden_size"},
        {"hidden_size", 62, ENG_EFORMAT, "multiple"},
        {"num_hidden_layers", -1, ENG_EFORMAT, "num_hidden_layers"},
        {"num_hidden_layers", 100000, ENG_ELIMIT, "num_hidden_layers"},
        {"vocab_size", 1LL << 40, ENG_ELIMIT, "vocab_size"},
        {"vocab_size", 100, ENG_ESHAPE, "vocab_size"}, /* vocab.txt has 240 lines */
        {"intermediate_size", 96, ENG_ESHAPE, "intermediate.dense.weight"},
        {"max_position_embeddings", 1, ENG_EFORMAT, "max_position_embeddings"},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
        T_CHECK(set_config(dir, ints[i].key, json_integer(ints[i].val)), "set config");
        T_CHECK(load_fails(dir, ints[i].code, ints[i].needle, NULL), "%s = %lld", ints[i].key,
                ints[i].val);
        remove_dir(dir);
    }
    /* a huge model made of individually allowed sizes */
    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    set_config(dir, "hidden_size", json_integer(8192));
    set_config(dir, "num_hidden_layers", json_integer(128));
    T_CHECK(load_fails(dir, ENG_ELIMIT, "parameters", NULL), "too many parameters");
    remove_dir(dir);

    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    set_config(dir, "hidden_act", json_string("gelu_new"));
    T_CHECK(load_fails(dir, ENG_EUNSUP, "gelu_new", NULL), "hidden_act");
    remove_dir(dir);

    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    set_config(dir, "hidden_size", json_string("64"));
    T_CHECK(load_fails(dir, ENG_EFORMAT, "not an integer", NULL), "string size");
    remove_dir(dir);

    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    T_CHECK(write_text(dir, "config.json", "{\"hidden_size\": 64,"), "write");
    T_CHECK(load_fails(dir, ENG_EFORMAT, "config.json", NULL), "broken JSON");
    T_CHECK(write_text(dir, "config.json", "[1, 2]"), "write");
    T_CHECK(load_fails(dir, ENG_EFORMAT, "not a JSON object", NULL), "JSON array");
    remove_dir(dir);

    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    T_CHECK(write_text(dir, "vocab.txt", "a\nb\n"), "write");
    T_CHECK(load_fails(dir, ENG_EFORMAT, "[UNK]", "vocab.txt"), "vocab without [UNK]");
    remove_dir(dir);

    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    T_CHECK(write_text(dir, "model.safetensors", "not a safetensors file at all"), "write");
    T_CHECK(load_fails(dir, 1, "model.safetensors", NULL), "garbage weights");
    remove_dir(dir);
}

/* Rewrite text_tiny's weights with one tensor's shape changed (same bytes),
 * or with every key prefixed "bert.". */
static int rewrite_weights(const char *dir, const char *bad_name, const char *prefix)
{
    eng_ckpt *c = NULL;
    if (eng_ckpt_open(&c, t_fixture("text_tiny/model.safetensors")))
        return 0;
    size_t n = eng_ckpt_count(c);
    eng_st_entry *e = calloc(n, sizeof *e);
    char **names = calloc(n, sizeof *names);
    int ok = e && names;
    for (size_t i = 0; ok && i < n; i++) {
        const eng_ckpt_tensor *t = eng_ckpt_at(c, i);
        names[i] = malloc(strlen(t->name) + 8);
        if (!names[i]) {
            ok = 0;
            break;
        }
        sprintf(names[i], "%s%s", prefix, t->name);
        e[i].name = names[i];
        e[i].dtype = t->dtype;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof e[i].shape);
        e[i].data = t->data;
        if (bad_name && strcmp(t->name, bad_name) == 0 && t->ndim == 2) {
            e[i].shape[0] = t->shape[1]; /* transposed shape */
            e[i].shape[1] = t->shape[0];
        }
    }
    char p[400];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    ok = ok && eng_safetensors_write(p, e, n, NULL, 0) == 0;
    for (size_t i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    free(e);
    eng_ckpt_close(c);
    return ok;
}

static void test_bad_weights(void)
{
    T_NEED_FIXTURES();
    char dir[256];
    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    T_REQUIRE(rewrite_weights(dir, "encoder.layer.1.output.dense.weight", ""), "rewrite: %s",
              eng_last_error());
    T_CHECK(load_fails(dir, ENG_ESHAPE, "model.safetensors", "encoder.layer.1.output.dense.weight"),
            "wrong shape");
    remove_dir(dir);

    /* a "bert." export loads and gives the same embeddings */
    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    T_REQUIRE(rewrite_weights(dir, NULL, "bert."), "rewrite: %s", eng_last_error());
    eng_backend *be = NULL;
    hn_text *a = NULL, *b = NULL;
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0, "cpu backend");
    int ra = hn_text_load(&a, dir, be, 1);
    T_CHECK(ra == 0, "bert. prefix: %s", eng_last_error());
    int rb = hn_text_load(&b, tiny_model(), be, 1);
    if (ra == 0 && rb == 0) {
        const char *s[1] = {"segment all round orange fruits"};
        float ea[TINY_H], eb[TINY_H];
        T_CHECK(hn_text_embed(a, s, NULL, 1, ea) == 0 && hn_text_embed(b, s, NULL, 1, eb) == 0,
                "embed");
        T_CHECK(memcmp(ea, eb, sizeof ea) == 0, "prefixed export differs");
    }
    hn_text_destroy(a);
    hn_text_destroy(b);
    eng_backend_destroy(be);
    remove_dir(dir);

    /* a sentence_bert_config.json caps the length */
    T_REQUIRE(make_model_copy(dir, sizeof dir), "copy text_tiny");
    T_CHECK(write_text(dir, "sentence_bert_config.json", "{\"max_seq_length\": 16}"), "write");
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0, "cpu backend");
    a = NULL;
    T_CHECK(hn_text_load(&a, dir, be, 1) == 0 && hn_text_max_len(a) == 16, "max_seq_length");
    hn_text_destroy(a);
    eng_backend_destroy(be);
    remove_dir(dir);
}

/* What --text-model takes (hn_text_open): hashed, hashed-D, a folder, a
 * name looked up as models/NAME (from a temporary working directory with
 * models/tiny -> the fixture), and the errors for the others. */
static void test_text_open(void)
{
    T_NEED_FIXTURES();
    eng_backend *be = NULL;
    hn_text *t = NULL;
    char cwd[PATH_MAX], dir[] = "/tmp/tasam-textopen-XXXXXX", abs_tiny[PATH_MAX], link[PATH_MAX];
    T_REQUIRE(eng_backend_cpu_create(&be, 1) == 0 && getcwd(cwd, sizeof cwd), "setup");
    T_CHECK(hn_text_open(&t, "hashed", 0, be, 1) == 0 && !hn_text_wordpiece(t) &&
                hn_text_dim(t) == 384,
            "hashed: %s", eng_last_error());
    hn_text_destroy(t);
    T_CHECK(hn_text_open(&t, "hashed", 96, be, 1) == 0 && hn_text_dim(t) == 96, "hashed, 96");
    hn_text_destroy(t);
    T_CHECK(hn_text_open(&t, "hashed-64", 384, be, 1) == 0 && hn_text_dim(t) == 64, "hashed-64");
    hn_text_destroy(t);
    T_CHECK(hn_text_open(&t, "hashed-8", 0, be, 1) == ENG_EINVAL && !t, "hashed-8 refused");
    T_CHECK(hn_text_open(&t, tiny_model(), 0, be, 1) == 0 && hn_text_wordpiece(t) &&
                hn_text_dim(t) == TINY_H,
            "folder: %s", eng_last_error());
    hn_text_destroy(t);
    T_CHECK(hn_text_open(&t, "no/such/dir", 0, be, 1) == ENG_ENOTFOUND && !t &&
                strstr(eng_last_error(), "no/such/dir"),
            "missing folder: %s", eng_last_error());
    T_REQUIRE(realpath(tiny_model(), abs_tiny) && mkdtemp(dir), "temp dir");
    snprintf(link, sizeof link, "%s/models", dir);
    T_REQUIRE(mkdir(link, 0755) == 0, "mkdir");
    snprintf(link, sizeof link, "%s/models/tiny", dir);
    T_REQUIRE(symlink(abs_tiny, link) == 0 && chdir(dir) == 0, "symlink");
    T_CHECK(hn_text_open(&t, "tiny", 0, be, 1) == 0 && hn_text_dim(t) == TINY_H,
            "a name from models/: %s", eng_last_error());
    hn_text_destroy(t);
    T_CHECK(hn_text_open(&t, NULL, 0, be, 1) == ENG_ENOTFOUND &&
                strstr(eng_last_error(), "models/" HN_TEXT_DEFAULT_MODEL) &&
                strstr(eng_last_error(), "deploy/fetch-text-model.sh") &&
                strstr(eng_last_error(), "--text-model"),
            "the default, absent: %s", eng_last_error());
    T_CHECK(chdir(cwd) == 0, "chdir back");
    unlink(link);
    snprintf(link, sizeof link, "%s/models", dir);
    rmdir(link);
    rmdir(dir);
    eng_backend_destroy(be);
}

int main(void)
{
    T_RUN(test_wordpiece_basics);
    T_RUN(test_wordpiece_long_words);
    T_RUN(test_wordpiece_truncation);
    T_RUN(test_wordpiece_bad_utf8);
    T_RUN(test_wordpiece_vocab_errors);
    T_RUN(test_golden_tokens);
    T_RUN(test_golden_encoder);
    T_RUN(test_batch_equals_singles);
    T_RUN(test_hostile_text);
    T_RUN(test_hashed);
    T_RUN(test_text_open);
    T_RUN(test_bad_folders);
    T_RUN(test_bad_weights);
    return t_summary("test_text");
}
