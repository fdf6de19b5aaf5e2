/*
 * server/web.c: serves the demo page embedded at build time (the table
 * srv_web_assets, written by server/web/embed.sh from server/web/).
 */
#include "server/web.h"

#include <string.h>

/* What the page may load and talk to: this daemon only ('self' covers the
 * page's files and every API call; blob: URLs are the page's own
 * downloads). A browser refuses (and reports) anything else, so a page that
 * reached for a CDN would fail loudly in the browser test. */
static const char *const page_headers[] = {
    "Content-Security-Policy",
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options", "nosniff", "Referrer-Policy", "no-referrer",
    /* revalidate each time: a new build changes the ETag, an unchanged one
     * answers 304 without a body */
    "Cache-Control", "no-cache", NULL};

static const char web_prefix[] = "/web/";

const srv_web_asset *srv_web_find(const char *url)
{
    const char *name;
    if (!url)
        return NULL;
    if (strcmp(url, "/") == 0)
        name = "index.html";
    else if (strncmp(url, web_prefix, sizeof web_prefix - 1) == 0)
        name = url + sizeof web_prefix - 1;
    else
        return NULL;
    for (int i = 0; i < srv_web_n_assets; i++)
        if (strcmp(srv_web_assets[i].name, name) == 0)
            return &srv_web_assets[i];
    return NULL;
}

const char *srv_web_content_type(const srv_web_asset *a)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".json", "application/json"},
    };
    const char *dot = strrchr(a->name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    return "application/octet-stream";
}

int srv_web_not_modified(const srv_web_asset *a, const char *inm)
{
    size_t tl = strlen(a->etag);
    if (!inm)
        return 0;
    /* a comma-separated list of entity tags, each maybe W/-prefixed (weak
     * comparison, RFC 9110 13.1.2), or "*" */
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '*')
            return 1;
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        size_t n = strcspn(p, ",");
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == tl && memcmp(p, a->etag, tl) == 0)
            return 1;
        p += strcspn(p, ",");
    }
    return 0;
}

void srv_web_reply(srv_server *srv, const char *url, const srv_http_in *in, srv_reply *out)
{
    const srv_web_asset *a;
    if (srv_config_int(srv->cfg, SRV_OPT_WEB) != SRV_WEB_ON) {
        srv_reply_errorf(out, 404, "",
                         "the demo page is turned off (web off); the API is at /v1 (see "
                         "schema/openapi.yaml)");
        return;
    }
    a = srv_web_find(url);
    if (!a) {
        srv_reply_errorf(out, 404, "", "no such file of the demo page");
        return;
    }
    memset(out, 0, sizeof *out);
    out->headers = page_headers;
    out->etag = a->etag;
    if (srv_web_not_modified(a, in ? in->if_none_match : NULL)) {
        out->status = 304;
        return;
    }
    out->status = 200;
    out->content_type = srv_web_content_type(a);
    out->body = (char *)a->data;
    out->len = a->len;
    out->body_static = 1;
}
