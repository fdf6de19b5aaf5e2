#!/usr/bin/env python3
"""Generate hypernet/unicode_tables.c, the Unicode data the WordPiece tokenizer
(hypernet/wordpiece.c) needs, from Hugging Face's `tokenizers` library itself.

    make unicode-tables      (build/venv/bin/python3 hypernet/wordpiece_tables.py)

The tokenizer must cut text exactly as sentence-transformers does, and
sentence-transformers runs `tokenizers` (Rust): BertNormalizer (clean text,
CJK, strip accents, lower-case) then BertPreTokenizer. That library's
character classes come from several Rust crates, each pinned to its own,
older, Unicode version (unicode_categories for control, Mn and punctuation,
unicode-normalization-alignments for NFD, the Rust standard library for
whitespace and lower-casing, and its own table of CJK blocks, which starts
Extension E at U+2B920 where BERT's Python starts it at U+2B820). So no
Python `unicodedata` reproduces it; instead this script asks the library, one
code point at a time, what each step does to it:

  SPACE  BertNormalizer(clean_text) turns it into ' '
  CTRL   BertNormalizer(clean_text) drops it (NUL and U+FFFD included)
  CJK    BertNormalizer(handle_chinese_chars) puts spaces around it
  MN     BertNormalizer(strip_accents) drops it (a nonspacing mark; the
         separate StripAccents normalizer drops Mc and Me too)
  PUNCT  BertPreTokenizer makes it a word of its own
  lower  Lowercase's result
  NFD    NFD's result for the character alone
  ccc    the canonical combining class NFD reorders it by: Python's value
         when the library's NFD reorders the character accordingly, else 0

tests/test_tokenizer_hf.c checks the C tokenizer built on these tables
against the library on every code point. Python's unicodedata is used only
for the combining class values (stable once assigned); the script checks
that the library knows no character Python does not.
"""
import sys
import unicodedata as ud

import tokenizers
from tokenizers import normalizers as N
from tokenizers import pre_tokenizers as P

MAXCP = 0x110000
HANGUL_S0, HANGUL_N = 0xAC00, 11172

F_SPACE, F_CTRL, F_MN, F_PUNCT, F_CJK = 1, 2, 4, 8, 16

CLEAN = N.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False,
                         lowercase=False)
CHINESE = N.BertNormalizer(clean_text=False, handle_chinese_chars=True, strip_accents=False,
                           lowercase=False)
STRIP = N.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True,
                         lowercase=False)
NFD = N.NFD()
LOWER = N.Lowercase()
PRE = P.BertPreTokenizer()


def code_points():
    """Every code point but the surrogates (not text, never in UTF-8)."""
    for cp in range(MAXCP):
        if not 0xD800 <= cp <= 0xDFFF:
            yield cp


def flags_of(c):
    f = 0
    cleaned = CLEAN.normalize_str("a" + c + "b")
    if cleaned == "a b":
        f |= F_SPACE
    elif cleaned == "ab":
        f |= F_CTRL
    else:
        assert cleaned == "a" + c + "b", (hex(ord(c)), cleaned)
    if CHINESE.normalize_str(c) == " " + c + " ":
        f |= F_CJK
    if STRIP.normalize_str(c) == "":
        f |= F_MN
    words = [w for w, _ in PRE.pre_tokenize_str("a" + c + "b")]
    if words == ["a", c, "b"]:
        f |= F_PUNCT
    return f


def ccc_of(c):
    """The combining class the library's NFD sorts c by (c does not
    decompose). Canonical ordering moves a mark of lower class before one of
    higher class: U+0334 (class 1) must move before c when c's class is over
    1, c before U+0301 (class 230) when it is 1."""
    k = ud.combining(c)
    if k == 0:
        return 0
    if k > 1:
        known = NFD.normalize_str("a" + c + "\u0334") == "a\u0334" + c
    else:
        known = NFD.normalize_str("a\u0301" + c) == "a" + c + "\u0301"
    return k if known else 0


def main():
    out = sys.stdout
    props = []  # (first code point, flags, ccc): a run lasts until the next entry
    lower, nfd, pool = [], [], []
    prev = None
    for cp in code_points():
        c = chr(cp)
        d = NFD.normalize_str(c)
        if ud.category(c) == "Cn":
            # the library's NFD must not know what Python's data does not
            assert d == c and NFD.normalize_str("a" + c + "\u0334") == "a" + c + "\u0334", hex(cp)
        key = (flags_of(c), ccc_of(c) if d == c else 0)
        if key != prev:
            props.append((cp, key[0], key[1]))
            prev = key
        lo = LOWER.normalize_str(c)
        if lo != c:
            if len(lo) != 1:
                # Only U+0130 lower-cases to two characters ("i" + U+0307). It
                # never reaches lower-casing: NFD splits it into "I" + U+0307
                # first, and the mark is stripped.
                assert cp == 0x130 and lo == "i\u0307", hex(cp)
                lo = "i"
            lower.append((cp, ord(lo)))
        if d != c:
            if HANGUL_S0 <= cp < HANGUL_S0 + HANGUL_N:
                # decomposed algorithmically in the C code: check it agrees
                s = cp - HANGUL_S0
                want = chr(0x1100 + s // 588) + chr(0x1161 + (s % 588) // 28)
                if s % 28:
                    want += chr(0x11A7 + s % 28)
                assert d == want, hex(cp)
                continue
            assert len(d) <= 4, hex(cp)
            nfd.append((cp, len(pool), len(d)))
            pool.extend(ord(x) for x in d)
    # the pool offsets are 16-bit in the C tables
    assert len(pool) < 65536

    w = out.write
    w("/*\n * hypernet/unicode_tables.c: the character data of the WordPiece tokenizer, as Hugging\n"
      " * Face tokenizers " + tokenizers.__version__ + " sees characters. GENERATED, do not edit:\n"
      " *     make unicode-tables   (hypernet/wordpiece_tables.py; Python " +
      sys.version.split()[0] + ", unicodedata " + ud.unidata_version + " for the combining classes)\n"
      " * See hypernet/wordpiece_unicode.h for what each table means.\n */\n")
    w('#include "wordpiece_unicode.h"\n\n')
    w("const hn__uprop hn__uprops[] = {\n")
    for cp, f, k in props:
        w("    {0x%x, %d, %d},\n" % (cp, f, k))
    w("};\nconst size_t hn__uprops_n = %d;\n\n" % len(props))
    w("const hn__upair hn__ulower[] = {\n")
    for cp, lo in lower:
        w("    {0x%x, 0x%x},\n" % (cp, lo))
    w("};\nconst size_t hn__ulower_n = %d;\n\n" % len(lower))
    w("const hn__unfd hn__unfds[] = {\n")
    for cp, off, n in nfd:
        w("    {0x%x, %d, %d},\n" % (cp, off, n))
    w("};\nconst size_t hn__unfds_n = %d;\n\n" % len(nfd))
    w("const uint32_t hn__unfd_pool[] = {\n")
    for i in range(0, len(pool), 8):
        w("    " + ", ".join("0x%x" % v for v in pool[i:i + 8]) + ",\n")
    w("};\n")


if __name__ == "__main__":
    main()
