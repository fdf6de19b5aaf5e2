/*
 * tests/fuzz/fuzz_train.c: libFuzzer target for what tasamd reads for
 * training jobs: the trainer's progress lines, the POST /admin/train body
 * and the dataset paths confined to --train-data-dir.
 *
 * Input layout: byte 0 picks the parser (0 a progress line, 1 a request
 * body, 2 a dataset path resolved under a small tree made at start, with a
 * symbolic link that leads out of it); the rest is the input. Whatever is
 * accepted must keep the documented invariants (a published result names a
 * 64-hex id; a request's paths stay relative without "..", its numbers in
 * range, its stored form parses back to the same request; a resolved path
 * lies inside the root); a refusal carries a message. Violations abort()
 * for libFuzzer; ASan and UBSan catch the rest.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "server/train_parse.h"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

static char fz__dir[64];        /* the tree's folder */
static char fz__root[PATH_MAX]; /* its resolved root */

static void fz__cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz__dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", fz__dir);
}

static void fz__setup(void)
{
    char cmd[512];
    snprintf(fz__dir, sizeof fz__dir, "/tmp/tasam-fuzz-train-XXXXXX");
    fz__check(mkdtemp(fz__dir) != NULL);
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s/root/a/images %s/outside && echo '{}' > %s/root/a/instances.json && "
             "echo '{}' > %s/outside/instances.json && ln -s %s/outside %s/root/out && "
             "ln -s a %s/root/b",
             fz__dir, fz__dir, fz__dir, fz__dir, fz__dir, fz__dir, fz__dir);
    fz__check(system(cmd) == 0);
    char r[PATH_MAX + 8];
    snprintf(r, sizeof r, "%s/root", fz__dir);
    fz__check(realpath(r, fz__root) != NULL);
    atexit(fz__cleanup);
}

static void fz__error_ok(const srv_error *e)
{
    fz__check(e->status == 400);
    fz__check(e->message[0] != '\0' && memchr(e->message, '\0', sizeof e->message));
    fz__check(memchr(e->field, '\0', sizeof e->field) != NULL);
}

static void fz__event(const char *s, size_t n)
{
    static srv_tevent ev;
    char err[256] = "";
    if (srv_tevent_parse(s, n, &ev, err, sizeof err) != 0) {
        fz__check(err[0] != '\0');
        return;
    }
    fz__check(ev.type >= SRV_TEV_OTHER && ev.type <= SRV_TEV_ERROR);
    fz__check(memchr(ev.path, 0, sizeof ev.path) && memchr(ev.text, 0, sizeof ev.text) &&
              memchr(ev.version, 0, sizeof ev.version) && memchr(ev.val, 0, sizeof ev.val));
    if (ev.type == SRV_TEV_DONE && ev.published)
        fz__check(strlen(ev.id) == 64 && strspn(ev.id, "0123456789abcdef") == 64);
    if (ev.type == SRV_TEV_STEP)
        fz__check(ev.step >= 0);
    if (ev.type == SRV_TEV_VAL) {
        json_t *v = json_loads(ev.val, 0, NULL);
        fz__check(v && json_is_object(json_object_get(v, "metrics")));
        json_decref(v);
    }
}

static void fz__rel_ok(const char *p)
{
    fz__check(p[0] != '/' && strlen(p) <= SRV_TRAIN_REL_MAX);
    for (const char *c = p; *c;) {
        size_t k = strcspn(c, "/");
        fz__check(!(k == 2 && c[0] == '.' && c[1] == '.'));
        c += k;
        while (*c == '/')
            c++;
    }
}

static void fz__request(const char *s, size_t n)
{
    srv_train_req r, r2;
    srv_error e;
    char js[SRV_TJOB_PARAMS];
    memset(&e, 0, sizeof e);
    if (srv_train_req_parse(s, n, &r, &e) != 0) {
        fz__error_ok(&e);
        return;
    }
    fz__check(r.data[0] != '\0');
    fz__rel_ok(r.data);
    fz__rel_ok(r.val);
    fz__check(r.steps >= 1 && r.batch >= 1 && r.warmup <= r.steps);
    fz__check(isnan(r.lr) || (r.lr > 0 && r.lr <= 1));
    fz__check(!r.publish_if_better || r.val[0]);
    fz__check(srv_train_req_json(&r, js, sizeof js) > 0);
    fz__check(srv_train_req_parse(js, strlen(js), &r2, &e) == 0);
    fz__check(r2.steps == r.steps && r2.batch == r.batch && r2.warmup == r.warmup &&
              r2.seed == r.seed && !strcmp(r2.data, r.data) && !strcmp(r2.val, r.val) &&
              r2.publish_if_better == r.publish_if_better);
    fz__check((isnan(r.lr) && isnan(r2.lr)) || r.lr == r2.lr);
}

static void fz__path(const char *s, size_t n)
{
    char rel[SRV_TRAIN_REL_MAX + 2], abs[PATH_MAX];
    srv_error e;
    if (n > SRV_TRAIN_REL_MAX + 1)
        n = SRV_TRAIN_REL_MAX + 1;
    memcpy(rel, s, n);
    rel[n] = 0;
    memset(&e, 0, sizeof e);
    if (srv_train_resolve(fz__root, rel, "data", abs, sizeof abs, &e) != 0) {
        fz__error_ok(&e);
        return;
    }
    size_t k = strlen(fz__root);
    fz__check(!strncmp(abs, fz__root, k) && (abs[k] == 0 || abs[k] == '/'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fz__dir[0])
        fz__setup();
    if (size < 1)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 3) {
    case 0:
        fz__event(s, n);
        break;
    case 1:
        fz__request(s, n);
        break;
    default:
        fz__path(s, n);
        break;
    }
    return 0;
}
