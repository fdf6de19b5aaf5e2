/* engine/png_encode.c: 8-bit grey/RGB/RGBA PNG encoding with libpng into
 * memory or a file. */
#include "image.h"

#include "error.h"

#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

typedef struct png_wctx {
    uint8_t *buf;
    size_t len, cap;
    int oom;
    int rc;
    char msg[256];
    png_structp png;
    png_infop info;
    png_bytep *rows;
} png_wctx;

static void wr_on_error(png_structp png, png_const_charp msg)
{
    png_wctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void wr_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static void wr_write(png_structp png, png_bytep data, size_t n)
{
    png_wctx *c = png_get_io_ptr(png);
    if (n > c->cap - c->len) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap - c->len < n) {
            if (cap > SIZE_MAX / 2) {
                c->oom = 1;
                png_error(png, "output too large");
            }
            cap *= 2;
        }
        uint8_t *nb = realloc(c->buf, cap);
        if (!nb) {
            c->oom = 1;
            png_error(png, "out of memory");
        }
        c->buf = nb;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
}

static void wr_flush(png_structp png) { (void)png; }

/* All mutable state is in *c, so the longjmp clobbers nothing. */
static int png_encode(png_wctx *c, const uint8_t *pix, int w, int h, int channels)
{
    /* rc lives in *c: it is set after setjmp and read after longjmp. */
    c->rc = 0;
    int ctype = channels == 1   ? PNG_COLOR_TYPE_GRAY
                : channels == 3 ? PNG_COLOR_TYPE_RGB
                                : PNG_COLOR_TYPE_RGB_ALPHA;
    c->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, wr_on_error, wr_on_warning);
    if (!c->png)
        return eng_error(ENG_ENOMEM, "PNG encode: cannot create encoder");
    c->info = png_create_info_struct(c->png);
    c->rows = malloc((size_t)h * sizeof *c->rows);
    if (!c->info || !c->rows) {
        c->rc = eng_error(ENG_ENOMEM, "PNG encode: out of memory");
        goto err;
    }
    if (setjmp(png_jmpbuf(c->png))) {
        c->rc = eng_error(c->oom ? ENG_ENOMEM : ENG_EINVAL, "PNG encode: %s", c->msg);
        goto err;
    }
    png_set_write_fn(c->png, c, wr_write, wr_flush);
    /* Masks and previews: favour speed over the last few percent of size. */
    png_set_compression_level(c->png, 3);
    png_set_IHDR(c->png, c->info, (png_uint_32)w, (png_uint_32)h, 8, ctype, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int y = 0; y < h; y++)
        c->rows[y] = (png_bytep)(pix + (size_t)y * (size_t)w * (size_t)channels);
    png_set_rows(c->png, c->info, c->rows);
    png_write_png(c->png, c->info, PNG_TRANSFORM_IDENTITY, NULL);
err:
    png_destroy_write_struct(&c->png, c->info ? &c->info : NULL);
    free(c->rows);
    return c->rc;
}

int eng_png_encode(const uint8_t *pix, int w, int h, int channels, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (w <= 0 || h <= 0 || w > 0x7fffffff / 4 ||
        !(channels == 1 || channels == 3 || channels == 4))
        return eng_error(ENG_EINVAL, "PNG encode: bad image %dx%d with %d channels", w, h,
                         channels);
    png_wctx c;
    memset(&c, 0, sizeof c);
    int rc = png_encode(&c, pix, w, h, channels);
    if (rc < 0) {
        free(c.buf);
        return rc;
    }
    *out = c.buf;
    *out_len = c.len;
    return 0;
}

int eng_png_write(const char *path, const uint8_t *pix, int w, int h, int channels)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = eng_png_encode(pix, w, h, channels, &buf, &len);
    if (rc < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", eng_last_error());
        return eng_error(rc, "%s: %s", path, msg);
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        rc = eng_error(ENG_EIO, "%s: cannot create: %s", path, strerror(errno));
        goto err;
    }
    if (fwrite(buf, 1, len, f) != len) {
        rc = eng_error(ENG_EIO, "%s: write failed: %s", path, strerror(errno));
        fclose(f);
        goto err;
    }
    if (fclose(f) != 0)
        rc = eng_error(ENG_EIO, "%s: write failed: %s", path, strerror(errno));
err:
    free(buf);
    return rc;
}
