/*
 * server/fileio.c: capped whole-file reads and atomic writes. See fileio.h.
 */
#include "server/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/log.h"

int srv_pathf(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

void srv_path_dir(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        srv_pathf(out, cap, ".");
    else if (slash == path)
        srv_pathf(out, cap, "/");
    else
        srv_pathf(out, cap, "%.*s", (int)(slash - path), path);
}

int srv_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int srv_file_read(const char *path, size_t max, uint8_t **buf, size_t *len, char *err,
                  size_t errlen)
{
    struct stat st;
    uint8_t *b = NULL;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *buf = NULL;
    *len = 0;
    if (fd < 0)
        return srv_errf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return srv_errf(err, errlen, "%s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return srv_errf(err, errlen, "%s is %lld bytes, more than the %zu accepted", path,
                        (long long)st.st_size, max);
    }
    b = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
    if (!b) {
        close(fd);
        return srv_errf(err, errlen, "out of memory reading %s", path);
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, b + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : EIO;
            free(b);
            close(fd);
            return srv_errf(err, errlen, "reading %s: %s", path,
                            n < 0 ? strerror(e) : "the file shrank while read");
        }
        got += (size_t)n;
    }
    close(fd);
    *buf = b;
    *len = got;
    return 0;
}

int srv_file_write_atomic(const char *path, const void *buf, size_t len, char *err, size_t errlen)
{
    char dir[4096], tmp[4200];
    const char *base = strrchr(path, '/');
    unsigned r = 0;
    size_t done = 0;
    base = base ? base + 1 : path;
    srv_path_dir(path, dir, sizeof dir);
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (unsigned)getpid() * 2654435761u;
    if (srv_pathf(tmp, sizeof tmp, "%s/.%s.tmp-%d-%08x", dir, base, (int)getpid(), r) != 0)
        return srv_errf(err, errlen, "the path %s is too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return srv_errf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
    while (done < len) {
        ssize_t n = write(fd, (const uint8_t *)buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto io;
        done += (size_t)n;
    }
    if (fsync(fd) != 0)
        goto io;
    if (close(fd) != 0) {
        fd = -1;
        goto io;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto io;
    if (srv_fsync_dir(dir) != 0)
        srv_log_warn("fsync of %s after writing %s failed: %s", dir, path, strerror(errno));
    return 0;
io:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return srv_errf(err, errlen, "writing %s: %s", path, strerror(e ? e : EIO));
}
