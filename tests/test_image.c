/*
 * tests/test_image.c: engine/image against the reference fixtures (decoded
 * RGB, resized images and the normalised encoder input produced by the
 * official SAM pipeline with Pillow), against images built here with libpng
 * and libjpeg whose expected pixels follow Pillow's conversion rules (stated
 * next to each test; they were checked against Pillow 13 while writing), and
 * against hostile inputs.
 */
#include "engine/error.h"
#include "engine/ckpt.h"
#include "engine/image.h"
#include "engine/sha256.h"
#include "tests/harness.h"

#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <unistd.h>
#include <zlib.h>

/* ------------------------------------------------------------ helpers -- */

/* One tensor's bytes from a safetensors fixture, through the engine's
 * checkpoint reader. Returns malloc'd bytes or NULL. */
static uint8_t *st_tensor(const char *fixture, const char *name, size_t *nbytes)
{
    const char *path = t_fixture(fixture);
    eng_ckpt *c = NULL;
    uint8_t *out = NULL;
    if (!path || eng_ckpt_open(&c, path) != 0)
        return NULL;
    const eng_ckpt_tensor *t = eng_ckpt_find(c, name);
    if (t) {
        size_t n = (size_t)t->numel * eng_dtype_size(t->dtype);
        out = malloc(n ? n : 1);
        if (out) {
            memcpy(out, t->data, n);
            *nbytes = n;
        }
    }
    eng_ckpt_close(c);
    return out;
}

/* Max |a-b| over n bytes and how many differ. */
static int u8_diff(const uint8_t *a, const uint8_t *b, size_t n, size_t *ndiff)
{
    int m = 0;
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        if (d) {
            c++;
            if (d > m)
                m = d;
        }
    }
    *ndiff = c;
    return m;
}

static int decode_file(const char *name, eng_image *img)
{
    const char *path = t_fixture(name);
    return path ? eng_image_load(path, ENG_IMAGE_DEFAULT_MAX_PIXELS, img) : ENG_ENOTFOUND;
}

/* A growing buffer that libpng/libjpeg write into. */
typedef struct membuf {
    uint8_t *p;
    size_t len, cap;
} membuf;

static void membuf_put(membuf *m, const void *d, size_t n)
{
    if (m->len + n > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        while (cap < m->len + n)
            cap *= 2;
        m->p = realloc(m->p, cap);
        m->cap = cap;
    }
    memcpy(m->p + m->len, d, n);
    m->len += n;
}

static void png_put(png_structp png, png_bytep d, size_t n)
{
    membuf_put(png_get_io_ptr(png), d, n);
}
static void png_noflush(png_structp png) { (void)png; }

/* A PNG written by libpng. `samples`: h*w*channels values (channels from
 * the colour type; palette indices for type 3) at `depth` bits, packed here.
 * Optional PLTE/tRNS/gAMA and one raw extra chunk (e.g. a garbage iCCP). */
typedef struct png_spec {
    int w, h, depth, ctype, interlace;
    const uint16_t *samples;
    const png_color *pal;
    int npal;
    const uint8_t *trns; /* palette alpha bytes */
    int ntrns;
    const png_color_16 *trns_color;
    int gamma;
    const char *raw_chunk; /* 4-char name */
    const uint8_t *raw_data;
    size_t raw_len;
} png_spec;

static int ctype_channels(int ctype)
{
    switch (ctype) {
    case PNG_COLOR_TYPE_GRAY:
        return 1;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
        return 2;
    case PNG_COLOR_TYPE_RGB:
        return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA:
        return 4;
    default:
        return 1;
    }
}

static uint8_t *make_png(const png_spec *s, size_t *len)
{
    membuf m = {0};
    int ch = ctype_channels(s->ctype);
    size_t rowbytes = ((size_t)s->w * ch * s->depth + 7) / 8;
    uint8_t *pix = calloc((size_t)s->h, rowbytes);
    png_bytep *rows = malloc((size_t)s->h * sizeof *rows);
    for (int y = 0; y < s->h; y++) {
        uint8_t *r = pix + (size_t)y * rowbytes;
        rows[y] = r;
        for (int i = 0; i < s->w * ch; i++) {
            unsigned v = s->samples[(size_t)y * s->w * ch + i];
            if (s->depth == 16) {
                r[2 * i] = (uint8_t)(v >> 8);
                r[2 * i + 1] = (uint8_t)v;
            } else if (s->depth == 8) {
                r[i] = (uint8_t)v;
            } else {
                int bit = i * s->depth;
                r[bit / 8] |= (uint8_t)(v << (8 - s->depth - bit % 8));
            }
        }
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(pix);
        free(rows);
        free(m.p);
        return NULL;
    }
    png_set_write_fn(png, &m, png_put, png_noflush);
    png_set_IHDR(png, info, (png_uint_32)s->w, (png_uint_32)s->h, s->depth, s->ctype,
                 s->interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (s->pal)
        png_set_PLTE(png, info, s->pal, s->npal);
    if (s->trns || s->trns_color)
        png_set_tRNS(png, info, s->trns, s->ntrns, s->trns_color);
    if (s->gamma)
        png_set_gAMA_fixed(png, info, s->gamma);
    png_write_info(png, info);
    if (s->raw_chunk)
        png_write_chunk(png, (png_const_bytep)s->raw_chunk, s->raw_data, s->raw_len);
    if (s->interlace)
        png_set_interlace_handling(png);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(pix);
    free(rows);
    *len = m.len;
    return m.p;
}

/* A baseline JPEG of 8x8 blocks, each block one solid colour, written by
 * libjpeg at quality 100 (all quantisers 1) with no chroma subsampling: a
 * solid block has only a DC term, which survives quantisation exactly, so
 * decoding gives back the stored samples (grey, or CMYK as stored). With
 * `ycck` the CMYK data is stored as YCCK (lossy colour rounding). */
static uint8_t *make_block_jpeg(int bw, int bh, int comps, int ycck, const uint8_t *block_colors,
                                size_t *len)
{
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr jerr;
    unsigned char *out = NULL;
    unsigned long outlen = 0;
    int w = bw * 8, h = bh * 8;
    ci.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&ci);
    jpeg_mem_dest(&ci, &out, &outlen);
    ci.image_width = (JDIMENSION)w;
    ci.image_height = (JDIMENSION)h;
    ci.input_components = comps;
    ci.in_color_space = comps == 1 ? JCS_GRAYSCALE : JCS_CMYK;
    jpeg_set_defaults(&ci);
    if (comps == 4)
        jpeg_set_colorspace(&ci, ycck ? JCS_YCCK : JCS_CMYK);
    for (int i = 0; i < ci.num_components; i++)
        ci.comp_info[i].h_samp_factor = ci.comp_info[i].v_samp_factor = 1;
    jpeg_set_quality(&ci, 100, TRUE);
    jpeg_start_compress(&ci, TRUE);
    uint8_t *row = malloc((size_t)w * comps);
    while (ci.next_scanline < ci.image_height) {
        int by = (int)ci.next_scanline / 8;
        for (int x = 0; x < w; x++)
            memcpy(row + x * comps, block_colors + ((size_t)by * bw + x / 8) * comps,
                   (size_t)comps);
        JSAMPROW r = row;
        jpeg_write_scanlines(&ci, &r, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    free(row);
    *len = outlen;
    uint8_t *copy = malloc(outlen);
    memcpy(copy, out, outlen);
    free(out);
    return copy;
}

/* Pillow's CMYK->RGB on the samples as stored in an Adobe CMYK JPEG:
 * "CMYK;I" inverts them (C = 255 - sC ...), then
 * R = clip(nk - MULDIV255(C, nk)), nk = 255 - K, MULDIV255(a, b) =
 * (t = a*b + 128, ((t >> 8) + t) >> 8). */
static uint8_t pillow_cmyk_channel(uint8_t stored_c, uint8_t stored_k)
{
    int C = 255 - stored_c, nk = 255 - (255 - stored_k);
    int t = C * nk + 128;
    int v = nk - (((t >> 8) + t) >> 8);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* ---------------------------------------------------- fixture goldens -- */

static void test_dog_decode_golden(void)
{
    T_NEED_FIXTURES();
    size_t n = 0;
    uint8_t *want = st_tensor("golden_tiny.safetensors", "image_rgb", &n);
    T_REQUIRE(want, "golden_tiny.safetensors image_rgb missing");
    eng_image img;
    int rc = decode_file("images/dog.jpg", &img);
    T_CHECK(rc == 0, "decode: %s", eng_last_error());
    if (rc == 0) {
        T_CHECK(img.w == 800 && img.h == 534, "size %dx%d", img.w, img.h);
        T_CHECK(n == (size_t)800 * 534 * 3 && memcmp(img.rgb, want, n) == 0,
                "decoded RGB differs from image_rgb");
    }
    eng_image_free(&img);
    free(want);
}

/* resize_cases.json: truck.jpg decodes to [1200,1800,3] with SHA-256
 * 1cbb6e21...6ee3 of the RGB buffer. */
static void test_truck_decode_sha256(void)
{
    T_NEED_FIXTURES();
    eng_image img;
    int rc = decode_file("images/truck.jpg", &img);
    T_REQUIRE(rc == 0, "decode: %s", eng_last_error());
    T_CHECK(img.w == 1800 && img.h == 1200, "size %dx%d", img.w, img.h);
    uint8_t d[32];
    char hex[65];
    eng_sha256(img.rgb, (size_t)img.w * img.h * 3, d);
    eng_sha256_hex(d, hex);
    T_CHECK(strcmp(hex, "1cbb6e2115d8fdc1867cfdea972fad51506bd1c7f55c17065f264c1b3bee6ee3") == 0,
            "sha256 %s", hex);
    eng_image_free(&img);
}

static void test_png_fixtures_decode_golden(void)
{
    T_NEED_FIXTURES();
    const char *names[] = {"gray.png", "rgba.png", "palette.png"};
    for (int i = 0; i < 3; i++) {
        char file[64], key[64];
        snprintf(file, sizeof file, "images/%s", names[i]);
        snprintf(key, sizeof key, "%s.rgb", names[i]);
        size_t n = 0;
        uint8_t *want = st_tensor("golden_resize.safetensors", key, &n);
        T_REQUIRE(want, "%s missing", key);
        eng_image img;
        int rc = decode_file(file, &img);
        T_CHECK(rc == 0, "%s: %s", file, eng_last_error());
        if (rc == 0)
            T_CHECK(img.w == 64 && img.h == 48 && n == 64 * 48 * 3 && memcmp(img.rgb, want, n) == 0,
                    "%s differs from %s", file, key);
        eng_image_free(&img);
        free(want);
    }
}

/* Decode, resize to SAM's 1024 long side, compare; prints the max
 * difference and the number of differing values (expected: 0 and 0). */
static void check_resize_golden(const char *image, const char *fixture, const char *key, int ew,
                                int eh)
{
    size_t n = 0;
    uint8_t *want = st_tensor(fixture, key, &n);
    T_REQUIRE(want, "%s %s missing", fixture, key);
    eng_image img;
    int rc = decode_file(image, &img);
    T_REQUIRE(rc == 0, "%s: %s", image, eng_last_error());
    int rw, rh;
    eng_resize_shape(img.w, img.h, 1024, &rw, &rh);
    T_CHECK(rw == ew && rh == eh, "%s: target %dx%d, want %dx%d", image, rw, rh, ew, eh);
    uint8_t *got = malloc((size_t)rw * rh * 3);
    rc = eng_resize_bilinear_aa(img.rgb, img.w, img.h, got, rw, rh);
    T_CHECK(rc == 0, "resize: %s", eng_last_error());
    if (rc == 0 && n == (size_t)rw * rh * 3) {
        size_t nd;
        int md = u8_diff(got, want, n, &nd);
        printf("#   %s -> %dx%d: max diff %d, %zu of %zu values differ\n", image, rw, rh, md, nd,
               n);
        T_CHECK(md <= 1, "%s: max diff %d (%zu values)", image, md, nd);
        T_CHECK(nd == 0, "%s: not bit-exact with Pillow: %zu values differ", image, nd);
    }
    free(got);
    eng_image_free(&img);
    free(want);
}

static void test_resize_goldens(void)
{
    T_NEED_FIXTURES();
    check_resize_golden("images/dog.jpg", "golden_tiny.safetensors", "image_resized", 1024, 684);
    check_resize_golden("images/truck.jpg", "golden_resize.safetensors", "truck.resized", 1024,
                        683);
    check_resize_golden("images/gray.png", "golden_resize.safetensors", "gray.png.resized", 1024,
                        768);
    check_resize_golden("images/rgba.png", "golden_resize.safetensors", "rgba.png.resized", 1024,
                        768);
    check_resize_golden("images/palette.png", "golden_resize.safetensors", "palette.png.resized",
                        1024, 768);
}

static void test_normalize_pad_golden(void)
{
    T_NEED_FIXTURES();
    size_t n = 0, nin = 0;
    uint8_t *resized = st_tensor("golden_tiny.safetensors", "image_resized", &n);
    float *want = (float *)st_tensor("golden_tiny_input.safetensors", "input_tensor", &nin);
    T_REQUIRE(resized && want && n == 684 * 1024 * 3 && nin == 3 * 1024 * 1024 * 4,
              "fixtures missing");
    float *got = malloc(nin);
    for (size_t i = 0; i < nin / 4; i++)
        got[i] = NAN;
    eng_sam_normalize_pad(resized, 1024, 684, got);
    size_t worst;
    double md = t_max_abs_diff(got, want, nin / 4, &worst);
    printf("#   normalise+pad: max |diff| %.3g at %zu\n", md, worst);
    T_CHECK(md <= 1e-5, "max diff %g at %zu", md, worst);
    T_CHECK(got[(size_t)1 * 1024 * 1024 + 700 * 1024 + 5] == 0.0f, "padding row not zero");
    free(got);
    free(resized);
    free(want);
}

/* ----------------------------------------------------- resize / shape -- */

/* get_preprocess_shape: scale = 1024 / max(h, w), int(x * scale + 0.5). */
static void test_resize_shape(void)
{
    int w, h;
    eng_resize_shape(800, 534, 1024, &w, &h);
    T_CHECK(w == 1024 && h == 684, "800x534 -> %dx%d", w, h); /* 534*1.28 = 683.52 */
    eng_resize_shape(1800, 1200, 1024, &w, &h);
    T_CHECK(w == 1024 && h == 683, "1800x1200 -> %dx%d", w, h); /* 682.67 */
    eng_resize_shape(64, 48, 1024, &w, &h);
    T_CHECK(w == 1024 && h == 768, "64x48 -> %dx%d", w, h);
    eng_resize_shape(48, 64, 1024, &w, &h);
    T_CHECK(w == 768 && h == 1024, "48x64 -> %dx%d", w, h);
    eng_resize_shape(1, 4096, 1024, &w, &h);
    T_CHECK(w == 0 && h == 1024, "1x4096 -> %dx%d (Python gives int(0.25 + 0.5) = 0)", w, h);
    eng_resize_shape(2048, 2048, 1024, &w, &h);
    T_CHECK(w == 1024 && h == 1024, "square -> %dx%d", w, h);
    /* 3*1024/2048 = 1.5 -> int(2.0) = 2 */
    eng_resize_shape(2048, 3, 1024, &w, &h);
    T_CHECK(w == 1024 && h == 2, "2048x3 -> %dx%d", w, h);
}

/* The aspect-ratio limit: 1 * 1024 / L + 0.5 >= 1 holds for L <= 2048
 * (2048 gives exactly 1.0), so 1x2048 scales to 1x1024 and 1x2049 to 0. */
static void test_resize_check(void)
{
    T_CHECK(eng_resize_check(1, 2048, 1024) == 0, "1x2048 refused: %s", eng_last_error());
    T_CHECK(eng_resize_check(2048, 1, 1024) == 0, "2048x1 refused: %s", eng_last_error());
    T_CHECK(eng_resize_check(3, 6144, 1024) == 0, "3x6144 refused: %s", eng_last_error());
    T_CHECK(eng_resize_check(800, 534, 1024) == 0, "800x534 refused");
    int rc = eng_resize_check(1, 2049, 1024);
    T_CHECK(rc == ENG_EINVAL && strstr(eng_last_error(), "2048 times"), "1x2049: rc %d (%s)", rc,
            eng_last_error());
    T_CHECK(eng_resize_check(2049, 1, 1024) == ENG_EINVAL, "2049x1 accepted");
    T_CHECK(eng_resize_check(3, 6145, 1024) == ENG_EINVAL, "3x6145 accepted");
    T_CHECK(eng_resize_check(0, 5, 1024) == ENG_EINVAL, "0x5 accepted");
    /* the check agrees with the shape it guards, around the limit */
    for (int L = 2040; L <= 2060; L++) {
        int w, h;
        eng_resize_shape(1, L, 1024, &w, &h);
        T_CHECK((eng_resize_check(1, L, 1024) == 0) == (w >= 1), "1x%d: shape %dx%d", L, w, h);
    }
}

static void test_resize_properties(void)
{
    /* A constant image stays constant at any size: the normalised weights
     * sum to 2^22 +- rounding, and the 2^21 bias absorbs the error. */
    uint8_t src[13 * 7 * 3];
    for (size_t i = 0; i < sizeof src; i += 3) {
        src[i] = 200;
        src[i + 1] = 17;
        src[i + 2] = 255;
    }
    int sizes[][2] = {{1, 1}, {3, 2}, {13, 7}, {26, 14}, {100, 3}, {5, 40}};
    for (int s = 0; s < 6; s++) {
        int dw = sizes[s][0], dh = sizes[s][1];
        uint8_t *dst = malloc((size_t)dw * dh * 3);
        T_REQUIRE(eng_resize_bilinear_aa(src, 13, 7, dst, dw, dh) == 0, "%s", eng_last_error());
        int ok = 1;
        for (int i = 0; i < dw * dh; i++)
            ok &= dst[3 * i] == 200 && dst[3 * i + 1] == 17 && dst[3 * i + 2] == 255;
        T_CHECK(ok, "constant image changed at %dx%d", dw, dh);
        free(dst);
    }
    uint8_t one[3] = {1, 2, 3}, dst[4 * 4 * 3];
    T_CHECK(eng_resize_bilinear_aa(one, 1, 1, dst, 4, 4) == 0 && dst[45] == 1 && dst[47] == 3,
            "1x1 upscale");
    T_CHECK(eng_resize_bilinear_aa(one, 1, 1, dst, 0, 4) == ENG_EINVAL, "zero width accepted");
    T_CHECK(eng_resize_bilinear_aa(one, -1, 1, dst, 1, 1) == ENG_EINVAL, "negative width accepted");
}

/* The antialias width, computed by hand from the formula of
 * engine/image_resize.c: 8 -> 2 samples is scale 4, so the triangle is 4
 * samples wide on each side (support 4), not 1. Output 0 (center 2) reads
 * sources 0..5 with weights tri((i - 1.5) / 4) = .625 .875 .875 .625 .375
 * .125 over 3.5; output 1 (center 6) sources 2..7, the same weights
 * reversed. An impulse of 255 at source 5 gives 255 * .125 / 3.5 = 9.1 -> 9
 * and 255 * .875 / 3.5 = 63.75 -> 64 (after the 22-bit fixed point), one at
 * 0 gives 255 * .625 / 3.5 = 45.5 -> 46 and 0, one at 7 gives 0 and 46.
 * Pillow 13's Image.resize((2, 1), BILINEAR) gives the same. Without the
 * widening (support 1) output 0 would average sources 1 and 2: all 0. Both
 * axes (8x1 -> 2x1 and 1x8 -> 1x2). */
static void test_resize_antialias_width(void)
{
    static const uint8_t want[6] = {9, 46, 0, 64, 0, 46};
    uint8_t src[8 * 3] = {0}, dst[6];
    src[5 * 3 + 0] = 255;
    src[0 * 3 + 1] = 255;
    src[7 * 3 + 2] = 255;
    T_REQUIRE(eng_resize_bilinear_aa(src, 8, 1, dst, 2, 1) == 0, "%s", eng_last_error());
    T_CHECK(memcmp(dst, want, 6) == 0, "8x1 -> 2x1: %d %d %d | %d %d %d", dst[0], dst[1], dst[2],
            dst[3], dst[4], dst[5]);
    T_REQUIRE(eng_resize_bilinear_aa(src, 1, 8, dst, 1, 2) == 0, "%s", eng_last_error());
    T_CHECK(memcmp(dst, want, 6) == 0, "1x8 -> 1x2: %d %d %d | %d %d %d", dst[0], dst[1], dst[2],
            dst[3], dst[4], dst[5]);
}

/* Pillow 13 runs the vertical pass first when the height shrinks by more
 * than twice as many pixels as the width (12 -> 3 vs 5 -> 4 here). The
 * expected bytes are Pillow 13's Image.resize((4, 3), BILINEAR) of this
 * 5x12 image with pixel (x, y, c) = (37x + 91y + 53c) mod 256; horizontal
 * first would differ in 7 values. */
static void test_resize_pass_order(void)
{
    static const uint8_t want[36] = {99,  134, 132, 112, 122, 137, 113, 149, 127, 135, 133, 136,
                                     126, 139, 134, 133, 134, 131, 125, 131, 146, 108, 141, 126,
                                     141, 114, 144, 131, 131, 118, 148, 120, 124, 122, 152, 134};
    uint8_t src[12 * 5 * 3], dst[36];
    for (int y = 0; y < 12; y++)
        for (int x = 0; x < 5; x++)
            for (int c = 0; c < 3; c++)
                src[(y * 5 + x) * 3 + c] = (uint8_t)((37 * x + 91 * y + 53 * c) % 256);
    T_REQUIRE(eng_resize_bilinear_aa(src, 5, 12, dst, 4, 3) == 0, "%s", eng_last_error());
    size_t nd;
    int md = u8_diff(dst, want, 36, &nd);
    T_CHECK(nd == 0, "%zu values differ from Pillow 13 (max %d)", nd, md);
}

/* ---------------------------------------------------------- PNG encode -- */

static void test_png_roundtrip(void)
{
    int w = 37, h = 23;
    for (int ch = 1; ch <= 4; ch++) {
        if (ch == 2)
            continue;
        uint8_t *pix = malloc((size_t)w * h * ch);
        for (int i = 0; i < w * h * ch; i++)
            pix[i] = (uint8_t)(i * 7 + i / 11);
        uint8_t *png = NULL;
        size_t len = 0;
        T_REQUIRE(eng_png_encode(pix, w, h, ch, &png, &len) == 0, "encode: %s", eng_last_error());
        eng_image img;
        int rc = eng_image_decode(png, len, 0, &img);
        T_CHECK(rc == 0, "decode: %s", eng_last_error());
        if (rc == 0) {
            /* grey replicated; alpha dropped */
            int ok = img.w == w && img.h == h;
            for (int i = 0; ok && i < w * h; i++)
                for (int c = 0; c < 3; c++)
                    ok &= img.rgb[3 * i + c] == pix[i * ch + (ch == 1 ? 0 : c)];
            T_CHECK(ok, "%d-channel round trip differs", ch);
        }
        eng_image_free(&img);
        free(png);
        free(pix);
    }
    uint8_t *out = (uint8_t *)1;
    size_t len = 1;
    uint8_t px[4] = {0};
    T_CHECK(eng_png_encode(px, 1, 1, 2, &out, &len) == ENG_EINVAL && out == NULL && len == 0,
            "2 channels accepted");
    T_CHECK(eng_png_encode(px, 0, 1, 3, &out, &len) == ENG_EINVAL, "zero width accepted");
}

static void test_png_write_and_load(void)
{
    char path[] = "/tmp/tasam_test_image_XXXXXX";
    int fd = mkstemp(path);
    T_REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    uint8_t pix[6 * 5 * 3];
    for (size_t i = 0; i < sizeof pix; i++)
        pix[i] = (uint8_t)(i * 13);
    T_CHECK(eng_png_write(path, pix, 6, 5, 3) == 0, "write: %s", eng_last_error());
    eng_image img;
    T_CHECK(eng_image_load(path, 30, &img) == 0 && img.w == 6 && img.h == 5 &&
                memcmp(img.rgb, pix, sizeof pix) == 0,
            "load: %s", eng_last_error());
    eng_image_free(&img);
    /* 30 pixels against a 29-pixel limit; the message names the file. */
    T_CHECK(eng_image_load(path, 29, &img) == ENG_ELIMIT && img.rgb == NULL, "limit not applied");
    T_CHECK(strstr(eng_last_error(), path) != NULL, "message lacks the path: %s", eng_last_error());
    FILE *f = fopen(path, "wb");
    fputs("GIF89a garbage", f);
    fclose(f);
    T_CHECK(eng_image_load(path, 0, &img) == ENG_EUNSUP, "GIF file accepted");
    T_CHECK(strstr(eng_last_error(), path) && strstr(eng_last_error(), "not a JPEG or PNG image"),
            "message: %s", eng_last_error());
    unlink(path);
    T_CHECK(eng_image_load(path, 0, &img) == ENG_ENOTFOUND, "missing file");
    T_CHECK(strstr(eng_last_error(), path) != NULL, "message lacks the path: %s", eng_last_error());
    T_CHECK(eng_image_load("/tmp", 0, &img) == ENG_EIO, "directory accepted");
    T_CHECK(eng_png_write("/nonexistent-dir/x.png", pix, 6, 5, 3) == ENG_EIO, "bad path accepted");
}

/* ------------------------------------------- PNG decode, Pillow rules -- */

static int decode_png_spec(const png_spec *s, eng_image *img)
{
    size_t len = 0;
    uint8_t *png = make_png(s, &len);
    if (!png)
        return ENG_EINVAL;
    int rc = eng_image_decode(png, len, 0, img);
    free(png);
    return rc;
}

/* 16-bit RGB(A): Pillow's "RGB;16B"/"RGBA;16B" unpackers keep the high byte
 * (0x12ab -> 0x12; 0x00ff -> 0, not rounded to 1); alpha dropped. */
static void test_png_16bit_rgb(void)
{
    for (int alpha = 0; alpha <= 1; alpha++) {
        int ch = alpha ? 4 : 3, w = 5, h = 3;
        uint16_t s[5 * 3 * 4];
        for (int i = 0; i < w * h * ch; i++)
            s[i] = (uint16_t)(i * 4099 + 0xff);
        png_spec sp = {.w = w,
                       .h = h,
                       .depth = 16,
                       .ctype = alpha ? PNG_COLOR_TYPE_RGB_ALPHA : PNG_COLOR_TYPE_RGB,
                       .samples = s};
        eng_image img;
        T_REQUIRE(decode_png_spec(&sp, &img) == 0, "%s", eng_last_error());
        int ok = 1;
        for (int i = 0; i < w * h; i++)
            for (int c = 0; c < 3; c++)
                ok &= img.rgb[3 * i + c] == s[i * ch + c] >> 8;
        T_CHECK(ok, "16-bit %s: not the high byte", alpha ? "RGBA" : "RGB");
        eng_image_free(&img);
    }
}

/* 16-bit grey: Pillow opens it as "I;16" and convert("RGB") clamps the
 * value to 255 (0, 1, 255, 256, 1000, 65535 -> 0, 1, 255, 255, 255, 255):
 * it does not scale. Interlaced gives the same. */
static void test_png_16bit_grey_clamps(void)
{
    static const uint16_t s[6] = {0, 1, 255, 256, 1000, 65535};
    static const uint8_t want[6] = {0, 1, 255, 255, 255, 255};
    for (int il = 0; il <= 1; il++) {
        png_spec sp = {.w = 3,
                       .h = 2,
                       .depth = 16,
                       .ctype = PNG_COLOR_TYPE_GRAY,
                       .samples = s,
                       .interlace = il};
        eng_image img;
        T_REQUIRE(decode_png_spec(&sp, &img) == 0, "%s", eng_last_error());
        int ok = 1;
        for (int i = 0; i < 6; i++)
            ok &= img.rgb[3 * i] == want[i] && img.rgb[3 * i + 1] == want[i] &&
                  img.rgb[3 * i + 2] == want[i];
        T_CHECK(ok, "16-bit grey (interlace %d) not clamped", il);
        eng_image_free(&img);
    }
}

/* Grey+alpha: grey replicated, alpha dropped without compositing; at 16
 * bits Pillow's "LA;16B" keeps the high byte of the grey. */
static void test_png_grey_alpha(void)
{
    for (int depth = 8; depth <= 16; depth += 8) {
        uint16_t s[4 * 2 * 2];
        for (int i = 0; i < 8; i++) {
            s[2 * i] = (uint16_t)(depth == 8 ? i * 31 : i * 8000 + 77);
            s[2 * i + 1] = (uint16_t)(i & 1 ? 0 : (depth == 8 ? 255 : 65535));
        }
        png_spec sp = {
            .w = 4, .h = 2, .depth = depth, .ctype = PNG_COLOR_TYPE_GRAY_ALPHA, .samples = s};
        eng_image img;
        T_REQUIRE(decode_png_spec(&sp, &img) == 0, "%s", eng_last_error());
        int ok = 1;
        for (int i = 0; i < 8; i++) {
            int g = depth == 8 ? s[2 * i] : s[2 * i] >> 8;
            ok &= img.rgb[3 * i] == g && img.rgb[3 * i + 1] == g && img.rgb[3 * i + 2] == g;
        }
        T_CHECK(ok, "%d-bit grey+alpha", depth);
        eng_image_free(&img);
    }
}

/* 1/2/4-bit grey: Pillow's "1", "L;2", "L;4" scale by bit replication:
 * v*255, v*0x55, v*0x11. */
static void test_png_low_bit_grey(void)
{
    for (int depth = 1; depth <= 4; depth *= 2) {
        int w = 11, h = 3, maxv = (1 << depth) - 1, mul = 255 / maxv;
        uint16_t s[33];
        for (int i = 0; i < w * h; i++)
            s[i] = (uint16_t)((i * 5 + 1) % (maxv + 1));
        png_spec sp = {.w = w, .h = h, .depth = depth, .ctype = PNG_COLOR_TYPE_GRAY, .samples = s};
        eng_image img;
        T_REQUIRE(decode_png_spec(&sp, &img) == 0, "%s", eng_last_error());
        int ok = 1;
        for (int i = 0; i < w * h; i++)
            ok &= img.rgb[3 * i] == s[i] * mul && img.rgb[3 * i + 2] == s[i] * mul;
        T_CHECK(ok, "%d-bit grey", depth);
        eng_image_free(&img);
    }
}

/* Palette: indices through PLTE; tRNS ignored (Pillow's P -> RGB drops
 * transparency); an index past the end of a short PLTE gives black
 * (Pillow 13 and libpng agree). */
static void test_png_palette(void)
{
    static const png_color pal[3] = {{10, 20, 30}, {200, 100, 50}, {1, 2, 3}};
    static const uint8_t trns[2] = {0, 128};
    /* 1-bit, 2 entries */
    uint16_t s1[9 * 2];
    for (int i = 0; i < 18; i++)
        s1[i] = (uint16_t)((i * 7 / 3) & 1);
    png_spec sp = {.w = 9,
                   .h = 2,
                   .depth = 1,
                   .ctype = PNG_COLOR_TYPE_PALETTE,
                   .samples = s1,
                   .pal = pal,
                   .npal = 2,
                   .trns = trns,
                   .ntrns = 2};
    eng_image img;
    T_REQUIRE(decode_png_spec(&sp, &img) == 0, "%s", eng_last_error());
    int ok = 1;
    for (int i = 0; i < 18; i++)
        ok &= img.rgb[3 * i] == pal[s1[i]].red && img.rgb[3 * i + 1] == pal[s1[i]].green &&
              img.rgb[3 * i + 2] == pal[s1[i]].blue;
    T_CHECK(ok, "1-bit palette");
    eng_image_free(&img);

    /* 2-bit, 3 entries, index 3 out of range -> (0,0,0); interlaced too */
    for (int il = 0; il <= 1; il++) {
        uint16_t s2[5 * 4];
        for (int i = 0; i < 20; i++)
            s2[i] = (uint16_t)(i % 4);
        png_spec sp2 = {.w = 5,
                        .h = 4,
                        .depth = 2,
                        .ctype = PNG_COLOR_TYPE_PALETTE,
                        .samples = s2,
                        .pal = pal,
                        .npal = 3,
                        .interlace = il};
        T_REQUIRE(decode_png_spec(&sp2, &img) == 0, "%s", eng_last_error());
        ok = 1;
        for (int i = 0; i < 20; i++) {
            png_color c = s2[i] < 3 ? pal[s2[i]] : (png_color){0, 0, 0};
            ok &= img.rgb[3 * i] == c.red && img.rgb[3 * i + 1] == c.green &&
                  img.rgb[3 * i + 2] == c.blue;
        }
        T_CHECK(ok, "2-bit palette with out-of-range index (interlace %d)", il);
        eng_image_free(&img);
    }
}

/* Adam7-interlaced PNGs decode to the same pixels as plain ones. */
static void test_png_interlaced(void)
{
    int w = 19, h = 13;
    uint16_t *s = malloc((size_t)w * h * 4 * sizeof *s);
    for (int i = 0; i < w * h * 4; i++)
        s[i] = (uint16_t)(i * 2654435761u >> 7);
    int ctypes[] = {PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA, PNG_COLOR_TYPE_GRAY};
    for (int t = 0; t < 3; t++)
        for (int depth = 8; depth <= 16; depth += 8) {
            png_spec a = {.w = w, .h = h, .depth = depth, .ctype = ctypes[t], .samples = s};
            png_spec b = a;
            if (depth == 8) {
                for (int i = 0; i < w * h * 4; i++)
                    s[i] &= 0xff;
            }
            b.interlace = 1;
            eng_image ia, ib;
            T_REQUIRE(decode_png_spec(&a, &ia) == 0, "%s", eng_last_error());
            int rc = decode_png_spec(&b, &ib);
            T_CHECK(rc == 0, "interlaced: %s", eng_last_error());
            if (rc == 0)
                T_CHECK(memcmp(ia.rgb, ib.rgb, (size_t)w * h * 3) == 0,
                        "interlaced differs (colour type %d, depth %d)", ctypes[t], depth);
            if (ctypes[t] == PNG_COLOR_TYPE_RGB && depth == 8)
                T_CHECK(ib.rgb[3 * (w * h - 1) + 1] == s[3 * (w * h - 1) + 1], "last pixel");
            eng_image_free(&ia);
            eng_image_free(&ib);
            for (int i = 0; i < w * h * 4; i++)
                s[i] = (uint16_t)(i * 2654435761u >> 7);
        }
    free(s);
}

/* tRNS on grey/RGB, gAMA, and a garbage iCCP change nothing: Pillow
 * ignores them when converting to RGB. */
static void test_png_ignored_chunks(void)
{
    uint16_t s[4 * 3 * 3];
    for (int i = 0; i < 36; i++)
        s[i] = (uint16_t)(i * 7);
    static const uint8_t junk[] = "not a profile\0\0garbage-not-zlib";
    png_color_16 tc = {.red = 0, .green = 7, .blue = 14, .gray = 0};
    png_spec sp = {.w = 4,
                   .h = 3,
                   .depth = 8,
                   .ctype = PNG_COLOR_TYPE_RGB,
                   .samples = s,
                   .trns_color = &tc,
                   .gamma = 45455,
                   .raw_chunk = "iCCP",
                   .raw_data = junk,
                   .raw_len = sizeof junk};
    eng_image img;
    T_REQUIRE(decode_png_spec(&sp, &img) == 0, "%s", eng_last_error());
    int ok = 1;
    for (int i = 0; i < 36; i++)
        ok &= img.rgb[i] == s[i];
    T_CHECK(ok, "RGB with tRNS/gAMA/iCCP");
    eng_image_free(&img);
}

/* ------------------------------------------------------ JPEG variants -- */

static void test_jpeg_grey(void)
{
    uint8_t colors[6] = {0, 17, 128, 200, 254, 255};
    size_t len;
    uint8_t *jpg = make_block_jpeg(3, 2, 1, 0, colors, &len);
    eng_image img;
    T_REQUIRE(eng_image_decode(jpg, len, 0, &img) == 0, "%s", eng_last_error());
    T_CHECK(img.w == 24 && img.h == 16, "size %dx%d", img.w, img.h);
    int ok = 1;
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 24; x++) {
            const uint8_t *p = img.rgb + (y * 24 + x) * 3;
            uint8_t v = colors[(y / 8) * 3 + x / 8];
            ok &= p[0] == v && p[1] == v && p[2] == v;
        }
    T_CHECK(ok, "grey JPEG not replicated exactly");
    eng_image_free(&img);
    free(jpg);
}

/* CMYK (Adobe, stored inverted) and YCCK JPEGs: see pillow_cmyk_channel.
 * Plain CMYK blocks decode exactly; YCCK goes through libjpeg's colour
 * conversion both ways, so allow a small rounding error there. */
static void test_jpeg_cmyk(void)
{
    uint8_t colors[4 * 4] = {255, 255, 255, 255, 0, 0, 0, 255, 30, 128, 220, 90, 255, 0, 77, 0};
    for (int ycck = 0; ycck <= 1; ycck++) {
        size_t len;
        uint8_t *jpg = make_block_jpeg(2, 2, 4, ycck, colors, &len);
        eng_image img;
        T_REQUIRE(eng_image_decode(jpg, len, 0, &img) == 0, "%s", eng_last_error());
        int worst = 0;
        for (int b = 0; b < 4; b++) {
            const uint8_t *p = img.rgb + (((b / 2) * 8 + 3) * 16 + (b % 2) * 8 + 3) * 3;
            for (int c = 0; c < 3; c++) {
                int d = abs(p[c] - pillow_cmyk_channel(colors[b * 4 + c], colors[b * 4 + 3]));
                worst = d > worst ? d : worst;
            }
        }
        T_CHECK(worst <= (ycck ? 3 : 0), "%s: max diff %d from Pillow's rule",
                ycck ? "YCCK" : "CMYK", worst);
        eng_image_free(&img);
        free(jpg);
    }
}

/* ---------------------------------------------------- hostile inputs -- */

static void test_truncated_jpeg(void)
{
    T_NEED_FIXTURES();
    size_t len = 0;
    uint8_t *jpg = t_read_file(t_fixture("images/dog.jpg"), &len);
    T_REQUIRE(jpg && len > 1000, "dog.jpg");
    int bad = 0;
    /* Every offset in the first 700 bytes (markers, tables), then a few
     * hundred spread through the entropy-coded data, up to 2 bytes short
     * of the end (the EOI marker, which like Pillow we do not require). */
    for (size_t cut = 0; cut + 2 < len; cut += cut < 700 ? 1 : 1 + len / 300) {
        eng_image img = {.w = 5, .h = 5, .rgb = (uint8_t *)1};
        int rc = eng_image_decode(jpg, cut, 0, &img);
        int want = cut < 3 ? ENG_EUNSUP : ENG_EFORMAT;
        if (rc != want || img.rgb || img.w || img.h ||
            (want == ENG_EFORMAT && !strstr(eng_last_error(), "truncated JPEG"))) {
            if (!bad)
                fprintf(stderr, "  cut %zu: rc %d: %s\n", cut, rc, eng_last_error());
            bad++;
        }
        if (rc == 0)
            eng_image_free(&img);
    }
    T_CHECK(bad == 0, "%d truncations not reported as truncated JPEG", bad);
    free(jpg);
}

/* Data that libjpeg would paper over (it warns, fills the rest of the
 * frame with grey and returns success) is refused: a run of bytes
 * overwritten inside the scan, an EOI marker in the middle of it, and a
 * frame header that declares twice the rows the scan holds. Each of these
 * decoded "successfully" before warnings were made errors. */
static void test_jpeg_corrupt_data(void)
{
    T_NEED_FIXTURES();
    size_t len = 0;
    uint8_t *jpg = t_read_file(t_fixture("images/dog.jpg"), &len);
    T_REQUIRE(jpg && len > 20000, "dog.jpg");
    size_t sos = 0, sof = 0;
    for (size_t i = 0; i + 1 < len && !sos; i++) {
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC0 && !sof)
            sof = i;
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xDA)
            sos = i;
    }
    T_REQUIRE(sos && sof, "no SOF0/SOS marker in dog.jpg");
    for (int kind = 0; kind < 3; kind++) {
        uint8_t *c = malloc(len);
        memcpy(c, jpg, len);
        size_t at = sos + (len - sos) / 3;
        if (kind == 0) {
            memset(c + at, 0xFE, 64);
        } else if (kind == 1) {
            c[at] = 0xFF;
            c[at + 1] = 0xD9;
        } else {
            int h = c[sof + 5] << 8 | c[sof + 6];
            c[sof + 5] = (uint8_t)((2 * h) >> 8);
            c[sof + 6] = (uint8_t)(2 * h);
        }
        eng_image img = {0};
        int rc = eng_image_decode(c, len, 0, &img);
        T_CHECK(rc == ENG_EFORMAT && strstr(eng_last_error(), "corrupt JPEG") && !img.rgb,
                "corruption %d: rc %d (%s)", kind, rc, rc ? eng_last_error() : "decoded");
        eng_image_free(&img);
        free(c);
    }
    free(jpg);
}

static void test_truncated_png(void)
{
    int w = 40, h = 30;
    uint16_t *s = malloc((size_t)w * h * 3 * sizeof *s);
    for (int i = 0; i < w * h * 3; i++)
        s[i] = (uint16_t)((i * 2654435761u) >> 24);
    for (int il = 0; il <= 1; il++) {
        png_spec sp = {
            .w = w, .h = h, .depth = 8, .ctype = PNG_COLOR_TYPE_RGB, .samples = s, .interlace = il};
        size_t len;
        uint8_t *png = make_png(&sp, &len);
        T_REQUIRE(png, "make_png");
        int bad = 0;
        /* Up to the IEND chunk (last 12 bytes) the image is incomplete. */
        for (size_t cut = 0; cut < len - 12; cut++) {
            eng_image img;
            int rc = eng_image_decode(png, cut, 0, &img);
            int want = cut < 8 ? ENG_EUNSUP : ENG_EFORMAT;
            if (rc != want || img.rgb ||
                (want == ENG_EFORMAT && !strstr(eng_last_error(), "truncated PNG"))) {
                if (!bad)
                    fprintf(stderr, "  cut %zu of %zu: rc %d: %s\n", cut, len, rc,
                            eng_last_error());
                bad++;
            }
            if (rc == 0)
                eng_image_free(&img);
        }
        T_CHECK(bad == 0, "%d truncations (interlace %d) not reported", bad, il);
        free(png);
    }
    free(s);
}

/* A PNG chunk with its CRC. */
static void put_chunk(membuf *m, const char *type, const uint8_t *d, uint32_t n)
{
    uint8_t b[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    membuf_put(m, b, 4);
    membuf_put(m, type, 4);
    if (n)
        membuf_put(m, d, n);
    uLong crc = crc32(0, (const Bytef *)type, 4);
    crc = crc32(crc, d, n);
    uint8_t c[4] = {(uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8), (uint8_t)crc};
    membuf_put(m, c, 4);
}

static uint8_t *tiny_idat_png(uint32_t w, uint32_t h, size_t *len)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    uint8_t ihdr[13] = {(uint8_t)(w >> 24),
                        (uint8_t)(w >> 16),
                        (uint8_t)(w >> 8),
                        (uint8_t)w,
                        (uint8_t)(h >> 24),
                        (uint8_t)(h >> 16),
                        (uint8_t)(h >> 8),
                        (uint8_t)h,
                        8,
                        2,
                        0,
                        0,
                        0};
    membuf m = {0};
    membuf_put(&m, sig, 8);
    put_chunk(&m, "IHDR", ihdr, 13);
    /* A little zlib data (one empty stored block): enough for libpng to
     * reach the image data, far too little for the claimed size. */
    static const uint8_t idat[] = {0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1};
    put_chunk(&m, "IDAT", idat, sizeof idat);
    put_chunk(&m, "IEND", NULL, 0);
    *len = m.len;
    return m.p;
}

/* 100000 x 100000 RGB would need 30 GB: refused from the header. Getting
 * ENG_ELIMIT (not ENG_ENOMEM or a crash) shows the check ran before any
 * pixel allocation. */
static void test_decompression_bomb(void)
{
    size_t len;
    uint8_t *png = tiny_idat_png(100000, 100000, &len);
    eng_image img;
    int rc = eng_image_decode(png, len, ENG_IMAGE_DEFAULT_MAX_PIXELS, &img);
    T_CHECK(rc == ENG_ELIMIT && img.rgb == NULL, "PNG bomb: rc %d: %s", rc, eng_last_error());
    free(png);

    /* Same for a JPEG: dog.jpg with its SOF0 dimensions set to 60000. */
    if (!t_fixtures())
        return;
    uint8_t *jpg = t_read_file(t_fixture("images/dog.jpg"), &len);
    T_REQUIRE(jpg, "dog.jpg");
    size_t i = 2;
    while (i + 9 < len && !(jpg[i] == 0xff && (jpg[i + 1] == 0xc0 || jpg[i + 1] == 0xc2)))
        i += 2 + ((size_t)jpg[i + 2] << 8 | jpg[i + 3]);
    T_REQUIRE(i + 9 < len, "no SOF marker");
    jpg[i + 5] = jpg[i + 7] = 0xea;
    jpg[i + 6] = jpg[i + 8] = 0x60;
    rc = eng_image_decode(jpg, len, ENG_IMAGE_DEFAULT_MAX_PIXELS, &img);
    T_CHECK(rc == ENG_ELIMIT && img.rgb == NULL, "JPEG bomb: rc %d: %s", rc, eng_last_error());
    free(jpg);
}

static void test_pixel_limit_exact(void)
{
    uint16_t s[8 * 4];
    memset(s, 0, sizeof s);
    png_spec sp = {.w = 8, .h = 4, .depth = 8, .ctype = PNG_COLOR_TYPE_GRAY, .samples = s};
    size_t len;
    uint8_t *png = make_png(&sp, &len);
    eng_image img;
    T_CHECK(eng_image_decode(png, len, 32, &img) == 0, "32 pixels at limit 32");
    eng_image_free(&img);
    T_CHECK(eng_image_decode(png, len, 31, &img) == ENG_ELIMIT, "32 pixels at limit 31");
    free(png);
}

static void test_zero_size(void)
{
    eng_image img;
    T_CHECK(eng_image_decode("", 0, 0, &img) == ENG_EUNSUP, "empty buffer");
    T_CHECK(eng_image_decode(NULL, 0, 0, &img) == ENG_EUNSUP, "NULL buffer");
    size_t len;
    uint8_t *png = tiny_idat_png(0, 10, &len);
    T_CHECK(eng_image_decode(png, len, 0, &img) == ENG_EFORMAT && img.rgb == NULL, "0-wide PNG");
    free(png);
    png = tiny_idat_png(10, 0, &len);
    T_CHECK(eng_image_decode(png, len, 0, &img) == ENG_EFORMAT, "0-high PNG");
    free(png);
    /* JPEG with height 0 in SOF */
    uint8_t *jpg = make_block_jpeg(1, 1, 1, 0, (const uint8_t[]){9}, &len);
    for (size_t i = 2; i + 9 < len; i++)
        if (jpg[i] == 0xff && jpg[i + 1] == 0xc0) {
            jpg[i + 5] = jpg[i + 6] = 0;
            break;
        }
    T_CHECK(eng_image_decode(jpg, len, 0, &img) == ENG_EFORMAT && img.rgb == NULL, "0-high JPEG");
    free(jpg);
}

static void test_unknown_formats(void)
{
    static const char *const magic[] = {
        "GIF89a\x01\x00\x01\x00", "GIF87a", "RIFF\x10\0\0\0WEBPVP8 ",
        "BM\x36\0\0\0\0\0",       "II*\0",  "\xff\xd8",
        "\x89PNG\r\n\x1a"};
    static const size_t lens[] = {10, 6, 16, 8, 4, 2, 7};
    eng_image img;
    for (int i = 0; i < 7; i++) {
        int rc = eng_image_decode(magic[i], lens[i], 0, &img);
        T_CHECK(rc == ENG_EUNSUP && strstr(eng_last_error(), "not a JPEG or PNG image"),
                "magic %d: rc %d: %s", i, rc, eng_last_error());
    }
    uint8_t rnd[4096];
    uint32_t x = 99;
    for (int trial = 0; trial < 50; trial++) {
        for (size_t i = 0; i < sizeof rnd; i++) {
            x = x * 1103515245u + 12345u;
            rnd[i] = (uint8_t)(x >> 16);
        }
        int rc = eng_image_decode(rnd, sizeof rnd, 0, &img);
        T_CHECK(rc == ENG_EUNSUP, "random bytes: rc %d", rc);
        /* valid magic, random body */
        rnd[0] = 0xff, rnd[1] = 0xd8, rnd[2] = 0xff;
        rc = eng_image_decode(rnd, sizeof rnd, 0, &img);
        T_CHECK(rc == ENG_EFORMAT || rc == ENG_EUNSUP || rc == ENG_ELIMIT || rc == 0,
                "JPEG magic + random: rc %d", rc);
        eng_image_free(&img);
        memcpy(rnd, "\x89PNG\r\n\x1a\n", 8);
        rc = eng_image_decode(rnd, sizeof rnd, 0, &img);
        T_CHECK(rc == ENG_EFORMAT, "PNG magic + random: rc %d", rc);
        eng_image_free(&img);
    }
}

/* Flipped bytes in a real JPEG and a CRC error in a PNG's IDAT: no crash,
 * no leak (checked under ASan), a PNG with a bad IDAT CRC is refused. */
static void test_corrupt_bytes(void)
{
    uint16_t s[16 * 16 * 3];
    for (int i = 0; i < 16 * 16 * 3; i++)
        s[i] = (uint16_t)(i & 0xff);
    png_spec sp = {.w = 16, .h = 16, .depth = 8, .ctype = PNG_COLOR_TYPE_RGB, .samples = s};
    size_t len;
    uint8_t *png = make_png(&sp, &len);
    eng_image img;
    png[len - 12 - 5] ^= 0x5a; /* inside the last IDAT's CRC */
    T_CHECK(eng_image_decode(png, len, 0, &img) == ENG_EFORMAT, "bad IDAT CRC accepted");
    free(png);
    if (!t_fixtures())
        return;
    uint8_t *jpg = t_read_file(t_fixture("images/dog.jpg"), &len);
    T_REQUIRE(jpg, "dog.jpg");
    uint32_t x = 7;
    for (int trial = 0; trial < 40; trial++) {
        uint8_t *c = malloc(len);
        memcpy(c, jpg, len);
        for (int k = 0; k < 8; k++) {
            x = x * 1103515245u + 12345u;
            c[3 + (x >> 8) % (len - 3)] ^= (uint8_t)(1 + (x & 0x7f));
        }
        int rc = eng_image_decode(c, len, 0, &img);
        T_CHECK(rc == 0 || rc == ENG_EFORMAT || rc == ENG_EUNSUP || rc == ENG_ELIMIT, "rc %d", rc);
        eng_image_free(&img);
        free(c);
    }
    free(jpg);
}

int main(void)
{
    T_RUN(test_dog_decode_golden);
    T_RUN(test_truck_decode_sha256);
    T_RUN(test_png_fixtures_decode_golden);
    T_RUN(test_resize_goldens);
    T_RUN(test_normalize_pad_golden);
    T_RUN(test_resize_shape);
    T_RUN(test_resize_check);
    T_RUN(test_resize_properties);
    T_RUN(test_resize_antialias_width);
    T_RUN(test_resize_pass_order);
    T_RUN(test_png_roundtrip);
    T_RUN(test_png_write_and_load);
    T_RUN(test_png_16bit_rgb);
    T_RUN(test_png_16bit_grey_clamps);
    T_RUN(test_png_grey_alpha);
    T_RUN(test_png_low_bit_grey);
    T_RUN(test_png_palette);
    T_RUN(test_png_interlaced);
    T_RUN(test_png_ignored_chunks);
    T_RUN(test_jpeg_grey);
    T_RUN(test_jpeg_cmyk);
    T_RUN(test_truncated_jpeg);
    T_RUN(test_jpeg_corrupt_data);
    T_RUN(test_truncated_png);
    T_RUN(test_decompression_bomb);
    T_RUN(test_pixel_limit_exact);
    T_RUN(test_zero_size);
    T_RUN(test_unknown_formats);
    T_RUN(test_corrupt_bytes);
    return t_summary("test_image");
}
