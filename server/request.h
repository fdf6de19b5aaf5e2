/*
 * server/request.h: parsing and validating the bodies of POST /v1/segment
 * and POST /v1/embeddings (JSON, or multipart/form-data with an `image` file
 * part and a `request` JSON part), and the JSON error shape every route
 * answers with.
 *
 * Validation happens in two steps: srv_request_parse() checks everything
 * that does not need the image (fields, types, counts, box ordering, task
 * text); srv_request_prompts() checks coordinates against the image size
 * once it is known and builds the engine prompts.
 */
#ifndef TASAM_SERVER_REQUEST_H
#define TASAM_SERVER_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "engine/amg.h"
#include "engine/image.h"
#include "engine/sam.h"
#include "server/error.h"

/* Mask output encodings. */
typedef enum srv_output { SRV_OUT_RLE = 0, SRV_OUT_PNG, SRV_OUT_POLYGON } srv_output;

/* What the request (and its worker job) is for. */
typedef enum srv_kind {
    SRV_KIND_SEGMENT = 0,  /* POST /v1/segment */
    SRV_KIND_EMBED,        /* POST /v1/embeddings */
    SRV_KIND_ADAPTER,      /* POST /v1/adapters: find or generate the adapter of `task` */
    SRV_KIND_ADAPTER_FLUSH /* DELETE /admin/adapters: empty both adapter tiers (no body) */
} srv_kind;

struct srv_everything;

/* Per-request limits and defaults (from the config). */
typedef struct srv_limits {
    int max_points;                          /* points per prompt */
    int max_prompts;                         /* boxes per request */
    const struct srv_everything *everything; /* everything mode's defaults, or NULL: the
                                                reference's */
} srv_limits;

/* A parsed request. Free with srv_request_free(). */
typedef struct srv_request {
    srv_kind kind;     /* segment or embeddings */
    uint8_t *image;    /* image bytes (owned when image_owned) or NULL */
    size_t image_len;  /* bytes at image */
    int image_owned;   /* 1: image is malloc'd here (base64); 0: borrowed from the body */
    char image_id[65]; /* lowercase sha256 hex when given instead of an image, else "" */
    int n_points;      /* points (shared by the single prompt) */
    float *points;     /* [n_points, 2] x, y (malloc'd) */
    int *labels;       /* [n_points] 0/1 (malloc'd) */
    int n_boxes;       /* boxes, one prompt each */
    float *boxes;      /* [n_boxes, 4] x0, y0, x1, y1 (malloc'd) */
    int multimask;     /* 1: three masks per prompt (default), 0: one */
    srv_output output; /* mask encoding */
    int has_task;      /* a valid `task` was given */
    char *task;        /* the task as given, NUL-terminated (malloc'd), or NULL */
    size_t task_len;   /* bytes at task (it passed ad_normalize_task) */
    char *task_norm;   /* ad_normalize_task(task), computed once here (malloc'd), or NULL */
    int everything;    /* 1: everything mode (`everything`, or a task without prompts) */
    struct srv_everything *amg; /* its parameters (malloc'd), when everything */
} srv_request;

/* The engine prompts of a request, built against an image size. */
typedef struct srv_prompts {
    int n;             /* prompts (>= 1) */
    eng_sam_prompt *p; /* [n] (malloc'd); point arrays borrowed from the request */
} srv_prompts;

/*
 * Parse a JSON request body. `image_part` (may be NULL) is the bytes of a
 * multipart `image` part, borrowed: then the JSON must not carry `image` or
 * `image_id`; `task_part` likewise a multipart `task` part (then the JSON
 * must not carry `task`). A NULL/empty json means "{}" (multipart without a
 * request part). Task text is checked with ad_normalize_task (empty,
 * whitespace only, over 1000 bytes, invalid UTF-8, NUL or control
 * characters: 400 naming `task`); a string that jansson refuses (a lone
 * surrogate escape, raw invalid UTF-8) is also answered 400 naming the
 * member that holds it. Returns 0, or -1 with *e set (400 for malformed
 * input, 413 never: the body limit is enforced earlier).
 */
int srv_request_parse_json(const char *json, size_t len, srv_kind kind, const uint8_t *image_part,
                           size_t image_part_len, const uint8_t *task_part, size_t task_part_len,
                           const srv_limits *lim, srv_request *out, srv_error *e);

/*
 * Parse a body by its Content-Type: application/json, or multipart/form-data
 * with parts `image` (the file; required for segment and embeddings),
 * `request` (optional JSON) and `task` (optional task text, segment and
 * adapters only). Unknown content types are 415. The request borrows from
 * `body`.
 */
int srv_request_parse(const char *content_type, const uint8_t *body, size_t len, srv_kind kind,
                      const srv_limits *lim, srv_request *out, srv_error *e);

/* Check every coordinate against a w x h image and build the prompts:
 * no boxes -> one prompt (the points, or none at all: prompt-free);
 * k boxes -> k prompts (points allowed only with one box). */
int srv_request_prompts(const srv_request *r, int w, int h, srv_prompts *out, srv_error *e);

void srv_prompts_free(srv_prompts *p);

/*
 * The daemon's one image decode: JPEG or PNG bytes (at most max_pixels
 * pixels) decoded as Pillow's convert("RGB") and resized for the encoder
 * (long side 1024, Pillow's antialiased bilinear). *rgb gets the malloc'd
 * [info->input_h, info->input_w, 3] pixels (rgb NULL: no resize), *info all
 * four sizes; `keep` (may be NULL) gets the decoded image itself (everything
 * mode's crop layers encode crops of it). Returns 0, or -1 with *e naming
 * `image`: 413 over max_pixels, 415 not a JPEG or PNG we decode, 503 out of
 * memory, 400 corrupt or truncated.
 */
int srv_image_prepare(const uint8_t *bytes, size_t len, int64_t max_pixels, uint8_t **rgb,
                      eng_sam_imginfo *info, eng_image *keep, srv_error *e);
void srv_request_free(srv_request *r);

/* 1 when s[0..len) is valid UTF-8 without NUL bytes. */
int srv_utf8_valid(const char *s, size_t len);

/* 1 when s is 64 hex digits; writes the lowercase form to out (65 bytes). */
int srv_sha_hex_valid(const char *s, char out[65]);

/* ---- multipart/form-data ---- */

#define SRV_MULTIPART_MAX_PARTS 8

/* One part, pointing into the body. */
typedef struct srv_part {
    char name[64];       /* form field name */
    char filename[128];  /* filename parameter, "" when absent */
    const uint8_t *data; /* content (borrowed) */
    size_t len;          /* content bytes */
} srv_part;

/*
 * Split a multipart/form-data body. `content_type` is the header value
 * (its boundary parameter is used). At most `max` parts. Returns the number
 * of parts, or -1 with *e set (400 naming what is malformed).
 */
int srv_multipart_parse(const char *content_type, const uint8_t *body, size_t len, srv_part *parts,
                        int max, srv_error *e);

#endif
