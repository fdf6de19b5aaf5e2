/*
 * hypernet/text.h: the task-text encoder that feeds the hypernetwork.
 *
 * Two kinds of encoder stand behind one handle:
 *   - a BERT sentence encoder (sentence-transformers/all-MiniLM-L6-v2 by
 *     default) loaded from a Hugging Face folder (config.json, vocab.txt,
 *     model.safetensors), run on the engine's ops (CPU or CUDA) and pooled as
 *     sentence-transformers does: mean over the attention mask, then L2 norm;
 *   - a built-in hashed n-gram embedding, needing no files, that the daemon
 *     uses where no text model is configured (it says so in its log and in
 *     /v1/info through hn_text_describe()).
 *
 * Text is UTF-8. Invalid UTF-8 is an error (ENG_EINVAL, the message gives
 * the byte offset), so a server can answer 400; a NUL byte is dropped like
 * any control character, as BERT's text cleaning does. Empty text is valid
 * ([CLS] [SEP]). Over-long text is truncated to the model's maximum sequence
 * length.
 *
 * Threads: hn_text_tokenize and the accessors may run on any thread at once;
 * hn_text_embed uses the handle's workspace and must not run on two threads
 * at the same time for one handle.
 *
 * Every function that can fail returns 0 or a negative ENG_E* code and leaves
 * a message in eng_last_error() (engine/error.h).
 */
#ifndef TASAM_HYPERNET_TEXT_H
#define TASAM_HYPERNET_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/ops.h"

/* ---- WordPiece tokenizer (uncased BERT) ---- */

typedef struct hn_wordpiece hn_wordpiece;

/* A tokenizer over the vocabulary in `path` (vocab.txt: one token per line,
 * id = line index; it must hold [UNK], [CLS] and [SEP]). */
int hn_wordpiece_load(hn_wordpiece **out, const char *path);
/* The same from a vocabulary held in memory (copied); `label` names it in
 * messages. */
int hn_wordpiece_create(hn_wordpiece **out, const char *vocab, size_t len, const char *label);
void hn_wordpiece_destroy(hn_wordpiece *wp);

/* Number of ids (lines of vocab.txt). */
int hn_wordpiece_size(const hn_wordpiece *wp);
/* The token of `id` (NUL-terminated, borrowed), NULL when out of range. */
const char *hn_wordpiece_token(const hn_wordpiece *wp, int32_t id);

/* Tokenize `s` (len bytes of UTF-8) as Hugging Face's tokenizers library
 * does for sentence-transformers (BERT's uncased BasicTokenizer +
 * WordpieceTokenizer; see wordpiece.c), into [CLS] tokens [SEP], truncated
 * to `max_len` (>= 2) ids. The special tokens [PAD] [UNK] [CLS] [SEP]
 * [MASK] written literally in the text (case-sensitive) are their own ids
 * when the vocabulary holds them. ids[max_len] receives the ids padded with
 * 0, mask[max_len] 1 for each real token and 0 for padding (mask may be
 * NULL); *n_tokens the number of real tokens, [CLS] and [SEP] included.
 * ENG_EINVAL on invalid UTF-8 (a NUL byte is dropped, not an error). */
int hn_wordpiece_encode(const hn_wordpiece *wp, const char *s, size_t len, int max_len,
                        int32_t *ids, int32_t *mask, int *n_tokens);

/* ---- text encoder ---- */

typedef struct hn_text hn_text;

/* Load a BERT encoder from a Hugging Face folder `dir`: config.json,
 * vocab.txt and model.safetensors (or pytorch_model.bin); key names with or
 * without a "bert." prefix. An optional sentence_bert_config.json's
 * max_seq_length caps the sequence length as sentence-transformers does.
 * Weights go to `be` (borrowed; must outlive the handle) in one allocation,
 * and the activation workspace is planned for batches of up to `max_batch`
 * texts of the maximum length; larger calls are split. The workspace takes
 * about max_batch * max_len * (6 * hidden + intermediate) * 4 bytes of
 * backend memory (MiniLM, max_batch 8: 31 MB). Errors name the file and, for
 * weights, the tensor. */
int hn_text_load(hn_text **out, const char *dir, eng_backend *be, int max_batch);

/* The built-in fallback: a deterministic `dim`-dimensional embedding
 * (16..65536) of the normalised text (lower-cased, whitespace collapsed):
 * word unigrams and bigrams and character 3-grams, each added with a sign to
 * one of `dim` buckets chosen by FNV-1a, then L2-normalised. Similar wording
 * gives similar vectors; it carries no meaning beyond shared words. */
int hn_text_create_hashed(hn_text **out, int dim);

/* The text model hypernetworks are made for unless told otherwise, and where
 * a name is looked up: models/NAME (deploy/fetch-text-model.sh fills
 * models/all-MiniLM-L6-v2). */
#define HN_TEXT_DEFAULT_MODEL "all-MiniLM-L6-v2"
#define HN_TEXT_MODELS_DIR    "models"

/* Open a text encoder from what a user writes after --text-model (`tasam
 * hypernet init`, `segment`, `embed-text` and `tasamd` all take the same
 * values): "hashed" (the built-in fallback, hashed_dim wide: 384 when <= 0)
 * or "hashed-D"; a folder (hn_text_load); a name without '/', looked up as
 * HN_TEXT_MODELS_DIR/NAME. NULL or "" means HN_TEXT_DEFAULT_MODEL.
 * ENG_ENOTFOUND names the folder it looked for and how to get it. */
int hn_text_open(hn_text **out, const char *spec, int hashed_dim, eng_backend *be, int max_batch);

void hn_text_destroy(hn_text *t);

/* Embedding width (384 for all-MiniLM-L6-v2). */
int hn_text_dim(const hn_text *t);
/* Longest token sequence the encoder takes, [CLS] and [SEP] included (0 for
 * the hashed fallback, which takes any length). */
int hn_text_max_len(const hn_text *t);
/* "all-MiniLM-L6-v2 (bert, 6 layers, 384-d)" or "hashed n-gram fallback
 * (384-d)". */
const char *hn_text_describe(const hn_text *t);
/* The tokenizer of a BERT encoder (borrowed), NULL for the fallback. */
const hn_wordpiece *hn_text_wordpiece(const hn_text *t);

/* hn_wordpiece_encode with the encoder's vocabulary; max_len <= 0 or over
 * hn_text_max_len() means hn_text_max_len(). ENG_EUNSUP for the fallback. */
int hn_text_tokenize(const hn_text *t, const char *s, size_t len, int max_len, int32_t *ids,
                     int32_t *mask, int *n_tokens);

/* Embed n texts (texts[i] has lens[i] bytes) into out[n, dim], unit norm.
 * The texts of a batch are padded to its longest and run in one forward. */
int hn_text_embed(hn_text *t, const char *const *texts, const size_t *lens, int n, float *out);

/* hn_text_embed that also returns the encoder's last hidden state, for
 * golden tests and debugging: every text is truncated and padded to exactly
 * `seq_len` tokens (2..hn_text_max_len()), hidden[n, seq_len, dim] receives
 * the hidden state of every position (padding included), ids and mask
 * [n, seq_len] the tokens (each of hidden, ids, mask may be NULL). BERT
 * encoders only. */
int hn_text_embed_debug(hn_text *t, const char *const *texts, const size_t *lens, int n,
                        int seq_len, float *out, float *hidden, int32_t *ids, int32_t *mask);

#endif
