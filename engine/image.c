/*
 * engine/image.c: JPEG and PNG decoding from memory to 8-bit RGB with the
 * pixel values Pillow's Image.open(f).convert("RGB") gives, and file loading.
 *
 * Pillow semantics reproduced (checked against Pillow 13 while writing):
 *   JPEG  1 component  -> "L", replicated to RGB.
 *         3 components -> libjpeg's RGB output (ISLOW DCT, fancy upsampling:
 *                         libjpeg's defaults, which Pillow keeps).
 *         4 components -> "CMYK" read with rawmode "CMYK;I" (Adobe polarity:
 *                         every sample inverted), then CMYK->RGB as
 *                         nk = 255 - K; R = clip(nk - nk*C/255) with
 *                         Pillow's MULDIV255 rounding. libjpeg converts YCCK
 *                         to CMYK first.
 *         anything else, or not 8-bit: refused as Pillow refuses it.
 *   PNG   grey 1/2/4 bit -> scaled to 8 bits by bit replication (v*255,
 *                         v*0x55, v*0x11), replicated.
 *         grey 16 bit    -> mode "I;16"; its RGB conversion clamps the
 *                         16-bit value to 255 (it does not scale).
 *         grey+alpha 16  -> "LA;16B" keeps the high byte; alpha dropped.
 *         RGB(A) 16 bit  -> high byte of each sample; alpha dropped.
 *         palette        -> indices mapped through PLTE; indices past the end
 *                         of PLTE give black; tRNS ignored.
 *         alpha          -> dropped, never composited.
 *         gAMA, iCCP, sRGB, cHRM, sBIT, bKGD: ignored.
 *
 * Safety: the header is parsed and w*h checked against max_pixels before any
 * pixel buffer exists; libjpeg and libpng errors longjmp back here (neither
 * library may exit()); running out of input is reported as truncation.
 */
#include "image.h"

#include "error.h"

#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
/* after jpeglib.h, which it needs */
#include <jerror.h>
#include <png.h>

/* Files larger than this are refused by eng_image_load before reading. */
#define IMAGE_MAX_FILE_BYTES (256LL * 1024 * 1024)
/* Largest single ancillary chunk libpng may allocate (text, profiles). */
#define PNG_CHUNK_MALLOC_MAX (8u * 1024 * 1024)
/* Ancillary chunks libpng may keep before giving up on the file. */
#define PNG_CHUNK_CACHE_MAX 1000u
/* Progressive JPEGs with more scans than this are refused: each scan costs
 * a full pass over the coefficients, a cheap way to burn CPU. */
#define JPEG_MAX_SCANS 500

void eng_image_free(eng_image *img)
{
    if (!img)
        return;
    free(img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

/* Validates the header dimensions and returns the size of a buffer that
 * holds w*h pixels at max(bpp, 3) bytes each (so the in-place conversion to
 * RGB never grows the buffer), or 0 with the error recorded in *rc. */
static size_t pixel_buffer_size(const char *fmt, long long w, long long h, int bpp,
                                int64_t max_pixels, int *rc)
{
    if (w <= 0 || h <= 0 || w > INT_MAX || h > INT_MAX) {
        *rc = eng_error(ENG_EFORMAT, "%s: bad dimensions %lldx%lld", fmt, w, h);
        return 0;
    }
    if (w > max_pixels / h) {
        *rc = eng_error(ENG_ELIMIT, "%s: %lldx%lld is over the limit of %lld pixels", fmt, w, h,
                        (long long)max_pixels);
        return 0;
    }
    size_t per = (size_t)(bpp > 3 ? bpp : 3);
    size_t n = (size_t)w * (size_t)h;
    if (n > SIZE_MAX / per) {
        *rc = eng_error(ENG_ELIMIT, "%s: %lldx%lld is too large", fmt, w, h);
        return 0;
    }
    return n * per;
}

/* In place: n pixels of `bpp` bytes whose first byte is grey -> RGB.
 * Runs from the end because the output is the larger layout. */
static void grey_to_rgb(uint8_t *p, size_t n, int bpp)
{
    for (size_t i = n; i-- > 0;) {
        uint8_t v = p[i * (size_t)bpp];
        p[3 * i] = p[3 * i + 1] = p[3 * i + 2] = v;
    }
}

/* In place: n pixels of 4 bytes -> 3 bytes by dropping the fourth. */
static void drop_fourth(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t r = p[4 * i], g = p[4 * i + 1], b = p[4 * i + 2];
        p[3 * i] = r;
        p[3 * i + 1] = g;
        p[3 * i + 2] = b;
    }
}

/* ---------------------------------------------------------------- JPEG -- */

typedef struct jpeg_ctx {
    struct jpeg_error_mgr err; /* first member: libjpeg's err pointer is ours */
    jmp_buf jb;
    int truncated;
    int rc;
    char msg[JMSG_LENGTH_MAX];
    struct jpeg_source_mgr src;
    struct jpeg_progress_mgr progress;
    struct jpeg_decompress_struct cinfo;
    JSAMPROW *rows;
    uint8_t *pix;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    cinfo->err->format_message(cinfo, c->msg);
    longjmp(c->jb, 1);
}

/* Warnings about the image data (level -1 with a code below: a bad
 * Huffman or arithmetic code, a scan that ends before the frame its header
 * declares, data libjpeg must resynchronise over) are errors here: libjpeg
 * would paper over them with grey or smeared blocks, which no caller wants
 * segmented. Warnings about metadata (an unknown JFIF revision or Adobe
 * transform code, a bad ICC marker) do not touch the pixels and are
 * ignored, as are trace messages; nothing is ever printed. */
static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    int code = cinfo->err->msg_code;
    if (level < 0 &&
        (code == JWRN_ARITH_BAD_CODE || code == JWRN_BOGUS_PROGRESSION ||
         code == JWRN_EXTRANEOUS_DATA || code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE ||
         code == JWRN_JPEG_EOF || code == JWRN_MUST_RESYNC || code == JWRN_NOT_SEQUENTIAL))
        jpeg_on_error(cinfo);
}
static void jpeg_on_output(j_common_ptr cinfo) { (void)cinfo; }

static void jpeg_src_init(j_decompress_ptr cinfo) { (void)cinfo; }
static void jpeg_src_term(j_decompress_ptr cinfo) { (void)cinfo; }

/* Called only when libjpeg needs bytes past the end of the buffer: the
 * stock memory source would invent an EOI and decode grey garbage; Pillow
 * reports "image file is truncated", so we fail. */
static boolean jpeg_src_fill(j_decompress_ptr cinfo)
{
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    c->truncated = 1;
    longjmp(c->jb, 1);
}

static void jpeg_src_skip(j_decompress_ptr cinfo, long n)
{
    struct jpeg_source_mgr *s = cinfo->src;
    if (n <= 0)
        return;
    if ((size_t)n > s->bytes_in_buffer)
        jpeg_src_fill(cinfo);
    s->next_input_byte += n;
    s->bytes_in_buffer -= (size_t)n;
}

static void jpeg_on_progress(j_common_ptr cinfo)
{
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    if (d->input_scan_number > JPEG_MAX_SCANS) {
        snprintf(c->msg, sizeof c->msg, "more than %d scans", JPEG_MAX_SCANS);
        longjmp(c->jb, 1);
    }
}

/* All state lives in *c (owned by the caller), so nothing local is
 * clobbered by the longjmp. */
static int jpeg_decode(jpeg_ctx *c, const uint8_t *buf, size_t len, int64_t max_pixels,
                       eng_image *out)
{
    /* rc lives in *c: it is set after setjmp and read after longjmp. */
    c->rc = 0;
    if (setjmp(c->jb)) {
        if (c->truncated)
            c->rc = eng_error(ENG_EFORMAT, "truncated JPEG");
        else
            c->rc = eng_error(ENG_EFORMAT, "corrupt JPEG: %s", c->msg);
        goto err;
    }
    c->cinfo.err = jpeg_std_error(&c->err);
    c->err.error_exit = jpeg_on_error;
    c->err.emit_message = jpeg_on_message;
    c->err.output_message = jpeg_on_output;
    jpeg_create_decompress(&c->cinfo);

    c->src.next_input_byte = buf;
    c->src.bytes_in_buffer = len;
    c->src.init_source = jpeg_src_init;
    c->src.fill_input_buffer = jpeg_src_fill;
    c->src.skip_input_data = jpeg_src_skip;
    c->src.resync_to_restart = jpeg_resync_to_restart;
    c->src.term_source = jpeg_src_term;
    c->cinfo.src = &c->src;
    c->progress.progress_monitor = jpeg_on_progress;
    c->cinfo.progress = &c->progress;

    jpeg_read_header(&c->cinfo, TRUE);
    int comps = c->cinfo.num_components;
    if (c->cinfo.data_precision != 8) {
        c->rc = eng_error(ENG_EUNSUP, "JPEG: %d-bit samples are not supported",
                          c->cinfo.data_precision);
        goto err;
    }
    if (comps == 1)
        c->cinfo.out_color_space = JCS_GRAYSCALE;
    else if (comps == 3)
        c->cinfo.out_color_space = JCS_RGB;
    else if (comps == 4)
        c->cinfo.out_color_space = JCS_CMYK;
    else {
        c->rc = eng_error(ENG_EUNSUP, "JPEG: %d-component images are not supported", comps);
        goto err;
    }
    long long w = c->cinfo.image_width, h = c->cinfo.image_height;
    size_t bytes = pixel_buffer_size("JPEG", w, h, comps, max_pixels, &c->rc);
    if (!bytes)
        goto err;

    jpeg_start_decompress(&c->cinfo);
    if ((int)c->cinfo.output_components != comps || c->cinfo.output_width != (JDIMENSION)w ||
        c->cinfo.output_height != (JDIMENSION)h) {
        c->rc = eng_error(ENG_EFORMAT, "JPEG: unexpected output layout");
        goto err;
    }
    c->pix = malloc(bytes);
    c->rows = malloc((size_t)h * sizeof *c->rows);
    if (!c->pix || !c->rows) {
        c->rc = eng_error(ENG_ENOMEM, "JPEG: out of memory for %lldx%lld", w, h);
        goto err;
    }
    for (long long y = 0; y < h; y++)
        c->rows[y] = c->pix + (size_t)y * (size_t)w * (size_t)comps;
    while (c->cinfo.output_scanline < c->cinfo.output_height) {
        JDIMENSION at = c->cinfo.output_scanline;
        /* Our source never suspends, so no progress means a library bug;
         * refuse rather than spin. */
        if (jpeg_read_scanlines(&c->cinfo, c->rows + at, c->cinfo.output_height - at) == 0) {
            c->rc = eng_error(ENG_EFORMAT, "corrupt JPEG: no scanlines decoded");
            goto err;
        }
    }
    /* Every row is decoded; like Pillow we do not insist on the EOI marker
     * (jpeg_finish_decompress would read for it), so we abort instead. */
    size_t n = (size_t)w * (size_t)h;
    if (comps == 1) {
        grey_to_rgb(c->pix, n, 1);
    } else if (comps == 4) {
        /* libjpeg's CMYK output holds the stored (Adobe-inverted) values;
         * Pillow's "CMYK;I" inverts them, so with s = stored sample:
         * C = 255 - sC, K = 255 - sK, nk = 255 - K = sK,
         * R = nk - MULDIV255(C, nk). */
        for (size_t i = 0; i < n; i++) {
            uint8_t *p = c->pix + 4 * i;
            int nk = p[3];
            uint8_t rgb[3];
            for (int k = 0; k < 3; k++) {
                int t = (255 - p[k]) * nk + 128;
                int v = nk - (((t >> 8) + t) >> 8);
                rgb[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
            memcpy(c->pix + 3 * i, rgb, 3);
        }
    }
    out->w = (int)w;
    out->h = (int)h;
    out->rgb = c->pix;
    c->pix = NULL;
err:
    jpeg_destroy_decompress(&c->cinfo);
    free(c->rows);
    free(c->pix);
    return c->rc;
}

/* ----------------------------------------------------------------- PNG -- */

typedef struct png_ctx {
    const uint8_t *buf;
    size_t len, pos;
    int truncated;
    int rc;
    char msg[256];
    png_structp png;
    png_infop info;
    png_bytep *rows;
    uint8_t *pix;
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static void png_on_read(png_structp png, png_bytep dst, size_t n)
{
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) {
        c->truncated = 1;
        png_error(png, "truncated");
    }
    memcpy(dst, c->buf + c->pos, n);
    c->pos += n;
}

/* Ancillary chunks that cannot change Pillow's RGB pixels: libpng is told to
 * treat them as unknown and discard them unparsed (no zlib inflation of
 * profiles or text, no ICC validation errors). */
static const png_byte png_ignored_chunks[] = "bKGD\0cHRM\0eXIf\0gAMA\0hIST\0iCCP\0iTXt\0oFFs\0"
                                             "pCAL\0pHYs\0sBIT\0sCAL\0sPLT\0sRGB\0tEXt\0tIME\0zTXt";

static int png_decode(png_ctx *c, int64_t max_pixels, eng_image *out)
{
    /* rc lives in *c: it is set after setjmp and read after longjmp. */
    c->rc = 0;
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (!c->png)
        return eng_error(ENG_ENOMEM, "PNG: cannot create decoder");
    c->info = png_create_info_struct(c->png);
    if (!c->info) {
        c->rc = eng_error(ENG_ENOMEM, "PNG: cannot create decoder");
        goto err;
    }
    if (setjmp(png_jmpbuf(c->png))) {
        if (c->truncated)
            c->rc = eng_error(ENG_EFORMAT, "truncated PNG");
        else
            c->rc = eng_error(ENG_EFORMAT, "corrupt PNG: %s", c->msg);
        goto err;
    }
    png_set_read_fn(c->png, c, png_on_read);
    /* Dimensions are policed by max_pixels, not libpng's 1e6 default. */
    png_set_user_limits(c->png, 0x7fffffff, 0x7fffffff);
    png_set_chunk_malloc_max(c->png, PNG_CHUNK_MALLOC_MAX);
    png_set_chunk_cache_max(c->png, PNG_CHUNK_CACHE_MAX);
    png_set_benign_errors(c->png, 1);
    png_set_keep_unknown_chunks(c->png, PNG_HANDLE_CHUNK_NEVER, NULL, 0);
    png_set_keep_unknown_chunks(c->png, PNG_HANDLE_CHUNK_NEVER, png_ignored_chunks,
                                (int)(sizeof png_ignored_chunks / 5));
    png_read_info(c->png, c->info);

    png_uint_32 w32, h32;
    int depth, ctype, interlace;
    png_get_IHDR(c->png, c->info, &w32, &h32, &depth, &ctype, &interlace, NULL, NULL);

    /* Bytes per pixel after the transforms below. */
    int bpp;
    int grey16 = 0;
    switch (ctype) {
    case PNG_COLOR_TYPE_GRAY:
        if (depth == 16) {
            grey16 = 1; /* kept at 16 bits: Pillow clamps, see the top */
            bpp = 2;
        } else {
            if (depth < 8)
                png_set_expand_gray_1_2_4_to_8(c->png);
            bpp = 1;
        }
        break;
    case PNG_COLOR_TYPE_PALETTE:
        if (depth < 8)
            png_set_packing(c->png); /* one index per byte; we expand */
        bpp = 1;
        break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
        bpp = 2;
        break;
    case PNG_COLOR_TYPE_RGB:
        bpp = 3;
        break;
    case PNG_COLOR_TYPE_RGB_ALPHA:
        bpp = 4;
        break;
    default:
        c->rc = eng_error(ENG_EFORMAT, "PNG: bad colour type %d", ctype);
        goto err;
    }
    if (depth == 16 && !grey16)
        png_set_strip_16(c->png); /* keeps the high byte, as Pillow's ;16B unpackers */
    size_t bytes =
        pixel_buffer_size("PNG", (long long)w32, (long long)h32, bpp, max_pixels, &c->rc);
    if (!bytes)
        goto err;
    png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);
    size_t w = w32, h = h32;
    if (png_get_rowbytes(c->png, c->info) != w * (size_t)bpp) {
        c->rc = eng_error(ENG_EFORMAT, "PNG: unexpected row size");
        goto err;
    }

    png_color pal[256];
    memset(pal, 0, sizeof pal);
    if (ctype == PNG_COLOR_TYPE_PALETTE) {
        png_colorp p = NULL;
        int np = 0;
        if (!png_get_PLTE(c->png, c->info, &p, &np)) {
            c->rc = eng_error(ENG_EFORMAT, "PNG: palette image without PLTE");
            goto err;
        }
        memcpy(pal, p, (size_t)(np > 256 ? 256 : np) * sizeof *pal);
    }

    c->pix = malloc(bytes);
    c->rows = malloc(h * sizeof *c->rows);
    if (!c->pix || !c->rows) {
        c->rc = eng_error(ENG_ENOMEM, "PNG: out of memory for %zux%zu", w, h);
        goto err;
    }
    for (size_t y = 0; y < h; y++)
        c->rows[y] = c->pix + y * w * (size_t)bpp;
    /* The IDAT stream inflates to at most h rows (times 7 passes' worth of
     * filter bytes when interlaced): its size is bounded by the pixel
     * limit. We stop after the last row, as Pillow does, without requiring
     * IEND. */
    png_read_image(c->png, c->rows);

    size_t n = w * h;
    uint8_t *p = c->pix;
    if (grey16) {
        for (size_t i = n; i-- > 0;) {
            unsigned v = (unsigned)p[2 * i] << 8 | p[2 * i + 1];
            uint8_t g = v > 255 ? 255 : (uint8_t)v;
            p[3 * i] = p[3 * i + 1] = p[3 * i + 2] = g;
        }
    } else if (ctype == PNG_COLOR_TYPE_PALETTE) {
        for (size_t i = n; i-- > 0;) {
            png_color col = pal[p[i]];
            p[3 * i] = col.red;
            p[3 * i + 1] = col.green;
            p[3 * i + 2] = col.blue;
        }
    } else if (bpp == 1 || bpp == 2) {
        grey_to_rgb(p, n, bpp);
    } else if (bpp == 4) {
        drop_fourth(p, n);
    }
    out->w = (int)w;
    out->h = (int)h;
    out->rgb = c->pix;
    c->pix = NULL;
err:
    png_destroy_read_struct(&c->png, c->info ? &c->info : NULL, NULL);
    free(c->rows);
    free(c->pix);
    return c->rc;
}

/* ----------------------------------------------------------------- API -- */

int eng_image_decode(const void *buf, size_t len, int64_t max_pixels, eng_image *out)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *b = buf;
    int rc;
    memset(out, 0, sizeof *out);
    if (max_pixels <= 0)
        max_pixels = ENG_IMAGE_DEFAULT_MAX_PIXELS;
    if (!b || len == 0)
        return eng_error(ENG_EUNSUP, "not a JPEG or PNG image (empty)");
    if (len >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff) {
        jpeg_ctx *c = calloc(1, sizeof *c);
        if (!c)
            return eng_error(ENG_ENOMEM, "JPEG: out of memory");
        rc = jpeg_decode(c, b, len, max_pixels, out);
        free(c);
    } else if (len >= 8 && memcmp(b, png_sig, 8) == 0) {
        /* The pixel limit straight from IHDR (which must come first), before
         * libpng walks any other chunk. */
        if (len >= 24 && memcmp(b + 12, "IHDR", 4) == 0) {
            long long w = (long long)b[16] << 24 | b[17] << 16 | b[18] << 8 | b[19];
            long long h = (long long)b[20] << 24 | b[21] << 16 | b[22] << 8 | b[23];
            if (w > 0 && h > 0 && w > max_pixels / h)
                return eng_error(ENG_ELIMIT, "PNG: %lldx%lld is over the limit of %lld pixels", w,
                                 h, (long long)max_pixels);
        }
        png_ctx c;
        memset(&c, 0, sizeof c);
        c.buf = b;
        c.len = len;
        rc = png_decode(&c, max_pixels, out);
    } else {
        const char *what = "no image signature at its start";
        if (len >= 4 && memcmp(b, "GIF8", 4) == 0)
            what = "a GIF";
        else if (len >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
            what = "a WebP";
        else if (len >= 2 && b[0] == 'B' && b[1] == 'M')
            what = "a BMP";
        else if (len >= 4 && (memcmp(b, "II*", 4) == 0 || memcmp(b, "MM\0*", 4) == 0))
            what = "a TIFF";
        return eng_error(ENG_EUNSUP, "not a JPEG or PNG image (%s)", what);
    }
    if (rc < 0)
        memset(out, 0, sizeof *out);
    return rc;
}

int eng_image_load(const char *path, int64_t max_pixels, eng_image *out)
{
    int rc = 0;
    uint8_t *buf = NULL;
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return eng_error(errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO, "%s: cannot open: %s", path,
                         strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        rc = eng_error(ENG_EIO, "%s: cannot stat: %s", path, strerror(errno));
        goto err;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = eng_error(ENG_EIO, "%s: not a regular file", path);
        goto err;
    }
    if (st.st_size > IMAGE_MAX_FILE_BYTES) {
        rc = eng_error(ENG_ELIMIT, "%s: %lld bytes is over the %lld-byte image file limit", path,
                       (long long)st.st_size, IMAGE_MAX_FILE_BYTES);
        goto err;
    }
    size_t len = (size_t)st.st_size;
    buf = malloc(len ? len : 1);
    if (!buf) {
        rc = eng_error(ENG_ENOMEM, "%s: out of memory reading %zu bytes", path, len);
        goto err;
    }
    if (len && fread(buf, 1, len, f) != len) {
        rc = eng_error(ENG_EIO, "%s: short read", path);
        goto err;
    }
    rc = eng_image_decode(buf, len, max_pixels, out);
    if (rc < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", eng_last_error());
        eng_error(rc, "%s: %s", path, msg);
    }
err:
    free(buf);
    fclose(f);
    return rc;
}
