/*
 * tests/test_server.c: the real tasamd on a loopback port: startup and config errors, the
 * fixture prompt cases against the goldens, outputs, the cache, every error
 * status from a real bad request, the metrics grammar, a restart.
 */
#include "tests/tserver.h"

static void test_config_errors(void)
{
    char cmd[PATH_MAX + 256], logp[PATH_MAX];
    static const char *const bad[] = {
        "--checkpoint x --queue-depth 0",
        "queue-depth",
        "--checkpoint x --device gpu",
        "device",
        "--checkpoint x --bogus 1",
        "bogus",
        "--queue-depth 4",
        "checkpoint",
        "--checkpoint x --max-body-bytes 12Q",
        "max-body-bytes",
        "--checkpoint x --listen nowhere",
        "listen",
        "--checkpoint x --device cpu --precision fp16",
        "precision",
        "--checkpoint x --text-model /tmp",
        "text-model",
        "--checkpoint x --adapter-slots -1",
        "adapter-slots",
        "--checkpoint x --adapter-merge maybe",
        "adapter-merge",
        "--checkpoint x --instance 'a b'",
        "instance",
        "--checkpoint x --instance $(printf 'r%.0s' $(seq 101))",
        "instance",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i += 2) {
        tmp_name(logp, sizeof logp, ".log");
        snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>&1", g_tasamd, bad[i], logp);
        int st = system(cmd);
        T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2, "`tasamd %s` exited %d, want 2", bad[i],
                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        size_t n;
        char *s = (char *)t_read_file(logp, &n);
        T_CHECK(s && memmem(s, n, bad[i + 1], strlen(bad[i + 1])),
                "`tasamd %s` error does not name %s", bad[i], bad[i + 1]);
        free(s);
    }
    snprintf(cmd, sizeof cmd, "'%s' --help >'%s' 2>&1", g_tasamd, logp);
    int st = system(cmd);
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "--help exit %d", WEXITSTATUS(st));
    size_t n;
    char *s = (char *)t_read_file(logp, &n);
    T_CHECK(s && memmem(s, n, "--max-body-bytes", 16) && memmem(s, n, "TASAMD_QUEUE_DEPTH", 18),
            "--help lacks options");
    free(s);
}

static void test_start(void)
{
    char state[PATH_MAX];
    T_NEED_FIXTURES();
    snprintf(state, sizeof state, "%s/state-main", g_tmp);
    static const char *const args[] = {"--max-batch", "4", "--batch-wait-ms", "20", NULL};
    int rc = daemon_start(&g_d, state, 0, args);
    T_REQUIRE(rc == 0, "daemon did not start listening");
    /* /healthz answers at once, whatever the model is doing. */
    T_CHECK(http(g_d.port, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL) == 200, "healthz");
    double t0 = now_s();
    int ready = 0;
    while (now_s() - t0 < 60 && !ready) {
        ready = http(g_d.port, "GET", "/readyz", NULL, NULL, NULL, NULL, NULL) == 200;
        if (!ready)
            usleep(50000);
    }
    if (!ready)
        show_log(&g_d);
    T_REQUIRE(ready, "readyz never became 200");
    g_up = 1;
    int st;
    json_t *info = http_json(g_d.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && info, "info %d", st);
    T_CHECK(json_is_true(json_object_get(info, "ready")), "info.ready");
    T_CHECK(json_integer_value(json_object_get(json_object_get(info, "config"), "queue-depth")) ==
                64,
            "info.config.queue-depth");
    T_CHECK(json_is_string(json_object_get(json_object_get(info, "model"), "model_id")),
            "info.model.model_id");
    json_decref(info);
}

static void test_goldens(void)
{
    size_t n;
    NEED_DAEMON();
    if (!g_golden)
        T_SKIP("golden_tiny.safetensors not readable");
    char *cj = (char *)t_read_file(t_fixture("cases.json"), &n);
    json_t *cases = cj ? json_loadb(cj, n, 0, NULL) : NULL;
    free(cj);
    T_REQUIRE(cases, "cases.json");
    json_t *arr = json_object_get(cases, "cases");
    int first = 1;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *c = json_array_get(arr, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        char path[PATH_MAX];
        int st;
        if (json_object_get(c, "mask_input"))
            continue; /* mask_input is not part of the API yet */
        write_request(path, sizeof path, g_dog_b64, case_request(c));
        json_t *r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
        T_CHECK(st == 200 && r, "case %s: status %d", name, st);
        if (r) {
            int prompts =
                json_object_get(c, "boxes") ? (int)json_array_size(json_object_get(c, "boxes")) : 1;
            int per = json_is_true(json_object_get(c, "multimask_output")) ? 3 : 1;
            T_CHECK(check_masks(r, name, prompts, per), "case %s: masks differ from the goldens",
                    name);
            T_CHECK(!strcmp(json_string_value(json_object_get(r, "image_id")),
                            "bf76876b90e3ebd521f9882b9177ba8f33e80cb7ec09c630f179b122edd125e1"),
                    "image_id");
            T_CHECK(json_integer_value(json_object_get(r, "width")) == 800 &&
                        json_integer_value(json_object_get(r, "height")) == 534,
                    "size");
            const char *cache =
                json_string_value(json_object_get(json_object_get(r, "cache"), "embedding"));
            T_CHECK(cache && !strcmp(cache, first ? "miss" : "hit"), "case %s: cache %s", name,
                    cache ? cache : "?");
            json_t *m0 = json_array_get(json_object_get(r, "masks"), 0);
            T_CHECK(json_is_array(json_object_get(m0, "bbox")) &&
                        json_is_integer(json_object_get(m0, "area")) &&
                        json_is_number(json_object_get(m0, "predicted_iou")) &&
                        json_is_number(json_object_get(m0, "stability_score")),
                    "mask fields");
            T_CHECK(json_is_number(json_object_get(json_object_get(r, "timings_ms"), "total")),
                    "timings");
            first = 0;
        }
        json_decref(r);
        unlink(path);
    }
    json_decref(cases);
}

static void test_multipart_and_outputs(void)
{
    int st;
    NEED_DAEMON();
    ts_extra mp = {
        .form = {{.name = "image", .file = g_dog_path, .filename = "dog.jpg", .type = "image/jpeg"},
                 {.name = "request",
                  .data = "{\"points\":[[400,293.70000000000005,1]],"
                          "\"multimask\":false}",
                  .type = "application/json"}}};
    json_t *r = http_json(g_d.port, "POST", "/v1/segment", NULL, NULL, &mp, &st);
    T_CHECK(st == 200 && r, "multipart status %d", st);
    if (r && g_golden)
        T_CHECK(check_masks(r, "point1_single", 1, 1), "multipart masks differ from the goldens");
    json_decref(r);
    /* multipart without a request part: prompt-free output. */
    ts_extra only = {.form = {{.name = "image", .file = g_dog_path, .filename = "dog.jpg"}}};
    r = http_json(g_d.port, "POST", "/v1/segment", NULL, NULL, &only, &st);
    T_CHECK(st == 200 && r, "multipart image only: %d", st);
    if (r && g_golden)
        T_CHECK(check_masks(r, "no_prompt", 1, 3), "no_prompt via multipart");
    json_decref(r);
    /* png and polygon outputs. */
    char path[PATH_MAX];
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[f,f,i]],s:b,s:s}", "points", 400.0, 293.7, 1, "multimask", 0,
                            "output", "png"));
    r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && r, "png output %d", st);
    const char *png =
        json_string_value(json_object_get(json_array_get(json_object_get(r, "masks"), 0), "png"));
    T_CHECK(png && !strncmp(png, "iVBORw0KGgo", 11), "png output is not a base64 PNG");
    json_decref(r);
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[f,f,i]],s:b,s:s}", "points", 400.0, 293.7, 1, "multimask", 0,
                            "output", "polygon"));
    r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && r, "polygon output %d", st);
    json_t *polys = json_object_get(json_array_get(json_object_get(r, "masks"), 0), "polygons");
    T_CHECK(json_is_array(polys) && json_array_size(polys) >= 1 &&
                json_array_size(json_array_get(polys, 0)) >= 8,
            "polygon output shape");
    json_decref(r);
}

static void test_cache_hit(void)
{
    char path[PATH_MAX], url[128];
    int st;
    NEED_DAEMON();
    char *m0 = get_metrics(g_d.port);
    T_REQUIRE(m0, "metrics");
    double enc0 = metric(m0, "tasam_images_encoded_total");
    double hits0 = metric(m0, "tasam_cache_hits_total{tier=\"memory\"}");
    free(m0);
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:[[i,i,i]]}", "points", 100, 100, 1));
    json_t *r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200, "status %d", st);
    const char *c = json_string_value(json_object_get(json_object_get(r, "cache"), "embedding"));
    T_CHECK(c && !strcmp(c, "hit"), "second request for the image is not a hit");
    json_decref(r);
    char *m1 = get_metrics(g_d.port);
    T_REQUIRE(m1, "metrics");
    T_CHECK(metric(m1, "tasam_images_encoded_total") == enc0, "the encoder ran again (%g -> %g)",
            enc0, metric(m1, "tasam_images_encoded_total"));
    T_CHECK(metric(m1, "tasam_cache_hits_total{tier=\"memory\"}") == hits0 + 1, "hit not counted");
    free(m1);
    /* image_id instead of the image. */
    write_request(path, sizeof path, NULL,
                  json_pack("{s:s,s:[[f,f,f,f]],s:b}", "image_id",
                            "bf76876b90e3ebd521f9882b9177ba8f33e80cb7ec09c630f179b122edd125e1",
                            "boxes", 160.0, 80.1, 560.0, 480.6, "multimask", 0));
    r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && r, "image_id request %d", st);
    if (r && g_golden)
        T_CHECK(check_masks(r, "box", 1, 1), "image_id request masks");
    json_decref(r);
    snprintf(url, sizeof url, "/v1/embeddings/%s",
             "bf76876b90e3ebd521f9882b9177ba8f33e80cb7ec09c630f179b122edd125e1");
    r = http_json(g_d.port, "GET", url, NULL, NULL, NULL, &st);
    T_CHECK(st == 200 && json_integer_value(json_object_get(r, "width")) == 800, "GET embedding %d",
            st);
    T_CHECK(json_integer_value(json_object_get(r, "hits")) >= 1, "hits");
    json_decref(r);
    snprintf(url, sizeof url, "/v1/embeddings/%064d", 0);
    T_CHECK(http(g_d.port, "GET", url, NULL, NULL, NULL, NULL, NULL) == 404, "absent embedding");
    /* POST /v1/embeddings of a cached image: hit, no encode. */
    write_request(path, sizeof path, g_dog_b64, NULL);
    r = http_json(g_d.port, "POST", "/v1/embeddings", "application/json", path, NULL, &st);
    T_CHECK(st == 200 && r, "POST embeddings %d", st);
    c = json_string_value(json_object_get(json_object_get(r, "cache"), "embedding"));
    T_CHECK(c && !strcmp(c, "hit"), "embeddings hit");
    json_decref(r);
}

#define DOG_SHA "bf76876b90e3ebd521f9882b9177ba8f33e80cb7ec09c630f179b122edd125e1"

/* Expect a 400 naming X-Tasam-Image-Id for this header block. */
static void expect_id_400(const char *route, const char *file, const char *headers,
                          const char *what)
{
    ts_extra x = {.headers = headers};
    expect_error(g_d.port, "POST", route, "application/json", file, &x, 400, "X-Tasam-Image-Id",
                 what);
}

/* X-Tasam-Image-Id is checked against the image (or the body's image_id),
 * and every response names the replica in X-Tasam-Instance: by default
 * HOSTNAME:PORT, the same as /v1/info's instance. */
static void test_image_id_header_and_instance(void)
{
    char path[PATH_MAX], idreq[PATH_MAX];
    int st;
    NEED_DAEMON();
    hc_response r;
    st = http_full(g_d.port, "GET", "/healthz", NULL, NULL, NULL, &r);
    const char *inst = hc_response_header(&r, "X-Tasam-Instance");
    char host[256] = "", want[300];
    gethostname(host, sizeof host);
    for (char *p = host; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("._-", *p))
            *p = '_';
    snprintf(want, sizeof want, "%s:%d", host, g_d.port);
    T_CHECK(st == 200 && inst && !strcmp(inst, want), "instance '%s', want '%s'",
            inst ? inst : "(none)", want);
    hc_response_free(&r);
    json_t *info = http_json(g_d.port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    const char *ii = json_string_value(json_object_get(info, "instance"));
    T_CHECK(ii && !strcmp(ii, want), "/v1/info instance '%s'", ii ? ii : "(none)");
    json_decref(info);
    st = http_full(g_d.port, "GET", "/nope", NULL, NULL, NULL, &r);
    inst = hc_response_header(&r, "X-Tasam-Instance");
    T_CHECK(st == 404 && inst && !strcmp(inst, want), "an error answer names no instance");
    hc_response_free(&r);

    write_request(path, sizeof path, g_dog_b64, NULL);
    write_request(idreq, sizeof idreq, NULL,
                  json_pack("{s:s,s:[[i,i,i]]}", "image_id", DOG_SHA, "points", 400, 294, 1));
    static const ts_extra right = {.headers = "X-Tasam-Image-Id: " DOG_SHA "\r\n"};
    char upper[128];
    snprintf(upper, sizeof upper, "x-tasam-image-id:  %s \r\n", DOG_SHA);
    for (char *p = upper + 19; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    ts_extra up = {.headers = upper};
    T_CHECK(http(g_d.port, "POST", "/v1/embeddings", "application/json", path, &right, NULL,
                 NULL) == 200,
            "embeddings with the right header");
    T_CHECK(http(g_d.port, "POST", "/v1/segment", "application/json", path, &up, NULL, NULL) == 200,
            "segment with the right header in upper case");
    T_CHECK(http(g_d.port, "POST", "/v1/segment", "application/json", idreq, &right, NULL, NULL) ==
                200,
            "segment by image_id with the right header");
#define ZERO_ID "0000000000000000000000000000000000000000000000000000000000000000"
    static const char *const zero = "X-Tasam-Image-Id: " ZERO_ID "\r\n";
    expect_id_400("/v1/embeddings", path, zero, "embeddings: another image's id");
    expect_id_400("/v1/segment", path, zero, "segment: another image's id");
    expect_id_400("/v1/segment", idreq, zero, "segment: header and image_id differ");
    expect_id_400("/v1/segment", path, "X-Tasam-Image-Id: bf76\r\n", "segment: short id");
    expect_id_400("/v1/segment", path, "X-Tasam-Image-Id: \r\n", "segment: empty id");
    expect_id_400("/v1/segment", path,
                  "X-Tasam-Image-Id: " DOG_SHA "\r\nX-Tasam-Image-Id: " DOG_SHA "\r\n",
                  "segment: the header twice");
    /* An unknown image_id with a matching header is still a 404 (the header
     * says nothing the body does not), a mismatch a 400 before any lookup. */
    ts_extra z = {.headers = zero};
    write_request(idreq, sizeof idreq, NULL, json_pack("{s:s}", "image_id", ZERO_ID));
    expect_error(g_d.port, "POST", "/v1/segment", "application/json", idreq, &z, 404, "image_id",
                 "unknown image_id, matching header");
    expect_id_400("/v1/segment", idreq, "X-Tasam-Image-Id: " DOG_SHA "\r\n",
                  "unknown image_id, another header");
    /* Routes without an image ignore it. */
    T_CHECK(http(g_d.port, "GET", "/healthz", NULL, NULL, &z, NULL, NULL) == 200,
            "healthz with the header");
}

static void test_errors(void)
{
    char path[PATH_MAX], img[PATH_MAX];
    size_t n;
    NEED_DAEMON();
    int p = g_d.port;
    const char *J = "application/json";

    expect_error(p, "GET", "/nope", NULL, NULL, NULL, 404, NULL, "unknown path");
    expect_error(p, "GET", "/v1/segment", NULL, NULL, NULL, 405, NULL, "GET segment");
    expect_error(p, "DELETE", "/healthz", NULL, NULL, NULL, 405, NULL, "DELETE healthz");
    expect_error(p, "GET", "/v1/embeddings/xyz", NULL, NULL, NULL, 400, "id", "bad id");

    /* malformed JSON, unknown field, wrong types */
    tmp_name(path, sizeof path, ".json");
    write_file(path, "{\"image\": ", 10);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "", "malformed JSON");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:i}", "pointz", 1));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "pointz", "unknown field");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "multimask", "yes"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "multimask", "multimask type");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "output", "jpeg"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "output", "output enum");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:[[i,i,i]]}", "points", 900, 10, 1));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "points[0]", "point out of range");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:[[i,i,i]]}", "points", 10, 10, 2));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "points[0]", "bad label");
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[i,i,i,i]]}", "boxes", 50, 10, 40, 20));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "boxes[0]", "x0 > x1");
    write_request(path, sizeof path, g_dog_b64,
                  json_pack("{s:[[i,i,i,i],[i,i,i,i]],s:[[i,i,i]]}", "boxes", 1, 1, 5, 5, 2, 2, 6,
                            6, "points", 3, 3, 1));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "points", "points with 2 boxes");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "mask_input_id", "abc"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "mask_input_id", "mask_input_id");
    write_request(path, sizeof path, NULL, NULL);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "image", "no image");
    write_request(path, sizeof path, "AAAA*AAA", NULL);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "image", "bad base64");
    write_request(path, sizeof path, NULL, json_pack("{s:s}", "image_id", "0123"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "image_id", "short image_id");
    {
        char id[65];
        memset(id, 'a', 64);
        id[64] = 0;
        write_request(path, sizeof path, NULL, json_pack("{s:s}", "image_id", id));
        expect_error(p, "POST", "/v1/segment", J, path, NULL, 404, "image_id", "unknown image_id");
    }
    /* task: validated, then 501 */
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "task", "segment the dog"));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 501, "task", "task");
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "task", ""));
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "task", "empty task");
    {
        char *big = malloc(1100);
        memset(big, 'x', 1099);
        big[1099] = 0;
        write_request(path, sizeof path, g_dog_b64, json_pack("{s:s}", "task", big));
        free(big);
        expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "task", "long task");
    }
    /* wrong content type */
    write_request(path, sizeof path, g_dog_b64, NULL);
    expect_error(p, "POST", "/v1/segment", "text/plain", path, NULL, 415, NULL, "text/plain");

    /* truncated JPEG -> 400; not an image -> 415 */
    uint8_t *jpg = t_read_file(g_dog_path, &n);
    T_REQUIRE(jpg, "dog.jpg");
    char *b64 = srv_base64_encode(jpg, n / 3);
    write_request(path, sizeof path, b64, NULL);
    free(b64);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 400, "image", "truncated JPEG");
    b64 = srv_base64_encode((const uint8_t *)"GIF89a not really", 17);
    write_request(path, sizeof path, b64, NULL);
    free(b64);
    expect_error(p, "POST", "/v1/segment", J, path, NULL, 415, "image", "GIF");
    free(jpg);

    /* PNG bomb: 20000 x 20000 grey (400 Mpx), tiny file */
    {
        int w = 20000, h = 20000;
        uint8_t *pix = calloc((size_t)w, 1), *png = NULL;
        size_t plen = 0;
        /* encode only one row's worth then lie about nothing: a real full
         * image compresses to ~400 KB, build it for real */
        free(pix);
        pix = calloc((size_t)w * h, 1);
        if (pix && eng_png_encode(pix, w, h, 1, &png, &plen) == 0) {
            tmp_name(img, sizeof img, ".png");
            write_file(img, png, plen);
            ts_extra bomb = {.form = {{.name = "image", .file = img, .filename = "bomb.png"}}};
            expect_error(p, "POST", "/v1/segment", NULL, NULL, &bomb, 413, "image", "PNG bomb");
        } else {
            T_CHECK(0, "could not build the PNG bomb");
        }
        free(pix);
        free(png);
    }
    /* 2 GB Content-Length, nothing sent after the headers */
    const char *big = "POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 2147483648\r\n\r\n";
    T_CHECK(raw_status(p, big, strlen(big)) == 413, "2 GB Content-Length is not 413");
    /* a body over the limit sent chunked (no Content-Length) */
    {
        char *chunk = malloc(40u << 20);
        memset(chunk, 'A', 40u << 20);
        tmp_name(img, sizeof img, ".bin");
        write_file(img, chunk, 40u << 20);
        free(chunk);
        ts_extra ch = {.chunked = 1};
        int st = http(p, "POST", "/v1/segment", J, img, &ch, NULL, NULL);
        T_CHECK(st == 413 || st == 0, "chunked 40 MB body: status %d", st);
        unlink(img);
    }
    /* the daemon is still fine */
    T_CHECK(http(p, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL) == 200,
            "healthz after errors");
}

static void test_metrics_grammar(void)
{
    NEED_DAEMON();
    char *m = get_metrics(g_d.port);
    T_REQUIRE(m, "metrics");
    int lines = 0, bad = 0;
    for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
        lines++;
        if (line[0] == '#') {
            char name[128], kind[32];
            if (!strncmp(line, "# HELP ", 7))
                continue;
            if (sscanf(line, "# TYPE %127s %31s", name, kind) != 2 ||
                (strcmp(kind, "counter") && strcmp(kind, "gauge") && strcmp(kind, "histogram"))) {
                fprintf(stderr, "  bad comment: %s\n", line);
                bad++;
            }
            continue;
        }
        /* name{labels} value */
        const char *s = line;
        if (!(*s == '_' || *s == ':' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z'))) {
            bad++;
            fprintf(stderr, "  bad name: %s\n", line);
            continue;
        }
        while (*s == '_' || *s == ':' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
               (*s >= '0' && *s <= '9'))
            s++;
        if (*s == '{') {
            s++;
            while (*s && *s != '}') {
                while ((*s >= 'a' && *s <= 'z') || *s == '_')
                    s++;
                if (*s++ != '=' || *s++ != '"') {
                    bad++;
                    break;
                }
                while (*s && *s != '"')
                    s++;
                if (*s++ != '"')
                    break;
                if (*s == ',')
                    s++;
            }
            if (*s != '}') {
                fprintf(stderr, "  bad labels: %s\n", line);
                bad++;
                continue;
            }
            s++;
        }
        char *end;
        if (*s++ != ' ') {
            fprintf(stderr, "  no value: %s\n", line);
            bad++;
            continue;
        }
        strtod(s, &end);
        if (end == s || *end) {
            fprintf(stderr, "  bad value: %s\n", line);
            bad++;
        }
    }
    T_CHECK(bad == 0, "%d bad lines of %d", bad, lines);
    T_CHECK(lines > 50, "only %d lines", lines);
    free(m);
    m = get_metrics(g_d.port);
    T_CHECK(m && strstr(m, "tasam_requests_total{route=\"segment\",code=\"200\"}") &&
                strstr(m, "tasam_request_duration_seconds_bucket{route=\"segment\",le=\"+Inf\"}") &&
                strstr(m, "tasam_batch_size_count") && strstr(m, "tasam_queue_depth") &&
                strstr(m, "tasam_memory_bytes{kind=\"used\"}"),
            "expected series missing");
    free(m);
}

static void test_restart_keeps_cache(void)
{
    int st;
    NEED_DAEMON();
    int rc = daemon_stop(&g_d);
    g_up = 0;
    T_CHECK(rc == 0, "SIGTERM exit status %d", rc);
    T_CHECK(log_contains(&g_d, "shutdown: drained"), "no drain log line");
    static const char *const named[] = {"--instance", "replica-7", NULL};
    rc = daemon_start(&g_d, g_d.state, 1, named);
    if (rc != 0)
        show_log(&g_d);
    T_REQUIRE(rc == 0, "restart failed");
    g_up = 1;
    hc_response hr;
    st = http_full(g_d.port, "GET", "/readyz", NULL, NULL, NULL, &hr);
    const char *inst = hc_response_header(&hr, "X-Tasam-Instance");
    T_CHECK(st == 200 && inst && !strcmp(inst, "replica-7"), "--instance: '%s'",
            inst ? inst : "(none)");
    hc_response_free(&hr);
    char path[PATH_MAX];
    write_request(
        path, sizeof path, g_dog_b64,
        json_pack("{s:[[f,f,i]],s:b}", "points", 400.0, 293.70000000000005, 1, "multimask", 0));
    json_t *r = http_json(g_d.port, "POST", "/v1/segment", "application/json", path, NULL, &st);
    T_CHECK(st == 200, "status %d", st);
    json_t *c = json_object_get(r, "cache");
    T_CHECK(!strcmp(json_string_value(json_object_get(c, "embedding")) ?: "", "hit") &&
                !strcmp(json_string_value(json_object_get(c, "tier")) ?: "", "disk"),
            "after a restart the embedding is not a disk hit");
    if (r && g_golden)
        T_CHECK(check_masks(r, "point1_single", 1, 1), "masks from the disk cache");
    json_decref(r);
    char *m = get_metrics(g_d.port);
    T_CHECK(m && metric(m, "tasam_images_encoded_total") == 0, "encoder ran after restart");
    free(m);
}

static void test_stop_main(void)
{
    if (!g_d.pid)
        T_SKIP("no daemon");
    T_CHECK(daemon_stop(&g_d) == 0, "SIGTERM exit status");
    g_up = 0;
}

static void test_systemd_unit(void)
{
    if (system("command -v systemd-analyze >/dev/null 2>&1") != 0)
        T_SKIP("systemd-analyze not installed");
    /* verify needs ExecStart to exist: point a copy at the built binary. */
    char unit[PATH_MAX], cmd[3 * PATH_MAX];
    snprintf(unit, sizeof unit, "%s/tasamd.service", g_tmp);
    snprintf(cmd, sizeof cmd,
             "sed 's#/usr/local/bin/tasamd#%s#' systemd/tasamd.service > '%s' && "
             "systemd-analyze verify '%s'",
             g_tasamd, unit, unit);
    T_CHECK(system(cmd) == 0, "systemd-analyze verify reports problems with tasamd.service");
}

int main(int argc, char **argv)
{
    (void)argc;
    if (ts_init(argv[0])) {
        printf("test_server: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    T_RUN(test_config_errors);
    T_RUN(test_systemd_unit);
    T_RUN(test_start);
    T_RUN(test_goldens);
    T_RUN(test_multipart_and_outputs);
    T_RUN(test_cache_hit);
    T_RUN(test_image_id_header_and_instance);
    T_RUN(test_errors);
    T_RUN(test_metrics_grammar);
    T_RUN(test_restart_keeps_cache);
    T_RUN(test_stop_main);
    ts_cleanup();
    return t_summary("test_server");
}
