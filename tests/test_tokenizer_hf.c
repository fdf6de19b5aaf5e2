/*
 * tests/test_tokenizer_hf.c: the WordPiece tokenizer against Hugging Face's
 * tokenizers library (what sentence-transformers runs), on every code point,
 * and the parity cases that need no library: literal special tokens, NUL, and
 * the characters where the library's Unicode data differs from Python's
 * (punctuation U+2E43-U+2E4F, the marks U+08D3-U+08E2, CJK Extension E from
 * U+2B820).
 *
 * The reference side is tests/hf_tokenizer.py, run with the Python of
 * build/venv (make pytools installs tokenizers there; $TASAM_PYTHON overrides
 * it). Its output is kept in build/tokenizer-hf/ and rebuilt when the script
 * changes. Without the library the test skips and says so.
 */
#include <sys/stat.h>
#include <unistd.h>

#include "engine/error.h"
#include "hypernet/text.h"
#include "tests/harness.h"

#define MAX_IDS 64

/* ---- cases that need no library: expected ids written by hand ---- */

static const char parity_vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n" /* 0-4 */
                                   "find\nthe\nthing\nun\n##k\n"          /* 5-9 */
                                   "[\n]\na\nb\n##b\n"                    /* 10-14 */
                                   "x\n##x\n##\xe2\xb9\x83\n"             /* 15-17: ##U+2E43 */
                                   "##\xe0\xa3\x93\n"                     /* 18: ##U+08D3 */
                                   "##\xf0\xab\xa0\xa0\n"                 /* 19: ##U+2B820 */
                                   "\xf0\xab\xa4\xa0\n"                   /* 20: U+2B920 */
                                   "\xe2\xb9\x83\n"                       /* 21: U+2E43 */
                                   "cls\n";                               /* 22 */

/* Tokenize s (len bytes) and compare with want (terminated by -1). */
static int ids_are(const hn_wordpiece *wp, const char *s, size_t len, const int *want)
{
    int32_t ids[MAX_IDS];
    int n = 0, nw = 0;
    while (want[nw] >= 0)
        nw++;
    int rc = hn_wordpiece_encode(wp, s, len, MAX_IDS, ids, NULL, &n);
    int ok = rc == 0 && n == nw;
    for (int i = 0; ok && i < n; i++)
        ok = ids[i] == want[i];
    if (!ok) {
        fprintf(stderr, "  rc %d (%s), got", rc, rc ? eng_last_error() : "");
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    return ok;
}

#define IDS(s, ...) ids_are(wp, s, sizeof s - 1, (int[]){__VA_ARGS__, -1})

static void test_special_tokens(void)
{
    hn_wordpiece *wp = NULL;
    T_REQUIRE(hn_wordpiece_create(&wp, parity_vocab, sizeof parity_vocab - 1, "parity") == 0,
              "vocab: %s", eng_last_error());
    /* the example: [UNK] is the token, not [ un ##k ] */
    T_CHECK(IDS("find the [UNK] thing", 2, 5, 6, 1, 7, 3), "[UNK] literal");
    /* case-sensitive, as the library's added tokens are */
    T_CHECK(IDS("find the [unk] thing", 2, 5, 6, 10, 8, 9, 11, 7, 3), "[unk] is text");
    T_CHECK(IDS("[Cls]", 2, 10, 22, 11, 3), "[Cls] is text");
    /* matched anywhere, even inside a word, and next to each other */
    T_CHECK(IDS("a[SEP]b", 2, 12, 3, 13, 3), "inside a word");
    T_CHECK(IDS("[MASK][PAD]", 2, 4, 0, 3), "adjacent");
    T_CHECK(IDS("[[CLS]]", 2, 10, 2, 11, 3), "bracketed");
    /* not a whole token: text */
    T_CHECK(IDS("[CLS", 2, 10, 22, 3), "unterminated");
    /* a mark after a special token belongs to nothing and is stripped */
    T_CHECK(IDS("x[PAD]\xcc\x81x", 2, 15, 0, 15, 3), "mark after a special token");
    /* the special tokens count towards max_len like any token */
    int32_t ids[4];
    int n = 0;
    T_CHECK(hn_wordpiece_encode(wp, "[MASK] [MASK] [MASK]", 20, 4, ids, NULL, &n) == 0 && n == 4 &&
                ids[1] == 4 && ids[2] == 4 && ids[3] == 3,
            "truncated: n %d", n);
    hn_wordpiece_destroy(wp);

    /* a vocabulary without [MASK]: the literal is text */
    static const char no_mask[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[\n]\nmask\n";
    T_REQUIRE(hn_wordpiece_create(&wp, no_mask, sizeof no_mask - 1, "no mask") == 0, "vocab: %s",
              eng_last_error());
    T_CHECK(IDS("[MASK]", 2, 4, 6, 5, 3), "[MASK] not in the vocabulary");
    hn_wordpiece_destroy(wp);
}

static void test_nul_and_unicode_data(void)
{
    hn_wordpiece *wp = NULL;
    T_REQUIRE(hn_wordpiece_create(&wp, parity_vocab, sizeof parity_vocab - 1, "parity") == 0,
              "vocab: %s", eng_last_error());
    /* NUL is dropped like any control character: "x\0x" is "xx" */
    T_CHECK(IDS("x\0x", 2, 15, 16, 3), "NUL inside a word");
    T_CHECK(IDS("\0", 2, 3), "NUL alone");
    /* U+2E43 is punctuation in Unicode 14 but not in the library's data: it
     * stays inside the word */
    T_CHECK(IDS("x\xe2\xb9\x83x", 2, 15, 17, 16, 3), "U+2E43 is not punctuation");
    /* U+08D3 is a nonspacing mark in Unicode 14, unknown to the library's
     * data: kept, not stripped */
    T_CHECK(IDS("x\xe0\xa3\x93", 2, 15, 18, 3), "U+08D3 is kept");
    /* the library's CJK Extension E starts at U+2B920: U+2B820 is part of
     * the word, U+2B920 a word of its own */
    T_CHECK(IDS("x\xf0\xab\xa0\xa0", 2, 15, 19, 3), "U+2B820 is not CJK");
    T_CHECK(IDS("x\xf0\xab\xa4\xa0x", 2, 15, 20, 15, 3), "U+2B920 is CJK");
    hn_wordpiece_destroy(wp);
}

/* ---- every code point against the library ---- */

/* Contract: the reference output in build/tokenizer-hf/, made by
 * tests/hf_tokenizer.py unless already newer than the script. 0, 1 when the
 * library is not available (*why says so), -1 on failure. */
static int reference(const char *dir, char *why, size_t cap)
{
    struct stat script, cases;
    char path[512], cmd[1024];
    const char *py = getenv("TASAM_PYTHON");
    if (!py || !*py)
        py = "build/venv/bin/python3";
    snprintf(path, sizeof path, "%s/cases.bin", dir);
    if (stat("tests/hf_tokenizer.py", &script) != 0) {
        snprintf(why, cap, "tests/hf_tokenizer.py not found (run from the repository root)");
        return -1;
    }
    if (stat(path, &cases) == 0 && cases.st_mtime >= script.st_mtime)
        return 0;
    if (access(py, X_OK) != 0) {
        snprintf(why, cap,
                 "%s not found: make pytools (run by make test) installs Hugging Face tokenizers "
                 "into build/venv from PyPI",
                 py);
        return 1;
    }
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && '%s' tests/hf_tokenizer.py '%s'", dir, py, dir);
    int rc = system(cmd);
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 3) {
        snprintf(why, cap, "%s cannot import tokenizers (make pytools installs it from PyPI)", py);
        return 1;
    }
    if (rc != 0) {
        unlink(path);
        snprintf(why, cap, "tests/hf_tokenizer.py failed (status %d)", rc);
        return -1;
    }
    return 0;
}

static uint32_t rd32(FILE *f, int *ok)
{
    uint8_t b[4];
    if (fread(b, 1, 4, f) != 4) {
        *ok = 0;
        return 0;
    }
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void test_every_code_point(void)
{
    const char *dir = "build/tokenizer-hf";
    char why[512] = "", path[512], text[64];
    int st = reference(dir, why, sizeof why);
    if (st == 1)
        T_SKIP("%s", why);
    T_REQUIRE(st == 0, "%s", why);
    hn_wordpiece *wp = NULL;
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    T_REQUIRE(hn_wordpiece_load(&wp, path) == 0, "%s", eng_last_error());
    snprintf(path, sizeof path, "%s/cases.bin", dir);
    FILE *f = fopen(path, "rb");
    T_REQUIRE(f, "open %s", path);
    char magic[8];
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, "TSMTOK1\n", 8) == 0;
    long cases = 0, bad = 0;
    while (ok) {
        int32_t want[MAX_IDS], got[MAX_IDS];
        uint32_t len = rd32(f, &ok), nw;
        if (!ok) {
            ok = feof(f) != 0; /* a clean end */
            break;
        }
        if (len >= sizeof text || fread(text, 1, len, f) != len || (nw = rd32(f, &ok)) > MAX_IDS ||
            !ok || fread(want, 4, nw, f) != nw) {
            ok = 0;
            break;
        }
        int n = 0;
        int rc = hn_wordpiece_encode(wp, text, len, MAX_IDS, got, NULL, &n);
        int same = rc == 0 && n == (int)nw && memcmp(got, want, nw * sizeof *want) == 0;
        cases++;
        if (!same && bad++ < 20) {
            char hex[3 * sizeof text + 1] = "", g[256] = "", w[256] = "";
            for (uint32_t i = 0; i < len; i++)
                snprintf(hex + 3 * i, 4, "%02x ", (uint8_t)text[i]);
            for (int i = 0; i < n && i < 12; i++)
                snprintf(g + strlen(g), sizeof g - strlen(g), " %d", got[i]);
            for (uint32_t i = 0; i < nw && i < 12; i++)
                snprintf(w + strlen(w), sizeof w - strlen(w), " %d", want[i]);
            fprintf(stderr, "  text [%s]: ids%s, tokenizers%s (rc %d)\n", hex, g, w, rc);
        }
    }
    fclose(f);
    hn_wordpiece_destroy(wp);
    T_CHECK(ok, "%s is truncated or malformed after %ld cases", path, cases);
    T_CHECK(cases > 1114000, "only %ld cases", cases);
    T_CHECK(bad == 0, "%ld of %ld texts tokenize differently from Hugging Face tokenizers", bad,
            cases);
    fprintf(stderr, "  %ld texts compared with Hugging Face tokenizers\n", cases);
}

int main(void)
{
    T_RUN(test_special_tokens);
    T_RUN(test_nul_and_unicode_data);
    T_RUN(test_every_code_point);
    return t_summary("test_tokenizer_hf");
}
