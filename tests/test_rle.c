/*
 * tests/test_rle.c: COCO RLE (engine/rle.c) against vectors from the real
 * pycocotools, round-trip properties over many random masks, the fixture
 * masks, and the component polygons.
 */
#include "engine/error.h"
#include "engine/ckpt.h"
#include "engine/rle.h"
#include "tests/harness.h"

/* ---- helpers ----------------------------------------------------------- */

/* T_REQUIRE for helpers that return int. */
#define T_REQUIRE_RET(cond, ...)                                                                   \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            t__fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                       \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

/* Fixed-seed PRNG (splitmix64) so failures reproduce. */
static uint64_t rng_state = 0x5eed5eed12345678ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rng_int(int lo, int hi) /* inclusive */
{
    return lo + (int)(rng_next() % (uint64_t)(hi - lo + 1));
}

/* A mask from rows of '0'/'1'. */
static uint8_t *mask_from_rows(const char *const *rows, int h, int w)
{
    uint8_t *m = malloc((size_t)h * (size_t)w);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            m[y * w + x] = rows[y][x] == '1';
    return m;
}

static void brute_bbox(const uint8_t *m, int h, int w, double bb[4], uint64_t *area)
{
    int xs = w, ys = h, xe = -1, ye = -1;
    uint64_t a = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if (m[(size_t)y * w + x]) {
                a++;
                xs = x < xs ? x : xs;
                xe = x > xe ? x : xe;
                ys = y < ys ? y : ys;
                ye = y > ye ? y : ye;
            }
    *area = a;
    if (!a) {
        bb[0] = bb[1] = bb[2] = bb[3] = 0;
        return;
    }
    bb[0] = xs;
    bb[1] = ys;
    bb[2] = xe - xs + 1;
    bb[3] = ye - ys + 1;
}

/* Encode, stringify, parse, decode; checks everything agrees with the mask.
 * Returns 0 on success so loops can stop at the first failure. */
static int roundtrip(const uint8_t *m, int h, int w)
{
    size_t a = (size_t)h * (size_t)w;
    eng_rle r, q;
    char *s = NULL;
    int bad = 0;
    T_REQUIRE_RET(eng_rle_encode(m, h, w, &r) == 0, "encode %dx%d: %s", h, w, eng_last_error());
    for (size_t i = 1; i < r.n; i++)
        if (r.counts[i] == 0) {
            T_CHECK(0, "%dx%d: empty run %zu from the encoder", h, w, i);
            bad = 1;
        }
    if (eng_rle_to_string(&r, &s) != 0) {
        T_CHECK(0, "to_string %dx%d: %s", h, w, eng_last_error());
        eng_rle_free(&r);
        return 1;
    }
    if (eng_rle_from_string(s, strlen(s), h, w, &q) != 0) {
        T_CHECK(0, "parse %dx%d \"%s\": %s", h, w, s, eng_last_error());
        free(s);
        eng_rle_free(&r);
        return 1;
    }
    if (q.n != r.n || memcmp(q.counts, r.counts, r.n * sizeof *r.counts) != 0) {
        T_CHECK(0, "%dx%d: parsed counts differ from encoded ones (\"%s\")", h, w, s);
        bad = 1;
    }
    uint8_t *d = malloc(a ? a : 1);
    if (eng_rle_decode(&q, d) != 0) {
        T_CHECK(0, "decode %dx%d: %s", h, w, eng_last_error());
        bad = 1;
    } else {
        for (size_t i = 0; i < a; i++)
            if (d[i] != (m[i] != 0)) {
                T_CHECK(0, "%dx%d: decoded pixel %zu is %d, want %d", h, w, i, d[i], m[i] != 0);
                bad = 1;
                break;
            }
    }
    double bb[4], want[4];
    uint64_t area;
    brute_bbox(m, h, w, want, &area);
    eng_rle_bbox(&r, bb);
    if (eng_rle_area(&r) != area || memcmp(bb, want, sizeof bb) != 0) {
        T_CHECK(0, "%dx%d: area %llu bbox [%g %g %g %g], want %llu [%g %g %g %g]", h, w,
                (unsigned long long)eng_rle_area(&r), bb[0], bb[1], bb[2], bb[3],
                (unsigned long long)area, want[0], want[1], want[2], want[3]);
        bad = 1;
    }
    free(d);
    free(s);
    eng_rle_free(&r);
    eng_rle_free(&q);
    return bad;
}

/* ---- vectors from pycocotools ------------------------------------------ */

/*
 * Every expected string, area and box below was produced by pycocotools
 * 2.0 (mask.encode on the Fortran-ordered uint8 mask, mask.area,
 * mask.toBbox), not by this code.
 */
typedef struct {
    int h, w;
    const char *rows[8];
    const char *counts;
    uint64_t area;
    double bbox[4];
} small_vec;

static const small_vec small_vecs[] = {
    {1, 1, {"0"}, "1", 0, {0, 0, 0, 0}},
    {1, 1, {"1"}, "01", 1, {0, 0, 1, 1}},
    {2, 3, {"010", "111"}, "131N", 4, {0, 0, 3, 2}},
    {3, 1, {"1", "0", "1"}, "0110", 2, {0, 0, 1, 3}},
    {1, 6, {"110011"}, "0220", 4, {0, 0, 6, 1}},
    {4, 4, {"0101", "1010", "0101", "1010"}, "11110O10O10O0", 8, {0, 0, 4, 4}},
    {5,
     7,
     {"0001101", "0011111", "0000001", "1011010", "0011110"},
     "3170J3001MO0041",
     17,
     {0, 0, 7, 5}},
    {7, 3, {"111", "111", "111", "111", "111", "111", "111"}, "0e0", 21, {0, 0, 3, 7}},
};

static void test_pycocotools_small(void)
{
    for (size_t k = 0; k < sizeof small_vecs / sizeof *small_vecs; k++) {
        const small_vec *v = &small_vecs[k];
        uint8_t *m = mask_from_rows(v->rows, v->h, v->w);
        eng_rle r;
        char *s = NULL;
        T_REQUIRE(eng_rle_encode(m, v->h, v->w, &r) == 0, "%s", eng_last_error());
        T_REQUIRE(eng_rle_to_string(&r, &s) == 0, "%s", eng_last_error());
        T_CHECK(strcmp(s, v->counts) == 0, "vector %zu: \"%s\", want \"%s\"", k, s, v->counts);
        T_CHECK(eng_rle_area(&r) == v->area, "vector %zu: area %llu", k,
                (unsigned long long)eng_rle_area(&r));
        double bb[4];
        eng_rle_bbox(&r, bb);
        T_CHECK(memcmp(bb, v->bbox, sizeof bb) == 0, "vector %zu: bbox [%g %g %g %g]", k, bb[0],
                bb[1], bb[2], bb[3]);
        T_CHECK(roundtrip(m, v->h, v->w) == 0, "vector %zu round trip", k);
        free(s);
        free(m);
        eng_rle_free(&r);
    }
}

/* A string of a prefix, n '0' characters (zero deltas: columns alike) and a
 * suffix; how the long pycocotools strings below are written compactly. */
static char *expand(const char *pre, size_t zeros, const char *suf)
{
    size_t a = strlen(pre), b = strlen(suf);
    char *s = malloc(a + zeros + b + 1);
    memcpy(s, pre, a);
    memset(s + a, '0', zeros);
    memcpy(s + a + zeros, suf, b + 1);
    return s;
}

/* Disk of radius 150 at (x 400, y 267), (y-267)^2 + (x-400)^2 < 150^2, in
 * 534x800: pycocotools' string. */
static const char disk_counts[] =
    "\\TS4S1\\\?>D:F:G8I6I8I6J6K4K6K4K6K4L4L4L4L4L4M2M4L4M2M4M2M4M2M4M2N2M4M2N2M4M2N2"
    "N2N2N2N2M4M2N2N2N2N2N2O0O2N2N2N2N2N2N2O0O2N2N2O0O2N2N2O0O2N2O0O2N2O0O2N2O0O2O0O2"
    "N2O0O2O0O2O0O2O0O2O0O2O0O2O000O2O0O2O000O2O0O2O000O2O000O2O00000O2O000O2O00000O2"
    "O0000000O2O0000000O2O00000000000O2O000000000000000000000000000000000000000000000"
    "00000000000000000000001N1000000000001N100000001N100000001N1000001N10001N1000001N"
    "10001N10001N101N10001N101N10001N101N101N101N101N101N101N2N101N101N2N101N2N101N2N"
    "101N2N2N101N2N2N101N2N2N2N2N2N2N101N2N2N2N2N2N3L3N2N2N2N2N2N3L3N2N3L3N2N3L3N3L3N"
    "3L3N3L4L3N3L4L4L4L4L4L5J5L5J5L5J6J7H7J7H9F:F<BYTR4";

typedef struct {
    const char *name;
    int h, w;
    int kind;        /* 0 rectangles, 1 disk */
    int rects[2][4]; /* y0, y1, x0, x1 (half-open); unused rows are zero */
    const char *pre, *suf;
    size_t zeros;
    uint64_t area;
    double bbox[4];
} big_vec;

/* From pycocotools, as above. */
static const big_vec big_vecs[] = {
    {"rect",
     534,
     800,
     0,
     {{100, 300, 200, 500}},
     "d\\X3X6^:",
     "T[l4",
     597,
     60000,
     {200, 100, 300, 200}},
    {"corner", 3000, 3000, 0, {{2999, 3000, 2999, 3000}}, "oQeb81", "", 0, 1, {2999, 2999, 1, 1}},
    {"origin", 3000, 3000, 0, {{0, 1, 0, 1}}, "01oQeb8", "", 0, 1, {0, 0, 1, 1}},
    {"two",
     1500,
     2000,
     0,
     {{10, 1400, 5, 7}, {700, 701, 1000, 1999}},
     "fZ7^[1^30^X_]1cdNoRbbN",
     "Pi0",
     1995,
     3779,
     {5, 10, 1994, 1390}},
    {"disk", 534, 800, 1, {{0}}, NULL, NULL, 0, 70661, {251, 118, 299, 299}},
};

static void test_pycocotools_large(void)
{
    for (size_t k = 0; k < sizeof big_vecs / sizeof *big_vecs; k++) {
        const big_vec *v = &big_vecs[k];
        size_t a = (size_t)v->h * (size_t)v->w;
        uint8_t *m = calloc(a, 1);
        if (v->kind == 1) {
            for (int y = 0; y < v->h; y++)
                for (int x = 0; x < v->w; x++)
                    m[(size_t)y * v->w + x] =
                        (y - 267) * (y - 267) + (x - 400) * (x - 400) < 150 * 150;
        } else {
            for (int i = 0; i < 2; i++)
                for (int y = v->rects[i][0]; y < v->rects[i][1]; y++)
                    for (int x = v->rects[i][2]; x < v->rects[i][3]; x++)
                        m[(size_t)y * v->w + x] = 1;
        }
        char *want = v->kind == 1 ? expand(disk_counts, 0, "") : expand(v->pre, v->zeros, v->suf);
        eng_rle r;
        char *s = NULL;
        T_REQUIRE(eng_rle_encode(m, v->h, v->w, &r) == 0, "%s", eng_last_error());
        T_REQUIRE(eng_rle_to_string(&r, &s) == 0, "%s", eng_last_error());
        T_CHECK(strcmp(s, want) == 0, "%s: got \"%.60s...\"", v->name, s);
        T_CHECK(eng_rle_area(&r) == v->area, "%s: area %llu", v->name,
                (unsigned long long)eng_rle_area(&r));
        double bb[4];
        eng_rle_bbox(&r, bb);
        T_CHECK(memcmp(bb, v->bbox, sizeof bb) == 0, "%s: bbox [%g %g %g %g]", v->name, bb[0],
                bb[1], bb[2], bb[3]);
        /* The pycocotools string itself decodes to the mask. */
        eng_rle q;
        T_REQUIRE(eng_rle_from_string(want, strlen(want), v->h, v->w, &q) == 0, "%s: %s", v->name,
                  eng_last_error());
        uint8_t *d = malloc(a);
        T_CHECK(eng_rle_decode(&q, d) == 0 && memcmp(d, m, a) == 0, "%s: decode differs", v->name);
        free(d);
        free(want);
        free(s);
        free(m);
        eng_rle_free(&r);
        eng_rle_free(&q);
    }
}

/* ---- properties -------------------------------------------------------- */

static void random_mask(uint8_t *m, int h, int w)
{
    size_t a = (size_t)h * (size_t)w;
    switch (rng_int(0, 5)) {
    case 0: /* independent pixels, any density */
    {
        int p = rng_int(0, 100);
        for (size_t i = 0; i < a; i++)
            m[i] = rng_int(1, 100) <= p;
        break;
    }
    case 1: /* union of rectangles */
    {
        memset(m, 0, a);
        for (int k = rng_int(0, 6); k > 0; k--) {
            int y0 = rng_int(0, h - 1), y1 = rng_int(y0, h - 1);
            int x0 = rng_int(0, w - 1), x1 = rng_int(x0, w - 1);
            for (int y = y0; y <= y1; y++)
                for (int x = x0; x <= x1; x++)
                    m[(size_t)y * w + x] = 1;
        }
        break;
    }
    case 2: /* all one value */
        memset(m, rng_int(0, 1), a);
        break;
    case 3: /* checkerboard of either phase */
    {
        int ph = rng_int(0, 1);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                m[(size_t)y * w + x] = ((x + y + ph) & 1) != 0;
        break;
    }
    case 4: /* arbitrary non-zero bytes count as foreground */
        for (size_t i = 0; i < a; i++)
            m[i] = rng_int(0, 2) ? 0 : (uint8_t)rng_int(1, 255);
        break;
    default: /* long runs in raster order */
    {
        size_t i = 0;
        uint8_t v = (uint8_t)rng_int(0, 1);
        while (i < a) {
            size_t n = (size_t)rng_int(1, 3 * w);
            for (; n > 0 && i < a; n--)
                m[i++] = v;
            v ^= 1;
        }
        break;
    }
    }
}

static void test_roundtrip_random(void)
{
    uint8_t *m = malloc(64 * 64);
    int n;
    for (n = 0; n < 5000; n++) {
        int h, w;
        switch (n % 4) {
        case 0:
            h = 1, w = rng_int(1, 64);
            break;
        case 1:
            h = rng_int(1, 64), w = 1;
            break;
        default:
            h = rng_int(1, 64), w = rng_int(1, 64);
            break;
        }
        random_mask(m, h, w);
        if (roundtrip(m, h, w) != 0)
            break;
    }
    T_CHECK(n == 5000, "stopped at mask %d", n);
    free(m);
}

static void test_empty_sizes(void)
{
    eng_rle r;
    char *s;
    T_REQUIRE(eng_rle_encode(NULL, 0, 0, &r) == 0, "%s", eng_last_error());
    T_CHECK(r.n == 1 && r.counts[0] == 0, "0x0: %zu runs", r.n);
    T_REQUIRE(eng_rle_to_string(&r, &s) == 0, "%s", eng_last_error());
    T_CHECK(strcmp(s, "0") == 0, "0x0 gives \"%s\"", s);
    free(s);
    eng_rle_free(&r);
    T_CHECK(eng_rle_from_string("0", 1, 0, 5, &r) == 0 && r.n == 1, "parse 0x5 \"0\"");
    eng_rle_free(&r);
    T_CHECK(eng_rle_from_string("", 0, 5, 0, &r) == 0 && r.n == 0, "parse 5x0 \"\"");
    double bb[4] = {1, 1, 1, 1};
    eng_rle_bbox(&r, bb);
    T_CHECK(bb[0] == 0 && bb[1] == 0 && bb[2] == 0 && bb[3] == 0, "empty bbox");
    T_CHECK(eng_rle_area(&r) == 0, "empty area");
    T_CHECK(eng_rle_decode(&r, NULL) == 0, "decode 5x0");
    eng_rle_free(&r);
    uint8_t px = 1;
    T_CHECK(eng_rle_encode(&px, -1, 1, &r) == ENG_EINVAL, "negative height accepted");
    T_CHECK(eng_rle_from_string("1", 1, 1, -1, &r) == ENG_EINVAL, "negative width accepted");
    T_CHECK(eng_rle_encode(&px, 70000, 70000, &r) == ENG_ELIMIT, "4.9e9 pixels accepted");
}

typedef struct {
    const char *s;
    int h, w;
    const char *why;
    const char *msg; /* a substring the error message must hold */
} reject_vec;

static void test_parse_rejects(void)
{
    static const reject_vec v[] = {
        {"1 ", 1, 1, "space", "offset 1"},
        {"01p", 1, 2, "char above 'o'", "0x70 in counts string at offset 2"},
        {"0/", 1, 2, "char below '0'", "offset 1"},
        {"\x80", 1, 1, "high byte", "0x80"},
        {"P", 1, 1, "unterminated group", "ends inside the count at offset 0"},
        {"1P", 1, 1, "unterminated second group", "offset 1"},
        {"PPPPPPP0", 1, 1, "8-character group", "overflows"},
        {"PPPPPP8", 1, 1, "count of 2^33", "run at offset 0 overflows"},
        {"111N", 2, 2, "negative run (1 - 2)", "negative run -1 at offset 3"},
        {"O", 1, 1, "negative first count", "negative run"},
        {"2", 1, 1, "runs exceed", "exceed"},
        {"11", 1, 3, "runs short", "cover 2 pixels"},
        {"", 1, 1, "empty string for one pixel", "cover 0 pixels"},
        {"00", 1, 1, "zero runs only", "cover 0 pixels"},
    };
    for (size_t k = 0; k < sizeof v / sizeof *v; k++) {
        eng_rle r;
        memset(&r, 0xab, sizeof r);
        eng_clear_error();
        int rc = eng_rle_from_string(v[k].s, strlen(v[k].s), v[k].h, v[k].w, &r);
        T_CHECK(rc == ENG_EINVAL, "%s: \"%s\" gave %d", v[k].why, v[k].s, rc);
        T_CHECK(r.counts == NULL && r.n == 0, "%s: output not cleared", v[k].why);
        T_CHECK(strstr(eng_last_error(), v[k].msg) != NULL, "%s: message \"%s\"", v[k].why,
                eng_last_error());
    }
    /* An embedded NUL is a bad character, not the end of the string. */
    eng_rle r;
    T_CHECK(eng_rle_from_string("1\0", 2, 1, 1, &r) == ENG_EINVAL, "embedded NUL accepted");
}

static void test_parse_lenient_like_pycocotools(void)
{
    /* pycocotools decodes these, though its encoder never writes them: a
     * non-minimal group ("P0" is 0 with a needless continuation) and empty
     * runs inside the string. They decode to the same mask and re-encode
     * canonically. */
    eng_rle r;
    char *s;
    uint8_t d[4];
    T_REQUIRE(eng_rle_from_string("P01", 3, 1, 1, &r) == 0, "%s", eng_last_error());
    T_CHECK(r.n == 2 && r.counts[0] == 0 && r.counts[1] == 1, "P01 -> %zu runs", r.n);
    eng_rle_free(&r);
    /* [1, 0, 1, 2] over 2x2: 1 zero, no ones, 1 zero, 2 ones. */
    T_REQUIRE(eng_rle_from_string("1012", 4, 2, 2, &r) == 0, "%s", eng_last_error());
    T_REQUIRE(eng_rle_decode(&r, d) == 0, "%s", eng_last_error());
    T_CHECK(d[0] == 0 && d[1] == 1 && d[2] == 0 && d[3] == 1, "decode [1,0,1,2]");
    T_CHECK(eng_rle_area(&r) == 2, "area");
    double bb[4];
    eng_rle_bbox(&r, bb);
    /* The empty one-run adds nothing to the box (pycocotools' would). */
    T_CHECK(bb[0] == 1 && bb[1] == 0 && bb[2] == 1 && bb[3] == 2, "bbox [%g %g %g %g]", bb[0],
            bb[1], bb[2], bb[3]);
    eng_rle_free(&r);
    T_REQUIRE(eng_rle_encode(d, 2, 2, &r) == 0, "%s", eng_last_error());
    T_REQUIRE(eng_rle_to_string(&r, &s) == 0, "%s", eng_last_error());
    T_CHECK(strcmp(s, "22") == 0, "re-encoded \"%s\"", s);
    free(s);
    eng_rle_free(&r);
}

static void test_extreme_counts(void)
{
    /* Counts at the uint32 limit take 7 characters, as does the delta
     * between them and zero. 65535 x 65537 = 2^32 - 1 pixels, so the
     * largest count fits one mask (parsed only: decoding would need 4 GiB). */
    uint32_t c[] = {0, UINT32_MAX, 0, 0};
    eng_rle r = {.h = 65535, .w = 65537, .n = 4, .counts = c}, q;
    char *s;
    T_REQUIRE(eng_rle_to_string(&r, &s) == 0, "%s", eng_last_error());
    T_CHECK(strlen(s) == 1 + 7 + 1 + 7, "\"%s\"", s);
    T_REQUIRE(eng_rle_from_string(s, strlen(s), 65535, 65537, &q) == 0, "%s", eng_last_error());
    T_CHECK(q.n == 4 && memcmp(q.counts, c, sizeof c) == 0, "counts back");
    T_CHECK(eng_rle_area(&q) == UINT32_MAX, "area");
    free(s);
    eng_rle_free(&q);
    /* 2^32 - 1 written by hand parses; 2^32 overflows. */
    T_CHECK(eng_rle_from_string("0oooooo3", 8, 65535, 65537, &q) == 0 && q.counts[1] == UINT32_MAX,
            "2^32 - 1: %s", eng_last_error());
    eng_rle_free(&q);
    T_CHECK(eng_rle_from_string("0PPPPPP4", 8, 65535, 65537, &q) == ENG_EINVAL, "2^32 accepted");

    uint32_t e[] = {1, 1};
    eng_rle bad = {.h = 1, .w = 3, .n = 2, .counts = e};
    uint8_t d[3];
    T_CHECK(eng_rle_decode(&bad, d) == ENG_EINVAL, "decode with runs short of h*w");
}

/* ---- fixture masks ------------------------------------------------------ */

/* Number of 8-connected foreground components (independent of rle.c). */
static int count_components(const uint8_t *m, int h, int w)
{
    int *lab = calloc((size_t)h * w, sizeof *lab), n = 0;
    int *stk = malloc((size_t)h * w * sizeof *stk);
    for (int i = 0; i < h * w; i++) {
        if (!m[i] || lab[i])
            continue;
        int sp = 0;
        lab[i] = ++n;
        stk[sp++] = i;
        while (sp) {
            int j = stk[--sp], y = j / w, x = j % w;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int yy = y + dy, xx = x + dx;
                    if (yy < 0 || xx < 0 || yy >= h || xx >= w)
                        continue;
                    int k = yy * w + xx;
                    if (m[k] && !lab[k]) {
                        lab[k] = n;
                        stk[sp++] = k;
                    }
                }
        }
    }
    free(lab);
    free(stk);
    return n;
}

static void test_fixture_masks(void)
{
    T_NEED_FIXTURES();
    eng_ckpt *c = NULL;
    T_REQUIRE(eng_ckpt_open(&c, t_fixture("golden_tiny.safetensors")) == 0, "%s", eng_last_error());
    const eng_ckpt_tensor *t = eng_ckpt_find(c, "point1.masks");
    T_REQUIRE(t && t->dtype == ENG_U8 && t->ndim == 3 && t->shape[0] == 3 && t->shape[1] == 534 &&
                  t->shape[2] == 800,
              "point1.masks not found as u8 [3,534,800]");
    const uint8_t *d = t->data;
    for (int k = 0; k < 3; k++) {
        const uint8_t *m = d + (size_t)k * 534 * 800;
        T_CHECK(roundtrip(m, 534, 800) == 0, "point1.masks[%d]", k);
        eng_polygons p;
        T_REQUIRE(eng_mask_polygons(m, 534, 800, &p) == 0, "%s", eng_last_error());
        T_CHECK((int)p.n == count_components(m, 534, 800), "mask %d: %zu polygons", k, p.n);
        eng_polygons_free(&p);
    }
    eng_ckpt_close(c);
}

/* ---- polygons ---------------------------------------------------------- */

static int poly_is(const eng_polygon *p, const int32_t *xy, size_t n)
{
    return p->n == n && memcmp(p->xy, xy, 2 * n * sizeof *xy) == 0;
}

static void test_polygon_shapes(void)
{
    eng_polygons p;
    uint8_t m[6 * 7];

    memset(m, 0, sizeof m);
    T_REQUIRE(eng_mask_polygons(m, 6, 7, &p) == 0, "%s", eng_last_error());
    T_CHECK(p.n == 0 && p.polys == NULL, "empty mask: %zu polygons", p.n);
    eng_polygons_free(&p);

    /* Filled rectangle x 2..5, y 1..3: its four corners, clockwise. */
    for (int y = 1; y <= 3; y++)
        for (int x = 2; x <= 5; x++)
            m[y * 7 + x] = 1;
    T_REQUIRE(eng_mask_polygons(m, 6, 7, &p) == 0, "%s", eng_last_error());
    static const int32_t rect[] = {2, 1, 6, 1, 6, 4, 2, 4};
    T_CHECK(p.n == 1 && poly_is(&p.polys[0], rect, 4), "rectangle: %zu polygons, %zu vertices", p.n,
            p.n ? p.polys[0].n : 0);
    eng_polygons_free(&p);

    /* Hollow it: the hole is not reported. */
    m[2 * 7 + 3] = m[2 * 7 + 4] = 0;
    T_REQUIRE(eng_mask_polygons(m, 6, 7, &p) == 0, "%s", eng_last_error());
    T_CHECK(p.n == 1 && poly_is(&p.polys[0], rect, 4), "ring gives its outside only");
    eng_polygons_free(&p);

    /* Two blobs: a second one in the bottom-left corner, on the border. */
    m[5 * 7 + 0] = m[5 * 7 + 1] = 1;
    T_REQUIRE(eng_mask_polygons(m, 6, 7, &p) == 0, "%s", eng_last_error());
    static const int32_t blob2[] = {0, 5, 2, 5, 2, 6, 0, 6};
    T_CHECK(p.n == 2 && poly_is(&p.polys[0], rect, 4) && poly_is(&p.polys[1], blob2, 4),
            "two blobs: %zu polygons", p.n);
    eng_polygons_free(&p);

    /* Diagonal neighbours are one component; the outline touches itself at
     * the shared corner (1, 1). */
    static const char *const diag[] = {"10", "01"};
    uint8_t *dm = mask_from_rows(diag, 2, 2);
    T_REQUIRE(eng_mask_polygons(dm, 2, 2, &p) == 0, "%s", eng_last_error());
    static const int32_t pinch[] = {0, 0, 1, 0, 1, 1, 2, 1, 2, 2, 1, 2, 1, 1, 0, 1};
    T_CHECK(p.n == 1 && poly_is(&p.polys[0], pinch, 8), "diagonal pair: %zu polygons", p.n);
    eng_polygons_free(&p);
    free(dm);

    /* An L: six corners. */
    static const char *const ell[] = {"10", "10", "11"};
    dm = mask_from_rows(ell, 3, 2);
    T_REQUIRE(eng_mask_polygons(dm, 3, 2, &p) == 0, "%s", eng_last_error());
    static const int32_t lpoly[] = {0, 0, 1, 0, 1, 2, 2, 2, 2, 3, 0, 3};
    T_CHECK(p.n == 1 && poly_is(&p.polys[0], lpoly, 6), "L shape");
    eng_polygons_free(&p);
    free(dm);

    /* Single pixel filling the image. */
    uint8_t one = 7;
    T_REQUIRE(eng_mask_polygons(&one, 1, 1, &p) == 0, "%s", eng_last_error());
    static const int32_t px[] = {0, 0, 1, 0, 1, 1, 0, 1};
    T_CHECK(p.n == 1 && poly_is(&p.polys[0], px, 4), "1x1");
    eng_polygons_free(&p);
    T_CHECK(eng_mask_polygons(&one, -1, 1, &p) == ENG_EINVAL, "negative size");
}

/*
 * Random masks: as many polygons as components; every polygon closed, with
 * unit-grid axis-aligned edges that alternate horizontal and vertical (no
 * collinear vertices), clockwise; and the pixels it encloses are exactly its
 * component plus the component's holes (pixels that cannot reach the image
 * border through 4-connected non-component pixels).
 */
static int check_polygons(const uint8_t *m, int h, int w)
{
    eng_polygons p;
    T_REQUIRE_RET(eng_mask_polygons(m, h, w, &p) == 0, "%s", eng_last_error());
    int nc = count_components(m, h, w), bad = 0;
    if ((int)p.n != nc) {
        T_CHECK(0, "%dx%d: %zu polygons for %d components", h, w, p.n, nc);
        eng_polygons_free(&p);
        return 1;
    }
    size_t a = (size_t)h * w;
    uint8_t *inside = malloc(a), *comp = malloc(a), *out = malloc(a);
    int *stk = malloc(a * sizeof *stk);
    for (size_t k = 0; k < p.n && !bad; k++) {
        const eng_polygon *g = &p.polys[k];
        const int32_t *v = g->xy;
        long long twice_area = 0;
        if (g->n < 4 || g->n % 2) {
            T_CHECK(0, "polygon %zu has %zu vertices", k, g->n);
            bad = 1;
            break;
        }
        /* Even-odd fill of pixel centres from the vertical edges. */
        memset(inside, 0, a);
        for (size_t i = 0; i < g->n; i++) {
            size_t j = (i + 1) % g->n, l = (i + g->n - 1) % g->n;
            int x0 = v[2 * i], y0 = v[2 * i + 1], x1 = v[2 * j], y1 = v[2 * j + 1];
            int horiz = y0 == y1, prev_horiz = v[2 * l + 1] == y0;
            if ((x0 != x1) == (y0 != y1) || horiz == prev_horiz || x0 < 0 || x0 > w || y0 < 0 ||
                y0 > h) {
                T_CHECK(0, "polygon %zu: bad edge (%d,%d)-(%d,%d)", k, x0, y0, x1, y1);
                bad = 1;
                break;
            }
            twice_area += (long long)x0 * y1 - (long long)x1 * y0;
            if (!horiz)
                for (int y = y0 < y1 ? y0 : y1; y < (y0 < y1 ? y1 : y0); y++)
                    for (int x = x0; x < w; x++)
                        inside[(size_t)y * w + x] ^= 1;
        }
        if (bad)
            break;
        if (twice_area <= 0) {
            T_CHECK(0, "polygon %zu is not clockwise on screen", k);
            bad = 1;
            break;
        }
        /* The component of the polygon's first pixel: the first vertex is
         * that pixel's top-left corner. */
        memset(comp, 0, a);
        int sp = 0, s0 = v[1] * w + v[0];
        if (!m[s0]) {
            T_CHECK(0, "polygon %zu does not start at a foreground pixel", k);
            bad = 1;
            break;
        }
        comp[s0] = 1;
        stk[sp++] = s0;
        while (sp) {
            int j = stk[--sp], y = j / w, x = j % w;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int yy = y + dy, xx = x + dx, q = yy * w + xx;
                    if (yy >= 0 && xx >= 0 && yy < h && xx < w && m[q] && !comp[q]) {
                        comp[q] = 1;
                        stk[sp++] = q;
                    }
                }
        }
        /* Pixels outside the component reachable from the border. */
        memset(out, 0, a);
        sp = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int q = y * w + x;
                if ((y == 0 || x == 0 || y == h - 1 || x == w - 1) && !comp[q] && !out[q]) {
                    out[q] = 1;
                    stk[sp++] = q;
                }
            }
        while (sp) {
            int j = stk[--sp], y = j / w, x = j % w;
            static const int d4[4][2] = {{1, 0}, {-1, 0}, {0, 1}, {0, -1}};
            for (int d = 0; d < 4; d++) {
                int yy = y + d4[d][1], xx = x + d4[d][0], q = yy * w + xx;
                if (yy >= 0 && xx >= 0 && yy < h && xx < w && !comp[q] && !out[q]) {
                    out[q] = 1;
                    stk[sp++] = q;
                }
            }
        }
        for (size_t i = 0; i < a; i++)
            if (inside[i] != !out[i]) {
                T_CHECK(0, "%dx%d polygon %zu: pixel %zu inside=%d, want %d", h, w, k, i, inside[i],
                        !out[i]);
                bad = 1;
                break;
            }
    }
    free(inside);
    free(comp);
    free(out);
    free(stk);
    eng_polygons_free(&p);
    return bad;
}

static void test_polygons_random(void)
{
    uint8_t *m = malloc(40 * 40);
    int n;
    for (n = 0; n < 600; n++) {
        int h = rng_int(1, 40), w = rng_int(1, 40);
        random_mask(m, h, w);
        if (check_polygons(m, h, w) != 0)
            break;
    }
    T_CHECK(n == 600, "stopped at mask %d", n);
    free(m);
}

int main(void)
{
    T_RUN(test_pycocotools_small);
    T_RUN(test_pycocotools_large);
    T_RUN(test_roundtrip_random);
    T_RUN(test_empty_sizes);
    T_RUN(test_parse_rejects);
    T_RUN(test_parse_lenient_like_pycocotools);
    T_RUN(test_extreme_counts);
    T_RUN(test_fixture_masks);
    T_RUN(test_polygon_shapes);
    T_RUN(test_polygons_random);
    return t_summary("test_rle");
}
