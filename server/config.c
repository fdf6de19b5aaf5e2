/*
 * server/config.c: the option table and everything that reads it.
 *
 * Adding an option: add its id to srv_opt_id in config.h and a row here in
 * the same position; flags, the config file, the environment, --help and
 * /v1/info pick it up from the table.
 */
#include "server/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/everything.h"
#include "server/log.h"

#define TASAMD_VERSION "0.1.0"

static const char *const device_choices[] = {"auto", "cpu", "cuda", NULL};
static const char *const precision_choices[] = {"auto", "fp32", "fp16", "bf16", NULL};
static const char *const off_on_choices[] = {"off", "on", NULL};
static const char *const train_device_choices[] = {"cpu", "cuda", "auto", NULL};
static const char *const log_choices[] = {"error", "warn", "info", "debug", NULL};

#define KiB 1024LL
#define MiB (1024LL * 1024)
#define GiB (1024LL * 1024 * 1024)

/* The table. Order must match srv_opt_id. */
static const srv_opt_def opt_table[] = {
    {"config", SRV_T_STRING, "", 0, 0, NULL, 0, SRV_PRIVATE,
     "config file of `name = value` lines (# comments); re-read on SIGHUP"},
    {"checkpoint", SRV_T_STRING, "", 0, 0, NULL, 0, SRV_PRIVATE,
     "SAM checkpoint (.pth or .safetensors); required"},
    {"listen", SRV_T_STRING, "127.0.0.1:8080", 0, 0, NULL, 0, 0,
     "HOST:PORT to serve HTTP on ([v6addr]:PORT for IPv6; port 0 picks a free one)"},
    {"port-file", SRV_T_STRING, "", 0, 0, NULL, 0, SRV_PRIVATE,
     "write the bound TCP port to this file once listening"},
    {"web", SRV_T_ENUM, "on", 0, 0, off_on_choices, 1, 0,
     "on: serve the demo page at GET / (embedded in tasamd; it calls this daemon only); off: "
     "404 there"},
    {"instance", SRV_T_STRING, "", 0, 0, NULL, 0, 0,
     "this replica's name, sent in the X-Tasam-Instance header of every response and in "
     "/v1/info (default HOSTNAME:PORT; letters, digits and . _ : @ / -)"},
    {"state-dir", SRV_T_STRING, "./state", 0, 0, NULL, 0, SRV_PRIVATE,
     "directory for the cache database of embeddings and adapters (created if missing)"},
    {"device", SRV_T_ENUM, "auto", 0, 0, device_choices, 0, 0,
     "auto (CUDA if usable, else CPU), cpu or cuda"},
    {"precision", SRV_T_ENUM, "auto", 0, 0, precision_choices, 0, 0,
     "auto, fp32, fp16 or bf16 (CPU runs fp32 only)"},
    {"cpu-threads", SRV_T_INT, "0", 0, 1024, NULL, 0, 0,
     "threads of the CPU backend (0: all cores)"},
    {"cpu-spin-us", SRV_T_INT, "500", 0, 100000, NULL, 0, 0,
     "microseconds the CPU backend's idle threads spin before they sleep, so that a request's "
     "short parallel loops find them awake (0: sleep at once, for cores busy with other work)"},
    {"admin-token", SRV_T_STRING, "", 0, 0, NULL, 1, SRV_SECRET,
     "bearer token for /admin routes (prefer admin-token-file)"},
    {"admin-token-file", SRV_T_STRING, "", 0, 0, NULL, 1, SRV_PRIVATE,
     "file whose first line is the admin token"},
    {"api-token", SRV_T_STRING, "", 0, 0, NULL, 1, SRV_SECRET,
     "bearer token every /v1 route requires (the admin token works too); unset: /v1 is open "
     "(prefer api-token-file)"},
    {"api-token-file", SRV_T_STRING, "", 0, 0, NULL, 1, SRV_PRIVATE,
     "file whose first line is the API token"},
    {"max-body-bytes", SRV_T_BYTES, "32MiB", 1 * KiB, 1 * GiB, NULL, 1, 0,
     "largest request body accepted (413 beyond)"},
    {"max-inflight-body-bytes", SRV_T_BYTES, "256MiB", 1 * MiB, 64 * GiB, NULL, 1, 0,
     "request bodies being received at once, all clients together (503 with Retry-After "
     "beyond); at least max-body-bytes"},
    {"max-header-bytes", SRV_T_BYTES, "16KiB", 1 * KiB, 1 * MiB, NULL, 0, 0,
     "largest request line and headers (414 / 431 beyond)"},
    {"max-pixels", SRV_T_COUNT, "40M", 1, 1000000000LL, NULL, 1, 0,
     "largest decoded image, width*height (413 beyond)"},
    {"max-points", SRV_T_INT, "16", 1, 64, NULL, 0, 0, "most points in one prompt"},
    {"max-prompts", SRV_T_INT, "64", 1, 256, NULL, 1, 0, "most prompts (boxes) in one request"},
    {"max-mask-bytes", SRV_T_BYTES, "512MiB", 1 * MiB, 64 * GiB, NULL, 1, 0,
     "largest full-size mask output of one request, prompts*masks*width*height, and largest RLE "
     "of the masks everything mode keeps (413 beyond)"},
    {"max-response-bytes", SRV_T_BYTES, "64MiB", 64 * KiB, 16 * GiB, NULL, 1, 0,
     "largest encoded response (RLE, PNG or polygon JSON) of one request (413 beyond)"},
    {"everything-defaults", SRV_T_STRING, "", 0, 0, NULL, 0, 0,
     "everything mode's parameters where a request leaves them out (a task alone, or "
     "\"everything\": true), as a JSON object, e.g. {\"points_per_side\": 16}; empty: the "
     "reference's (32 points a side)"},
    {"queue-depth", SRV_T_INT, "64", 1, 100000, NULL, 1, 0,
     "jobs waiting for the model before new ones get 429"},
    {"rate-limit", SRV_T_INT, "0", 0, 1000000, NULL, 1, 0,
     "requests a second one client may make on the routes that create work (POST /v1/...; "
     "429 with Retry-After beyond; 0: no limit)"},
    {"rate-burst", SRV_T_INT, "20", 1, 1000000, NULL, 1, 0,
     "requests a client may make at once above rate-limit before it applies"},
    {"max-batch", SRV_T_INT, "4", 1, 64, NULL, 0, 0, "images per image-encoder call"},
    {"batch-wait-ms", SRV_T_INT, "2", 0, 1000, NULL, 1, 0,
     "how long the encoder waits to fill a batch"},
    {"cache-bytes", SRV_T_BYTES, "2GiB", 0, 1024 * GiB, NULL, 1, 0,
     "byte budget of the on-disk embedding cache (LRU eviction; 0 disables it)"},
    {"cache-corrupt-keep", SRV_T_INT, "3", 0, 100, NULL, 0, 0,
     "corrupt cache databases kept (renamed cache.db.corrupt-TIME) for inspection; older "
     "ones are deleted"},
    {"gpu-cache-slots", SRV_T_INT, "8", 0, 4096, NULL, 0, 0,
     "embeddings kept resident on the decoder's device, and host copies of as many not yet "
     "decoded, in front of the disk cache"},
    {"hypernet", SRV_T_STRING, "", 0, 0, NULL, 0, SRV_PRIVATE,
     "hypernetwork file (tasam hypernet init) that turns `task` text into LoRA adapters; "
     "without it `task` answers 501"},
    {"text-model", SRV_T_STRING, "", 0, 0, NULL, 0, SRV_PRIVATE,
     "text encoder for --hypernet, as tasam hypernet init takes it: 'hashed', a name (looked up "
     "as models/NAME) or a folder (default: what the hypernetwork names)"},
    {"adapter-slots", SRV_T_INT, "16", 0, 4096, NULL, 0, 0,
     "task adapters kept ready on the device in an LRU in front of the disk cache"},
    {"adapter-cache-bytes", SRV_T_BYTES, "256MiB", 0, 1024 * GiB, NULL, 1, 0,
     "byte budget of the on-disk adapter cache (LRU eviction; 0 disables it)"},
    {"adapter-merge", SRV_T_ENUM, "off", 0, 0, off_on_choices, 0, 0,
     "off: adapters stay unmerged (small; prompts with different adapters share a decoder "
     "call); on: fold each into a copy of the decoder weights"},
    {"hypernet-keep", SRV_T_INT, "5", 1, 100, NULL, 0, 0,
     "previous hypernetwork versions kept in STATE_DIR/hypernets for rollback"},
    {"hypernet-poll-ms", SRV_T_INT, "2000", 0, 3600000, NULL, 0, 0,
     "how often the --hypernet file is checked for a new version besides inotify (shared "
     "volumes where inotify sees no remote change); 0: inotify and SIGHUP only"},
    {"train-data-dir", SRV_T_STRING, "", 0, 0, NULL, 0, 0,
     "folder that training jobs' data and val paths are relative to (nothing outside it is "
     "read); without it POST /admin/train answers 403"},
    {"trainer", SRV_T_STRING, "", 0, 0, NULL, 0, 0,
     "the tasam-train program (default: tasam-train beside tasamd, else on PATH)"},
    {"train-queue-depth", SRV_T_INT, "8", 1, 1000, NULL, 1, 0,
     "training jobs waiting to run before POST /admin/train answers 429 (one runs at a time)"},
    {"train-threads", SRV_T_INT, "0", 0, 256, NULL, 1, 0,
     "threads of a training job (0: half the cores, at least 1), so serving keeps the rest"},
    {"train-nice", SRV_T_INT, "10", 0, 19, NULL, 1, 0,
     "nice value of the training process: it yields the CPU to serving"},
    {"train-device", SRV_T_ENUM, "cpu", 0, 0, train_device_choices, 1, 0,
     "where training runs: cpu (the GPU stays serving's alone), cuda or auto (it shares the GPU; "
     "see train-cuda-devices)"},
    {"train-cuda-devices", SRV_T_STRING, "", 0, 0, NULL, 1, 0,
     "CUDA_VISIBLE_DEVICES of the trainer with train-device cuda or auto (\"1\": a second GPU); "
     "empty: the daemon's own"},
    {"train-stop-timeout-ms", SRV_T_INT, "10000", 100, 600000, NULL, 1, 0,
     "how long a cancelled or interrupted trainer has after SIGTERM before SIGKILL"},
    {"train-stall-timeout-ms", SRV_T_INT, "600000", 0, 86400000, NULL, 1, 0,
     "a trainer silent this long after its first step is killed and its job failed (0: never)"},
    {"train-log-bytes", SRV_T_BYTES, "16MiB", 64 * KiB, 1 * GiB, NULL, 1, 0,
     "largest log kept per training job (output beyond it is dropped, the last lines still "
     "reach the job's error)"},
    {"train-keep-jobs", SRV_T_INT, "100", 1, 100000, NULL, 1, 0,
     "finished training jobs kept (rows, logs, outputs); older ones are deleted"},
    {"request-timeout-ms", SRV_T_INT, "30000", 1, 3600000, NULL, 1, 0,
     "deadline of a request from arrival (504 if it expires while queued)"},
    {"shutdown-timeout-ms", SRV_T_INT, "10000", 0, 3600000, NULL, 1, 0,
     "how long SIGTERM waits for in-flight requests"},
    {"threads", SRV_T_INT, "4", 1, 256, NULL, 0, 0,
     "HTTP threads (they parse and decode; they never run the model)"},
    {"max-connections", SRV_T_INT, "512", 1, 65536, NULL, 1, 0,
     "simultaneous HTTP connections (503 beyond)"},
    {"max-connections-per-client", SRV_T_INT, "64", 0, 65536, NULL, 1, 0,
     "simultaneous connections of one client address (IPv6: one /64; 429 beyond; 0: no "
     "limit; raise it behind a proxy that connects from one address)"},
    {"header-timeout-ms", SRV_T_INT, "10000", 100, 3600000, NULL, 1, 0,
     "time a request line and headers may take to arrive, from the connection's start or the "
     "request's first byte (408 beyond; not reset by each byte)"},
    {"body-timeout-ms", SRV_T_INT, "60000", 100, 86400000, NULL, 1, 0,
     "time a request body may take to arrive after its headers (408 beyond)"},
    {"idle-timeout-ms", SRV_T_INT, "60000", 1000, 3600000, NULL, 0, 0,
     "a kept-alive connection with nothing to do is closed after this long"},
    {"log-level", SRV_T_ENUM, "info", 0, 0, log_choices, 1, 0, "error, warn, info or debug"},
};

/* one row per srv_opt_id, in its order */
_Static_assert(sizeof opt_table / sizeof opt_table[0] == SRV_OPT_COUNT,
               "opt_table needs a row for every srv_opt_id");

int srv_config_instance_valid(const char *s, int empty_ok)
{
    size_t n = strlen(s);
    if (n == 0)
        return empty_ok;
    if (n > SRV_INSTANCE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("._:@/-", s[i]))
            return 0;
    return 1;
}

const srv_opt_def *srv_config_table(size_t *n)
{
    if (n)
        *n = SRV_OPT_COUNT;
    return opt_table;
}

static int find_opt(const char *name, size_t len)
{
    for (int i = 0; i < SRV_OPT_COUNT; i++)
        if (strlen(opt_table[i].name) == len && memcmp(opt_table[i].name, name, len) == 0)
            return i;
    return -1;
}

/* Contract: parses an integer with an optional unit suffix. `base` is 1000
 * or 1024 (0: no suffix allowed). Rejects overflow, junk and negatives. */
static int parse_scaled(const char *s, int base, int64_t *out)
{
    char *end;
    errno = 0;
    while (isspace((unsigned char)*s))
        s++;
    if (*s == '-' || *s == '+')
        return -1;
    if (!isdigit((unsigned char)*s))
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    while (*end == ' ')
        end++;
    long long mul = 1;
    if (*end && base) {
        char u = (char)toupper((unsigned char)*end);
        int pow = u == 'K' ? 1 : u == 'M' ? 2 : u == 'G' ? 3 : u == 'T' ? 4 : 0;
        if (!pow)
            return -1;
        end++;
        if (base == 1024) {
            /* K, KB, KiB all mean 1024 for byte sizes. */
            if (*end == 'i' || *end == 'I')
                end++;
            if (*end == 'B' || *end == 'b')
                end++;
        }
        for (int i = 0; i < pow; i++)
            mul *= base;
    }
    while (*end == ' ')
        end++;
    if (*end)
        return -1;
    if (v > (unsigned long long)INT64_MAX / (unsigned long long)mul)
        return -1;
    *out = (int64_t)(v * (unsigned long long)mul);
    return 0;
}

int srv_config_parse_value(srv_opt_id id, const char *text, int64_t *num, char *err, size_t errlen)
{
    const srv_opt_def *d;
    int64_t v = 0;

    if ((int)id < 0 || id >= SRV_OPT_COUNT)
        return srv_errf(err, errlen, "unknown option");
    d = &opt_table[id];
    switch (d->type) {
    case SRV_T_STRING:
        if (strlen(text) > 4096)
            return srv_errf(err, errlen, "option --%s: value longer than 4096 bytes", d->name);
        if (id == SRV_OPT_EVERYTHING_DEFAULTS) {
            srv_everything ev;
            srv_error e;
            int bad = srv_everything_defaults(text, &ev, &e);
            srv_everything_free(&ev);
            if (bad)
                return srv_errf(err, errlen, "option --%s: %s", d->name, e.message);
        }
        *num = 0;
        return 0;
    case SRV_T_ENUM:
        for (int i = 0; d->choices[i]; i++)
            if (strcmp(d->choices[i], text) == 0) {
                *num = i;
                return 0;
            }
        {
            char list[256] = "";
            for (int i = 0; d->choices[i]; i++) {
                if (i)
                    strncat(list, ", ", sizeof list - strlen(list) - 1);
                strncat(list, d->choices[i], sizeof list - strlen(list) - 1);
            }
            return srv_errf(err, errlen, "option --%s: '%s' is not one of %s", d->name, text, list);
        }
    case SRV_T_INT:
    case SRV_T_COUNT:
    case SRV_T_BYTES:
        if (parse_scaled(text,
                         d->type == SRV_T_INT     ? 0
                         : d->type == SRV_T_COUNT ? 1000
                                                  : 1024,
                         &v) != 0)
            return srv_errf(err, errlen, "option --%s: '%s' is not a %s", d->name, text,
                            d->type == SRV_T_INT     ? "non-negative integer"
                            : d->type == SRV_T_COUNT ? "count (e.g. 40M)"
                                                     : "byte size (e.g. 32MiB)");
        if (v < d->min || v > d->max)
            return srv_errf(err, errlen, "option --%s: %lld is outside [%lld, %lld]", d->name,
                            (long long)v, (long long)d->min, (long long)d->max);
        *num = v;
        return 0;
    }
    return srv_errf(err, errlen, "option --%s: bad type", d->name);
}

/* Contract: sets option `id` from text, recording its source; on a parse
 * error nothing changes. `where` prefixes the message ("file:3: "). */
static int set_opt(srv_config *c, int id, const char *text, srv_opt_source src, const char *where,
                   char *err, size_t errlen)
{
    int64_t v;
    char e[512];
    char *copy;
    if (srv_config_parse_value((srv_opt_id)id, text, &v, e, sizeof e) != 0)
        return srv_errf(err, errlen, "%s%s", where ? where : "", e);
    copy = strdup(text);
    if (!copy)
        return srv_errf(err, errlen, "out of memory");
    free(c->str[id]);
    c->str[id] = copy;
    c->num[id] = v;
    c->src[id] = src;
    return 0;
}

static char *trim(char *s)
{
    char *e;
    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

/* The largest config or token file read. */
#define CONFIG_FILE_MAX (1024 * 1024)

/*
 * Contract: reads a whole regular file of at most CONFIG_FILE_MAX bytes into
 * *out (malloc'd, NUL-terminated; *len bytes before the terminator). A FIFO,
 * socket, device or directory is refused without blocking: it is opened
 * non-blocking and checked with fstat before any read. `what` names the
 * option in the message ("--config").
 */
static int read_regular_file(const char *what, const char *path, char **out, size_t *len, char *err,
                             size_t errlen)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    *out = NULL;
    *len = 0;
    if (fd < 0)
        return srv_errf(err, errlen, "option %s: cannot open '%s': %s", what, path,
                        strerror(errno));
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return srv_errf(err, errlen, "option %s: cannot stat '%s': %s", what, path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return srv_errf(err, errlen, "option %s: '%s' is not a regular file (it is %s)", what, path,
                        S_ISDIR(st.st_mode)    ? "a directory"
                        : S_ISFIFO(st.st_mode) ? "a FIFO"
                        : S_ISSOCK(st.st_mode) ? "a socket"
                        : S_ISCHR(st.st_mode)  ? "a character device"
                        : S_ISBLK(st.st_mode)  ? "a block device"
                                               : "not a file");
    }
    if (st.st_size > CONFIG_FILE_MAX) {
        close(fd);
        return srv_errf(err, errlen, "option %s: '%s' is larger than %d bytes", what, path,
                        CONFIG_FILE_MAX);
    }
    char *buf = malloc((size_t)st.st_size + 2);
    size_t n = 0;
    if (!buf) {
        close(fd);
        return srv_errf(err, errlen, "out of memory");
    }
    /* Read to the end (the file may have grown since fstat, up to the cap). */
    for (;;) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return srv_errf(err, errlen, "option %s: reading '%s': %s", what, path, strerror(e));
        }
        n += (size_t)r;
        if (r == 0 || n > (size_t)st.st_size)
            break;
    }
    close(fd);
    if (n > (size_t)st.st_size) {
        free(buf);
        return srv_errf(err, errlen, "option %s: '%s' changed while it was read", what, path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

/* Contract: applies `name = value` lines of `path`. Blank lines and lines
 * starting with '#' are skipped; values may be wrapped in double quotes.
 * Errors name the file and line; a NUL byte is reported as one. */
static int load_file(srv_config *c, const char *path, char *err, size_t errlen)
{
    char *text, line[8192], where[600];
    size_t len, at = 0;
    int lineno = 0, rc = 0;
    if (read_regular_file("--config", path, &text, &len, err, errlen) != 0)
        return -1;
    while (at < len) {
        char *s, *eq, *key, *val;
        const char *nl = memchr(text + at, '\n', len - at);
        size_t ll = nl ? (size_t)(nl - (text + at)) : len - at;
        int id;
        lineno++;
        if (memchr(text + at, 0, ll)) {
            rc = srv_errf(err, errlen, "%s:%d: the line holds a NUL byte (is this a text file?)",
                          path, lineno);
            break;
        }
        if (ll >= sizeof line) {
            rc = srv_errf(err, errlen, "%s:%d: line too long (over %zu bytes)", path, lineno,
                          sizeof line - 1);
            break;
        }
        memcpy(line, text + at, ll);
        line[ll] = 0;
        at += ll + 1;
        s = trim(line);
        if (!*s || *s == '#')
            continue;
        eq = strchr(s, '=');
        if (!eq) {
            rc = srv_errf(err, errlen, "%s:%d: expected `name = value`", path, lineno);
            break;
        }
        *eq = 0;
        key = trim(s);
        val = eq + 1;
        /* An inline comment starts at a '#' after whitespace (outside quotes). */
        for (char *q = val, inq = 0; *q; q++) {
            if (*q == '"')
                inq = (char)!inq;
            else if (*q == '#' && !inq && q > val && (q[-1] == ' ' || q[-1] == '\t')) {
                *q = 0;
                break;
            }
        }
        val = trim(val);
        if (val[0] == '"' && strlen(val) >= 2 && val[strlen(val) - 1] == '"') {
            val[strlen(val) - 1] = 0;
            val++;
        }
        id = find_opt(key, strlen(key));
        if (id < 0 || id == SRV_OPT_CONFIG) {
            rc = srv_errf(err, errlen, "%s:%d: unknown option '%s'", path, lineno, key);
            break;
        }
        snprintf(where, sizeof where, "%s:%d: ", path, lineno);
        if ((rc = set_opt(c, id, val, SRV_SRC_FILE, where, err, errlen)) != 0)
            break;
    }
    free(text);
    return rc;
}

static void env_name(const char *opt, char *out, size_t n)
{
    size_t i = 0, k = 0;
    const char *pre = "TASAMD_";
    while (pre[k] && i + 1 < n)
        out[i++] = pre[k++];
    for (k = 0; opt[k] && i + 1 < n; k++)
        out[i++] = opt[k] == '-' ? '_' : (char)toupper((unsigned char)opt[k]);
    out[i] = 0;
}

static int load_env(srv_config *c, char *err, size_t errlen)
{
    char name[96], where[128];
    for (int i = 0; i < SRV_OPT_COUNT; i++) {
        const char *v;
        if (i == SRV_OPT_CONFIG)
            continue;
        env_name(opt_table[i].name, name, sizeof name);
        v = getenv(name);
        if (!v)
            continue;
        snprintf(where, sizeof where, "environment %s: ", name);
        if (set_opt(c, i, v, SRV_SRC_ENV, where, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* Contract: walks argv. With apply = 0 it only finds --config (into
 * c->str[SRV_OPT_CONFIG]) and --help/--version (*special = 1/2); with
 * apply = 1 it applies every flag. Errors name the flag. */
static int scan_args(srv_config *c, int argc, char **argv, int apply, int *special, char *err,
                     size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val, *eq;
        size_t nlen;
        int id;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            if (special)
                *special = 1;
            continue;
        }
        if (strcmp(a, "--version") == 0) {
            if (special && !*special)
                *special = 2;
            continue;
        }
        if (strncmp(a, "--", 2) != 0)
            return srv_errf(err, errlen, "unexpected argument '%s' (options are --name value)", a);
        a += 2;
        eq = strchr(a, '=');
        nlen = eq ? (size_t)(eq - a) : strlen(a);
        id = find_opt(a, nlen);
        if (id < 0)
            return srv_errf(err, errlen, "unknown option '--%.*s' (see --help)", (int)nlen, a);
        if (eq) {
            val = eq + 1;
        } else {
            if (i + 1 >= argc)
                return srv_errf(err, errlen, "option --%s needs a value", opt_table[id].name);
            val = argv[++i];
        }
        if (apply || id == SRV_OPT_CONFIG)
            if (set_opt(c, id, val, SRV_SRC_FLAG, "", err, errlen) != 0)
                return -1;
    }
    return 0;
}

/* Contract: reads the first line of a token file (trimmed, non-empty;
 * the file must be a regular file without NUL bytes). */
static int read_token_file(const char *what, const char *path, char **out, char *err, size_t errlen)
{
    char *text;
    size_t len;
    if (read_regular_file(what, path, &text, &len, err, errlen) != 0)
        return -1;
    char *nl = memchr(text, '\n', len);
    size_t ll = nl ? (size_t)(nl - text) : len;
    if (memchr(text, 0, ll)) {
        free(text);
        return srv_errf(err, errlen, "option %s: '%s' holds a NUL byte on its first line", what,
                        path);
    }
    text[ll] = 0;
    char *t = trim(text);
    if (!*t) {
        free(text);
        return srv_errf(err, errlen, "option %s: '%s' has no token on its first line", what, path);
    }
    *out = strdup(t);
    free(text);
    return *out ? 0 : srv_errf(err, errlen, "out of memory");
}

/* Contract: the effective token of a token option and its -file twin
 * into *out (NULL when neither is set); they are exclusive. */
static int token_option(srv_config *c, srv_opt_id tok, srv_opt_id file, char **out, char *err,
                        size_t errlen)
{
    char what[64];
    free(*out);
    *out = NULL;
    if (c->str[tok][0] && c->str[file][0])
        return srv_errf(err, errlen, "options --%s and --%s are exclusive: give one",
                        opt_table[tok].name, opt_table[file].name);
    snprintf(what, sizeof what, "--%s", opt_table[file].name);
    if (c->str[file][0])
        return read_token_file(what, c->str[file], out, err, errlen);
    if (c->str[tok][0] && !(*out = strdup(c->str[tok])))
        return srv_errf(err, errlen, "out of memory");
    return 0;
}

/* Contract: checks values that depend on each other; fills the tokens. */
static int validate(srv_config *c, char *err, size_t errlen)
{
    const char *listen = c->str[SRV_OPT_LISTEN];
    const char *colon = strrchr(listen, ':');
    int64_t port;

    if (!c->str[SRV_OPT_CHECKPOINT][0])
        return srv_errf(err, errlen,
                        "option --checkpoint is required (a SAM .pth or .safetensors)");
    if (!colon || colon == listen || parse_scaled(colon + 1, 0, &port) != 0 || port > 65535)
        return srv_errf(err, errlen, "option --listen: '%s' is not HOST:PORT", listen);
    if (listen[0] == '[' && colon[-1] != ']')
        return srv_errf(err, errlen, "option --listen: '%s' is not [ADDR]:PORT", listen);
    if (c->num[SRV_OPT_DEVICE] == SRV_DEVICE_CPU && c->num[SRV_OPT_PRECISION] != SRV_PREC_AUTO &&
        c->num[SRV_OPT_PRECISION] != SRV_PREC_FP32)
        return srv_errf(err, errlen,
                        "option --precision: %s needs --device cuda (the CPU runs fp32)",
                        c->str[SRV_OPT_PRECISION]);
    if (!c->str[SRV_OPT_STATE_DIR][0])
        return srv_errf(err, errlen, "option --state-dir must not be empty");
    if (c->str[SRV_OPT_TRAIN_DATA_DIR][0] && !c->str[SRV_OPT_HYPERNET][0])
        return srv_errf(err, errlen,
                        "option --train-data-dir needs --hypernet (training starts from the "
                        "active hypernetwork and publishes to that file)");
    if (!srv_config_instance_valid(c->str[SRV_OPT_INSTANCE], 1))
        return srv_errf(err, errlen,
                        "option --instance: '%.120s' must be 1-%d characters of letters, digits "
                        "and . _ : @ / -",
                        c->str[SRV_OPT_INSTANCE], SRV_INSTANCE_MAX);
    if (c->str[SRV_OPT_TEXT_MODEL][0] && !c->str[SRV_OPT_HYPERNET][0])
        return srv_errf(err, errlen,
                        "option --text-model needs --hypernet (the text encoder only feeds the "
                        "hypernetwork)");
    if (c->num[SRV_OPT_MAX_INFLIGHT_BODY_BYTES] < c->num[SRV_OPT_MAX_BODY_BYTES])
        return srv_errf(err, errlen,
                        "option --max-inflight-body-bytes (%lld) must be at least "
                        "--max-body-bytes (%lld): one largest body must fit",
                        (long long)c->num[SRV_OPT_MAX_INFLIGHT_BODY_BYTES],
                        (long long)c->num[SRV_OPT_MAX_BODY_BYTES]);
    if (token_option(c, SRV_OPT_ADMIN_TOKEN, SRV_OPT_ADMIN_TOKEN_FILE, &c->admin_token, err,
                     errlen) != 0)
        return -1;
    return token_option(c, SRV_OPT_API_TOKEN, SRV_OPT_API_TOKEN_FILE, &c->api_token, err, errlen);
}

/* Contract: builds a complete config in c (zeroed on entry) from the
 * layers; *special reports --help (1) / --version (2). */
static int build(srv_config *c, int argc, char **argv, int *special, char *err, size_t errlen)
{
    const char *cfgfile;
    for (int i = 0; i < SRV_OPT_COUNT; i++)
        if (set_opt(c, i, opt_table[i].def, SRV_SRC_DEFAULT, "default of ", err, errlen) != 0)
            return -1;
    if (getenv("TASAMD_CONFIG") &&
        set_opt(c, SRV_OPT_CONFIG, getenv("TASAMD_CONFIG"), SRV_SRC_ENV, "", err, errlen) != 0)
        return -1;
    if (scan_args(c, argc, argv, 0, special, err, errlen) != 0)
        return -1;
    if (special && *special)
        return 0;
    cfgfile = c->str[SRV_OPT_CONFIG];
    if (cfgfile[0] && load_file(c, cfgfile, err, errlen) != 0)
        return -1;
    if (load_env(c, err, errlen) != 0)
        return -1;
    if (scan_args(c, argc, argv, 1, NULL, err, errlen) != 0)
        return -1;
    return validate(c, err, errlen);
}

static void free_values(srv_config *c)
{
    for (int i = 0; i < SRV_OPT_COUNT; i++) {
        free(c->str[i]);
        c->str[i] = NULL;
    }
    free(c->admin_token);
    c->admin_token = NULL;
    free(c->api_token);
    c->api_token = NULL;
}

int srv_config_load(srv_config *c, int argc, char **argv, FILE *out, char *err, size_t errlen)
{
    int special = 0;
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    if (build(c, argc, argv, &special, err, errlen) != 0)
        goto err;
    if (special == 1) {
        srv_config_usage(out, argc > 0 ? argv[0] : "tasamd");
        srv_config_free(c);
        return 1;
    }
    if (special == 2) {
        fprintf(out, "tasamd %s\n", TASAMD_VERSION);
        srv_config_free(c);
        return 1;
    }
    c->argv = calloc((size_t)argc + 1, sizeof *c->argv);
    if (!c->argv) {
        srv_errf(err, errlen, "out of memory");
        goto err;
    }
    c->argc = argc;
    for (int i = 0; i < argc; i++)
        if (!(c->argv[i] = strdup(argv[i]))) {
            srv_errf(err, errlen, "out of memory");
            goto err;
        }
    srv_log_set_level((int)c->num[SRV_OPT_LOG_LEVEL]);
    return 0;
err:
    srv_config_free(c);
    return -1;
}

int srv_config_reload(srv_config *c, char *err, size_t errlen)
{
    srv_config n;
    memset(&n, 0, sizeof n);
    if (build(&n, c->argc, c->argv, NULL, err, errlen) != 0) {
        free_values(&n);
        return -1;
    }
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < SRV_OPT_COUNT; i++) {
        if (strcmp(n.str[i], c->str[i]) == 0)
            continue;
        if (!opt_table[i].mutable_) {
            srv_log_warn("config reload: %s changed but needs a restart; keeping the old value",
                         opt_table[i].name);
            continue;
        }
        srv_log_info("config reload: %s = %s", opt_table[i].name,
                     opt_table[i].secret == SRV_SECRET ? "<set>" : n.str[i]);
        char *t = c->str[i];
        c->str[i] = n.str[i];
        n.str[i] = t;
        c->src[i] = n.src[i];
        __atomic_store_n(&c->num[i], n.num[i], __ATOMIC_RELAXED);
    }
    char *t = c->admin_token;
    c->admin_token = n.admin_token;
    n.admin_token = t;
    t = c->api_token;
    c->api_token = n.api_token;
    n.api_token = t;
    pthread_mutex_unlock(&c->mu);
    srv_log_set_level((int)srv_config_int(c, SRV_OPT_LOG_LEVEL));
    free_values(&n);
    return 0;
}

void srv_config_free(srv_config *c)
{
    if (!c)
        return;
    free_values(c);
    if (c->argv) {
        for (int i = 0; i < c->argc; i++)
            free(c->argv[i]);
        free(c->argv);
    }
    c->argv = NULL;
    c->argc = 0;
    pthread_mutex_destroy(&c->mu);
}

int64_t srv_config_int(const srv_config *c, srv_opt_id id)
{
    return __atomic_load_n(&c->num[id], __ATOMIC_RELAXED);
}

const char *srv_config_str(const srv_config *c, srv_opt_id id)
{
    return c->str[id] ? c->str[id] : "";
}

/* Contract: under c->mu; constant-time comparison of token with want. */
static int token_equal(const char *want, const char *token)
{
    size_t a = strlen(want), b = strlen(token);
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < a; i++)
        diff |= (unsigned char)(want[i] ^ token[i < b ? i : 0]);
    return diff == 0 && b > 0;
}

int srv_config_check_token(srv_config *c, const char *token, int *configured)
{
    int ok = 0;
    pthread_mutex_lock(&c->mu);
    if (configured)
        *configured = c->admin_token != NULL;
    if (c->admin_token && token)
        ok = token_equal(c->admin_token, token);
    pthread_mutex_unlock(&c->mu);
    return ok;
}

int srv_config_check_api_token(srv_config *c, const char *token, int *configured)
{
    int ok = 0;
    pthread_mutex_lock(&c->mu);
    if (configured)
        *configured = c->api_token != NULL;
    if (c->api_token && token)
        ok = token_equal(c->api_token, token);
    pthread_mutex_unlock(&c->mu);
    return ok;
}

json_t *srv_config_to_json(srv_config *c, int admin)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < SRV_OPT_COUNT; i++) {
        const srv_opt_def *d = &opt_table[i];
        json_t *v;
        if (d->secret == SRV_SECRET || (d->secret == SRV_PRIVATE && !admin && c->str[i][0]))
            v = c->str[i][0] ? json_string(d->secret == SRV_SECRET ? "<set>" : "<hidden>")
                             : json_null();
        else if (d->type == SRV_T_STRING || d->type == SRV_T_ENUM)
            v = json_string(c->str[i]);
        else
            v = json_integer((json_int_t)srv_config_int(c, (srv_opt_id)i));
        json_object_set_new(o, d->name, v);
    }
    pthread_mutex_unlock(&c->mu);
    return o;
}

void srv_config_usage(FILE *out, const char *prog)
{
    char env[96];
    fprintf(out,
            "usage: %s --checkpoint FILE [--name value | --name=value]...\n"
            "tasamd %s: the Segment Anything HTTP daemon.\n\n"
            "Every option can also be set in the --config file (`name = value`) or the\n"
            "environment (TASAMD_NAME); flags win over the environment, which wins over\n"
            "the file. Options marked [reload] change on SIGHUP.\n\n",
            prog, TASAMD_VERSION);
    for (int i = 0; i < SRV_OPT_COUNT; i++) {
        const srv_opt_def *d = &opt_table[i];
        env_name(d->name, env, sizeof env);
        fprintf(out, "  --%-27s %s%s\n", d->name, d->help, d->mutable_ ? " [reload]" : "");
        if (d->def[0])
            fprintf(out, "  %-29s default %s; env %s\n", "", d->def, env);
        else
            fprintf(out, "  %-29s env %s\n", "", env);
    }
    fprintf(out, "  --help                        this text\n"
                 "  --version                     print the version\n");
}
