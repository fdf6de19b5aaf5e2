#!/usr/bin/env python3
"""Generate hypernet/unicode_tables.c, the Unicode data the WordPiece tokenizer
(hypernet/wordpiece.c) needs, from Python's unicodedata and str methods.

    python3 hypernet/wordpiece_tables.py > hypernet/unicode_tables.c

The tokenizer reproduces BERT's BasicTokenizer, so the tables come from the
data that tokenizer consults: unicodedata.category (control, whitespace,
punctuation, Mn), unicodedata.normalize("NFD") and unicodedata.combining
(accent stripping), and str.lower() one character at a time (lower-casing; as
in Hugging Face's tokenizers library, without str.lower()'s context-dependent
final sigma).
"""
import sys
import unicodedata as ud

MAXCP = 0x110000
HANGUL_S0, HANGUL_N = 0xAC00, 11172

F_SPACE, F_CTRL, F_MN, F_PUNCT = 1, 2, 4, 8


def flags_of(cp):
    ch = chr(cp)
    cat = ud.category(ch)
    f = 0
    # BERT cleans text by turning \t \n \r, ' ' and Zs into spaces and
    # dropping control characters; which categories count as control differs
    # between implementations (original BERT: Cc Cf; transformers' Python
    # tokenizer: all of C*; the tokenizers library that sentence-transformers
    # runs: Cc Cf Co). This follows the last, so that embeddings match the
    # reference the model is used with: unassigned code points (Cn) are kept
    # and come out as [UNK]. U+2028/2029 survive cleaning but separate words.
    if ch in " \t\n\r" or cat == "Zs" or (ch.isspace() and cat not in ("Cc", "Cf")):
        f |= F_SPACE
    elif cat in ("Cc", "Cf", "Co"):
        f |= F_CTRL
    if cat == "Mn":
        f |= F_MN
    if (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
            or cat.startswith("P")):
        f |= F_PUNCT
    return f


def main():
    out = sys.stdout
    props = []  # (first code point, flags, ccc): a run lasts until the next entry
    prev = None
    for cp in range(MAXCP):
        key = (flags_of(cp), ud.combining(chr(cp)))
        if key != prev:
            props.append((cp, key[0], key[1]))
            prev = key

    lower = []
    for cp in range(MAXCP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        lo = chr(cp).lower()
        if lo == chr(cp):
            continue
        if len(lo) != 1:
            # Only U+0130 lower-cases to two characters ("i" + U+0307); the
            # combining dot is category Mn and is stripped with the accents,
            # so "i" alone gives the same tokens.
            assert cp == 0x130 and lo == "i\u0307", hex(cp)
            lo = "i"
        lower.append((cp, ord(lo)))

    nfd, pool = [], []
    for cp in range(MAXCP):
        if 0xD800 <= cp <= 0xDFFF or HANGUL_S0 <= cp < HANGUL_S0 + HANGUL_N:
            continue  # Hangul syllables decompose algorithmically in the C code
        d = ud.normalize("NFD", chr(cp))
        if d == chr(cp):
            continue
        assert len(d) <= 4
        nfd.append((cp, len(pool), len(d)))
        pool.extend(ord(c) for c in d)

    w = out.write
    w("/*\n * hypernet/unicode_tables.c: Unicode " + ud.unidata_version +
      " data for the WordPiece tokenizer. GENERATED, do not edit:\n"
      " *     python3 hypernet/wordpiece_tables.py > hypernet/unicode_tables.c\n"
      " * (Python " + sys.version.split()[0] + ", unicodedata " + ud.unidata_version + ").\n"
      " * See hypernet/wordpiece_unicode.h for what each table means.\n */\n")
    w('#include "wordpiece_unicode.h"\n\n')
    w("const hn__uprop hn__uprops[] = {\n")
    for i, (cp, f, c) in enumerate(props):
        w("    {0x%x, %d, %d},\n" % (cp, f, c))
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
