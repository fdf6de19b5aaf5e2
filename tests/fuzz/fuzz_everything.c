/*
 * tests/fuzz/fuzz_everything.c: libFuzzer target for everything mode's
 * parameter parser (server/everything.c): the `everything` member of POST
 * /v1/segment over the configured defaults, and the everything-defaults
 * option's text.
 *
 * Input layout: byte 0 picks the defaults (the reference's, or a set with
 * explicit point grids) and whether the rest is the option's text; the
 * rest is JSON. Whatever the parser accepts must pass eng_amg_check with
 * every grid within bounds; a refusal must carry a 4xx/5xx status, a message
 * and a field under "everything". Violations abort() for libFuzzer.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/amg.h"
#include "server/everything.h"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

static void fz__accepted(const srv_everything *ev)
{
    fz__check(eng_amg_check(&ev->p, NULL) == 0);
    fz__check(!ev->p.grids || (ev->p.n_grids == ev->p.crop_n_layers + 1 && ev->xy));
    for (int g = 0; ev->p.grids && g < ev->p.n_grids; g++)
        for (int i = 0; i < ev->p.grids[g].n; i++)
            fz__check(ev->p.grids[g].xy[2 * i] >= 0 && ev->p.grids[g].xy[2 * i] <= 1 &&
                      ev->p.grids[g].xy[2 * i + 1] >= 0 && ev->p.grids[g].xy[2 * i + 1] <= 1);
    json_t *o = srv_everything_params_json(&ev->p);
    fz__check(o != NULL);
    json_decref(o);
}

static void fz__refused(const srv_error *e)
{
    fz__check(e->status >= 400 && e->status < 600);
    fz__check(e->message[0] && memchr(e->message, 0, sizeof e->message));
    fz__check(memchr(e->field, 0, sizeof e->field) != NULL);
    fz__check(e->status != 400 || !strncmp(e->field, "everything", 10));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int mode = data[0];
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    srv_everything ev, defaults;
    srv_error e;
    memset(&e, 0, sizeof e);
    if (mode & 1) {
        if (srv_everything_defaults(text, &ev, &e) == 0)
            fz__accepted(&ev);
        else
            fz__refused(&e);
        srv_everything_free(&ev);
        free(text);
        return 0;
    }
    /* defaults: the reference's, or two explicit grids over one crop layer */
    const char *dtext = mode & 2 ? "{\"crop_n_layers\": 1, \"point_grids\": [[[0.5, 0.5]], "
                                   "[[0.25, 0.25], [0.75, 0.75]]]}"
                                 : "";
    fz__check(srv_everything_defaults(dtext, &defaults, &e) == 0);
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (v) {
        memset(&e, 0, sizeof e);
        if (srv_everything_parse(v, &defaults, "everything", &ev, &e) == 0)
            fz__accepted(&ev);
        else
            fz__refused(&e);
        srv_everything_free(&ev);
        json_decref(v);
    }
    srv_everything_free(&defaults);
    free(text);
    return 0;
}
