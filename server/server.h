/*
 * server/server.h: the daemon's shared context, handed to the HTTP layer
 * and the routes. main.c owns it and every subsystem in it.
 */
#ifndef TASAM_SERVER_SERVER_H
#define TASAM_SERVER_SERVER_H

#include "server/cache.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/scheduler.h"

#define TASAMD_VERSION_STRING "0.1.0"

typedef struct srv_server {
    srv_config *cfg;                     /* configuration (owned by main) */
    srv_metrics *metrics;                /* counters (owned by main) */
    srv_cache *cache;                    /* embedding cache (owned by main) */
    srv_sched *sched;                    /* job queue + worker (owned by main) */
    int draining;                        /* 1 after SIGTERM: new work gets 503 (atomic) */
    double t_start;                      /* srv_now() at start */
    char instance[SRV_INSTANCE_MAX + 1]; /* X-Tasam-Instance: the instance option or HOST:PORT;
                                          * set by srv_http_start before the first request */
} srv_server;

#endif
