/*
 * server/adapter_cache.c: the worker's adapter tiers (device LRU + SQLite) and
 * generation on a miss. See adapter_cache.h.
 */
#include "server/adapter_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapter.h"
#include "engine/error.h"
#include "server/log.h"

/* server/cache.h spells these limits without the adapter and hypernetwork
 * headers; they must stay what those headers say. */
_Static_assert(SRV_TASK_MAX == AD_TASK_MAX, "SRV_TASK_MAX must equal AD_TASK_MAX");
_Static_assert(sizeof(((srv_adapter_meta *)0)->id) == AD_ID_LEN + 1, "adapter id size");
_Static_assert(sizeof(((srv_adapter_meta *)0)->hypernet_id) == HN_ID_LEN + 1,
               "hypernetwork id size");
_Static_assert(sizeof(((srv_adapter_meta *)0)->hypernet_version) >= HN_NAME_MAX &&
                   sizeof(((srv_adapter_meta *)0)->text_model) >= HN_NAME_MAX,
               "hypernetwork version and text model names fit");

/* One entry of the memory tier. */
typedef struct ad_slot {
    char id[65];           /* adapter id ("" when empty) */
    eng_sam_lora *lora;    /* on the device (owned) */
    size_t bytes;          /* eng_sam_lora_bytes */
    uint64_t tick;         /* last use, larger is newer */
    srv_adapter_meta meta; /* metadata as loaded */
} ad_slot;

struct srv_adapter_cache {
    eng_sam *m;           /* borrowed */
    hn_hypernet *h;       /* borrowed */
    hn_text *text;        /* borrowed */
    srv_cache *cache;     /* borrowed */
    srv_metrics *metrics; /* borrowed, may be NULL */
    int merged;           /* fold adapters into weight copies */
    int n_slots;          /* entries in slots */
    ad_slot *slots;       /* the memory tier */
    uint64_t tick;        /* LRU clock */
    eng_sam_lora *temp;   /* the adapter of the current request when n_slots == 0 */
};

static void gauges(srv_adapter_cache *a)
{
    int64_t n = 0, bytes = 0;
    if (!a->metrics)
        return;
    for (int i = 0; i < a->n_slots; i++)
        if (a->slots[i].id[0]) {
            n++;
            bytes += (int64_t)a->slots[i].bytes;
        }
    srv_metrics_gauge_set(&a->metrics->adapters_resident, n);
    srv_metrics_gauge_set(&a->metrics->adapter_bytes_mem, bytes);
}

/* Add one to counter `field` of the metrics, when there are metrics. */
#define COUNT(a, field)                                                                            \
    do {                                                                                           \
        if ((a)->metrics)                                                                          \
            srv_metrics_add(&(a)->metrics->field, 1);                                              \
    } while (0)

int srv_adapter_cache_create(srv_adapter_cache **out, eng_sam *m, hn_hypernet *h, hn_text *text,
                             srv_cache *cache, srv_metrics *metrics, int slots, int merged)
{
    srv_adapter_cache *a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    a->m = m;
    a->h = h;
    a->text = text;
    a->cache = cache;
    a->metrics = metrics;
    a->merged = merged;
    a->n_slots = slots > 0 ? slots : 0;
    if (a->n_slots && !(a->slots = calloc((size_t)a->n_slots, sizeof *a->slots))) {
        free(a);
        return -1;
    }
    gauges(a);
    *out = a;
    return 0;
}

int64_t srv_adapter_cache_flush(srv_adapter_cache *a)
{
    int64_t n = 0;
    if (!a)
        return 0;
    for (int i = 0; i < a->n_slots; i++) {
        ad_slot *s = &a->slots[i];
        if (!s->id[0])
            continue;
        eng_sam_lora_destroy(a->m, s->lora);
        memset(s, 0, sizeof *s);
        n++;
    }
    gauges(a);
    return n;
}

void srv_adapter_cache_destroy(srv_adapter_cache *a)
{
    if (!a)
        return;
    srv_adapter_cache_flush(a);
    if (a->temp)
        eng_sam_lora_destroy(a->m, a->temp);
    free(a->slots);
    free(a);
}

void srv_adapter_cache_release(srv_adapter_cache *a, const eng_sam_lora *lora)
{
    if (!a || !lora || lora != a->temp)
        return;
    eng_sam_lora_destroy(a->m, a->temp);
    a->temp = NULL;
}

/* Contract: metadata of an adapter (bytes: its serialized size). */
static void meta_from(const ad_adapter *ad, size_t bytes, srv_adapter_meta *m)
{
    memset(m, 0, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", ad->id);
    snprintf(m->task, sizeof m->task, "%s", ad->task ? ad->task : "");
    snprintf(m->task_normalized, sizeof m->task_normalized, "%s",
             ad->task_normalized ? ad->task_normalized : "");
    snprintf(m->hypernet_id, sizeof m->hypernet_id, "%s", ad->hypernet_id);
    snprintf(m->hypernet_version, sizeof m->hypernet_version, "%s", ad->hypernet_version);
    snprintf(m->text_model, sizeof m->text_model, "%s", ad->text_model);
    m->rank = ad->rank;
    m->alpha = ad->alpha;
    m->bytes = (int64_t)bytes;
    m->created_ms = ad->created * 1000;
    m->last_used_ms = m->created_ms;
}

/* Contract: the adapter of `id` from the disk tier, or NULL (absent, or a
 * row that fails to parse: then it is dropped and counted). */
static ad_adapter *from_disk(srv_adapter_cache *a, const char *id, srv_adapter_meta *meta)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    ad_adapter *ad = NULL;
    char label[96];
    if (srv_cache_adapter_get(a->cache, id, 1, &blob, &len, meta) != 0)
        return NULL;
    snprintf(label, sizeof label, "cached adapter %.16s", id);
    if (ad_adapter_parse(&ad, blob, len, label) != 0) {
        srv_log_warn("adapters: %s does not parse (%s); dropped, regenerating", label,
                     eng_last_error());
        ad = NULL;
    } else if (strcmp(ad->id, id) != 0 || strcmp(ad->hypernet_id, hn_hypernet_id(a->h)) != 0) {
        srv_log_warn("adapters: %s holds adapter %.16s of hypernetwork %.16s; dropped, "
                     "regenerating",
                     label, ad->id, ad->hypernet_id);
        ad_adapter_destroy(ad);
        ad = NULL;
    }
    free(blob);
    if (!ad) {
        srv_cache_adapter_delete(a->cache, id);
        COUNT(a, adapter_corrupt);
    }
    return ad;
}

/* Contract: generates the adapter of `task` and writes it through to the
 * disk tier. Returns it, or NULL with *e set. */
static ad_adapter *generate(srv_adapter_cache *a, const char *id, const char *task, size_t len,
                            const char *norm, srv_adapter_meta *meta, srv_error *e)
{
    ad_adapter *ad = NULL;
    uint8_t *blob = NULL;
    size_t blen = 0;
    double t0 = srv_now();
    int rc = ad_adapter_generate_normalized(a->text, a->h, task, len, norm, &ad);
    double dt = srv_now() - t0;
    if (rc != 0) {
        /* the task passed ad_normalize_task when the request was parsed:
         * what fails here is the server's */
        srv_log_error("adapters: generating the adapter of a task failed: %s", eng_last_error());
        srv_fail_eng(e, rc, SRV_BLAME_SERVER, "", "generating the task adapter failed");
        return NULL;
    }
    if (a->metrics) {
        srv_hist_observe(&a->metrics->adapter_gen_seconds, dt);
        srv_metrics_add(&a->metrics->adapter_misses, 1);
    }
    if (strcmp(ad->id, id) != 0) {
        srv_log_error("adapters: generated id %s differs from the lookup id %s", ad->id, id);
        srv_fail(e, 500, "", "internal error: the adapter id of the task changed");
        ad_adapter_destroy(ad);
        return NULL;
    }
    if (ad_adapter_serialize(ad, &blob, &blen) != 0) {
        srv_log_warn("adapters: cannot serialize adapter %s: %s (not cached on disk)", id,
                     eng_last_error());
        meta_from(ad, ad_adapter_bytes(ad), meta);
        return ad;
    }
    meta_from(ad, blen, meta);
    if (srv_cache_adapter_put(a->cache, meta, blob, blen) < 0)
        srv_log_warn("adapters: could not store adapter %s on disk", id);
    free(blob);
    srv_log_debug("adapters: generated %s (\"%s\") in %.1f ms", id, meta->task_normalized,
                  dt * 1e3);
    return ad;
}

int srv_adapter_cache_acquire(srv_adapter_cache *a, const char *id, const char *task, size_t len,
                              const char *norm, const eng_sam_lora **lora, srv_adapter_meta *meta,
                              srv_adapter_source *src, srv_error *e)
{
    ad_adapter *ad;
    eng_sam_lora *l = NULL;
    ad_slot *v = NULL;

    *lora = NULL;
    for (int i = 0; i < a->n_slots; i++)
        if (a->slots[i].id[0] && strcmp(a->slots[i].id, id) == 0) {
            ad_slot *s = &a->slots[i];
            s->tick = ++a->tick;
            srv_cache_adapter_touch(a->cache, id);
            s->meta.hits++;
            *meta = s->meta;
            *lora = s->lora;
            *src = SRV_AD_CACHE_MEMORY;
            COUNT(a, adapter_hits_mem);
            return 0;
        }
    ad = from_disk(a, id, meta);
    if (ad) {
        *src = SRV_AD_CACHE_DISK;
        COUNT(a, adapter_hits_disk);
    } else {
        ad = generate(a, id, task, len, norm, meta, e);
        if (!ad)
            return -1;
        *src = SRV_AD_GENERATED;
    }
    int rc = ad_adapter_to_lora(ad, a->m, a->merged, &l);
    ad_adapter_destroy(ad);
    if (rc != 0) {
        srv_log_error("adapters: uploading adapter %s failed: %s", id, eng_last_error());
        return srv_fail_eng(e, rc, SRV_BLAME_SERVER, "", "applying the task adapter failed");
    }
    if (a->n_slots == 0) {
        if (a->temp)
            eng_sam_lora_destroy(a->m, a->temp);
        a->temp = l;
        *lora = l;
        return 0;
    }
    for (int i = 0; i < a->n_slots; i++) {
        ad_slot *s = &a->slots[i];
        if (!s->id[0]) {
            v = s;
            break;
        }
        if (!v || s->tick < v->tick)
            v = s;
    }
    if (v->id[0]) {
        srv_log_debug("adapters: evicting %s from the device LRU", v->id);
        eng_sam_lora_destroy(a->m, v->lora);
        COUNT(a, adapter_evictions_mem);
    }
    memset(v, 0, sizeof *v);
    snprintf(v->id, sizeof v->id, "%s", id);
    v->lora = l;
    v->bytes = eng_sam_lora_bytes(l);
    v->tick = ++a->tick;
    v->meta = *meta;
    *lora = l;
    gauges(a);
    return 0;
}
