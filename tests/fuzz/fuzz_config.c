/*
 * tests/fuzz/fuzz_config.c: libFuzzer target for tasamd's configuration
 * file (`name = value` lines, comments, quotes, unit suffixes) and value
 * parser.
 *
 * The input is written to a file that srv_config_load reads through
 * --config (with --checkpoint given, so that a good file yields a complete
 * configuration). Whatever it accepts must hold every numeric option within
 * its documented bounds and every enum within its choices; a refusal must
 * come with a message. Violations abort() for libFuzzer.
 *
 * tests/fuzz/run.sh links engine/, hypernet/ and adapters/ but not server/,
 * hence the includes.
 */
#include <stdio.h>
#include <unistd.h>

#include "../../server/config.c"
#include "../../server/log.c"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

static char fz__path[64];

static void fz__cleanup(void) { unlink(fz__path); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fz__path;
    if (!fz__path[0]) {
        snprintf(fz__path, sizeof fz__path, "/tmp/tasam-fuzz-config-%d.conf", (int)getpid());
        atexit(fz__cleanup);
        srv_log_set_level(0); /* errors only: keep the fuzzer's output readable */
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);

    char *argv[] = {"tasamd", "--config", fz__path, "--checkpoint", "sam.pth", NULL};
    srv_config c;
    char err[512] = "";
    FILE *out = fopen("/dev/null", "w");
    int rc = srv_config_load(&c, 5, argv, out, err, sizeof err);
    if (out)
        fclose(out);
    if (rc == 0) {
        for (int i = 0; i < SRV_OPT_COUNT; i++) {
            const srv_opt_def *d = &opt_table[i];
            fz__check(c.str[i] != NULL);
            int64_t v = srv_config_int(&c, (srv_opt_id)i);
            if (d->type == SRV_T_INT || d->type == SRV_T_COUNT || d->type == SRV_T_BYTES)
                fz__check(v >= d->min && v <= d->max);
            if (d->type == SRV_T_ENUM) {
                int n = 0;
                while (d->choices[n])
                    n++;
                fz__check(v >= 0 && v < n && !strcmp(d->choices[v], c.str[i]));
            }
        }
        srv_config_free(&c);
    } else {
        fz__check(rc == -1 && err[0] != '\0');
    }
    return 0;
}
