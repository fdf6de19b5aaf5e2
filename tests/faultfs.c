/*
 * tests/faultfs.c: an LD_PRELOAD library that makes the disk under the
 * cache database fail on demand, for the daemon tests of a full or failing
 * disk (a tmpfs or loop device needs privileges a CI machine may not give).
 *
 * It follows every file descriptor opened on a path containing "cache.db"
 * (the database, its -wal and -shm), or TASAM_FAULTFS_MATCH when set
 * ("train.db": the training records). While the file named by the
 * environment variable TASAM_FAULTFS holds
 *   "enospc": writes and truncations of those descriptors fail with ENOSPC,
 *   "eio":    reads, writes, truncations and syncs fail with EIO,
 * and anything else (or no file) lets every call through. The file is read
 * again on every call, so a test turns the fault on and off while the
 * daemon runs. SQLite reaches these functions through the dynamic linker,
 * which is what makes the interposition work; nothing else of the process
 * is touched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FD 65536

static unsigned char g_tracked[MAX_FD]; /* 1: fd is on a cache.db file */

enum { FAULT_NONE = 0, FAULT_ENOSPC, FAULT_EIO };

/* The part of a path that marks the files to fail. */
static const char *match(void)
{
    const char *m = getenv("TASAM_FAULTFS_MATCH");
    return m && *m ? m : "cache.db";
}

/* The mode in the control file, read with raw syscalls (the interposed
 * open/read must not see their own calls). */
static int mode(void)
{
    const char *path = getenv("TASAM_FAULTFS");
    char buf[16];
    if (!path)
        return FAULT_NONE;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return FAULT_NONE;
    long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
    syscall(SYS_close, fd);
    if (n <= 0)
        return FAULT_NONE;
    buf[n] = 0;
    return !strncmp(buf, "enospc", 6) ? FAULT_ENOSPC : !strncmp(buf, "eio", 3) ? FAULT_EIO : 0;
}

static int tracked(int fd) { return fd >= 0 && fd < MAX_FD && g_tracked[fd]; }

static void track(int fd, const char *path)
{
    if (fd >= 0 && fd < MAX_FD)
        g_tracked[fd] = path && strstr(path, match()) != NULL;
}

/* Contract: -1 with errno set when a fault applies to this call on fd. */
static int fault(int fd, int is_write, int is_sync)
{
    if (!tracked(fd))
        return 0;
    int m = mode();
    if (m == FAULT_EIO) {
        errno = EIO;
        return -1;
    }
    if (m == FAULT_ENOSPC && is_write && !is_sync) {
        errno = ENOSPC;
        return -1;
    }
    return 0;
}

#define REAL(name, type) ((type)dlsym(RTLD_NEXT, name))

/* Contract: the real `name` (open or open64) with the mode a caller's
 * O_CREAT / O_TMPFILE brings, the descriptor tracked by its path. */
static int open_tracked(const char *name, const char *path, int flags, va_list ap)
{
    mode_t m = (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
    int fd = REAL(name, int (*)(const char *, int, ...))(path, flags, m);
    track(fd, path);
    return fd;
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int fd = open_tracked("open64", path, flags, ap);
    va_end(ap);
    return fd;
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int fd = open_tracked("open", path, flags, ap);
    va_end(ap);
    return fd;
}

int close(int fd)
{
    if (fd >= 0 && fd < MAX_FD)
        g_tracked[fd] = 0;
    return REAL("close", int (*)(int))(fd);
}

ssize_t read(int fd, void *buf, size_t n)
{
    if (fault(fd, 0, 0))
        return -1;
    return REAL("read", ssize_t(*)(int, void *, size_t))(fd, buf, n);
}

ssize_t pread64(int fd, void *buf, size_t n, off_t off)
{
    if (fault(fd, 0, 0))
        return -1;
    return REAL("pread64", ssize_t(*)(int, void *, size_t, off_t))(fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    if (fault(fd, 1, 0))
        return -1;
    return REAL("write", ssize_t(*)(int, const void *, size_t))(fd, buf, n);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    if (fault(fd, 1, 0))
        return -1;
    return REAL("pwrite64", ssize_t(*)(int, const void *, size_t, off_t))(fd, buf, n, off);
}

int ftruncate64(int fd, off_t len)
{
    if (fault(fd, 1, 0))
        return -1;
    return REAL("ftruncate64", int (*)(int, off_t))(fd, len);
}

int fdatasync(int fd)
{
    if (fault(fd, 1, 1))
        return -1;
    return REAL("fdatasync", int (*)(int))(fd);
}

int fsync(int fd)
{
    if (fault(fd, 1, 1))
        return -1;
    return REAL("fsync", int (*)(int))(fd);
}
