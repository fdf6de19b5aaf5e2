/* tests/test_base64.c: server/base64.c: RFC 4648 vectors, round trips, the
 * strict decoder's rejections and data-URL stripping. */
#include "engine/error.h"
#include "server/base64.h"
#include "tests/harness.h"

static uint64_t rng_state = 0xba5e64ba5e64ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void test_rfc4648_vectors(void)
{
    /* RFC 4648 section 10. */
    static const char *const v[][2] = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };
    for (size_t k = 0; k < sizeof v / sizeof *v; k++) {
        const char *plain = v[k][0], *enc = v[k][1];
        char *s = srv_base64_encode((const uint8_t *)plain, strlen(plain));
        T_REQUIRE(s, "encode failed");
        T_CHECK(strcmp(s, enc) == 0, "encode \"%s\" gave \"%s\", want \"%s\"", plain, s, enc);
        free(s);
        uint8_t *d = NULL;
        size_t n = 99;
        T_REQUIRE(srv_base64_decode(enc, strlen(enc), &d, &n) == 0, "decode \"%s\": %s", enc,
                  eng_last_error());
        T_CHECK(d != NULL, "decode \"%s\": NULL buffer", enc);
        T_CHECK(n == strlen(plain) && memcmp(d, plain, n) == 0, "decode \"%s\"", enc);
        free(d);
    }
}

static void test_alphabet(void)
{
    /* Every sextet, in order, from bytes 00 10 83 10 51 87 20 92 8b ...:
     * three bytes per four characters of the alphabet. */
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t *d = NULL;
    size_t n = 0;
    T_REQUIRE(srv_base64_decode(alpha, 64, &d, &n) == 0, "%s", eng_last_error());
    T_CHECK(n == 48, "%zu bytes", n);
    for (size_t i = 0; i < 64; i++) {
        size_t bit = i * 6;
        unsigned v = 0;
        for (int b = 0; b < 6; b++, bit++)
            v = v << 1 | ((d[bit / 8] >> (7 - bit % 8)) & 1);
        T_CHECK(v == i, "sextet %zu decoded as %u", i, v);
    }
    char *s = srv_base64_encode(d, n);
    T_CHECK(s && strcmp(s, alpha) == 0, "re-encoded \"%s\"", s ? s : "(null)");
    free(s);
    free(d);
}

static void test_roundtrip_random(void)
{
    uint8_t buf[300];
    int k;
    for (k = 0; k < 3000; k++) {
        size_t len = (size_t)(rng_next() % sizeof buf);
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rng_next();
        char *s = srv_base64_encode(buf, len);
        T_REQUIRE(s, "encode failed");
        size_t sl = strlen(s);
        uint8_t *d = NULL;
        size_t n = 0;
        int ok = sl == (len + 2) / 3 * 4 && srv_base64_decode(s, sl, &d, &n) == 0 && n == len &&
                 memcmp(d, buf, len) == 0;
        free(d);
        free(s);
        if (!ok)
            break;
    }
    T_CHECK(k == 3000, "round trip failed at case %d", k);

    /* A few MiB, the size of an uploaded photo. */
    size_t big = 3 * 1024 * 1024 + 1;
    uint8_t *b = malloc(big);
    for (size_t i = 0; i < big; i++)
        b[i] = (uint8_t)(rng_next() >> 13);
    char *s = srv_base64_encode(b, big);
    uint8_t *d = NULL;
    size_t n = 0;
    T_REQUIRE(s, "encode failed");
    T_CHECK(srv_base64_decode(s, strlen(s), &d, &n) == 0 && n == big && memcmp(d, b, big) == 0,
            "large round trip: %s", eng_last_error());
    free(d);
    free(s);
    free(b);
}

typedef struct {
    const char *s;
    size_t len; /* 0: strlen */
    const char *why;
    const char *msg; /* substring of the error message */
} reject_vec;

static void test_rejects(void)
{
    static const reject_vec v[] = {
        {"Zg=", 0, "truncated padding", "length 3 is not a multiple of 4"},
        {"Zg", 0, "no padding", "not a multiple of 4"},
        {"Zm9vY", 0, "lone trailing character", "at offset 4"},
        {"Zm9v\n", 0, "trailing newline", "invalid character 0x0a at offset 4"},
        {"Zm9v\nYmFy", 0, "line break", "invalid character 0x0a at offset 4"},
        {"Zm 9", 0, "space", "invalid character 0x20 at offset 2"},
        {" Zm9v", 0, "leading space", "offset 0"},
        {"Zm-v", 0, "URL-safe alphabet", "invalid character 0x2d at offset 2"},
        {"Zm_v", 0, "URL-safe alphabet", "0x5f at offset 2"},
        {"Zm9\xff", 0, "high byte", "0xff at offset 3"},
        {"Zm9v\0Zm8", 8, "embedded NUL", "0x00 at offset 4"},
        {"Zm=v", 0, "padding inside", "padding '=' before the end, at offset 2"},
        {"Zm9v=Zg=", 0, "padding mid-string", "offset 4"},
        {"Z===", 0, "three padding characters", "offset 1"},
        {"====", 0, "padding only", "offset 0"},
        {"Zm9v====", 0, "a quantum of padding", "offset 4"},
        {"Zh==", 0, "non-zero bits before ==", "non-zero bits before the padding at offset 1"},
        {"Zm9=", 0, "non-zero bits before =", "non-zero bits before the padding at offset 2"},
        {"Zm8=Zm8=", 0, "padding then more", "offset 3"},
    };
    for (size_t k = 0; k < sizeof v / sizeof *v; k++) {
        size_t len = v[k].len ? v[k].len : strlen(v[k].s);
        uint8_t *d = (uint8_t *)&d;
        size_t n = 7;
        eng_clear_error();
        int rc = srv_base64_decode(v[k].s, len, &d, &n);
        T_CHECK(rc == ENG_EINVAL, "%s: accepted (rc %d)", v[k].why, rc);
        T_CHECK(d == NULL && n == 0, "%s: outputs not cleared", v[k].why);
        T_CHECK(strstr(eng_last_error(), v[k].msg) != NULL, "%s: message \"%s\", want \"%s\"",
                v[k].why, eng_last_error(), v[k].msg);
        if (rc == 0)
            free(d);
    }
}

static void test_empty(void)
{
    uint8_t *d = NULL;
    size_t n = 5;
    T_REQUIRE(srv_base64_decode("", 0, &d, &n) == 0, "%s", eng_last_error());
    T_CHECK(d != NULL && n == 0, "empty input gives a buffer of 0 bytes");
    free(d);
    char *s = srv_base64_encode(NULL, 0);
    T_CHECK(s && s[0] == '\0', "empty encode");
    free(s);
}

static void test_data_url(void)
{
    static const struct {
        const char *in, *payload; /* payload NULL: rejected; == in: unchanged */
    } v[] = {
        {"data:image/png;base64,iVBORw0K", "iVBORw0K"},
        {"DATA:image/JPEG;BASE64,/9j/", "/9j/"},
        {"data:image/png;name=a.png;base64,QQ==", "QQ=="},
        {"data:;base64,", ""},
        {"data:image/png,%89PNG", NULL},
        {"data:image/png;base64", NULL},
        {"data:,", NULL},
        {"iVBORw0KGgo=", "iVBORw0KGgo="},
        {"dat", "dat"},
        {"", ""},
    };
    for (size_t k = 0; k < sizeof v / sizeof *v; k++) {
        size_t len = strlen(v[k].in);
        const char *p = srv_base64_strip_data_url(v[k].in, &len);
        if (!v[k].payload) {
            T_CHECK(p == NULL, "\"%s\" accepted", v[k].in);
        } else if (!strncmp(v[k].in, "data:", 5) || !strncmp(v[k].in, "DATA:", 5)) {
            T_CHECK(p && len == strlen(v[k].payload) && memcmp(p, v[k].payload, len) == 0,
                    "\"%s\": payload wrong", v[k].in);
        } else {
            T_CHECK(p == v[k].in && len == strlen(v[k].in), "\"%s\" changed", v[k].in);
        }
    }
    /* Only the first len bytes are looked at: no comma inside them. */
    size_t len = 16;
    T_CHECK(srv_base64_strip_data_url("data:image/png;base64,QQ==", &len) == NULL, "read past len");
}

int main(void)
{
    T_RUN(test_rfc4648_vectors);
    T_RUN(test_alphabet);
    T_RUN(test_roundtrip_random);
    T_RUN(test_rejects);
    T_RUN(test_empty);
    T_RUN(test_data_url);
    return t_summary("test_base64");
}
