/*
 * tests/fuzz/fuzz_request.c: libFuzzer target for the HTTP request parsers
 * of POST /v1/segment, /v1/embeddings and /v1/adapters: JSON bodies,
 * multipart/form-data bodies and the prompts built from a parsed request.
 *
 * Input layout: byte 0 picks the route kind and the content type (JSON, or
 * multipart with a boundary taken from the next bytes); bytes 1-4 give an
 * image size for srv_request_prompts; the rest is the body. Whatever the
 * parsers accept must satisfy the documented invariants (counts within the
 * limits, finite coordinates, labels 0/1, boxes ordered, prompts inside the
 * image); an error must carry an HTTP error status and a message. Violations
 * abort() for libFuzzer; ASan and UBSan catch the rest.
 *
 * tests/fuzz/run.sh links engine/, hypernet/ and adapters/ but not server/,
 * hence the includes.
 */
#include "../../server/base64.c"
#include "../../server/request.c"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

static void fz__error_ok(const srv_error *e)
{
    fz__check(e->status >= 400 && e->status < 600);
    fz__check(e->message[0] != '\0' && memchr(e->message, '\0', sizeof e->message));
    fz__check(memchr(e->field, '\0', sizeof e->field) != NULL);
}

static void fz__request_ok(const srv_request *r, const srv_limits *lim)
{
    fz__check(r->n_points >= 0 && r->n_points <= lim->max_points);
    fz__check(r->n_boxes >= 0 && r->n_boxes <= lim->max_prompts);
    fz__check(!r->n_points || (r->points && r->labels));
    for (int i = 0; i < r->n_points; i++) {
        fz__check(isfinite(r->points[2 * i]) && isfinite(r->points[2 * i + 1]));
        fz__check(r->labels[i] == 0 || r->labels[i] == 1);
    }
    for (int i = 0; i < r->n_boxes; i++) {
        const float *b = r->boxes + 4 * i;
        for (int k = 0; k < 4; k++)
            fz__check(isfinite(b[k]));
        fz__check(b[0] <= b[2] && b[1] <= b[3]);
    }
    fz__check(!r->has_task || (r->task && strlen(r->task) == r->task_len));
    fz__check(!r->image_id[0] || strlen(r->image_id) == 64);
    fz__check(r->output == SRV_OUT_RLE || r->output == SRV_OUT_PNG || r->output == SRV_OUT_POLYGON);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    static const srv_kind kinds[3] = {SRV_KIND_SEGMENT, SRV_KIND_EMBED, SRV_KIND_ADAPTER};
    srv_kind kind = kinds[(data[0] & 3) % 3];
    int multipart = (data[0] >> 2) & 1;
    int w = 1 + (data[1] | (data[2] & 0x0f) << 8), h = 1 + (data[3] | (data[4] & 0x0f) << 8);
    data += 5;
    size -= 5;

    char ctype[160];
    if (multipart) {
        /* the boundary: up to 16 printable bytes from the input */
        size_t bl = 0;
        char bnd[17];
        while (bl < 16 && bl < size && data[bl] > ' ' && data[bl] < 0x7f && data[bl] != ';')
            bnd[bl] = (char)data[bl], bl++;
        bnd[bl] = '\0';
        data += bl;
        size -= bl;
        snprintf(ctype, sizeof ctype, "multipart/form-data; boundary=%s", bnd);
    } else {
        snprintf(ctype, sizeof ctype, "application/json");
    }
    /* the body as the HTTP layer hands it over: its own allocation, so ASan
     * sees every read past the end */
    uint8_t *body = malloc(size ? size : 1);
    if (!body)
        return 0;
    memcpy(body, data, size);

    srv_limits lim = {.max_points = 16, .max_prompts = 8};
    srv_request r;
    srv_error e;
    memset(&e, 0, sizeof e);
    if (srv_request_parse(ctype, body, size, kind, &lim, &r, &e) == 0) {
        fz__request_ok(&r, &lim);
        srv_prompts pr;
        srv_error pe;
        memset(&pe, 0, sizeof pe);
        if (kind == SRV_KIND_SEGMENT && srv_request_prompts(&r, w, h, &pr, &pe) == 0) {
            fz__check(pr.n >= 1 && pr.p);
            fz__check(pr.n == (r.n_boxes ? r.n_boxes : 1));
            for (int i = 0; i < pr.n; i++) {
                const eng_sam_prompt *p = &pr.p[i];
                for (int k = 0; k < p->n_points; k++)
                    fz__check(p->points[2 * k] >= 0 && p->points[2 * k] <= w &&
                              p->points[2 * k + 1] >= 0 && p->points[2 * k + 1] <= h);
                if (p->has_box)
                    fz__check(p->box[0] >= 0 && p->box[2] <= w && p->box[1] >= 0 && p->box[3] <= h);
            }
            srv_prompts_free(&pr);
        } else if (kind == SRV_KIND_SEGMENT) {
            fz__error_ok(&pe);
        }
        srv_request_free(&r);
    } else {
        fz__error_ok(&e);
    }
    free(body);
    return 0;
}
