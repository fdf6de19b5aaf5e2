/*
 * tests/harness.h: the tiny test framework every tests/test_*.c uses.
 *
 *   static void test_thing(void) { T_CHECK(x == 1, "x was %d", x); }
 *   int main(void) { T_RUN(test_thing); return t_summary("test_file"); }
 *
 * A test fails if any T_CHECK in it fails; T_SKIP("why") ends it as skipped
 * (used only when ../shared/fixtures or a GPU is absent). Each binary prints
 * one line per test and ends with "NAME: N passed, N failed, N skipped";
 * tests/run.sh adds those up into the final summary line.
 */
#ifndef TASAM_TESTS_HARNESS_H
#define TASAM_TESTS_HARNESS_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

static int t__passed, t__failed, t__skipped;
static int t__cur_failed, t__cur_skipped;
static const char *t__cur_name;

static inline void t__fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "  FAIL %s:%d: %s: %s: ", file, line, t__cur_name, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    t__cur_failed = 1;
}

#define T_CHECK(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            t__fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                       \
    } while (0)

/* Check and end the test at once on failure (for preconditions of later checks). */
#define T_REQUIRE(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            t__fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                       \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define T_SKIP(...)                                                                                \
    do {                                                                                           \
        fprintf(stderr, "  SKIP %s: ", t__cur_name);                                               \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        t__cur_skipped = 1;                                                                        \
        return;                                                                                    \
    } while (0)

#define T_RUN(fn)                                                                                  \
    do {                                                                                           \
        t__cur_name = #fn;                                                                         \
        t__cur_failed = t__cur_skipped = 0;                                                        \
        fn();                                                                                      \
        if (t__cur_failed) {                                                                       \
            t__failed++;                                                                           \
            printf("not ok %s\n", #fn);                                                            \
        } else if (t__cur_skipped) {                                                               \
            t__skipped++;                                                                          \
            printf("skip   %s\n", #fn);                                                            \
        } else {                                                                                   \
            t__passed++;                                                                           \
            printf("ok     %s\n", #fn);                                                            \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)

static inline int t_summary(const char *suite)
{
    printf("%s: %d passed, %d failed, %d skipped\n", suite, t__passed, t__failed, t__skipped);
    return t__failed ? 1 : 0;
}

/* The fixtures folder: $TASAM_FIXTURES, else ../shared/fixtures relative to
 * the repository root (tests run from there). NULL when absent. */
static inline const char *t_fixtures(void)
{
    const char *d = getenv("TASAM_FIXTURES");
    struct stat st;
    if (!d || !*d)
        d = "../shared/fixtures";
    if (stat(d, &st) != 0 || !S_ISDIR(st.st_mode))
        return NULL;
    return d;
}

/* Path of a file in the fixtures folder (static buffer; NULL if absent). */
static inline const char *t_fixture(const char *name)
{
    static char buf[4096];
    const char *d = t_fixtures();
    if (!d)
        return NULL;
    snprintf(buf, sizeof buf, "%s/%s", d, name);
    return buf;
}

#define T_NEED_FIXTURES()                                                                          \
    do {                                                                                           \
        if (!t_fixtures())                                                                         \
            T_SKIP("fixtures not found (set TASAM_FIXTURES or place ../shared/fixtures)");         \
    } while (0)

/* Read a whole file into a malloc'd buffer; NULL on failure. */
static inline uint8_t *t_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b && len)
        *len = (size_t)n;
    return b;
}

/* Run a shell command with stderr joined to stdout: its exit status (-1
 * when it did not exit), its output in out (truncated to cap). */
static inline int t_run_cmd(const char *cmd, char *out, size_t cap)
{
    size_t len = strlen(cmd) + 8;
    char *full = malloc(len);
    if (!full)
        return -1;
    snprintf(full, len, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    free(full);
    if (!p)
        return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    while (fgetc(p) != EOF) /* the rest, so the command never dies of a closed pipe */
        ;
    int st = pclose(p);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Max |a-b| over n floats; *worst gets the index of the worst element. */
static inline double t_max_abs_diff(const float *a, const float *b, size_t n, size_t *worst)
{
    double m = 0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) {
            m = d != d ? INFINITY : d;
            w = i;
        }
    }
    if (worst)
        *worst = w;
    return m;
}

#endif
