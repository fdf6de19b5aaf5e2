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

/* Contract: the response header `name` of r, or "" (never NULL). */
static const char *hdr(const hc_response *r, const char *name)
{
    const char *v = hc_response_header(r, name);
    return v ? v : "";
}

static void test_page_files(void)
{
    hc_response r;
    char etag[128], inm[256];
    NEED_DAEMON();
    int st = http_full(g_d.port, "GET", "/", NULL, NULL, NULL, &r);
    T_REQUIRE(st == 200 && r.body, "GET / answered %d", st);
    T_CHECK(!strcmp(hdr(&r, "Content-Type"), "text/html; charset=utf-8"), "GET / Content-Type '%s'",
            hdr(&r, "Content-Type"));
    T_CHECK(strstr(r.body, "<canvas id=\"view\"") && strstr(r.body, "id=\"image\"") &&
                strstr(r.body, "id=\"everything\"") && strstr(r.body, "id=\"task\"") &&
                strstr(r.body, "id=\"count\""),
            "the page lacks one of its hooks (#image #view #everything #task #count)");
    /* every script, style and icon comes from the daemon itself */
    T_CHECK(!strstr(r.body, "http://") && !strstr(r.body, "https://") && !strstr(r.body, "//cdn"),
            "the page names another host");
    const char *csp = hdr(&r, "Content-Security-Policy");
    T_CHECK(strstr(csp, "default-src 'none'") && strstr(csp, "connect-src 'self'") &&
                strstr(csp, "script-src 'self'"),
            "Content-Security-Policy '%s'", csp);
    T_CHECK(!strcmp(hdr(&r, "X-Content-Type-Options"), "nosniff"), "nosniff");
    snprintf(etag, sizeof etag, "%s", hdr(&r, "ETag"));
    T_CHECK(strlen(etag) == 34 && etag[0] == '"', "ETag '%s'", etag);
    hc_response_free(&r);

    /* revalidation: the same ETag is 304 without a body, another is 200 */
    snprintf(inm, sizeof inm, "If-None-Match: W/\"x\", %s\r\n", etag);
    ts_extra x = {.headers = inm};
    st = http_full(g_d.port, "GET", "/", NULL, NULL, &x, &r);
    T_CHECK(st == 304 && r.len == 0, "If-None-Match with the ETag: %d, %zu bytes", st, r.len);
    T_CHECK(!strcmp(hdr(&r, "ETag"), etag), "the 304's ETag '%s'", hdr(&r, "ETag"));
    hc_response_free(&r);
    x.headers = "If-None-Match: \"0123\"\r\n";
    st = http_full(g_d.port, "GET", "/", NULL, NULL, &x, &r);
    T_CHECK(st == 200 && r.len > 1000, "If-None-Match with another ETag: %d", st);
    hc_response_free(&r);

    static const struct {
        const char *path, *type, *needle;
    } files[] = {
        {"/web/app.js", "text/javascript; charset=utf-8", "'v1/segment'"},
        {"/web/style.css", "text/css; charset=utf-8", "#view"},
        {"/web/favicon.svg", "image/svg+xml", "<svg"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        st = http_full(g_d.port, "GET", files[i].path, NULL, NULL, NULL, &r);
        T_CHECK(st == 200 && !strcmp(hdr(&r, "Content-Type"), files[i].type) && r.body &&
                    strstr(r.body, files[i].needle),
                "GET %s: %d '%s'", files[i].path, st, hdr(&r, "Content-Type"));
        /* the page's script and style talk to the daemon only (the SVG's
         * xmlns is a name, not a request) */
        T_CHECK(i == 2 || (r.body && !strstr(r.body, "http://") && !strstr(r.body, "https://")),
                "%s names another host", files[i].path);
        T_CHECK(strstr(hdr(&r, "Content-Security-Policy"), "default-src 'none'"),
                "%s without the CSP", files[i].path);
        hc_response_free(&r);
    }
    static const char head[] = "HEAD /web/app.js HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    T_CHECK(raw_status(g_d.port, head, sizeof head - 1) == 200, "HEAD /web/app.js");
    expect_error(g_d.port, "GET", "/web/nope.js", NULL, NULL, NULL, 404, "", "an unknown file");
    expect_error(g_d.port, "GET", "/web/", NULL, NULL, NULL, 404, "", "/web/");
    /* a path that climbs out of /web/ names no file (or the front door refuses it) */
    static const char climb[] =
        "GET /web/../v1/info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    st = raw_status(g_d.port, climb, sizeof climb - 1);
    T_CHECK(st == 404 || st == 400, "GET /web/../v1/info: %d", st);
    expect_error(g_d.port, "GET", "/index.html", NULL, NULL, NULL, 404, "", "/index.html");
    char body[PATH_MAX];
    tmp_name(body, sizeof body, ".json");
    write_file(body, "{}", 2);
    expect_error(g_d.port, "POST", "/", "application/json", body, NULL, 405, "", "POST /");
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
    const char *venv = "build/venv-selenium";
    char out[PATH_MAX], cmd[4 * PATH_MAX], logp[PATH_MAX];
    daemon_proc d;
    if (access("/usr/bin/chromium", X_OK) != 0 || access("/usr/bin/chromedriver", X_OK) != 0) {
        pyrun_skip_all("browser_", browser_steps,
                       "chromium and chromium-driver are not installed (make deps installs them)");
        return;
    }
    if (pyrun_venv("browser_", browser_steps, venv, "import selenium", "selenium") != 0)
        return;
    if (pyrun_start_daemon(&d, "browser_", 7, NULL) != 0)
        return;
    snprintf(out, sizeof out, "%s/web", g_build);
    tmp_name(logp, sizeof logp, ".browser.log");
    snprintf(cmd, sizeof cmd,
             "%s/bin/python3 tests/web/browser_test.py --url http://127.0.0.1:%d --image '%s' "
             "--out '%s' --timeout 300 2>'%s'",
             venv, d.port, t_fixture("images/dog.jpg"), out, logp);
    printf("  screenshots in %s/\n", out);
    pyrun_against(&d, cmd, logp, "browser_", browser_steps);
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
