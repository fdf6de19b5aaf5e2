/*
 * server/base64.h: base64 (RFC 4648 section 4: standard alphabet "A-Za-z0-9+/",
 * '=' padding) for images and masks carried in JSON request and response
 * bodies.
 *
 * Decoding is strict, so a damaged upload fails loudly instead of decoding
 * to a corrupt image: the length must be a multiple of 4 (padding is
 * required), '=' may appear only as the last one or two characters, the
 * unused low bits before the padding must be zero (so every accepted input
 * is the one canonical encoding of its bytes), and any other character,
 * whitespace and line breaks included, is rejected. The URL-safe alphabet
 * ("-_") is not accepted either. Clients send a single unbroken string.
 */
#ifndef TASAM_SERVER_BASE64_H
#define TASAM_SERVER_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Decode `len` characters of `s` (no NUL needed) into a malloc'd buffer
 * (*out, never NULL on success, even for empty input) of *out_len bytes.
 * Returns 0, or ENG_EINVAL with an eng_error message naming the offending
 * offset (ENG_ENOMEM if allocation fails); on failure *out is NULL and
 * *out_len 0. */
int srv_base64_decode(const char *s, size_t len, uint8_t **out, size_t *out_len);

/* Encode `len` bytes as a malloc'd, NUL-terminated padded string; NULL if
 * allocation fails (with an eng_error message). */
char *srv_base64_encode(const uint8_t *buf, size_t len);

/*
 * If the `*len` characters at `s` are a data URL, "data:[<media type>]
 * [;<param>]*;base64,<payload>" (scheme and ";base64" in any case), return
 * the payload and set *len to its length. A string that does not start with
 * "data:" comes back unchanged. A data URL that is not base64 (RFC 2397's
 * percent-encoded form) or has no ',' gives NULL, for the caller to reject.
 */
const char *srv_base64_strip_data_url(const char *s, size_t *len);

#endif
