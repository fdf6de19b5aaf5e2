/* engine/error.c: per-thread error messages (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

/* 1 KiB is enough for "file: tensor: what went wrong"; longer is truncated. */
static _Thread_local char eng__errbuf[1024];

int eng_error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(eng__errbuf, sizeof eng__errbuf, fmt, ap);
    va_end(ap);
    return code;
}

const char *eng_last_error(void) { return eng__errbuf; }

void eng_clear_error(void) { eng__errbuf[0] = '\0'; }

const char *eng_strerror(int code)
{
    switch (code) {
    case ENG_OK:
        return "ok";
    case ENG_EINVAL:
        return "invalid argument";
    case ENG_ENOMEM:
        return "out of memory";
    case ENG_EIO:
        return "i/o error";
    case ENG_EFORMAT:
        return "bad format";
    case ENG_EUNSUP:
        return "unsupported";
    case ENG_ELIMIT:
        return "over limit";
    case ENG_ENOTFOUND:
        return "not found";
    case ENG_EDEVICE:
        return "device error";
    case ENG_ESHAPE:
        return "wrong shape";
    case ENG_ECANCELED:
        return "canceled";
    default:
        return "unknown error";
    }
}
