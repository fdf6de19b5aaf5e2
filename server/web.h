/*
 * server/web.h: the demo page (server/web/), embedded in tasamd at build
 * time (server/web/embed.sh writes the byte arrays) and served at GET / and
 * GET /web/<file>. `web off` turns it off (404).
 *
 * Every response carries a Content-Security-Policy that lets the page talk
 * to this daemon only (no CDN, no third party), nosniff, and a strong ETag
 * with Cache-Control: no-cache, so a browser revalidates and gets 304 while
 * the build has not changed.
 */
#ifndef TASAM_SERVER_WEB_H
#define TASAM_SERVER_WEB_H

#include <stddef.h>

#include "server/routes.h"
#include "server/server.h"

/* One embedded file (the generated table). */
typedef struct srv_web_asset {
    const char *name;          /* basename: "index.html", "app.js", ... */
    const unsigned char *data; /* the bytes (NUL after the last one) */
    size_t len;                /* bytes at data, without the NUL */
    const char *etag;          /* quoted strong ETag: "\"<32 hex>\"" */
} srv_web_asset;

extern const srv_web_asset srv_web_assets[];
extern const int srv_web_n_assets;

/* The asset that serves `url` ("/" is index.html, "/web/NAME" is NAME), or
 * NULL when there is none. */
const srv_web_asset *srv_web_find(const char *url);

/* Content-Type of an asset, from its name's extension. */
const char *srv_web_content_type(const srv_web_asset *a);

/* 1 when an If-None-Match header value (NULL: absent) names the asset's
 * ETag (a list, weak tags and "*" as RFC 9110 says). */
int srv_web_not_modified(const srv_web_asset *a, const char *if_none_match);

/*
 * Answer GET (or HEAD) `url` for the page: 200 with the asset (a static
 * body), 304 when `in`'s If-None-Match names its ETag, 404 when there is no
 * such file or the page is off (`web off`).
 */
void srv_web_reply(srv_server *srv, const char *url, const srv_http_in *in, srv_reply *out);

#endif
