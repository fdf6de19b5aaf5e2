/*
 * tests/fuzz/fuzz_http1.c: libFuzzer target for the gate's HTTP/1.1
 * framing (server/http1.c): a byte stream of requests walked as the gate
 * walks it, head then body then the next head, with the input also cut into
 * pieces the way bytes arrive from a socket.
 *
 * Byte 0 picks the piece size (1..256 bytes, or all at once) and byte 1 the
 * limits; the rest is the stream. Invariants checked: a head's length is
 * within the bytes given and max_head; a parsed head has HTTP/1.x, at most
 * one framing, a Content-Length within max_body; a body never consumes
 * more than it was given nor ends twice; a chunked body's data stays within
 * max_body; every refusal carries a 4xx/5xx status and a message; and
 * feeding in pieces gives the same verdicts and request boundaries as
 * feeding at once. Violations abort() for libFuzzer.
 */
#include <stdlib.h>
#include <string.h>

#include "server/http1.h"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

static void fz__error_ok(const srv_h1_error *e)
{
    fz__check(e->status >= 400 && e->status < 600);
    fz__check(e->message[0] != '\0' && memchr(e->message, '\0', sizeof e->message));
}

/* One walk of the stream, `piece` bytes arriving at a time (0: all at
 * once): the end offsets of heads and bodies go to out (at most cap), the
 * refusal's status to *verdict (0: none). */
static int walk(const uint8_t *p, size_t n, size_t piece, size_t max_head, uint64_t max_body,
                size_t *out, int cap, int *verdict)
{
    size_t avail = 0, at = 0, scanned = 0;
    int k = 0, in_body = 0;
    srv_h1_body b;
    srv_h1_error e;
    *verdict = 0;
    memset(&b, 0, sizeof b);
    for (;;) {
        avail = piece && avail + piece < n ? avail + piece : n;
        while (at < avail) {
            if (!in_body) {
                long h = srv_h1_head_scan(p + at, avail - at, &scanned, max_head, &e);
                if (h < 0) {
                    fz__error_ok(&e);
                    *verdict = e.status;
                    return k;
                }
                if (h == 0)
                    break;
                fz__check((size_t)h <= avail - at && (size_t)h <= max_head);
                srv_h1_head hd;
                if (srv_h1_parse_head(p + at, (size_t)h, max_body, &hd, &e) != 0) {
                    fz__error_ok(&e);
                    *verdict = e.status;
                    return k;
                }
                fz__check(hd.minor >= 0 && hd.minor <= 9 && hd.head_len == (size_t)h);
                fz__check(!hd.chunked || hd.content_length == 0);
                fz__check(hd.chunked || hd.content_length <= max_body);
                fz__check(hd.method[0] && strlen(hd.method) < sizeof hd.method);
                at += (size_t)h;
                scanned = 0;
                if (k < cap)
                    out[k++] = at;
                srv_h1_body_begin(&b, &hd, max_body);
                in_body = !b.done;
                continue;
            }
            long c = srv_h1_body_feed(&b, p + at, avail - at, &e);
            if (c < 0) {
                fz__error_ok(&e);
                *verdict = e.status;
                return k;
            }
            fz__check((size_t)c <= avail - at);
            fz__check(!b.chunked || b.total <= max_body);
            at += (size_t)c;
            if (!b.done)
                break; /* every byte given went into the body */
            if (k < cap)
                out[k++] = at;
            in_body = 0;
        }
        if (avail == n)
            return k;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t piece = data[0] == 0 ? 0 : 1 + (size_t)(data[0] - 1);
    size_t max_head = 64 + (size_t)(data[1] & 0x3f) * 64;
    uint64_t max_body = (data[1] & 0x40) ? 16 : 1 << 20;
    data += 2;
    size -= 2;
    size_t once[64], pieces[64];
    int v1, v2;
    int n1 = walk(data, size, 0, max_head, max_body, once, 64, &v1);
    int n2 = walk(data, size, piece, max_head, max_body, pieces, 64, &v2);
    /* the same requests and the same refusal, however the bytes arrive */
    fz__check(n1 == n2 && v1 == v2);
    for (int i = 0; i < n1 && i < 64; i++)
        fz__check(once[i] == pieces[i]);
    return 0;
}
