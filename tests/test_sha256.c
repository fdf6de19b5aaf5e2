/* tests/test_sha256.c: engine/sha256 against the FIPS 180-4 / NIST example
 * vectors, and incremental hashing against one-shot hashing. */
#include "engine/sha256.h"
#include "tests/harness.h"

static int digest_is(const void *buf, size_t len, const char *want)
{
    uint8_t d[32];
    char hex[65];
    eng_sha256(buf, len, d);
    eng_sha256_hex(d, hex);
    if (strcmp(hex, want) != 0) {
        fprintf(stderr, "  got %s\n  want %s\n", hex, want);
        return 0;
    }
    return 1;
}

static void test_empty(void)
{
    T_CHECK(digest_is("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            "empty message");
}

static void test_abc(void)
{
    T_CHECK(digest_is("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            "\"abc\"");
}

/* The 448-bit (56-byte) message: padding spills into a second block. */
static void test_448bit(void)
{
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    T_CHECK(
        digest_is(m, strlen(m), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        "448-bit message");
}

static void test_896bit(void)
{
    const char *m = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmno"
                    "pqklmnopqrlmnopqrsmnopqrstnopqrstu";
    T_CHECK(
        digest_is(m, strlen(m), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
        "896-bit message");
}

/* One million 'a', fed in uneven pieces through the incremental API. */
static void test_million_a(void)
{
    static uint8_t chunk[997];
    memset(chunk, 'a', sizeof chunk);
    eng_sha256_ctx c;
    eng_sha256_init(&c);
    size_t left = 1000000;
    while (left) {
        size_t n = left < sizeof chunk ? left : sizeof chunk;
        eng_sha256_update(&c, chunk, n);
        left -= n;
    }
    uint8_t d[32];
    char hex[65];
    eng_sha256_final(&c, d);
    eng_sha256_hex(d, hex);
    T_CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
            "million a: %s", hex);
}

/* Every length around the block and padding boundaries, split at random
 * points (including empty updates), must equal the one-shot digest. */
static void test_incremental_random_splits(void)
{
    uint8_t buf[300];
    uint32_t s = 12345;
    for (size_t i = 0; i < sizeof buf; i++) {
        s = s * 1664525u + 1013904223u;
        buf[i] = (uint8_t)(s >> 24);
    }
    for (size_t len = 0; len <= sizeof buf; len++) {
        uint8_t want[32], got[32];
        eng_sha256(buf, len, want);
        for (int trial = 0; trial < 4; trial++) {
            eng_sha256_ctx c;
            eng_sha256_init(&c);
            size_t off = 0;
            while (off < len) {
                s = s * 1664525u + 1013904223u;
                size_t n = (s >> 16) % 80;
                if (n > len - off)
                    n = len - off;
                eng_sha256_update(&c, buf + off, n);
                off += n;
            }
            eng_sha256_final(&c, got);
            T_REQUIRE(memcmp(want, got, 32) == 0, "length %zu trial %d differs", len, trial);
        }
    }
}

int main(void)
{
    T_RUN(test_empty);
    T_RUN(test_abc);
    T_RUN(test_448bit);
    T_RUN(test_896bit);
    T_RUN(test_million_a);
    T_RUN(test_incremental_random_splits);
    return t_summary("test_sha256");
}
