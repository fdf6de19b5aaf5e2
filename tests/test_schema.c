/*
 * tests/test_schema.c: schema/openapi.yaml says what tasamd does.
 * Schemathesis (PyPI, installed into build/venv by make pytools) generates
 * requests from the schema, valid and invalid, sends them to a real daemon
 * on loopback and checks every answer against the schema: statuses,
 * bodies, content types, headers, valid data accepted and invalid data
 * rejected, and the links between operations (ids flowing from POST
 * /v1/embeddings and /v1/adapters to the GETs). Two daemons: one with a
 * hypernetwork and an admin token (every route; a fixed seed, a bounded
 * number of examples per operation), one without a hypernetwork (where the
 * task routes answer 501; the deterministic coverage phase only). Under
 * AddressSanitizer both run the coverage phase only.
 *
 * tests/schemathesis/ holds the run's settings (schemathesis.toml: the
 * rules the schema cannot express) and hooks (real PNG/JPEG files where the
 * schema says an image). Skips with the reason where schemathesis is not
 * installed. $TASAM_SCHEMATHESIS overrides the program,
 * $TASAM_SCHEMATHESIS_SEED the seed and $TASAM_SCHEMATHESIS_EXAMPLES the
 * examples per operation.
 */
#include "tests/tserver.h"

#define TOKEN "schema-s3cret"

static char g_st[PATH_MAX];   /* the schemathesis program */
static char g_repo[PATH_MAX]; /* the repository root (the tests' working directory) */

/* Contract: runs schemathesis against the daemon on `port` with extra
 * arguments; 0 when it found nothing. Its report goes to stderr when it
 * did. */
static int run_schemathesis(int port, const char *extra, const char *what)
{
    char log[PATH_MAX], cmd[4 * PATH_MAX];
    const char *seed = getenv("TASAM_SCHEMATHESIS_SEED");
    tmp_name(log, sizeof log, ".log");
    snprintf(cmd, sizeof cmd,
             "cd '%s' && PYTHONPATH='%s/tests/schemathesis' SCHEMATHESIS_HOOKS=tasam_hooks "
             "timeout 300 '%s' --config-file '%s/tests/schemathesis/schemathesis.toml' run "
             "'%s/schema/openapi.yaml' --url http://127.0.0.1:%d --seed %s "
             "--generation-database none --no-color --request-timeout 60 "
             "-H 'Authorization: Bearer " TOKEN "' %s >'%s' 2>&1",
             g_tmp, g_repo, g_st, g_repo, g_repo, port, seed && *seed ? seed : "1", extra, log);
    double t0 = now_s();
    int rc = system(cmd);
    size_t n = 0;
    char *out = (char *)t_read_file(log, &n);
    int ok = WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
    printf("  %s: schemathesis %s in %.1f s\n", what, ok ? "found nothing" : "found disagreements",
           now_s() - t0);
    if (!ok)
        fprintf(stderr, "%.*s\n", out ? (int)n : 0, out ? out : "(no output)");
    free(out);
    return ok ? 0 : -1;
}

#define NEED_SCHEMATHESIS()                                                                        \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        if (!g_st[0])                                                                              \
            T_SKIP("schemathesis not found in build/venv: make pytools (run by make test) "        \
                   "installs it from PyPI");                                                       \
    } while (0)

/* Contract: starts a daemon (with `hypernet` when not NULL) with the admin
 * token, runs schemathesis against it with `extra` and stops it; 0 when
 * schemathesis found nothing and the daemon stopped cleanly. */
static int check_daemon(const char *name, const char *hypernet, const char *extra, const char *what)
{
    char state[PATH_MAX];
    daemon_proc d;
    /* few prompts and points a request: the schema's maxItems are the
     * defaults (64, 16), so larger requests get their 400 at once instead of
     * minutes of CPU decoding; a short deadline, so that everything mode on
     * a generated 128x128 grid ends in its documented 504 within seconds */
    const char *args[] = {"--admin-token",
                          TOKEN,
                          "--max-prompts",
                          "4",
                          "--max-points",
                          "4",
                          "--request-timeout-ms",
                          "10000",
                          hypernet ? "--hypernet" : NULL,
                          hypernet,
                          NULL};
    snprintf(state, sizeof state, "%s/state-%s", g_tmp, name);
    if (daemon_start(&d, state, 1, args) != 0) {
        show_log(&d);
        fprintf(stderr, "  %s: the daemon did not start\n", what);
        if (d.pid)
            daemon_kill9(&d);
        return -1;
    }
    int rc = run_schemathesis(d.port, extra, what);
    if (daemon_stop(&d) != 0) {
        fprintf(stderr, "  %s: the daemon did not stop cleanly\n", what);
        rc = -1;
    }
    return rc;
}

/* Under AddressSanitizer (make test's second run) the daemon is several
 * times slower: the deterministic coverage phase alone, which sends every
 * boundary value, is what that run adds. */
#if defined(__SANITIZE_ADDRESS__)
#define T_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define T_SANITIZED 1
#endif
#endif
#ifndef T_SANITIZED
#define T_SANITIZED 0
#endif

static void test_schema_with_hypernet(void)
{
    char hn[PATH_MAX], ex[64];
    NEED_SCHEMATHESIS();
    snprintf(hn, sizeof hn, "%s/hn.safetensors", g_tmp);
    hn_hypernet_config cfg;
    hn_hypernet_config_default(&cfg);
    snprintf(cfg.text_model, sizeof cfg.text_model, "hashed-%d", cfg.text_dim);
    T_REQUIRE(hn_hypernet_init(hn, &cfg, 3, 1) == 0, "hypernet init: %s", eng_last_error());
    const char *n = getenv("TASAM_SCHEMATHESIS_EXAMPLES");
    if (T_SANITIZED && !(n && *n))
        snprintf(ex, sizeof ex, "--phases coverage");
    else
        snprintf(ex, sizeof ex, "-n %s", n && *n ? n : "15");
    T_CHECK(check_daemon("hn", hn, ex, "with a hypernetwork") == 0,
            "schema/openapi.yaml and tasamd disagree (report above)");
}

static void test_schema_without_hypernet(void)
{
    NEED_SCHEMATHESIS();
    T_CHECK(check_daemon("nohn", NULL, "--phases coverage", "without a hypernetwork") == 0,
            "schema/openapi.yaml and tasamd disagree (report above)");
}

int main(int argc, char **argv)
{
    (void)argc;
    if (ts_init(argv[0]) || !getcwd(g_repo, sizeof g_repo)) {
        printf("test_schema: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    const char *st = getenv("TASAM_SCHEMATHESIS");
    if (!st || !*st)
        st = "build/venv/bin/schemathesis";
    if (access(st, X_OK) == 0 && realpath(st, g_st) == NULL)
        g_st[0] = 0;
    T_RUN(test_schema_with_hypernet);
    T_RUN(test_schema_without_hypernet);
    ts_cleanup();
    return t_summary("test_schema");
}
