/*
 * server/clients.c: per-client connection counts and token buckets. See
 * clients.h. An open-addressing table (linear probing, backward-shift
 * deletion) at most half full.
 */
#include "server/clients.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    srv_client_key k; /* the client */
    int used;         /* slot holds a client */
    int conns;        /* connections open */
    double tokens;    /* bucket level at t */
    double t;         /* when tokens was computed (srv_now seconds); 0: never */
    uint64_t seen;    /* last touch, larger is newer (eviction order) */
} entry;

struct srv_clients {
    pthread_mutex_t mu; /* guards everything below */
    entry *e;           /* [cap] */
    size_t cap;         /* power of two, >= 2 * max */
    size_t max;         /* clients held at most */
    size_t n;           /* clients held */
    uint64_t clock;     /* for seen */
};

void srv_client_key_of(const struct sockaddr *sa, socklen_t len, srv_client_key *k)
{
    memset(k, 0, sizeof *k);
    if (sa && sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        k->b[10] = k->b[11] = 0xff;
        memcpy(k->b + 12, &a->sin_addr, 4);
    } else if (sa && sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        memcpy(k->b, &a->sin6_addr, 16);
        /* an IPv4-mapped address is that IPv4 client; others by /64 */
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(k->b, mapped, 12) != 0)
            memset(k->b + 8, 0, 8);
    }
}

void srv_client_key_str(const srv_client_key *k, char *out, size_t n)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char a[INET6_ADDRSTRLEN];
    if (memcmp(k->b, mapped, 12) == 0) {
        inet_ntop(AF_INET, k->b + 12, a, sizeof a);
        snprintf(out, n, "%s", a);
    } else {
        inet_ntop(AF_INET6, k->b, a, sizeof a);
        snprintf(out, n, "%s/64", a);
    }
}

int srv_clients_create(srv_clients **out, int capacity)
{
    srv_clients *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    t->max = capacity > 16 ? (size_t)capacity : 16;
    t->cap = 32;
    while (t->cap < 2 * t->max)
        t->cap *= 2;
    t->e = calloc(t->cap, sizeof *t->e);
    if (!t->e) {
        free(t);
        return -1;
    }
    pthread_mutex_init(&t->mu, NULL);
    *out = t;
    return 0;
}

void srv_clients_destroy(srv_clients *t)
{
    if (!t)
        return;
    pthread_mutex_destroy(&t->mu);
    free(t->e);
    free(t);
}

static size_t hash(const srv_client_key *k)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ k->b[i]) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

/* Contract: under mu; the slot holding k, or NULL. */
static entry *find(srv_clients *t, const srv_client_key *k)
{
    for (size_t i = hash(k) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        entry *e = &t->e[i];
        if (!e->used)
            return NULL;
        if (!memcmp(e->k.b, k->b, 16))
            return e;
    }
}

/* Contract: under mu; removes the client in slot e, shifting back the
 * entries of its probe run so that every lookup still finds them. */
static void remove_at(srv_clients *t, entry *e)
{
    size_t i = (size_t)(e - t->e), mask = t->cap - 1;
    memset(e, 0, sizeof *e);
    t->n--;
    for (size_t j = (i + 1) & mask; t->e[j].used; j = (j + 1) & mask) {
        size_t home = hash(&t->e[j].k) & mask;
        /* move j into the hole at i when its home is not in (i, j] */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->e[i] = t->e[j];
            memset(&t->e[j], 0, sizeof t->e[j]);
            i = j;
        }
    }
}

/* Contract: under mu; the slot of k, inserting it (evicting the least
 * recently seen client without connections when full); NULL when every
 * client held has a connection open. */
static entry *get(srv_clients *t, const srv_client_key *k)
{
    entry *e = find(t, k);
    if (!e) {
        if (t->n >= t->max) {
            entry *old = NULL;
            for (size_t i = 0; i < t->cap; i++)
                if (t->e[i].used && t->e[i].conns == 0 && (!old || t->e[i].seen < old->seen))
                    old = &t->e[i];
            if (!old)
                return NULL;
            remove_at(t, old);
        }
        size_t i = hash(k) & (t->cap - 1);
        while (t->e[i].used)
            i = (i + 1) & (t->cap - 1);
        e = &t->e[i];
        memset(e, 0, sizeof *e);
        e->used = 1;
        e->k = *k;
        t->n++;
    }
    e->seen = ++t->clock;
    return e;
}

int srv_clients_conn_add(srv_clients *t, const srv_client_key *k, int limit)
{
    int rc = 0;
    pthread_mutex_lock(&t->mu);
    entry *e = get(t, k);
    if (!e)
        rc = -2;
    else if (limit > 0 && e->conns >= limit)
        rc = -1;
    else
        e->conns++;
    pthread_mutex_unlock(&t->mu);
    return rc;
}

void srv_clients_conn_del(srv_clients *t, const srv_client_key *k)
{
    pthread_mutex_lock(&t->mu);
    entry *e = find(t, k);
    if (e && e->conns > 0)
        e->conns--;
    pthread_mutex_unlock(&t->mu);
}

int srv_clients_conns(srv_clients *t, const srv_client_key *k)
{
    pthread_mutex_lock(&t->mu);
    entry *e = find(t, k);
    int n = e ? e->conns : 0;
    pthread_mutex_unlock(&t->mu);
    return n;
}

int srv_clients_take(srv_clients *t, const srv_client_key *k, double rate, double burst, double now)
{
    int wait = 0;
    if (rate <= 0)
        return 0;
    if (burst < 1)
        burst = 1;
    pthread_mutex_lock(&t->mu);
    entry *e = get(t, k);
    if (e) {
        double level = e->t > 0 ? e->tokens + (now - e->t) * rate : burst;
        if (level > burst)
            level = burst;
        if (level >= 1) {
            level -= 1;
        } else {
            double s = ceil((1 - level) / rate);
            wait = s < 1 ? 1 : s > 86400 ? 86400 : (int)s;
        }
        e->tokens = level;
        e->t = now;
    }
    pthread_mutex_unlock(&t->mu);
    return wait;
}
