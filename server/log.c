/*
 * server/log.c: stderr logging, one write() per line.
 */
#include "server/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int log_level = SRV_LOG_LEVEL_INFO; /* accessed with __atomic builtins */

static const char *const level_names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

/* Contract: any thread; clamps to the known range. */
void srv_log_set_level(int level)
{
    if (level < SRV_LOG_LEVEL_ERROR)
        level = SRV_LOG_LEVEL_ERROR;
    if (level > SRV_LOG_LEVEL_DEBUG)
        level = SRV_LOG_LEVEL_DEBUG;
    __atomic_store_n(&log_level, level, __ATOMIC_RELAXED);
}

int srv_log_level(void) { return __atomic_load_n(&log_level, __ATOMIC_RELAXED); }

/* Contract: formats into a bounded stack buffer (long messages are cut and
 * end with "..."), then one write(2) to fd 2. Never fails visibly. */
void srv_log(int level, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    size_t n;
    va_list ap;
    int k;

    if (level > srv_log_level())
        return;
    if (level < 0)
        level = 0;
    if (level > SRV_LOG_LEVEL_DEBUG)
        level = SRV_LOG_LEVEL_DEBUG;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    k = snprintf(line + n, sizeof line - n, ".%03dZ %-5s ", (int)(tv.tv_usec / 1000),
                 level_names[level]);
    if (k > 0)
        n += (size_t)k;
    va_start(ap, fmt);
    k = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (k < 0)
        k = 0;
    if ((size_t)k >= sizeof line - n - 1) {
        n = sizeof line - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    } else {
        n += (size_t)k;
    }
    line[n++] = '\n';
    ssize_t w = write(2, line, n);
    (void)w;
}

int srv_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}
