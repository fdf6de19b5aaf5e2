/*
 * server/gate.h: the gate, tasamd's front door in front of libmicrohttpd.
 *
 * The gate owns the listening socket. It accepts each connection, holds it
 * until a request's head has arrived whole and passed the strict framing
 * checks of http1.h, and only then hands the connection to libmicrohttpd
 * (MHD_add_connection, over a socketpair), relaying bytes both ways from
 * there on while it keeps checking the framing of every later request on
 * the connection. So:
 *   - a client that trickles a head (slowloris) never holds one of
 *     libmicrohttpd's connections, and is cut off with a 408 when its head
 *     takes longer than header-timeout-ms, its body longer than
 *     body-timeout-ms (absolute deadlines, not reset by each byte);
 *   - one client address holds at most max-connections-per-client
 *     connections (429 beyond), all clients at most max-connections (503);
 *   - every malformed or ambiguous request (bad request line or version,
 *     bare LF, obsolete folding, conflicting Content-Length,
 *     Content-Length with Transfer-Encoding, codings other than chunked,
 *     bad chunk framing, heads over max-header-bytes, too many fields or
 *     query arguments) gets a JSON error with the right status from the
 *     gate itself, never libmicrohttpd's HTML pages or its hangs.
 * An error on a later request of a kept-alive connection is sent after the
 * responses to the requests before it, then the connection closes.
 *
 * Threads: one gate thread runs the event loop (epoll). The link functions
 * are called from libmicrohttpd's threads.
 */
#ifndef TASAM_SERVER_GATE_H
#define TASAM_SERVER_GATE_H

#include <stdint.h>

#include "server/clients.h"
#include "server/server.h"

struct MHD_Daemon;
typedef struct srv_gate srv_gate;

/*
 * What libmicrohttpd's side of one relayed connection shares with the gate:
 * how many requests it has completed (the gate sends its own error for a
 * later request only after the responses before it). Reference-counted:
 * the gate holds one reference, libmicrohttpd's connection the other.
 */
typedef struct srv_gate_link srv_gate_link;

/*
 * Start the gate on `listen_fd` (bound and listening; the gate owns it from
 * here), handing valid connections to `d` (started with
 * MHD_USE_NO_LISTEN_SOCKET and MHD_USE_ITC). Limits come from srv->cfg
 * (read on every use, so [reload] options take effect at once), client
 * state from `clients` (borrowed). Returns 0 or -1 with err set.
 */
int srv_gate_start(srv_gate **out, srv_server *srv, struct MHD_Daemon *d, int listen_fd,
                   srv_clients *clients, char *err, size_t errlen);

/* Stop accepting (the listening socket is closed); open connections stay. */
void srv_gate_quiesce(srv_gate *g);

/* Connections the gate holds (being read, relayed or answered). */
int srv_gate_connections(srv_gate *g);

/* Close every connection, stop the thread, free. NULL ok. */
void srv_gate_stop(srv_gate *g);

/* libmicrohttpd started the connection whose socket is `mhd_fd`: the link
 * the gate registered for it (NULL when the gate already dropped it). */
srv_gate_link *srv_gate_link_take(srv_gate *g, int mhd_fd);
/* libmicrohttpd completed a request on the link's connection (its response
 * is fully written to the socket). NULL ok. */
void srv_gate_link_completed(srv_gate_link *l);
/* libmicrohttpd closed the connection. NULL ok. */
void srv_gate_link_release(srv_gate_link *l);

#endif
