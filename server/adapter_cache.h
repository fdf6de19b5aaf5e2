/*
 * server/adapter_cache.h: task adapters as the inference worker uses them.
 *
 * Two tiers, like the embedding cache:
 *   - memory: an LRU of `adapter-slots` engine adapters (eng_sam_lora),
 *     uploaded and ready for eng_sam_decode. Adapters stay unmerged unless
 *     `adapter-merge on`: an unmerged adapter is its rank-r factors only
 *     (about 0.5 MiB at rank 4 where a merged one copies every adapted
 *     decoder weight), it is built in well under a millisecond, and prompts
 *     with different adapters can share one decoder call;
 *   - disk: the `adapter` table of the cache database (server/cache.h), the
 *     serialized adapter under its id with a CRC-32, surviving restarts.
 * A miss in both runs the text encoder and the hypernetwork
 * (ad_adapter_generate) and writes through to both tiers. The id is
 * ad_task_id(task, hypernetwork content id), so a new hypernetwork simply
 * misses and the rows of the old one age out by LRU.
 *
 * Threads: worker only. The model, the hypernetwork and the text encoder
 * belong to the inference worker; so does everything here.
 */
#ifndef TASAM_SERVER_ADAPTER_CACHE_H
#define TASAM_SERVER_ADAPTER_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"
#include "server/cache.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/scheduler.h"

typedef struct srv_adapter_cache srv_adapter_cache;

/*
 * Set up the tiers for model m, hypernetwork h and its text encoder (all
 * borrowed: they must outlive the handle). slots = 0 keeps no adapter on the
 * device between requests (each request uploads its own). Returns 0 or -1
 * (out of memory).
 */
int srv_adapter_cache_create(srv_adapter_cache **out, eng_sam *m, hn_hypernet *h, hn_text *text,
                             srv_cache *cache, srv_metrics *metrics, int slots, int merged);

/* Destroy every engine adapter and the handle. NULL ok. */
void srv_adapter_cache_destroy(srv_adapter_cache *a);

/*
 * The engine adapter for `task` (len bytes as given; `norm` is its
 * ad_normalize_task form, computed once when the request was parsed) whose
 * id is `id`: from the memory tier, else the disk tier (a row that does not
 * parse is dropped and regenerated), else generated. *lora stays valid until
 * srv_adapter_cache_release(). *meta gets the adapter's metadata (hits and
 * last_used as of the read), *src where it came from. Returns 0, or -1 with
 * *e set.
 */
int srv_adapter_cache_acquire(srv_adapter_cache *a, const char *id, const char *task, size_t len,
                              const char *norm, const eng_sam_lora **lora, srv_adapter_meta *meta,
                              srv_adapter_source *src, srv_error *e);

/* Done with an adapter from srv_adapter_cache_acquire (frees it when it is not
 * kept in the memory tier). NULL ok. */
void srv_adapter_cache_release(srv_adapter_cache *a, const eng_sam_lora *lora);

/* Drop every adapter of the memory tier; returns how many. */
int64_t srv_adapter_cache_flush(srv_adapter_cache *a);

#endif
