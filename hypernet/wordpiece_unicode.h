/*
 * hypernet/wordpiece_unicode.h: the Unicode tables behind the WordPiece
 * tokenizer (private to hypernet/). The data lives in unicode_tables.c,
 * generated from Python's unicodedata by hypernet/wordpiece_tables.py, so the
 * tokenizer sees characters exactly as BERT's Python BasicTokenizer does.
 */
#ifndef TASAM_HYPERNET_WORDPIECE_UNICODE_H
#define TASAM_HYPERNET_WORDPIECE_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Character properties, as bits of hn__uprop.flags. */
enum {
    HN__U_SPACE = 1, /* separates words: ' ', \t \n \r, Zs, U+2028/2029 */
    HN__U_CTRL = 2,  /* dropped while cleaning: Cc (but \t \n \r), Cf, Co */
    HN__U_MN = 4,    /* nonspacing mark (Mn): dropped when stripping accents */
    HN__U_PUNCT = 8, /* a word of its own: ASCII 33-47, 58-64, 91-96, 123-126, P* */
};

/* Runs of code points with equal properties: entry i covers
 * [lo, next entry's lo), the last one up to U+10FFFF. Sorted by lo. */
typedef struct hn__uprop {
    uint32_t lo;
    uint8_t flags; /* HN__U_* bits */
    uint8_t ccc;   /* canonical combining class (0: starter) */
} hn__uprop;

/* Simple lower-case mapping, sorted by cp (code points absent map to
 * themselves). */
typedef struct hn__upair {
    uint32_t cp, to;
} hn__upair;

/* Full canonical decomposition of cp: hn__unfd_pool[off .. off+len), already
 * in canonical order. Hangul syllables are not listed (computed). */
typedef struct hn__unfd {
    uint32_t cp;
    uint16_t off;
    uint8_t len;
} hn__unfd;

extern const hn__uprop hn__uprops[];
extern const size_t hn__uprops_n;
extern const hn__upair hn__ulower[];
extern const size_t hn__ulower_n;
extern const hn__unfd hn__unfds[];
extern const size_t hn__unfds_n;
extern const uint32_t hn__unfd_pool[];

/* Lookups over those tables (wordpiece.c), for the tokenizer and the hashed
 * fallback embedding. */
unsigned hn__uflags(uint32_t cp);    /* HN__U_* bits of cp */
uint32_t hn__ulower_cp(uint32_t cp); /* simple lower-case mapping */
int hn__cjk(uint32_t cp);            /* one of BERT's CJK ideograph blocks */
/* Strict UTF-8 decoding of s[len] into cps (NULL: validate only), *n code
 * points. ENG_EINVAL naming the offset for a NUL byte, an overlong form, a
 * surrogate, a truncated or otherwise invalid sequence. */
int hn__utf8_decode(const char *s, size_t len, uint32_t *cps, size_t *n);

#endif
