/*
 * tests/fuzz/fuzz_base64.c: libFuzzer target for the strict base64 decoder.
 *
 * The decoder accepts only canonical encodings, so whatever it accepts must
 * re-encode to exactly the input; and any input, taken as bytes, must
 * encode and decode back to itself. Mismatches abort() for libFuzzer.
 *
 * tests/fuzz/run.sh links engine/ but not server/, hence the include.
 */
#include "../../server/base64.c"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *d = NULL;
    size_t n = 0;
    if (srv_base64_decode((const char *)data, size, &d, &n) == 0) {
        fz__check(d != NULL && n == size / 4 * 3 - (size && data[size - 1] == '=') -
                                        (size > 1 && data[size - 2] == '='));
        char *s = srv_base64_encode(d, n);
        fz__check(s && strlen(s) == size && memcmp(s, data, size) == 0);
        free(s);
        free(d);
    } else {
        fz__check(d == NULL && n == 0);
    }

    char *e = srv_base64_encode(data, size);
    fz__check(e != NULL);
    fz__check(srv_base64_decode(e, strlen(e), &d, &n) == 0);
    fz__check(n == size && (size == 0 || memcmp(d, data, size) == 0));
    free(d);
    free(e);
    return 0;
}
