/*
 * server/log.h: one-line log records on stderr.
 *
 * Each record is "<UTC time> <level> <message>\n", written with a single
 * write() so lines from different threads never interleave. The level
 * filter is a process-wide atomic, changed by config reload.
 */
#ifndef TASAM_SERVER_LOG_H
#define TASAM_SERVER_LOG_H

#include <stddef.h>

/* Levels: the same numbers as the log-level option's choices. */
#define SRV_LOG_LEVEL_ERROR 0
#define SRV_LOG_LEVEL_WARN  1
#define SRV_LOG_LEVEL_INFO  2
#define SRV_LOG_LEVEL_DEBUG 3

/* Set the most verbose level printed (0 error .. 3 debug). */
void srv_log_set_level(int level);
int srv_log_level(void);

/* Log a printf-style message at `level` (dropped if above the filter). */
void srv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Format a message into err (may be NULL; errlen bytes) for a caller that
 * reports it, and return -1: `return srv_errf(err, n, "bad %s", x);`. */
int srv_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define srv_log_error(...) srv_log(SRV_LOG_LEVEL_ERROR, __VA_ARGS__)
#define srv_log_warn(...)  srv_log(SRV_LOG_LEVEL_WARN, __VA_ARGS__)
#define srv_log_info(...)  srv_log(SRV_LOG_LEVEL_INFO, __VA_ARGS__)
#define srv_log_debug(...) srv_log(SRV_LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
