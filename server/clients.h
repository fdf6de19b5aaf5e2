/*
 * server/clients.h: per-client state for fairness limits: how many
 * connections a client holds (the gate's max-connections-per-client) and a
 * token bucket per client (http.c's rate-limit on routes that create work).
 *
 * A client is its IPv4 address, or the /64 prefix of its IPv6 address (one
 * host usually holds a whole /64, so a per-address limit would not bind
 * there). The table is bounded: clients with no connection open are
 * forgotten, least recently seen first, when it fills (they then start
 * again with a full bucket). Any thread; one mutex.
 */
#ifndef TASAM_SERVER_CLIENTS_H
#define TASAM_SERVER_CLIENTS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A client's identity for the limits. */
typedef struct srv_client_key {
    uint8_t b[16]; /* IPv4 as ::ffff:a.b.c.d; IPv6 with the low 64 bits zeroed */
} srv_client_key;

/* The key of a peer address (AF_INET or AF_INET6; anything else maps to
 * the all-zero key, one shared client). */
void srv_client_key_of(const struct sockaddr *sa, socklen_t len, srv_client_key *k);

/* "1.2.3.4" or "2001:db8::/64" into out (n bytes). */
void srv_client_key_str(const srv_client_key *k, char *out, size_t n);

typedef struct srv_clients srv_clients;

/* A table for at most `capacity` clients at once (rounded up). 0 or -1. */
int srv_clients_create(srv_clients **out, int capacity);
void srv_clients_destroy(srv_clients *t);

/* Count a new connection of k unless it already holds `limit` (0: no
 * limit). 0 counted, -1 over its limit, -2 the table is full of clients
 * with connections open. */
int srv_clients_conn_add(srv_clients *t, const srv_client_key *k, int limit);
/* A connection of k closed. */
void srv_clients_conn_del(srv_clients *t, const srv_client_key *k);
/* Connections k holds now. */
int srv_clients_conns(srv_clients *t, const srv_client_key *k);

/*
 * Take one token from k's bucket, which refills at `rate` tokens a second
 * up to `burst` (a new client starts full). Returns 0 when a token was
 * taken, else the whole seconds (>= 1) until one will be there: the
 * Retry-After of the 429. `now` is srv_now() seconds.
 */
int srv_clients_take(srv_clients *t, const srv_client_key *k, double rate, double burst,
                     double now);

#endif
