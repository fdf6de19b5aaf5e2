/*
 * engine/ckpt_zip.c: just enough of the zip format for torch.save archives:
 * the central directory (with zip64 end records and extra fields, which
 * torch writes for every archive) and stored (uncompressed) entries. Entry
 * data is located through the local header, whose sizes torch leaves zero
 * (it sets the data-descriptor flag), so sizes come from the central record.
 */
#include <stdlib.h>
#include <string.h>

#include "ckpt_internal.h"
#include "error.h"

#define ENG__EOCD_SIZE   22
#define ENG__EOCD64_SIZE 56
#define ENG__LOC64_SIZE  20
#define ENG__CDH_SIZE    46
#define ENG__LFH_SIZE    30

/* The end-of-central-directory record: the last "PK\5\6" within the final
 * 64 KiB + 22 bytes whose comment length reaches no further than the file. */
static int eng__zip_eocd(const eng_ckpt *c, size_t *pos)
{
    if (c->len < ENG__EOCD_SIZE)
        return eng__ckerr(c, ENG_EFORMAT, "zip: file too short for an end record");
    size_t lo = c->len > ENG__EOCD_SIZE + 65535 ? c->len - ENG__EOCD_SIZE - 65535 : 0;
    for (size_t i = c->len - ENG__EOCD_SIZE + 1; i-- > lo;) {
        const uint8_t *p = c->buf + i;
        if (memcmp(p, "PK\x05\x06", 4) == 0 && i + ENG__EOCD_SIZE + eng__le16(p + 20) <= c->len) {
            *pos = i;
            return 0;
        }
    }
    return eng__ckerr(c, ENG_EFORMAT, "zip: no end-of-central-directory record (truncated?)");
}

/* Pull the zip64 values for the saturated 32-bit fields out of an extra
 * field area; fields appear in the order the format fixes. */
static int eng__zip64_extra(const eng_ckpt *c, const uint8_t *x, size_t xlen, uint64_t *size,
                            uint64_t *csize, uint64_t *lho, const char *name, size_t nlen)
{
    while (xlen >= 4) {
        uint16_t id = eng__le16(x), sz = eng__le16(x + 2);
        if ((size_t)sz > xlen - 4)
            return eng__ckerr(c, ENG_EFORMAT, "zip: entry '%.*s': extra field overruns", (int)nlen,
                              name);
        if (id == 0x0001) {
            const uint8_t *f = x + 4;
            size_t left = sz;
            uint64_t *want[3] = {size, csize, lho};
            for (int k = 0; k < 3; k++) {
                if (*want[k] != 0xffffffffu)
                    continue;
                if (left < 8)
                    return eng__ckerr(c, ENG_EFORMAT, "zip: entry '%.*s': short zip64 field",
                                      (int)nlen, name);
                *want[k] = eng__le64(f);
                f += 8;
                left -= 8;
            }
            return 0;
        }
        x += 4 + sz;
        xlen -= 4 + (size_t)sz;
    }
    return 0;
}

static int eng__cmp_entry(const void *a, const void *b)
{
    const eng__zip_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int r = memcmp(x->name, y->name, n);
    if (r)
        return r;
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

int eng__zip_open(eng__zip *z, const eng_ckpt *c)
{
    int rc;
    size_t eocd = 0;
    z->e = NULL;
    z->n = 0;
    if ((rc = eng__zip_eocd(c, &eocd)))
        return rc;
    const uint8_t *p = c->buf + eocd;
    uint64_t n_entries = eng__le16(p + 10), cd_size = eng__le32(p + 12), cd_off = eng__le32(p + 16);
    uint64_t cd_limit = eocd; /* the directory ends before the end records */
    if (eng__le16(p + 4) != 0 || eng__le16(p + 6) != 0)
        return eng__ckerr(c, ENG_EUNSUP, "zip: multi-disk archives are not supported");
    if (eocd >= ENG__LOC64_SIZE && memcmp(p - ENG__LOC64_SIZE, "PK\x06\x07", 4) == 0) {
        const uint8_t *loc = p - ENG__LOC64_SIZE;
        uint64_t off64 = eng__le64(loc + 8);
        if (eng__le32(loc + 4) != 0 || eng__le32(loc + 16) > 1)
            return eng__ckerr(c, ENG_EUNSUP, "zip: multi-disk archives are not supported");
        if (off64 > eocd - ENG__LOC64_SIZE || eocd - ENG__LOC64_SIZE - off64 < ENG__EOCD64_SIZE)
            return eng__ckerr(c, ENG_EFORMAT, "zip: zip64 end record offset out of range");
        const uint8_t *r = c->buf + off64;
        if (memcmp(r, "PK\x06\x06", 4) != 0)
            return eng__ckerr(c, ENG_EFORMAT, "zip: bad zip64 end record signature");
        if (eng__le32(r + 16) != 0 || eng__le32(r + 20) != 0)
            return eng__ckerr(c, ENG_EUNSUP, "zip: multi-disk archives are not supported");
        n_entries = eng__le64(r + 32);
        cd_size = eng__le64(r + 40);
        cd_off = eng__le64(r + 48);
        cd_limit = off64;
    } else if (n_entries == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        return eng__ckerr(c, ENG_EFORMAT, "zip: zip64 values without a zip64 end record");
    }
    if (cd_off > cd_limit || cd_size > cd_limit - cd_off)
        return eng__ckerr(c, ENG_EFORMAT, "zip: central directory [%llu,+%llu) out of range",
                          (unsigned long long)cd_off, (unsigned long long)cd_size);
    if (n_entries > cd_size / ENG__CDH_SIZE)
        return eng__ckerr(c, ENG_EFORMAT, "zip: %llu entries cannot fit a %llu-byte directory",
                          (unsigned long long)n_entries, (unsigned long long)cd_size);
    z->e = calloc(n_entries ? (size_t)n_entries : 1, sizeof *z->e);
    if (!z->e)
        return eng__ckerr(c, ENG_ENOMEM, "zip: out of memory for %llu entries",
                          (unsigned long long)n_entries);
    const uint8_t *q = c->buf + cd_off, *end = q + cd_size;
    for (uint64_t i = 0; i < n_entries; i++) {
        if ((size_t)(end - q) < ENG__CDH_SIZE || memcmp(q, "PK\x01\x02", 4) != 0) {
            rc = eng__ckerr(c, ENG_EFORMAT, "zip: central directory entry %llu is corrupt",
                            (unsigned long long)i);
            goto err;
        }
        size_t nl = eng__le16(q + 28), xl = eng__le16(q + 30), cl = eng__le16(q + 32);
        if ((size_t)(end - q) - ENG__CDH_SIZE < nl + xl + cl) {
            rc = eng__ckerr(c, ENG_EFORMAT, "zip: central directory entry %llu overruns",
                            (unsigned long long)i);
            goto err;
        }
        eng__zip_entry *e = &z->e[z->n];
        e->flags = eng__le16(q + 8);
        e->method = eng__le16(q + 10);
        e->csize = eng__le32(q + 20);
        e->size = eng__le32(q + 24);
        e->lho = eng__le32(q + 42);
        e->name = (const char *)q + ENG__CDH_SIZE;
        e->name_len = nl;
        if ((rc = eng__zip64_extra(c, q + ENG__CDH_SIZE + nl, xl, &e->size, &e->csize, &e->lho,
                                   e->name, nl)))
            goto err;
        z->n++;
        q += ENG__CDH_SIZE + nl + xl + cl;
    }
    qsort(z->e, z->n, sizeof *z->e, eng__cmp_entry);
    for (size_t i = 1; i < z->n; i++)
        if (eng__cmp_entry(&z->e[i - 1], &z->e[i]) == 0) {
            rc = eng__ckerr(c, ENG_EFORMAT, "zip: duplicate entry '%.*s'", (int)z->e[i].name_len,
                            z->e[i].name);
            goto err;
        }
    return 0;
err:
    eng__zip_free(z);
    return rc;
}

void eng__zip_free(eng__zip *z)
{
    free(z->e);
    z->e = NULL;
    z->n = 0;
}

const eng__zip_entry *eng__zip_find(const eng__zip *z, const char *name, size_t len)
{
    eng__zip_entry key = {.name = name, .name_len = len};
    return bsearch(&key, z->e, z->n, sizeof *z->e, eng__cmp_entry);
}

int eng__zip_data(const eng_ckpt *c, const eng__zip_entry *e, const uint8_t **data, uint64_t *size)
{
    int nl = (int)e->name_len;
    if (e->method != 0)
        return eng__ckerr(c, ENG_EUNSUP,
                          "zip: entry '%.*s' is compressed (method %u); only stored entries are "
                          "supported",
                          nl, e->name, e->method);
    if (e->flags & 1)
        return eng__ckerr(c, ENG_EUNSUP, "zip: entry '%.*s' is encrypted", nl, e->name);
    if (e->csize != e->size)
        return eng__ckerr(c, ENG_EFORMAT, "zip: stored entry '%.*s' has size %llu != %llu", nl,
                          e->name, (unsigned long long)e->csize, (unsigned long long)e->size);
    if (e->lho > c->len || c->len - e->lho < ENG__LFH_SIZE)
        return eng__ckerr(c, ENG_EFORMAT, "zip: entry '%.*s': local header out of range", nl,
                          e->name);
    const uint8_t *h = c->buf + e->lho;
    if (memcmp(h, "PK\x03\x04", 4) != 0)
        return eng__ckerr(c, ENG_EFORMAT, "zip: entry '%.*s': bad local header signature", nl,
                          e->name);
    if (eng__le16(h + 8) != 0)
        return eng__ckerr(c, ENG_EUNSUP, "zip: entry '%.*s' is compressed (local method %u)", nl,
                          e->name, eng__le16(h + 8));
    uint64_t start = e->lho + ENG__LFH_SIZE + eng__le16(h + 26) + eng__le16(h + 28);
    if (eng__le16(h + 26) != e->name_len || start > c->len ||
        memcmp(h + ENG__LFH_SIZE, e->name, e->name_len) != 0)
        return eng__ckerr(c, ENG_EFORMAT, "zip: entry '%.*s': local header does not match", nl,
                          e->name);
    if (e->size > c->len - start)
        return eng__ckerr(c, ENG_EFORMAT,
                          "zip: entry '%.*s': %llu bytes at offset %llu run past the end of the "
                          "file (%zu bytes)",
                          nl, e->name, (unsigned long long)e->size, (unsigned long long)start,
                          c->len);
    *data = c->buf + start;
    *size = e->size;
    return 0;
}
