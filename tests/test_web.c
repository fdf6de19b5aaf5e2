/*
 * tests/test_web.c: the demo page. Over HTTP: GET / and its files, their
 * headers (Content-Security-Policy, ETag and 304), 404 and 405, `web off`.
 * In a browser: tests/web/browser_test.py drives headless Chromium
 * (Debian's chromium and chromium-driver, which `make deps` installs) with
 * Selenium (PyPI, in build/venv-selenium made by tests/venv.sh) on the
 * fixture model with a random hypernetwork; each of its steps is a test
 * here. Screenshots of the steps go to BUILD/web/ (build/web/ for the plain
 * build). Where Chromium or Selenium cannot be had, the browser steps skip
 * and say why.
 */
#include "server/web.h"
#include "tests/pyrun.h"
#include "tests/tserver.h"

static char g_build[PATH_MAX]; /* the build folder of this binary (build, build/asan) */

/* The steps of tests/web/browser_test.py, in order. */
static const char *const browser_steps[] = {"page",        "upload",    "click",      "multimask",
                                            "background",  "box",       "everything", "task_alone",
                                            "task_points", "downloads", "console",    "network",
                                            "error_shown", NULL};

/* Contract: the value of response header `name` in a curl -D dump, or "". */
static void header_value(const char *dump, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    out[0] = 0;
    for (const char *p = dump; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t k = strcspn(v, "\r\n");
            if (k >= n)
                k = n - 1;
            memcpy(out, v, k);
            out[k] = 0;
            return;
        }
    }
}

/* Contract: GET path with extra curl args; the status, the headers (dump,
 * malloc'd) and the body (malloc'd). */
static int get_with_headers(int port, const char *path, const char *extra, char **headers,
                            char **body, size_t *blen)
{
    char hfile[PATH_MAX], args[PATH_MAX + 64];
    size_t n;
    tmp_name(hfile, sizeof hfile, ".hdr");
    snprintf(args, sizeof args, "-D '%s' %s", hfile, extra ? extra : "");
    int st = http(port, "GET", path, NULL, NULL, args, body, blen);
    *headers = (char *)t_read_file(hfile, &n);
    if (*headers) {
        char *h = realloc(*headers, n + 1);
        if (h) {
            h[n] = 0;
            *headers = h;
        }
    }
    unlink(hfile);
    return st;
}

/* The asset table and If-None-Match, without a daemon. */
static void test_units(void)
{
    char inm[160];
    const srv_web_asset *a = srv_web_find("/");
    T_REQUIRE(a && !strcmp(a->name, "index.html"), "/ is not index.html");
    T_CHECK(a->len > 1000 && a->data[a->len] == 0 && strlen((const char *)a->data) == a->len,
            "index.html: %zu bytes", a->len);
    T_CHECK(!strcmp(srv_web_content_type(a), "text/html; charset=utf-8"), "index.html type");
    const srv_web_asset *js = srv_web_find("/web/app.js");
    T_CHECK(js && !strcmp(srv_web_content_type(js), "text/javascript; charset=utf-8"), "app.js");
    T_CHECK(srv_web_find("/web/style.css") && srv_web_find("/web/favicon.svg"), "css, svg");
    static const char *const none[] = {
        "/web/",       "/web/../index.html", "/index.html",     "/web/app.js/",
        "/web/APP.JS", "/web//app.js",       "/web/app.js?x=1", "",
        "//"};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        T_CHECK(!srv_web_find(none[i]), "'%s' found an asset", none[i]);
    T_CHECK(!srv_web_find(NULL), "NULL found an asset");

    T_CHECK(!srv_web_not_modified(a, NULL) && !srv_web_not_modified(a, ""), "absent");
    T_CHECK(srv_web_not_modified(a, a->etag), "the ETag itself");
    T_CHECK(srv_web_not_modified(a, "*"), "*");
    snprintf(inm, sizeof inm, "W/%s", a->etag);
    T_CHECK(srv_web_not_modified(a, inm), "weak '%s'", inm);
    snprintf(inm, sizeof inm, "\"abc\" ,\t%s , \"def\"", a->etag);
    T_CHECK(srv_web_not_modified(a, inm), "in a list '%s'", inm);
    snprintf(inm, sizeof inm, "%.*s\"", (int)strlen(a->etag) - 2, a->etag);
    T_CHECK(!srv_web_not_modified(a, inm), "a shorter tag '%s' matched", inm);
    snprintf(inm, sizeof inm, "%sx", a->etag);
    T_CHECK(!srv_web_not_modified(a, inm), "a longer tag '%s' matched", inm);
    T_CHECK(!srv_web_not_modified(a, js->etag), "another file's ETag matched");
    T_CHECK(!srv_web_not_modified(a, ",,, ,"), "commas matched");
}

static void test_start(void)
{
    char state[PATH_MAX];
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-web", g_tmp);
    static const char *const args[] = {"--web", "on", NULL};
    int rc = daemon_start(&g_d, state, 1, args);
    if (rc)
        show_log(&g_d);
    T_REQUIRE(rc == 0, "tasamd did not start");
    g_up = 1;
}

static void test_page_files(void)
{
    char *hdr = NULL, *body = NULL, v[512], etag[128];
    size_t n = 0;
    NEED_DAEMON();
    int st = get_with_headers(g_d.port, "/", NULL, &hdr, &body, &n);
    T_REQUIRE(st == 200 && hdr && body, "GET / answered %d", st);
    header_value(hdr, "Content-Type", v, sizeof v);
    T_CHECK(!strcmp(v, "text/html; charset=utf-8"), "GET / Content-Type '%s'", v);
    T_CHECK(strstr(body, "<canvas id=\"view\"") && strstr(body, "id=\"image\"") &&
                strstr(body, "id=\"everything\"") && strstr(body, "id=\"task\"") &&
                strstr(body, "id=\"count\""),
            "the page lacks one of its hooks (#image #view #everything #task #count)");
    /* every script, style and icon comes from the daemon itself */
    T_CHECK(!strstr(body, "http://") && !strstr(body, "https://") && !strstr(body, "//cdn"),
            "the page names another host");
    header_value(hdr, "Content-Security-Policy", v, sizeof v);
    T_CHECK(strstr(v, "default-src 'none'") && strstr(v, "connect-src 'self'") &&
                strstr(v, "script-src 'self'"),
            "Content-Security-Policy '%s'", v);
    header_value(hdr, "X-Content-Type-Options", v, sizeof v);
    T_CHECK(!strcmp(v, "nosniff"), "nosniff '%s'", v);
    header_value(hdr, "ETag", etag, sizeof etag);
    T_CHECK(strlen(etag) == 34 && etag[0] == '"', "ETag '%s'", etag);
    free(hdr);
    free(body);

    /* revalidation: the same ETag is 304 without a body, another is 200 */
    char args[256];
    snprintf(args, sizeof args, "-H 'If-None-Match: W/\"x\", %s'", etag);
    n = 0;
    st = get_with_headers(g_d.port, "/", args, &hdr, &body, &n);
    T_CHECK(st == 304 && n == 0, "If-None-Match with the ETag: %d, %zu bytes", st, n);
    free(hdr);
    free(body);
    st = get_with_headers(g_d.port, "/", "-H 'If-None-Match: \"0123\"'", &hdr, &body, &n);
    T_CHECK(st == 200 && n > 1000, "If-None-Match with another ETag: %d", st);
    free(hdr);
    free(body);

    static const struct {
        const char *path, *type, *needle;
    } files[] = {
        {"/web/app.js", "text/javascript; charset=utf-8", "'v1/segment'"},
        {"/web/style.css", "text/css; charset=utf-8", "#view"},
        {"/web/favicon.svg", "image/svg+xml", "<svg"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        st = get_with_headers(g_d.port, files[i].path, NULL, &hdr, &body, &n);
        header_value(hdr ? hdr : "", "Content-Type", v, sizeof v);
        T_CHECK(st == 200 && !strcmp(v, files[i].type) && body && strstr(body, files[i].needle),
                "GET %s: %d '%s'", files[i].path, st, v);
        /* the page's script and style talk to the daemon only (the SVG's
         * xmlns is a name, not a request) */
        T_CHECK(i == 2 || (body && !strstr(body, "http://") && !strstr(body, "https://")),
                "%s names another host", files[i].path);
        free(hdr);
        free(body);
    }
    T_CHECK(http(g_d.port, "HEAD", "/web/app.js", NULL, NULL, "-I", NULL, NULL) == 200,
            "HEAD /web/app.js");
    expect_error(g_d.port, "GET", "/web/nope.js", NULL, NULL, NULL, 404, "", "an unknown file");
    expect_error(g_d.port, "GET", "/web/", NULL, NULL, NULL, 404, "", "/web/");
    /* a path that climbs out of /web/ names no file (or the front door refuses it) */
    st = http(g_d.port, "GET", "/web/../v1/info", NULL, NULL, "--path-as-is", NULL, NULL);
    T_CHECK(st == 404 || st == 400, "GET /web/../v1/info: %d", st);
    expect_error(g_d.port, "GET", "/index.html", NULL, NULL, NULL, 404, "", "/index.html");
    expect_error(g_d.port, "POST", "/", "application/json", NULL, "-d '{}'", 405, "", "POST /");
    char *m = get_metrics(g_d.port);
    T_CHECK(m && metric(m, "tasam_requests_total{route=\"web\",code=\"200\"}") >= 5,
            "the page's requests are not counted under route=\"web\"");
    free(m);
}

static void test_stop(void)
{
    NEED_DAEMON();
    T_CHECK(daemon_stop(&g_d) == 0, "tasamd did not stop cleanly");
}

static void test_web_off(void)
{
    daemon_proc d;
    char state[PATH_MAX];
    int st;
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-web-off", g_tmp);
    static const char *const args[] = {"--web", "off", NULL};
    T_REQUIRE(daemon_start(&d, state, 1, args) == 0, "tasamd --web off did not start");
    expect_error(d.port, "GET", "/", NULL, NULL, NULL, 404, "", "GET / with --web off");
    expect_error(d.port, "GET", "/web/app.js", NULL, NULL, NULL, 404, "", "an asset, --web off");
    json_t *info = http_json(d.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    const char *w = json_string_value(json_object_get(json_object_get(info, "config"), "web"));
    T_CHECK(st == 200 && w && !strcmp(w, "off"), "/v1/info config.web '%s'", w ? w : "(none)");
    json_decref(info);
    T_CHECK(daemon_stop(&d) == 0, "tasamd --web off did not stop cleanly");
}

/* The browser steps, each reported as a test. */
static void run_browser(void)
{
    char venv[PATH_MAX], hn[PATH_MAX], state[PATH_MAX], out[PATH_MAX], cmd[4 * PATH_MAX];
    char logp[PATH_MAX], why[512];
    daemon_proc d;
    if (!t_fixtures()) {
        pyrun_skip_all("browser_", browser_steps,
                       "fixtures not found (set TASAM_FIXTURES or place ../shared/fixtures)");
        return;
    }
    if (access("/usr/bin/chromium", X_OK) != 0 || access("/usr/bin/chromedriver", X_OK) != 0) {
        pyrun_skip_all("browser_", browser_steps,
                       "chromium and chromium-driver are not installed (make deps installs them)");
        return;
    }
    snprintf(venv, sizeof venv, "build/venv-selenium");
    snprintf(cmd, sizeof cmd, "tests/venv.sh '%s' 'import selenium' selenium >/dev/null 2>&1",
             venv);
    if (system(cmd) != 0) {
        snprintf(why, sizeof why,
                 "selenium could not be installed from PyPI into %s (see %s.log; delete "
                 "%s.failed to retry)",
                 venv, venv, venv);
        pyrun_skip_all("browser_", browser_steps, why);
        return;
    }
    /* a random hypernetwork: tasks change the masks */
    snprintf(hn, sizeof hn, "%s/hn-random.safetensors", g_tmp);
    if (ts_write_hypernet(hn, 7, 1) != 0) {
        t_report("browser_setup", 1, eng_last_error());
        return;
    }
    snprintf(state, sizeof state, "%s/state-browser", g_tmp);
    const char *args[] = {"--hypernet", hn, NULL};
    if (daemon_start(&d, state, 1, args) != 0) {
        show_log(&d);
        daemon_kill9(&d);
        t_report("browser_setup", 1, "tasamd with --hypernet did not start");
        return;
    }
    snprintf(out, sizeof out, "%s/web", g_build);
    tmp_name(logp, sizeof logp, ".browser.log");
    snprintf(cmd, sizeof cmd,
             "%s/bin/python3 tests/web/browser_test.py --url http://127.0.0.1:%d --image '%s' "
             "--out '%s' --timeout 300 2>'%s'",
             venv, d.port, t_fixture("images/dog.jpg"), out, logp);
    double t0 = now_s();
    pyrun_steps(cmd, "browser_", browser_steps);
    printf("  browser test: %.1f s, screenshots in %s/\n", now_s() - t0, out);
    if (t__failed)
        pyrun_show_tail(logp, "browser_test.py stderr", 3000);
    /* the daemon saw every request and stayed well */
    int st = daemon_stop(&d);
    t_report("browser_daemon_exit", st == 0 ? 0 : 1, "tasamd did not stop cleanly");
}

int main(int argc, char **argv)
{
    (void)argc;
    if (ts_init(argv[0]) != 0) {
        printf("test_web: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    snprintf(g_build, sizeof g_build, "%s", g_tasamd);
    char *slash = strrchr(g_build, '/');
    if (slash)
        *slash = 0;
    T_RUN(test_units);
    T_RUN(test_start);
    T_RUN(test_page_files);
    T_RUN(test_stop);
    T_RUN(test_web_off);
    run_browser();
    ts_cleanup();
    return t_summary("test_web");
}
