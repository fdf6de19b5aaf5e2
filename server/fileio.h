/*
 * server/fileio.h: whole-file reads with a size cap and atomic writes, for
 * the files tasamd keeps and publishes (the port file, hypernetwork
 * versions, the shared hypernetwork file).
 *
 * An atomic write goes to a temporary file in the target's folder (named
 * with the pid and a random part, so replicas writing one shared file never
 * collide), is fsync'ed, renamed over the target, and the folder is
 * fsync'ed, so a reader sees the old file or the new one, never a part, and
 * the rename survives a power cut. Functions return 0 or -1 with a message
 * in err.
 */
#ifndef TASAM_SERVER_FILEIO_H
#define TASAM_SERVER_FILEIO_H

#include <stddef.h>
#include <stdint.h>

/* Read all of `path` (at most `max` bytes: larger is an error) into a
 * malloc'd buffer. */
int srv_file_read(const char *path, size_t max, uint8_t **buf, size_t *len, char *err,
                  size_t errlen);

/* Write `len` bytes to `path` atomically (see the top), mode 0644 less the
 * umask. */
int srv_file_write_atomic(const char *path, const void *buf, size_t len, char *err, size_t errlen);

/* fsync a folder (after a rename into it). */
int srv_fsync_dir(const char *dir);

/* snprintf for paths: 0, or -1 (errno ENAMETOOLONG) when the result does
 * not fit in cap bytes (out is then cut short). */
int srv_pathf(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The folder part of `path` into out ("." when none). */
void srv_path_dir(const char *path, char *out, size_t cap);

#endif
