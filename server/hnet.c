/*
 * server/hnet.c: loaded hypernetwork versions: load beside the active one,
 * probe, swap, pin, reclaim. See hypernet_swap.h (the first half).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"
#include "engine/error.h"
#include "hypernet/text.h"
#include "server/hypernet_swap.h"
#include "server/log.h"

/* srv_hn_info (hypernet_swap.h) holds these without the hypernetwork header */
_Static_assert(sizeof(((srv_hn_info *)0)->id) == HN_ID_LEN + 1, "hypernetwork id size");
_Static_assert(sizeof(((srv_hn_info *)0)->version) >= HN_NAME_MAX &&
                   sizeof(((srv_hn_info *)0)->text_model) >= HN_NAME_MAX,
               "hypernetwork version and text model names fit");

/* A text encoder shared by the versions that name it (worker only). */
typedef struct hn_text_ref {
    hn_text *t;    /* owned */
    int refs;      /* versions using it (worker only, no atomics needed) */
    char name[64]; /* hn_hypernet_text_name */
} hn_text_ref;

struct srv_hnet {
    int refs;               /* atomic: list + active + pins (see the header) */
    hn_hypernet *h;         /* owned, worker; NULL once unloaded */
    hn_text_ref *text;      /* shared, worker */
    srv_adapter_cache *ads; /* owned, worker: this version's device adapters */
    eng_sam *m;             /* borrowed: the model its adapters were made for */
    srv_hn_info info;       /* immutable description */
    srv_hnet *next;         /* the worker's list (srv_sched.hn_loaded) */
};

const srv_hn_info *srv_hnet_info(const srv_hnet *v) { return &v->info; }

srv_adapter_cache *srv__hnet_adapters(srv_hnet *v) { return v->ads; }

srv_hnet *srv_hnet_acquire(srv_sched *s)
{
    pthread_mutex_lock(&s->mu);
    srv_hnet *v = s->hn_active;
    if (v)
        __atomic_add_fetch(&v->refs, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&s->mu);
    return v;
}

/* Contract: any thread, lock-free. The last reference frees the struct (its
 * device side went before: only the worker drops the list's reference, and
 * it unloads first); dropping to the list's reference alone flags the
 * version for the worker's reclaim. */
void srv_hnet_release(srv_sched *s, srv_hnet *v)
{
    if (!v)
        return;
    int left = __atomic_sub_fetch(&v->refs, 1, __ATOMIC_SEQ_CST);
    if (left == 0)
        free(v);
    else if (left == 1)
        __atomic_store_n(&s->hn_reclaim, 1, __ATOMIC_RELEASE);
}

int srv_hnet_active_info(srv_sched *s, srv_hn_info *out)
{
    int rc = 1;
    pthread_mutex_lock(&s->mu);
    if (s->hn_active) {
        *out = s->hn_active->info;
        rc = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

uint64_t srv_hnet_swaps(srv_sched *s) { return __atomic_load_n(&s->hn_swaps, __ATOMIC_RELAXED); }

/* ---- worker side ---- */

static void text_unref(hn_text_ref *t)
{
    if (t && --t->refs == 0) {
        hn_text_destroy(t->t);
        free(t);
    }
}

/* Contract: frees the device side of v (worker). */
static void unload(srv_hnet *v)
{
    srv_adapter_cache_destroy(v->ads);
    v->ads = NULL;
    hn_hypernet_destroy(v->h);
    v->h = NULL;
    text_unref(v->text);
    v->text = NULL;
}

/*
 * Contract: a text encoder for h: the active version's when it is the one h
 * was built for (no second copy of MiniLM), else a new one. NULL with
 * eng_last_error() set.
 */
static hn_text_ref *text_for(const srv_hnet_env *env, srv_sched *s, const hn_hypernet *h)
{
    srv_hnet *a = s->hn_active; /* the worker alone changes it: no lock needed to read */
    if (a && a->text && hn_hypernet_check_text(h, a->text->t) == 0) {
        a->text->refs++;
        return a->text;
    }
    hn_text_ref *t = calloc(1, sizeof *t);
    if (!t) {
        eng_error(ENG_ENOMEM, "out of memory");
        return NULL;
    }
    if (hn_hypernet_open_text(h, env->text_dir && env->text_dir[0] ? env->text_dir : NULL, env->be,
                              &t->t) != 0) {
        free(t);
        return NULL;
    }
    t->refs = 1;
    hn_hypernet_text_name(t->t, t->name, sizeof t->name);
    return t;
}

/*
 * Contract: the probe: a task adapter generated and uploaded exactly as a
 * request would (text encoder, hypernetwork, factors finite, engine
 * adapter for this model), then thrown away. 0 or -1 with err set.
 */
static int probe(const srv_hnet_env *env, srv_hnet *v, char *err, size_t errlen)
{
    static const char task[] = "segment every object";
    ad_adapter *ad = NULL;
    eng_sam_lora *l = NULL;
    if (ad_adapter_generate(v->text->t, v->h, task, sizeof task - 1, &ad) != 0)
        return srv_errf(err, errlen, "probe generation failed: %s", eng_last_error());
    for (size_t i = 0; i < ad->n_floats; i++)
        if (!isfinite(ad->mem[i])) {
            ad_adapter_destroy(ad);
            return srv_errf(err, errlen,
                            "probe generation gave a non-finite factor (element %zu): the weights "
                            "are unusable",
                            i);
        }
    int rc = ad_adapter_to_lora(ad, env->m, env->merged, &l);
    ad_adapter_destroy(ad);
    if (rc != 0)
        return srv_errf(err, errlen, "the probe adapter does not fit the model: %s",
                        eng_last_error());
    eng_sam_lora_destroy(env->m, l);
    return 0;
}

/* Contract: a loaded, probed version (refs: the list's only; not linked
 * yet), or NULL with err set. */
static srv_hnet *load(const srv_hnet_env *env, srv_sched *s, const hn_params *p,
                      const char *version, const char *id, const char *file, char *err,
                      size_t errlen)
{
    double t0 = srv_now();
    size_t trunk = 0, heads = 0;
    srv_hnet *v = calloc(1, sizeof *v);
    if (!v) {
        srv_errf(err, errlen, "out of memory");
        return NULL;
    }
    v->refs = 1;
    v->m = env->m;
    if ((id ? hn_hypernet_create_id(&v->h, p, version, id, env->be)
            : hn_hypernet_create(&v->h, p, version, env->be)) != 0) {
        srv_errf(err, errlen, "loading the hypernetwork: %s", eng_last_error());
        goto fail;
    }
    if (!(v->text = text_for(env, s, v->h))) {
        srv_errf(err, errlen, "its text encoder: %s", eng_last_error());
        goto fail;
    }
    if (probe(env, v, err, errlen) != 0)
        goto fail;
    if (srv_adapter_cache_create(&v->ads, env->m, v->h, v->text->t, env->cache, env->metrics,
                                 env->slots, env->merged) != 0) {
        srv_errf(err, errlen, "out of memory for the adapter slots");
        goto fail;
    }
    srv_hn_info *in = &v->info;
    const hn_hypernet_config *hc = hn_hypernet_get_config(v->h);
    hn_hypernet_count(v->h, &trunk, &heads);
    snprintf(in->id, sizeof in->id, "%s", hn_hypernet_id(v->h));
    snprintf(in->version, sizeof in->version, "%s", hn_hypernet_version(v->h));
    snprintf(in->file, sizeof in->file, "%s", file);
    in->rank = hn_hypernet_rank(v->h);
    in->alpha = hn_hypernet_alpha(v->h);
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++)
        in->targets += hc->present[t] != 0;
    in->params = trunk + heads;
    snprintf(in->text_model, sizeof in->text_model, "%s", v->text->name);
    snprintf(in->text_describe, sizeof in->text_describe, "%s", hn_text_describe(v->text->t));
    in->text_fallback = hn_text_wordpiece(v->text->t) == NULL;
    in->load_ms = (srv_now() - t0) * 1e3;
    return v;
fail:
    unload(v);
    free(v);
    return NULL;
}

/* Contract: worker; makes v (fresh from load) the active version, linking
 * it into the list; returns the version it replaced's description in
 * *prev (id "" when none). */
static void activate(srv_sched *s, srv_hnet *v, srv_hn_info *prev)
{
    srv_hnet *old;
    v->refs = 2; /* the list's and the active one's */
    v->next = s->hn_loaded;
    s->hn_loaded = v;
    srv_metrics_gauge_add(&s->metrics->hypernets_loaded, 1);
    pthread_mutex_lock(&s->mu);
    old = s->hn_active;
    s->hn_active = v;
    pthread_mutex_unlock(&s->mu);
    if (prev) {
        if (old)
            *prev = old->info;
        else
            memset(prev, 0, sizeof *prev);
    }
    if (old) {
        __atomic_add_fetch(&s->hn_swaps, 1, __ATOMIC_RELAXED);
        srv_hnet_release(s, old); /* its active reference */
    }
}

int srv__hnet_load_file(const srv_hnet_env *env, srv_sched *s, const char *path, char *err,
                        size_t errlen)
{
    hn_params *p = NULL;
    char version[HN_NAME_MAX];
    if (hn_params_read(&p, path, version) != 0)
        return srv_errf(err, errlen, "hypernetwork %s: %s", path, eng_last_error());
    srv_hnet *v = load(env, s, p, version, NULL, path, err, errlen);
    hn_params_destroy(p);
    if (!v)
        return -1;
    activate(s, v, NULL);
    const srv_hn_info *in = &v->info;
    srv_log_info("worker: hypernetwork %s: id %.16s..., version %s, rank %d, alpha %g, %d decoder "
                 "layers; adapters %s; loaded and probed in %.1f ms",
                 path, in->id, in->version, in->rank, in->alpha, in->targets,
                 env->merged ? "merged" : "unmerged", in->load_ms);
    srv_log_info("worker: text encoder: %s%s", in->text_describe,
                 in->text_fallback ? " (no text model: the built-in hashed embedding)" : "");
    return 0;
}

void srv__hnet_swap_job(const srv_hnet_env *env, srv_sched *s, srv_job *j)
{
    srv_hn_load *ld = j->hn_load;
    char err[512];
    srv_hnet *v = load(env, s, ld->params, ld->version, ld->id, ld->file, err, sizeof err);
    if (!v) {
        srv_log_error("worker: hot swap to %s refused: %s", ld->file, err);
        srv_fail(&j->err, 500, "", "the new hypernetwork failed to load: %s", err);
        j->status = 500;
        srv__sched_finish(s, j);
        return;
    }
    activate(s, v, &ld->previous);
    ld->result = v->info;
    srv_log_info("worker: hot swap: hypernetwork %.16s... version %s is active (was %.16s... "
                 "version %s); loaded and probed in %.1f ms",
                 v->info.id, v->info.version, ld->previous.id, ld->previous.version,
                 v->info.load_ms);
    j->status = 200;
    srv__sched_finish(s, j);
    srv__hnet_reclaim(s);
}

void srv__hnet_reclaim(srv_sched *s)
{
    if (!__atomic_exchange_n(&s->hn_reclaim, 0, __ATOMIC_ACQ_REL))
        return;
    for (srv_hnet **pp = &s->hn_loaded; *pp;) {
        srv_hnet *v = *pp;
        int expect = 1, unused;
        pthread_mutex_lock(&s->mu);
        /* Only the active version can gain a reference (under mu), so a
         * non-active one at the list's reference alone stays unused. */
        unused =
            v != s->hn_active && __atomic_compare_exchange_n(&v->refs, &expect, 0, 0,
                                                             __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&s->mu);
        if (!unused) {
            pp = &v->next;
            continue;
        }
        *pp = v->next;
        srv_log_info("worker: hypernetwork %.16s... version %s is no longer used; freed",
                     v->info.id, v->info.version);
        unload(v);
        free(v);
        srv_metrics_gauge_add(&s->metrics->hypernets_loaded, -1);
    }
}

void srv__hnet_unload_all(srv_sched *s)
{
    srv_hnet *v, *next, *active;
    pthread_mutex_lock(&s->mu);
    active = s->hn_active;
    s->hn_active = NULL;
    v = s->hn_loaded;
    s->hn_loaded = NULL;
    pthread_mutex_unlock(&s->mu);
    for (; v; v = next) {
        next = v->next;
        unload(v);
        srv_metrics_gauge_add(&s->metrics->hypernets_loaded, -1);
        if (v == active)
            srv_hnet_release(s, v);
        srv_hnet_release(s, v); /* the list's: frees it unless a request still pins it */
    }
}
