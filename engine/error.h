/*
 * engine/error.h: status codes and the per-thread error message.
 *
 * Every engine function that can fail returns 0 on success or a negative
 * ENG_E* code, and leaves a one-line human message (naming the file, tensor or
 * field at fault) retrievable with eng_last_error() on the same thread.
 * Programmer errors (violated preconditions) are asserts, never codes.
 */
#ifndef TASAM_ENGINE_ERROR_H
#define TASAM_ENGINE_ERROR_H

#include <stddef.h>

enum {
    ENG_OK = 0,
    ENG_EINVAL = -1,    /* bad argument or malformed input */
    ENG_ENOMEM = -2,    /* allocation failed (host or device) */
    ENG_EIO = -3,       /* read/write/open failed */
    ENG_EFORMAT = -4,   /* file is not in the expected format / corrupt */
    ENG_EUNSUP = -5,    /* valid but unsupported (dtype, opcode, image kind) */
    ENG_ELIMIT = -6,    /* over a configured limit (pixels, sizes) */
    ENG_ENOTFOUND = -7, /* missing key / tensor / file */
    ENG_EDEVICE = -8,   /* accelerator or driver failure */
    ENG_ESHAPE = -9,    /* tensor present but with the wrong shape */
    ENG_ECANCELED = -10 /* stopped by the caller (a deadline, a cancel request) */
};

/* Record a printf-style message for the calling thread; returns `code` so a
 * failure path can be written `return eng_error(ENG_EINVAL, "...")`. */
int eng_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The last message recorded on this thread ("" if none). Valid until the next
 * eng_error() on this thread. */
const char *eng_last_error(void);

/* Clear the calling thread's message. */
void eng_clear_error(void);

/* Short name of a code ("invalid argument", ...). */
const char *eng_strerror(int code);

#endif
