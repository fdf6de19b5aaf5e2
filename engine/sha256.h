/*
 * engine/sha256.h: SHA-256 (FIPS 180-4), one-shot and incremental. The HTTP
 * daemon keys its embedding cache by the SHA-256 of the uploaded image bytes;
 * tests use it to compare decoded buffers with published digests.
 */
#ifndef TASAM_ENGINE_SHA256_H
#define TASAM_ENGINE_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Incremental state. Treat as opaque; copyable (a copy forks the hash). */
typedef struct eng_sha256_ctx {
    uint32_t h[8];
    uint64_t nbytes;   /* message length so far, in bytes */
    uint8_t block[64]; /* partial block, `fill` bytes valid */
    size_t fill;
} eng_sha256_ctx;

void eng_sha256_init(eng_sha256_ctx *c);
void eng_sha256_update(eng_sha256_ctx *c, const void *buf, size_t len);
/* Writes the digest; the context must be re-initialised before reuse. */
void eng_sha256_final(eng_sha256_ctx *c, uint8_t out[32]);

/* Digest of buf[0..len). */
void eng_sha256(const void *buf, size_t len, uint8_t out[32]);

/* Lower-case hex of a digest, NUL-terminated (65 bytes). */
void eng_sha256_hex(const uint8_t d[32], char out[65]);

#endif
