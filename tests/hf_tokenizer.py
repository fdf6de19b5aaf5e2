#!/usr/bin/env python3
"""tests/hf_tokenizer.py OUTDIR: the reference side of tests/test_tokenizer_hf.c.

Builds, with Hugging Face's `tokenizers` (the library sentence-transformers
runs), the tokenizer all-MiniLM-L6-v2's tokenizer.json describes: the special
added tokens [PAD] [UNK] [CLS] [SEP] [MASK], BertNormalizer (clean text, CJK,
strip accents, lower-case), BertPreTokenizer, WordPiece (## pieces, 100
characters a word), [CLS] $A [SEP]. Its vocabulary holds every character
that can reach WordPiece, alone and as a "##" piece, so the ids spell out
exactly what the normaliser and the pre-tokenizer did. Writes:

  OUTDIR/vocab.txt   that vocabulary, one token a line
  OUTDIR/cases.bin   "TSMTOK1\\n", then per case: u32 text bytes, the UTF-8
                     text, u32 id count, i32 ids (little-endian)

The cases: "a" + c + "b" for every code point c but the surrogates; the
characters with a canonical combining class beside two kept combining
characters of classes 216 and 226 (canonical reordering); literal special
tokens; NUL. Exit status 3 (with a line on stderr) when `tokenizers` is not
importable, so the caller can skip.
"""
import os
import struct
import sys
import unicodedata as ud

try:
    import tokenizers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
except ImportError as e:
    print("hf_tokenizer: the tokenizers package is not installed (%s)" % e, file=sys.stderr)
    sys.exit(3)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
STEM, KEEP226 = "\U0001D165", "\U0001D16D"  # kept (Mc) combining characters, classes 216, 226


def code_points():
    for cp in range(0x110000):
        if not 0xD800 <= cp <= 0xDFFF:
            yield cp


def main():
    out = sys.argv[1]
    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                       strip_accents=False, lowercase=False)
    vocab = list(SPECIAL)
    for cp in code_points():
        c = chr(cp)
        # whitespace and control characters never reach WordPiece
        if clean.normalize_str("a" + c + "b") == "a" + c + "b":
            vocab.append(c)
            vocab.append("##" + c)
    ids = {t: i for i, t in enumerate(vocab)}
    assert len(ids) == len(vocab)
    tok = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100,
                                     continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tok.add_special_tokens(SPECIAL)

    cases = ["a" + chr(cp) + "b" for cp in code_points()]
    for cp in code_points():
        c = chr(cp)
        if ud.combining(c):
            cases += ["a" + c + STEM + "b", "a" + STEM + c + "b", "a" + KEEP226 + c + STEM + "b"]
    cases += [
        "find the [UNK] thing", "find the [unk] thing", "a[SEP]b", "[MASK][PAD]", "[CLS",
        "[[CLS]]", "x[PAD]\u0301y", "[Cls] [SEP ]", "\u00c9[MASK]\u00e9", "x\x00y", "\x00",
        "a\x00\u0301b", "\u4e2d[CLS]\u6587", "ΣΑΣ", "İstanbul", "e\u0301\u0316x",
    ]

    with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(vocab) + "\n")
    # written under a temporary name: the test takes a cases.bin newer than
    # this script as complete
    with open(os.path.join(out, "cases.bin.tmp"), "wb") as f:
        f.write(b"TSMTOK1\n")
        step = 65536
        for i in range(0, len(cases), step):
            chunk = cases[i:i + step]
            for text, enc in zip(chunk, tok.encode_batch(chunk)):
                b = text.encode("utf-8")
                f.write(struct.pack("<I", len(b)) + b + struct.pack("<I", len(enc.ids)))
                f.write(struct.pack("<%di" % len(enc.ids), *enc.ids))
    os.replace(os.path.join(out, "cases.bin.tmp"), os.path.join(out, "cases.bin"))
    print("hf_tokenizer: tokenizers %s, %d vocabulary entries, %d cases" %
          (tokenizers.__version__, len(vocab), len(cases)), file=sys.stderr)


if __name__ == "__main__":
    main()
