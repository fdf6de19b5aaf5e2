/*
 * server/config.h: tasamd's configuration, one table of options.
 *
 * The same table (name, type, default, bounds, runtime mutability, help)
 * drives the command line (`--name value`, `--name=value`, `--help`), the
 * config file (`--config FILE`, lines `name = value`, `#` comments), the
 * environment (TASAMD_NAME with '-' as '_') and GET /v1/info. Precedence,
 * lowest first: built-in default, config file, environment, command line.
 *
 * Values are read from any thread. Numbers are loaded atomically; strings
 * other than the admin token never change after srv_config_load(). SIGHUP
 * calls srv_config_reload(), which re-reads the file and the environment and
 * applies only the options marked runtime-mutable (others are reported as
 * needing a restart).
 */
#ifndef TASAM_SERVER_CONFIG_H
#define TASAM_SERVER_CONFIG_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* Option ids: indexes into the table in config.c (same order). */
typedef enum srv_opt_id {
    SRV_OPT_CONFIG = 0,
    SRV_OPT_CHECKPOINT,
    SRV_OPT_LISTEN,
    SRV_OPT_PORT_FILE,
    SRV_OPT_WEB,
    SRV_OPT_INSTANCE,
    SRV_OPT_STATE_DIR,
    SRV_OPT_DEVICE,
    SRV_OPT_PRECISION,
    SRV_OPT_CPU_THREADS,
    SRV_OPT_CPU_SPIN_US,
    SRV_OPT_ADMIN_TOKEN,
    SRV_OPT_ADMIN_TOKEN_FILE,
    SRV_OPT_API_TOKEN,
    SRV_OPT_API_TOKEN_FILE,
    SRV_OPT_MAX_BODY_BYTES,
    SRV_OPT_MAX_INFLIGHT_BODY_BYTES,
    SRV_OPT_MAX_HEADER_BYTES,
    SRV_OPT_MAX_PIXELS,
    SRV_OPT_MAX_POINTS,
    SRV_OPT_MAX_PROMPTS,
    SRV_OPT_MAX_MASK_BYTES,
    SRV_OPT_MAX_RESPONSE_BYTES,
    SRV_OPT_EVERYTHING_DEFAULTS,
    SRV_OPT_QUEUE_DEPTH,
    SRV_OPT_RATE_LIMIT,
    SRV_OPT_RATE_BURST,
    SRV_OPT_MAX_BATCH,
    SRV_OPT_BATCH_WAIT_MS,
    SRV_OPT_CACHE_BYTES,
    SRV_OPT_CACHE_CORRUPT_KEEP,
    SRV_OPT_GPU_CACHE_SLOTS,
    SRV_OPT_HYPERNET,
    SRV_OPT_TEXT_MODEL,
    SRV_OPT_ADAPTER_SLOTS,
    SRV_OPT_ADAPTER_CACHE_BYTES,
    SRV_OPT_ADAPTER_MERGE,
    SRV_OPT_HYPERNET_KEEP,
    SRV_OPT_HYPERNET_POLL_MS,
    SRV_OPT_TRAIN_DATA_DIR,
    SRV_OPT_TRAINER,
    SRV_OPT_TRAIN_QUEUE_DEPTH,
    SRV_OPT_TRAIN_THREADS,
    SRV_OPT_TRAIN_NICE,
    SRV_OPT_TRAIN_DEVICE,
    SRV_OPT_TRAIN_CUDA_DEVICES,
    SRV_OPT_TRAIN_STOP_TIMEOUT_MS,
    SRV_OPT_TRAIN_STALL_TIMEOUT_MS,
    SRV_OPT_TRAIN_LOG_BYTES,
    SRV_OPT_TRAIN_KEEP_JOBS,
    SRV_OPT_REQUEST_TIMEOUT_MS,
    SRV_OPT_SHUTDOWN_TIMEOUT_MS,
    SRV_OPT_THREADS,
    SRV_OPT_MAX_CONNECTIONS,
    SRV_OPT_MAX_CONNECTIONS_PER_CLIENT,
    SRV_OPT_HEADER_TIMEOUT_MS,
    SRV_OPT_BODY_TIMEOUT_MS,
    SRV_OPT_IDLE_TIMEOUT_MS,
    SRV_OPT_LOG_LEVEL,
    SRV_OPT_COUNT
} srv_opt_id;

/* Value kinds. */
typedef enum srv_opt_type {
    SRV_T_STRING = 0, /* free text */
    SRV_T_INT,        /* decimal integer within [min, max] */
    SRV_T_COUNT,      /* integer with optional k/M/G suffix (powers of 1000) */
    SRV_T_BYTES,      /* integer with optional K/M/G/T or KiB/MiB/GiB/TiB suffix (powers of 1024) */
    SRV_T_ENUM        /* one of `choices`; the number is the choice's index */
} srv_opt_type;

/* Where a value came from, lowest precedence first. */
typedef enum srv_opt_source {
    SRV_SRC_DEFAULT = 0,
    SRV_SRC_FILE,
    SRV_SRC_ENV,
    SRV_SRC_FLAG
} srv_opt_source;

/* One row of the option table. */
typedef struct srv_opt_def {
    const char *name;           /* "max-body-bytes": flag, file key, env TASAMD_MAX_BODY_BYTES */
    srv_opt_type type;          /* how the text is parsed */
    const char *def;            /* default, as text */
    int64_t min, max;           /* inclusive bounds for numeric types */
    const char *const *choices; /* NULL-terminated, for SRV_T_ENUM */
    int mutable_;               /* 1: SIGHUP may change it at run time */
    int secret;                 /* SRV_SECRET: never printed or returned by /v1/info;
                                   SRV_PRIVATE: in /v1/info for the admin only (paths) */
    const char *help;           /* one line for --help */
} srv_opt_def;

/* srv_opt_def.secret values. */
enum { SRV_PUBLIC = 0, SRV_SECRET = 1, SRV_PRIVATE = 2 };

/* device choices, in order. */
enum { SRV_DEVICE_AUTO = 0, SRV_DEVICE_CPU, SRV_DEVICE_CUDA };
/* web choices, in order. */
enum { SRV_WEB_OFF = 0, SRV_WEB_ON };
/* train-device choices, in order. */
enum { SRV_TRAIN_DEVICE_CPU = 0, SRV_TRAIN_DEVICE_CUDA, SRV_TRAIN_DEVICE_AUTO };
/* adapter-merge choices, in order. */
enum { SRV_MERGE_OFF = 0, SRV_MERGE_ON };
/* precision choices, in order. */
enum { SRV_PREC_AUTO = 0, SRV_PREC_FP32, SRV_PREC_FP16, SRV_PREC_BF16 };

/* The loaded configuration. Create with srv_config_load(), free with
 * srv_config_free(). */
typedef struct srv_config {
    int64_t num[SRV_OPT_COUNT];        /* numeric value (enum index); atomic access */
    char *str[SRV_OPT_COUNT];          /* text value as given (owned) */
    srv_opt_source src[SRV_OPT_COUNT]; /* where each value came from */
    char *admin_token;  /* effective token (admin-token or the file's first line); guarded by mu */
    char *api_token;    /* effective token for /v1 routes (api-token or its file); guarded by mu */
    pthread_mutex_t mu; /* guards str[] of mutable options and admin_token during reload */
    int argc;           /* saved command line, replayed by reload */
    char **argv;        /* copy of the command line (owned) */
} srv_config;

/* The option table and its size. */
const srv_opt_def *srv_config_table(size_t *n);

/*
 * Build the configuration from defaults, the --config file, the environment
 * (envp-style `environ`) and argv. Returns 0 on success, 1 when --help or
 * --version was handled (text already printed to `out`), or a negative code
 * with a message naming the option in err (the caller exits with status 2).
 * On failure the config is freed.
 */
int srv_config_load(srv_config *c, int argc, char **argv, FILE *out, char *err, size_t errlen);

/*
 * Re-read the config file and environment (and replay the saved flags) and
 * apply the runtime-mutable options. Logs each change. Returns 0, or a
 * negative code with err set (nothing is changed then).
 */
int srv_config_reload(srv_config *c, char *err, size_t errlen);

/* Release everything. Accepts a zeroed config. */
void srv_config_free(srv_config *c);

/* Numeric value (atomic load); for SRV_T_ENUM the choice index. */
int64_t srv_config_int(const srv_config *c, srv_opt_id id);
/* Text value of an option that never changes at run time (borrowed). */
const char *srv_config_str(const srv_config *c, srv_opt_id id);

/* 1 when an admin token is configured and `token` equals it (constant time),
 * 0 otherwise. `configured` (may be NULL) gets 1 when any token is set. */
int srv_config_check_token(srv_config *c, const char *token, int *configured);

/* The same for the API token (api-token or api-token-file) of the /v1
 * routes. */
int srv_config_check_api_token(srv_config *c, const char *token, int *configured);

/* The configuration as a JSON object {name: value} (numbers as numbers,
 * secrets as "<set>" or null; SRV_PRIVATE options, the paths, only when
 * `admin`, else "<hidden>"). New reference. */
json_t *srv_config_to_json(srv_config *c, int admin);

/* Longest instance name (X-Tasam-Instance). */
#define SRV_INSTANCE_MAX 100

/* 1 when s is a usable instance name: 1..SRV_INSTANCE_MAX characters of
 * letters, digits and . _ : @ / - (safe in a header, a log line and a JSON
 * key); "" counts when empty_ok. */
int srv_config_instance_valid(const char *s, int empty_ok);

/* Print --help generated from the table. */
void srv_config_usage(FILE *out, const char *prog);

/* Parse one value for option `id` into *num / a canonical string. Exposed
 * for tests. Returns 0 or a negative code with err naming the option. */
int srv_config_parse_value(srv_opt_id id, const char *text, int64_t *num, char *err, size_t errlen);

#endif
