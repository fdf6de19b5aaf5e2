/* server/error.c: srv_error and the engine-code -> HTTP status mapping (see error.h). */
#include "server/error.h"

#include <stdarg.h>
#include <stdio.h>

#include "engine/error.h"

int srv_fail(srv_error *e, int status, const char *field, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

int srv_status_of(int eng_code, srv_blame who)
{
    if (eng_code == ENG_ENOMEM)
        return 503;
    if (eng_code == ENG_ECANCELED)
        return 504;
    if (who == SRV_BLAME_SERVER)
        return 500;
    switch (eng_code) {
    case ENG_EUNSUP:
        return 415;
    case ENG_ELIMIT:
        return 413;
    case ENG_EDEVICE:
        return 500;
    default:
        return 400;
    }
}

int srv_fail_eng(srv_error *e, int eng_code, srv_blame who, const char *field, const char *fmt, ...)
{
    char head[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    return srv_fail(e, srv_status_of(eng_code, who), field, "%s: %s", head, eng_last_error());
}
