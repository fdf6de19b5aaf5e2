/* train/io.c: file and argument helpers (see io.h). */
#include "train/io.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/error.h"

int tr_mkdirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return eng_error(ENG_EINVAL, "bad folder name '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        struct stat st;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return eng_error(ENG_EIO, "%s: cannot create folder: %s", buf, strerror(errno));
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
            return eng_error(ENG_EIO, "%s: not a folder", buf);
        buf[i] = c;
    }
    return 0;
}

int tr_write_file_atomic(const char *path, const void *data, size_t len)
{
    char tmp[4096 + 8];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return eng_error(ENG_ELIMIT, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return eng_error(ENG_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return eng_error(ENG_EIO, "%s: write failed: %s", tmp, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return eng_error(ENG_EIO, "%s: write failed: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return eng_error(ENG_EIO, "%s: cannot rename into place: %s", path, strerror(e));
    }
    return 0;
}

int tr_write_json(const char *path, const json_t *j, size_t flags)
{
    char *s = json_dumps(j, flags);
    if (!s)
        return eng_error(ENG_ENOMEM, "%s: cannot serialise JSON", path);
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return eng_error(ENG_ENOMEM, "%s: out of memory", path);
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    int rc = tr_write_file_atomic(path, t, n + 1);
    free(t);
    return rc;
}

int tr_opts_parse(const char *cmd, int argc, char **argv, const tr_opt *opts)
{
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--help") || !strcmp(o, "-h"))
            return 1;
        const tr_opt *t = opts;
        while (t->name && strcmp(t->name, o))
            t++;
        if (!t->name) {
            fprintf(stderr, "tasam-train %s: unknown option '%s' (see --help)\n", cmd, o);
            return 2;
        }
        if (t->flag) {
            *t->flag = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "tasam-train %s: %s needs a value\n", cmd, o);
            return 2;
        }
        *t->value = argv[++i];
    }
    return 0;
}

int tr_parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int tr_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int tr_parse_size(const char *s, int lo, int hi, int *w, int *h)
{
    char *end;
    errno = 0;
    long a = strtol(s, &end, 10);
    if (end == s || (*end != 'x' && *end != 'X') || errno)
        return -1;
    const char *p = end + 1;
    long b = strtol(p, &end, 10);
    if (end == p || *end || errno || a < lo || a > hi || b < lo || b > hi)
        return -1;
    *w = (int)a;
    *h = (int)b;
    return 0;
}
