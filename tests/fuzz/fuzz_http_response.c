/*
 * tests/fuzz/fuzz_http_response.c: libFuzzer target for the HTTP/1.1
 * response parser of clients/http_client.c (what tasam-bench and the tests
 * read from any server).
 *
 * Input: the bytes a server sent before closing. The body cap is 64 KiB so
 * that a large Content-Length or chunk size is refused, not allocated.
 * Invariants, abort() on a breach: a parse succeeds or fails with one of
 * the HC_E* codes; on success the status is 200-599, the body is
 * NUL-terminated within its allocation and no longer than the cap or the
 * input, and every header the parser kept is found again by name.
 */
#include "clients/http_client.h"

#include <stdlib.h>
#include <string.h>

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hc_response r;
    hc_response_init(&r);
    r.max_body = 65536;
    int e = hc_parse_response(data, size, &r);
    fz__check(e <= 0 && e > -HC_NERR);
    if (e == 0) {
        fz__check(r.status >= 200 && r.status <= 599);
        fz__check(r.body && r.len < r.cap && r.body[r.len] == '\0');
        fz__check(r.len <= 65536 && r.len <= size);
        const char *p = r.hdr;
        for (int i = 0; i < r.n_hdr; i++) {
            const char *v = p + strlen(p) + 1;
            const char *found = hc_response_header(&r, p);
            fz__check(found != NULL);
            p = v + strlen(v) + 1;
        }
        fz__check((size_t)(p - (r.hdr ? r.hdr : p)) == r.hdr_len);
    }
    hc_response_free(&r);
    return 0;
}
