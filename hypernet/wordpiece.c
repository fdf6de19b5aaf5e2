/*
 * hypernet/wordpiece.c: BERT's uncased tokenizer as Hugging Face's
 * tokenizers library runs it for sentence-transformers (the special tokens,
 * BertNormalizer, BertPreTokenizer, WordPiece, [CLS] ... [SEP]), character
 * for character:
 *
 *   0. the special tokens [PAD] [UNK] [CLS] [SEP] [MASK] written literally in
 *      the text (case-sensitive, anywhere, as the library's added tokens are
 *      matched before normalisation) are their own ids;
 *   1. clean: drop NUL, U+FFFD and control characters (Cc other than
 *      \t \n \r, Cf, Co); whitespace becomes a separator;
 *   2. every CJK ideograph becomes a word of its own;
 *   3. split on whitespace; for each piece: NFD with the nonspacing marks
 *      (Mn) dropped, then lower-case each character, then split off every
 *      punctuation character as a word of its own;
 *   4. WordPiece each word: greedy longest match first, continuation pieces
 *      spelled "##...", a word over 100 characters or one that cannot be
 *      pieced is [UNK].
 *
 * Where BERT's implementations disagree this follows the tokenizers library,
 * the one the real model is used with: "control" is Cc, Cf and Co (original
 * BERT: Cc, Cf; transformers' Python tokenizer: all of C*), accents are
 * stripped before lower-casing, lower-casing is per character (CPython's
 * str.lower() turns a word-final capital sigma into U+03C2), a NUL byte is
 * dropped, and every character class is the library's own, older Unicode
 * data (its CJK Extension E starts at U+2B920, not U+2B820).
 *
 * The character data comes from hypernet/unicode_tables.c, generated from
 * the library itself (see wordpiece_unicode.h); tests/test_tokenizer_hf.c
 * compares this file with it on every code point.
 *
 * Cost: linear in the input for steps 1-3 and at most (longest vocabulary
 * entry) lookups per character for step 4; work stops once max_len tokens
 * are known, so a 100 KB string costs what its first few hundred words cost
 * (plus one UTF-8 validation pass over all of it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "text.h"
#include "wordpiece_unicode.h"

#define WP_MAX_WORD_CHARS  100 /* BERT's max_input_chars_per_word */
#define WP_MAX_VOCAB_BYTES (64u << 20)
#define WP_MAX_VOCAB_IDS   (1 << 24)
#define WP_MAX_TOKEN_BYTES 1024 /* longer vocabulary lines can never match a word */
#define WP_N_SPECIAL       5
/* Cleaned-text entries at or above this stand for special token k (a code
 * point never reaches it). */
#define WP_SPECIAL_BASE 0x110000u

/* The tokens sentence-transformers' tokenizer.json lists as special added
 * tokens (matched in the raw text when the vocabulary holds them). */
static const char *const wp__special_names[WP_N_SPECIAL] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                            "[MASK]"};

struct hn_wordpiece {
    char *blob;       /* the vocabulary, each line NUL-terminated in place */
    uint32_t *off;    /* [n] start of token i in blob */
    uint32_t *len;    /* [n] bytes of token i */
    int n;            /* ids: lines of vocab.txt */
    int32_t *slot;    /* [cap] open-addressing hash table of ids, -1 = empty */
    uint32_t cap;     /* power of two, at least 2n */
    size_t max_bytes; /* longest token, in bytes (bounds the lookups) */
    int32_t unk, cls, sep;
    int32_t special[WP_N_SPECIAL]; /* ids of wp__special[] (-1: not in the vocabulary) */
};

/* ---- Unicode helpers (shared with text.c through wordpiece_unicode.h) ---- */

static const hn__uprop *wp__prop(uint32_t cp)
{
    size_t lo = 0, hi = hn__uprops_n; /* find the last entry with lo <= cp */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (hn__uprops[mid].lo <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return &hn__uprops[lo];
}

unsigned hn__uflags(uint32_t cp) { return wp__prop(cp)->flags; }

uint32_t hn__ulower_cp(uint32_t cp)
{
    if (cp < 0x80)
        return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    size_t lo = 0, hi = hn__ulower_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (hn__ulower[mid].cp == cp)
            return hn__ulower[mid].to;
        if (hn__ulower[mid].cp < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return cp;
}

/* The blocks BERT's _is_chinese_char lists, as the tokenizers library spells
 * them (not every CJK script: Hangul and kana are written with spaces and
 * are left to WordPiece). */
int hn__cjk(uint32_t cp) { return (hn__uflags(cp) & HN__U_CJK) != 0; }

/* Canonical decomposition of cp into d[4]; returns its length (1: none). */
static int wp__nfd(uint32_t cp, uint32_t d[4])
{
    if (cp >= 0xAC00 && cp < 0xAC00 + 11172) {
        /* Hangul syllable: algorithmic L V (T) (Unicode 3.12). */
        uint32_t s = cp - 0xAC00;
        d[0] = 0x1100 + s / 588;
        d[1] = 0x1161 + (s % 588) / 28;
        if (s % 28 == 0)
            return 2;
        d[2] = 0x11A7 + s % 28;
        return 3;
    }
    if (cp >= 0xC0) {
        size_t lo = 0, hi = hn__unfds_n;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (hn__unfds[mid].cp == cp) {
                const hn__unfd *e = &hn__unfds[mid];
                for (int i = 0; i < e->len; i++)
                    d[i] = hn__unfd_pool[e->off + i];
                return e->len;
            }
            if (hn__unfds[mid].cp < cp)
                lo = mid + 1;
            else
                hi = mid;
        }
    }
    d[0] = cp;
    return 1;
}

int hn__utf8_decode(const char *s, size_t len, uint32_t *cps, size_t *n_out)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = 0, i = 0;
    while (i < len) {
        uint32_t c = p[i], min;
        int extra;
        if (c < 0x80) {
            if (cps)
                cps[n] = c;
            n++;
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            extra = 1, c &= 0x1F, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2, c &= 0x0F, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3, c &= 0x07, min = 0x10000;
        } else {
            return eng_error(ENG_EINVAL, "text is not valid UTF-8 (byte 0x%02x at offset %zu)",
                             p[i], i);
        }
        if (len - i <= (size_t)extra)
            return eng_error(ENG_EINVAL,
                             "text is not valid UTF-8 (truncated sequence at offset "
                             "%zu)",
                             i);
        for (int k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return eng_error(ENG_EINVAL,
                                 "text is not valid UTF-8 (bad continuation byte "
                                 "at offset %zu)",
                                 i + k);
            c = c << 6 | (p[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return eng_error(ENG_EINVAL,
                             "text is not valid UTF-8 (overlong, surrogate or out "
                             "of range sequence at offset %zu)",
                             i);
        if (cps)
            cps[n] = c;
        n++;
        i += (size_t)extra + 1;
    }
    *n_out = n;
    return 0;
}

static size_t wp__utf8_put(uint32_t c, char *o)
{
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xC0 | c >> 6);
        o[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | c >> 12);
        o[1] = (char)(0x80 | (c >> 6 & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | c >> 18);
    o[1] = (char)(0x80 | (c >> 12 & 0x3F));
    o[2] = (char)(0x80 | (c >> 6 & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* ---- vocabulary ---- */

static uint32_t wp__hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static int32_t wp__find(const hn_wordpiece *wp, const char *s, size_t n)
{
    if (n > wp->max_bytes)
        return -1;
    uint32_t m = wp->cap - 1;
    for (uint32_t i = wp__hash(s, n) & m;; i = (i + 1) & m) {
        int32_t id = wp->slot[i];
        if (id < 0)
            return -1;
        if (wp->len[id] == n && memcmp(wp->blob + wp->off[id], s, n) == 0)
            return id;
    }
}

void hn_wordpiece_destroy(hn_wordpiece *wp)
{
    if (!wp)
        return;
    free(wp->blob);
    free(wp->off);
    free(wp->len);
    free(wp->slot);
    free(wp);
}

int hn_wordpiece_create(hn_wordpiece **out, const char *vocab, size_t len, const char *label)
{
    *out = NULL;
    if (!label)
        label = "vocabulary";
    if (len > WP_MAX_VOCAB_BYTES)
        return eng_error(ENG_ELIMIT, "%s: %zu bytes, over the %u MiB limit", label, len,
                         WP_MAX_VOCAB_BYTES >> 20);
    hn_wordpiece *wp = calloc(1, sizeof *wp);
    if (!wp)
        return eng_error(ENG_ENOMEM, "%s: out of memory", label);
    int rc = ENG_ENOMEM;
    wp->blob = malloc(len + 1);
    if (!wp->blob)
        goto err;
    memcpy(wp->blob, vocab, len);
    wp->blob[len] = '\0';

    /* Lines: a final line without '\n' still counts; a trailing '\n' does not
     * start an empty one (HF's load_vocab reads lines the same way). */
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += vocab[i] == '\n';
    if (len && vocab[len - 1] != '\n')
        lines++;
    if (lines == 0) {
        rc = eng_error(ENG_EFORMAT, "%s: empty vocabulary", label);
        goto err_msg;
    }
    if (lines > WP_MAX_VOCAB_IDS) {
        rc = eng_error(ENG_ELIMIT, "%s: %zu entries, over the limit of %d", label, lines,
                       WP_MAX_VOCAB_IDS);
        goto err_msg;
    }
    wp->n = (int)lines;
    wp->off = malloc(lines * sizeof *wp->off);
    wp->len = malloc(lines * sizeof *wp->len);
    wp->cap = 16;
    while (wp->cap < 2 * lines)
        wp->cap *= 2;
    wp->slot = malloc((size_t)wp->cap * sizeof *wp->slot);
    if (!wp->off || !wp->len || !wp->slot)
        goto err;
    memset(wp->slot, 0xff, (size_t)wp->cap * sizeof *wp->slot);

    size_t start = 0;
    for (int id = 0; id < wp->n; id++) {
        size_t end = start;
        while (end < len && wp->blob[end] != '\n')
            end++;
        size_t next = end + 1;
        /* Strip the line end ("\r\n" files too) but nothing else: a token may
         * be any bytes, as in the reference. */
        if (end > start && wp->blob[end - 1] == '\r')
            end--;
        wp->blob[end] = '\0';
        wp->off[id] = (uint32_t)start;
        wp->len[id] = (uint32_t)(end - start);
        start = next;
        if (wp->len[id] > WP_MAX_TOKEN_BYTES)
            continue; /* never matches: words are at most 100 characters */
        if (wp->len[id] > wp->max_bytes)
            wp->max_bytes = wp->len[id];
        /* A repeated token keeps its last id, as a Python dict built line by
         * line does. */
        const char *s = wp->blob + wp->off[id];
        uint32_t m = wp->cap - 1;
        for (uint32_t i = wp__hash(s, wp->len[id]) & m;; i = (i + 1) & m) {
            int32_t o = wp->slot[i];
            if (o < 0 ||
                (wp->len[o] == wp->len[id] && memcmp(wp->blob + wp->off[o], s, wp->len[id]) == 0)) {
                wp->slot[i] = id;
                break;
            }
        }
    }
    wp->unk = wp__find(wp, "[UNK]", 5);
    wp->cls = wp__find(wp, "[CLS]", 5);
    wp->sep = wp__find(wp, "[SEP]", 5);
    for (int k = 0; k < WP_N_SPECIAL; k++)
        wp->special[k] = wp__find(wp, wp__special_names[k], strlen(wp__special_names[k]));
    if (wp->unk < 0 || wp->cls < 0 || wp->sep < 0) {
        rc = eng_error(ENG_EFORMAT,
                       "%s: no %s token (a BERT vocab.txt has [PAD], [UNK], [CLS], "
                       "[SEP] and [MASK])",
                       label,
                       wp->unk < 0   ? "[UNK]"
                       : wp->cls < 0 ? "[CLS]"
                                     : "[SEP]");
        goto err_msg;
    }
    *out = wp;
    return 0;
err:
    rc = eng_error(ENG_ENOMEM, "%s: out of memory", label);
err_msg:
    hn_wordpiece_destroy(wp);
    return rc;
}

int hn_wordpiece_load(hn_wordpiece **out, const char *path)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return eng_error(ENG_ENOTFOUND, "%s: cannot open the vocabulary", path);
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= WP_MAX_VOCAB_BYTES) {
                rc = eng_error(ENG_ELIMIT, "%s: over the %u MiB vocabulary limit", path,
                               WP_MAX_VOCAB_BYTES >> 20);
                break;
            }
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                rc = eng_error(ENG_ENOMEM, "%s: out of memory", path);
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                rc = eng_error(ENG_EIO, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (rc == 0)
        rc = hn_wordpiece_create(out, buf ? buf : "", n, path);
    free(buf);
    return rc;
}

int hn_wordpiece_size(const hn_wordpiece *wp) { return wp->n; }

const char *hn_wordpiece_token(const hn_wordpiece *wp, int32_t id)
{
    return id >= 0 && id < wp->n ? wp->blob + wp->off[id] : NULL;
}

/* ---- tokenizer ---- */

/* Output being built: ids[0] is [CLS]; room for `limit` word tokens. */
typedef struct {
    int32_t *ids;
    int n;     /* word tokens so far */
    int limit; /* max_len - 2 */
} wp__out;

/* WordPiece one word of n code points (already normalised). */
static void wp__word(const hn_wordpiece *wp, const uint32_t *w, int n, wp__out *o)
{
    if (o->n >= o->limit)
        return;
    if (n > WP_MAX_WORD_CHARS) {
        o->ids[1 + o->n++] = wp->unk;
        return;
    }
    char utf[WP_MAX_WORD_CHARS * 4];
    int off[WP_MAX_WORD_CHARS + 1]; /* byte offset of each character */
    char key[2 + WP_MAX_WORD_CHARS * 4];
    int32_t piece[WP_MAX_WORD_CHARS]; /* a word has at most n pieces */
    int np = 0;
    off[0] = 0;
    for (int i = 0; i < n; i++)
        off[i + 1] = off[i] + (int)wp__utf8_put(w[i], utf + off[i]);
    key[0] = key[1] = '#';
    for (int start = 0; start < n;) {
        int32_t id = -1;
        int end = n;
        const size_t pre = start > 0 ? 2 : 0;
        for (; end > start; end--) {
            size_t bytes = (size_t)(off[end] - off[start]);
            if (bytes + pre > wp->max_bytes)
                continue; /* longer than any token */
            memcpy(key + 2, utf + off[start], bytes);
            id = wp__find(wp, key + 2 - pre, bytes + pre);
            if (id >= 0)
                break;
        }
        if (id < 0) {
            o->ids[1 + o->n++] = wp->unk; /* the whole word, as BERT does */
            return;
        }
        piece[np++] = id;
        start = end;
    }
    for (int i = 0; i < np && o->n < o->limit; i++)
        o->ids[1 + o->n++] = piece[i];
}

/* Normalise one whitespace-delimited piece t[0..n) (cleaned text) into
 * words: NFD minus Mn, lower-case, split at punctuation. nb/cc are scratch of
 * 4n entries. */
static void wp__piece(const hn_wordpiece *wp, const uint32_t *t, size_t n, uint32_t *nb,
                      uint8_t *cc, wp__out *o)
{
    size_t m = 0;         /* normalised characters so far */
    size_t run_start = 0; /* first index after the last starter: reorder bound */
    for (size_t k = 0; k < n; k++) {
        uint32_t d[4];
        int nd = wp__nfd(t[k], d);
        for (int i = 0; i < nd; i++) {
            const hn__uprop *p = wp__prop(d[i]);
            if (p->flags & HN__U_MN) {
                /* Stripped; a mark of class 0 still ends a reordering run. */
                if (p->ccc == 0)
                    run_start = m;
                continue;
            }
            /* Canonical ordering: a non-starter sinks below later-placed
             * characters of higher class. Only matters for the few non-Mn
             * characters with a class; a run over 100 long makes its word
             * [UNK] whatever the order, which bounds the work. */
            size_t j = m;
            if (p->ccc && m - run_start <= WP_MAX_WORD_CHARS)
                for (; j > run_start && cc[j - 1] > p->ccc; j--) {
                    nb[j] = nb[j - 1];
                    cc[j] = cc[j - 1];
                }
            /* Lower-cased after NFD and accent stripping, one character at a
             * time, as the tokenizers library does (a capital sigma always
             * becomes U+03C3: str.lower()'s word-final U+03C2 is not
             * applied; a lower-case form is not decomposed again). The
             * order is by the class of the character NFD gave. */
            nb[j] = hn__ulower_cp(d[i]);
            cc[j] = p->ccc;
            m++;
            if (!p->ccc)
                run_start = m;
        }
    }
    /* Split at punctuation: each punctuation character is a word. */
    size_t w0 = 0;
    for (size_t k = 0; k < m && o->n < o->limit; k++) {
        if (hn__uflags(nb[k]) & HN__U_PUNCT) {
            if (k > w0)
                wp__word(wp, nb + w0, (int)(k - w0), o);
            wp__word(wp, nb + k, 1, o);
            w0 = k + 1;
        }
    }
    if (m > w0)
        wp__word(wp, nb + w0, (int)(m - w0), o);
}

/* The special token (index into wp__special_names) spelled at s[0..left), or
 * -1. Matching is on the raw bytes, case-sensitive, as the tokenizers
 * library matches added tokens that are not normalised; none of the names
 * is a prefix of another, so the first match is the longest. */
static int wp__special_at(const hn_wordpiece *wp, const char *s, size_t left)
{
    for (int k = 0; k < WP_N_SPECIAL; k++) {
        size_t n = strlen(wp__special_names[k]);
        if (wp->special[k] >= 0 && n <= left && memcmp(s, wp__special_names[k], n) == 0)
            return k;
    }
    return -1;
}

int hn_wordpiece_encode(const hn_wordpiece *wp, const char *s, size_t len, int max_len,
                        int32_t *ids, int32_t *mask, int *n_tokens)
{
    if (max_len < 2)
        return eng_error(ENG_EINVAL, "max_len %d: needs room for [CLS] and [SEP]", max_len);
    if (!s && len)
        return eng_error(ENG_EINVAL, "text is NULL");
    size_t n = 0;
    int rc = hn__utf8_decode(s, len, NULL, &n); /* validate all of it first */
    if (rc)
        return rc;

    /* Cleaned text: separators as ' ', each CJK ideograph and each special
     * token (WP_SPECIAL_BASE + k) between two. At most one entry per input
     * byte (a CJK ideograph takes 3 or 4 bytes, a special token 5 or 6). */
    uint32_t *cl = malloc((len + 1) * sizeof *cl);
    uint32_t *nb = NULL;
    uint8_t *cc = NULL;
    if (!cl)
        return eng_error(ENG_ENOMEM, "out of memory tokenizing %zu bytes", len);
    size_t ncl = 0, longest = 0, cur = 0;
    {
        const uint8_t *p = (const uint8_t *)s;
        size_t i = 0;
        while (i < len) {
            uint32_t c = p[i];
            int k = c == '[' ? wp__special_at(wp, s + i, len - i) : -1;
            if (k >= 0) {
                cl[ncl++] = ' ';
                cl[ncl++] = WP_SPECIAL_BASE + (uint32_t)k;
                cl[ncl++] = ' ';
                cur = 0;
                i += strlen(wp__special_names[k]);
                continue;
            }
            int extra = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
            c &= extra == 0 ? 0x7F : extra == 1 ? 0x1F : extra == 2 ? 0x0F : 0x07;
            for (int k = 1; k <= extra; k++)
                c = c << 6 | (p[i + k] & 0x3F);
            i += (size_t)extra + 1;
            unsigned f = hn__uflags(c);
            uint32_t put = c;
            if (c == 0xFFFD || (f & HN__U_CTRL))
                continue;
            if (f & HN__U_SPACE)
                put = ' ';
            if (hn__cjk(c)) {
                cl[ncl++] = ' ';
                cl[ncl++] = c;
                cl[ncl++] = ' ';
                cur = 0;
                longest = longest ? longest : 1;
                continue;
            }
            cl[ncl++] = put;
            cur = put == ' ' ? 0 : cur + 1;
            if (cur > longest)
                longest = cur;
        }
    }
    /* A CJK ideograph of 3 bytes wrote 3 entries: the bound above holds. */
    nb = malloc((4 * longest + 1) * sizeof *nb);
    cc = malloc(4 * longest + 1);
    if (!nb || !cc) {
        free(cl);
        free(nb);
        free(cc);
        return eng_error(ENG_ENOMEM, "out of memory tokenizing %zu bytes", len);
    }

    wp__out o = {ids, 0, max_len - 2};
    ids[0] = wp->cls;
    for (size_t i = 0; i < ncl && o.n < o.limit;) {
        if (cl[i] == ' ') {
            i++;
            continue;
        }
        if (cl[i] >= WP_SPECIAL_BASE) {
            ids[1 + o.n++] = wp->special[cl[i] - WP_SPECIAL_BASE];
            i++;
            continue;
        }
        size_t j = i;
        while (j < ncl && cl[j] != ' ')
            j++;
        wp__piece(wp, cl + i, j - i, nb, cc, &o);
        i = j;
    }
    free(cl);
    free(nb);
    free(cc);

    int nt = o.n + 2;
    ids[nt - 1] = wp->sep;
    for (int i = nt; i < max_len; i++)
        ids[i] = 0;
    if (mask)
        for (int i = 0; i < max_len; i++)
            mask[i] = i < nt;
    if (n_tokens)
        *n_tokens = nt;
    return 0;
}
