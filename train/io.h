/*
 * train/io.h: file and argument helpers the tasam-train commands share.
 */
#ifndef TASAM_TRAIN_IO_H
#define TASAM_TRAIN_IO_H

#include <jansson.h>
#include <stddef.h>

/* mkdir -p (mode 0755); 0 or ENG_EIO naming the folder. */
int tr_mkdirs(const char *path);

/* Write a whole file atomically: PATH.tmp, fsync, rename over PATH, so a
 * reader never sees a partial file. */
int tr_write_file_atomic(const char *path, const void *data, size_t len);

/* A JSON document (jansson's dump with `flags`, plus a newline), written
 * atomically. */
int tr_write_json(const char *path, const json_t *j, size_t flags);

/* One option of a command: "--name VALUE" (value set) or "--name" (flag set). */
typedef struct tr_opt {
    const char *name;   /* "--out" */
    const char **value; /* receives the argument; NULL for a flag */
    int *flag;          /* set to 1 when the flag is given; NULL for a value */
} tr_opt;

/* Parse argv (after the command word) against opts, ended by an entry whose
 * name is NULL. Returns 0; 1 when --help or -h is given (the caller prints
 * its usage and exits 0); 2 after printing "tasam-train CMD: ..." for an
 * unknown option or a missing value (a usage error). */
int tr_opts_parse(const char *cmd, int argc, char **argv, const tr_opt *opts);

/* A whole-string integer in [lo, hi]; 0 or -1. */
int tr_parse_int(const char *s, long long lo, long long hi, long long *out);

/* A whole-string finite number in [lo, hi]; 0 or -1. */
int tr_parse_double(const char *s, double lo, double hi, double *out);

/* "WxH" with each side in [lo, hi]; 0 or -1. */
int tr_parse_size(const char *s, int lo, int hi, int *w, int *h);

#endif
