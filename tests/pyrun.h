/*
 * tests/pyrun.h: run a Python test program (a browser test, the client
 * library's tests) from a C test binary and report its results through
 * tests/harness.h, so the summary line counts them.
 *
 * The program prints one line per test, "STEP <name> ok", "STEP <name> FAIL
 * <why>" or "STEP <name> SKIP <why>", and "DONE" at the end; anything else
 * it prints is passed through. A program that stops before DONE (a crash, a
 * timeout) fails every expected step it did not report.
 *
 * Python tests need a virtual environment with packages from PyPI
 * (tests/venv.sh makes it); where that cannot be made, every step is
 * reported skipped with the reason. pyrun_against runs such a program
 * against a daemon of tests/tserver.h and stops the daemon after it.
 */
#ifndef TASAM_TESTS_PYRUN_H
#define TASAM_TESTS_PYRUN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "tests/harness.h"
#include "tests/tserver.h"

#define PYRUN_MAX_STEPS 128

/* Print the last `max` bytes of the file at `path` (a program's stderr) to
 * stderr, under a line naming `what`. */
static inline void pyrun_show_tail(const char *path, const char *what, size_t max)
{
    size_t n;
    char *s = (char *)t_read_file(path, &n);
    if (!s)
        return;
    fprintf(stderr, "---- %s (last %zu bytes) ----\n", what, max);
    fwrite(n > max ? s + n - max : s, 1, n > max ? max : n, stderr);
    fprintf(stderr, "----\n");
    free(s);
}

/* Report every name of `expected` (NULL-terminated) as skipped with `why`,
 * prefixed with `prefix`. */
static inline void pyrun_skip_all(const char *prefix, const char *const *expected, const char *why)
{
    char name[160];
    for (int i = 0; expected && expected[i]; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, expected[i]);
        t_report(name, 2, why);
    }
}

/*
 * Run the shell command `cmd` and report each STEP line it prints as a test
 * named prefix + step. Every name of `expected` (NULL-terminated, may be
 * NULL) that the program does not report fails. Returns the number of steps
 * reported, or -1 when the command could not run or never printed DONE (a
 * failure is reported for it).
 */
static inline int pyrun_steps(const char *cmd, const char *prefix, const char *const *expected)
{
    char line[4096], name[160];
    char seen[PYRUN_MAX_STEPS][96];
    int n_seen = 0, done = 0;
    FILE *p = popen(cmd, "r");
    if (!p) {
        snprintf(name, sizeof name, "%srun", prefix);
        t_report(name, 1, "popen failed");
        return -1;
    }
    while (fgets(line, sizeof line, p)) {
        char step[96], verdict[8];
        int off = 0;
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "DONE") == 0) {
            done = 1;
            continue;
        }
        if (sscanf(line, "STEP %95s %7s %n", step, verdict, &off) < 2) {
            printf("  %s\n", line);
            continue;
        }
        const char *why = off > 0 ? line + off : "";
        snprintf(name, sizeof name, "%s%s", prefix, step);
        if (strcmp(verdict, "ok") == 0)
            t_report(name, 0, NULL);
        else if (strcmp(verdict, "SKIP") == 0)
            t_report(name, 2, why);
        else
            t_report(name, 1, why[0] ? why : line);
        if (n_seen < PYRUN_MAX_STEPS)
            snprintf(seen[n_seen++], sizeof seen[0], "%s", step);
    }
    int st = pclose(p);
    for (int i = 0; expected && expected[i]; i++) {
        int found = 0;
        for (int k = 0; k < n_seen && !found; k++)
            found = strcmp(seen[k], expected[i]) == 0;
        if (!found) {
            snprintf(name, sizeof name, "%s%s", prefix, expected[i]);
            t_report(name, 1, "the program did not report this step");
        }
    }
    if (!done) {
        char why[128];
        snprintf(name, sizeof name, "%srun", prefix);
        snprintf(why, sizeof why, "the program stopped before DONE (exit status %d)",
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        t_report(name, 1, why);
        return -1;
    }
    return n_seen;
}

/*
 * What a Python test against the fixture model needs first: the fixtures,
 * and the virtual environment `venv` (tests/venv.sh) where the Python code
 * `check` runs, made with `pkgs` from PyPI when it does not. Returns 0, or
 * -1 after reporting every expected step skipped with the reason.
 */
static inline int pyrun_venv(const char *prefix, const char *const *expected, const char *venv,
                             const char *check, const char *pkgs)
{
    char cmd[2 * PATH_MAX], why[2 * PATH_MAX];
    if (!t_fixtures()) {
        pyrun_skip_all(prefix, expected,
                       "fixtures not found (set TASAM_FIXTURES or place ../shared/fixtures)");
        return -1;
    }
    snprintf(cmd, sizeof cmd, "tests/venv.sh '%s' '%s' %s >/dev/null 2>&1", venv, check, pkgs);
    if (system(cmd) == 0)
        return 0;
    snprintf(why, sizeof why,
             "no Python virtual environment with %s from PyPI in %s (see %s.log; delete %s.failed "
             "to retry)",
             pkgs, venv, venv, venv);
    pyrun_skip_all(prefix, expected, why);
    return -1;
}

/*
 * Start tasamd (the fixture model) as d for a Python test, with a random
 * hypernetwork (seed; tasks change the masks) and the NULL-terminated
 * `extra` options. Returns 0, or -1 after reporting prefix + "setup" failed
 * (with the daemon's log shown).
 */
static inline int pyrun_start_daemon(daemon_proc *d, const char *prefix, uint64_t seed,
                                     const char *const *extra)
{
    char hn[PATH_MAX], state[PATH_MAX], name[160];
    const char *args[32];
    int n = 0;
    snprintf(name, sizeof name, "%ssetup", prefix);
    snprintf(hn, sizeof hn, "%s/hn-%s.safetensors", g_tmp, prefix);
    if (ts_write_hypernet(hn, seed, 1) != 0) {
        t_report(name, 1, eng_last_error());
        return -1;
    }
    args[n++] = "--hypernet";
    args[n++] = hn;
    for (int i = 0; extra && extra[i] && n < 30; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    snprintf(state, sizeof state, "%s/state-%s", g_tmp, prefix);
    if (daemon_start(d, state, 1, args) != 0) {
        show_log(d);
        daemon_kill9(d);
        t_report(name, 1, "tasamd did not start");
        return -1;
    }
    return 0;
}

/*
 * Run `cmd` (its stderr going to `logp`) against the daemon d as
 * pyrun_steps does, print how long it took and, after a failure, the tail
 * of its stderr; then stop d and report whether it exited cleanly (as
 * prefix + "daemon_exit").
 */
static inline void pyrun_against(daemon_proc *d, const char *cmd, const char *logp,
                                 const char *prefix, const char *const *expected)
{
    char name[160];
    int failed = t__failed;
    double t0 = now_s();
    pyrun_steps(cmd, prefix, expected);
    printf("  the %s* tests took %.1f s\n", prefix, now_s() - t0);
    if (t__failed > failed)
        pyrun_show_tail(logp, "stderr", 4000);
    snprintf(name, sizeof name, "%sdaemon_exit", prefix);
    t_report(name, daemon_stop(d) == 0 ? 0 : 1, "tasamd did not stop cleanly");
}

#endif
