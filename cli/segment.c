/*
 * cli/segment.c: `tasam segment`: SAM on one image (points, boxes, a mask, no prompt, a task).
 */
#include <errno.h>
#include <jansson.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "engine/amg.h"
#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/ops.h"
#include "engine/rle.h"
#include "engine/sam.h"
#include "adapters/adapter.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"
#include "server/everything.h"

#define CLI_MAX_POINTS     64
#define CLI_MAX_BOXES      256
#define DEFAULT_CHECKPOINT "checkpoints/sam_vit_h_4b8939.pth"

typedef struct segment_args {
    const char *checkpoint, *image, *mask_input, *dump, *json, *png;
    const char *device, *precision;
    const char *hypernet, *task, *text_model, *adapter; /* task adapter (optional) */
    int merged;
    int threads;
    int multimask;
    long long max_pixels;
    int n_points;
    float points[CLI_MAX_POINTS * 2];
    int labels[CLI_MAX_POINTS];
    int n_boxes;
    float boxes[CLI_MAX_BOXES * 4];
    int everything;          /* --everything, or a task without a prompt */
    eng_amg_params amg;      /* its parameters (the reference's defaults unless given) */
    const char *amg_opt;     /* the first everything option given (for errors), or NULL */
    const char *point_grids; /* --point-grids FILE, or NULL */
    srv_everything grids;    /* its grids (a->amg points into them) */
    int side_given;          /* --points-per-side was given */
} segment_args;

/* The everything-mode options are the generator's parameters
 * (eng_amg_param_table) with dashes: --points-per-side for points_per_side. */
static void amg_option_name(const eng_amg_param_desc *d, char *out, size_t cap)
{
    snprintf(out, cap, "--%s", d->name);
    for (char *c = out; *c; c++)
        *c = *c == '_' ? '-' : *c;
}

static void segment_usage(FILE *f)
{
    fprintf(f,
            "usage: tasam segment --image IMG [options]\n"
            "\n"
            "Segment an image with SAM and write the masks.\n"
            "\n"
            "  --checkpoint FILE     SAM checkpoint, official .pth or safetensors\n"
            "                        (default " DEFAULT_CHECKPOINT ")\n"
            "  --image IMG           JPEG or PNG image\n"
            "  --point X,Y,LABEL     a point in image pixels, LABEL 1 = object, 0 = background\n"
            "                        (repeatable)\n"
            "  --box X0,Y0,X1,Y1     a box in image pixels (repeatable: each box is one prompt)\n"
            "  --mask-input FILE     safetensors with 'mask_input' [1,256,256] low-res logits\n"
            "                        (e.g. an earlier --dump's low_res_logits)\n"
            "  --single-mask         one mask per prompt instead of SAM's three\n"
            "  --dump FILE           write image_embedding, iou_predictions, low_res_logits,\n"
            "                        masks (safetensors, the reference's layouts)\n"
            "  --json FILE           masks as COCO RLE with bbox, area, predicted IoU,\n"
            "                        stability score ('-' for stdout)\n"
            "  --png PREFIX          PREFIX_P_M.png per mask and PREFIX_overlay.png\n"
            "  --device D            auto (default), cpu or cuda\n"
            "  --precision P         auto (default), fp32, fp16 or bf16 (cuda only)\n"
            "  --threads N           CPU threads (default: all cores)\n"
            "  --max-pixels N        refuse larger images (default %lld)\n"
            "\n"
            "Task adapters (LoRA on the mask decoder):\n"
            "  --hypernet FILE       hypernetwork (tasam hypernet init) that turns --task into\n"
            "                        an adapter\n"
            "  --task TEXT           the task in words, e.g. 'segment all round orange fruits'\n"
            "  --text-model M        the text encoder: 'hashed', a name (models/NAME) or a\n"
            "                        folder (default: what the hypernetwork names)\n"
            "  --merged              fold the adapter into a copy of the decoder weights\n"
            "                        (default: applied unmerged; the masks agree)\n"
            "  --adapter FILE        use a saved adapter (tasam adapter --out) instead\n"
            "\n"
            "With no point, box or mask, SAM's prompt-free output is returned.\n"
            "\n"
            "Segment everything (SAM's automatic mask generator, the reference's defaults):\n"
            "  --everything          prompt the whole image with a point grid and keep the\n"
            "                        good, distinct masks; --json gets each mask's rle, bbox,\n"
            "                        area, predicted_iou, stability_score, point_coords and\n"
            "                        crop_box in the generator's order\n",
            (long long)ENG_IMAGE_DEFAULT_MAX_PIXELS);
    size_t np;
    const eng_amg_param_desc *params = eng_amg_param_table(&np);
    for (size_t i = 0; i < np; i++) {
        char opt[64], lhs[80];
        amg_option_name(&params[i], opt, sizeof opt);
        snprintf(lhs, sizeof lhs, "%s %s", opt, params[i].is_int ? "N" : "F");
        if (strlen(lhs) < 22)
            fprintf(f, "  %-22s%s\n", lhs, params[i].help);
        else
            fprintf(f, "  %s\n%24s%s\n", lhs, "", params[i].help);
    }
    fprintf(f, "  --point-grids FILE    explicit grids instead of --points-per-side: JSON\n"
               "                        [[[x, y], ...], ...] in [0, 1], one grid per layer\n"
               "\n"
               "A task without a point, box or mask (--hypernet/--task or --adapter alone)\n"
               "means every object of the task: everything mode under the task's adapter,\n"
               "whose predicted IoU decides which masks are kept.\n");
}

/* The everything-mode parameter an option names, or NULL. */
static const eng_amg_param_desc *amg_option(const char *o)
{
    size_t np;
    const eng_amg_param_desc *params = eng_amg_param_table(&np);
    for (size_t k = 0; k < np; k++) {
        char opt[64];
        amg_option_name(&params[k], opt, sizeof opt);
        if (!strcmp(o, opt))
            return &params[k];
    }
    return NULL;
}

/* Contract: one everything-mode option's value into a->amg; 0, or -1 after
 * saying what is wrong (the bounds are checked later, all together). */
static int set_amg_option(segment_args *a, const char *o, const eng_amg_param_desc *d,
                          const char *v)
{
    char *dst = (char *)&a->amg + d->offset;
    a->amg_opt = a->amg_opt ? a->amg_opt : o;
    a->side_given |= d->offset == offsetof(eng_amg_params, points_per_side);
    if (d->is_int) {
        long long x;
        if (cli_parse_int(v, -1000000000LL, 1000000000LL, &x)) {
            fprintf(stderr, "tasam segment: %s '%s': expected an integer\n", o, v);
            return -1;
        }
        int iv = (int)x;
        memcpy(dst, &iv, sizeof iv);
    } else {
        double x;
        if (cli_parse_numbers(v, &x, 1)) {
            fprintf(stderr, "tasam segment: %s '%s': expected a number\n", o, v);
            return -1;
        }
        memcpy(dst, &x, sizeof x);
    }
    return 0;
}

static int parse_segment_args(int argc, char **argv, segment_args *a)
{
    memset(a, 0, sizeof *a);
    eng_amg_defaults(&a->amg);
    a->checkpoint = DEFAULT_CHECKPOINT;
    a->device = "auto";
    a->precision = "auto";
    a->multimask = 1;
    a->max_pixels = ENG_IMAGE_DEFAULT_MAX_PIXELS;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                                                                                    \
    do {                                                                                           \
        if (!v) {                                                                                  \
            fprintf(stderr, "tasam segment: %s needs a value\n", o);                               \
            return 2;                                                                              \
        }                                                                                          \
        i++;                                                                                       \
    } while (0)
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            segment_usage(stdout);
            return 1;
        } else if (!strcmp(o, "--checkpoint")) {
            NEEDV();
            a->checkpoint = v;
        } else if (!strcmp(o, "--image")) {
            NEEDV();
            a->image = v;
        } else if (!strcmp(o, "--point")) {
            NEEDV();
            double p[3];
            if (cli_parse_numbers(v, p, 3) || (p[2] != 0 && p[2] != 1)) {
                fprintf(stderr,
                        "tasam segment: --point '%s': expected X,Y,LABEL with LABEL 0 or 1\n", v);
                return 2;
            }
            if (a->n_points == CLI_MAX_POINTS) {
                fprintf(stderr, "tasam segment: at most %d points\n", CLI_MAX_POINTS);
                return 2;
            }
            a->points[2 * a->n_points] = (float)p[0];
            a->points[2 * a->n_points + 1] = (float)p[1];
            a->labels[a->n_points++] = (int)p[2];
        } else if (!strcmp(o, "--box")) {
            NEEDV();
            double b[4];
            if (cli_parse_numbers(v, b, 4) || b[2] < b[0] || b[3] < b[1]) {
                fprintf(stderr,
                        "tasam segment: --box '%s': expected X0,Y0,X1,Y1 with X0<=X1, Y0<=Y1\n", v);
                return 2;
            }
            if (a->n_boxes == CLI_MAX_BOXES) {
                fprintf(stderr, "tasam segment: at most %d boxes\n", CLI_MAX_BOXES);
                return 2;
            }
            for (int k = 0; k < 4; k++)
                a->boxes[4 * a->n_boxes + k] = (float)b[k];
            a->n_boxes++;
        } else if (!strcmp(o, "--mask-input")) {
            NEEDV();
            a->mask_input = v;
        } else if (!strcmp(o, "--single-mask")) {
            a->multimask = 0;
        } else if (!strcmp(o, "--dump")) {
            NEEDV();
            a->dump = v;
        } else if (!strcmp(o, "--json")) {
            NEEDV();
            a->json = v;
        } else if (!strcmp(o, "--png")) {
            NEEDV();
            a->png = v;
        } else if (!strcmp(o, "--device")) {
            NEEDV();
            a->device = v;
        } else if (!strcmp(o, "--precision")) {
            NEEDV();
            a->precision = v;
        } else if (!strcmp(o, "--hypernet")) {
            NEEDV();
            a->hypernet = v;
        } else if (!strcmp(o, "--task")) {
            NEEDV();
            a->task = v;
        } else if (!strcmp(o, "--text-model")) {
            NEEDV();
            a->text_model = v;
        } else if (!strcmp(o, "--adapter")) {
            NEEDV();
            a->adapter = v;
        } else if (!strcmp(o, "--merged")) {
            a->merged = 1;
        } else if (!strcmp(o, "--threads")) {
            NEEDV();
            a->threads = atoi(v);
        } else if (!strcmp(o, "--everything")) {
            a->everything = 1;
        } else if (!strcmp(o, "--point-grids")) {
            NEEDV();
            a->point_grids = v;
            a->amg_opt = a->amg_opt ? a->amg_opt : o;
        } else if (amg_option(o)) {
            NEEDV();
            if (set_amg_option(a, o, amg_option(o), v) != 0)
                return 2;
        } else if (!strcmp(o, "--max-pixels")) {
            NEEDV();
            a->max_pixels = atoll(v);
            if (a->max_pixels <= 0) {
                fprintf(stderr, "tasam segment: --max-pixels must be positive\n");
                return 2;
            }
        } else {
            fprintf(stderr, "tasam segment: unknown option '%s' (see tasam segment --help)\n", o);
            return 2;
        }
#undef NEEDV
    }
    if (!a->image) {
        fprintf(stderr, "tasam segment: --image is required (see tasam segment --help)\n");
        return 2;
    }
    if (!a->hypernet != !a->task) {
        fprintf(stderr, "tasam segment: --hypernet and --task go together\n");
        return 2;
    }
    if (a->adapter && a->hypernet) {
        fprintf(stderr, "tasam segment: give --adapter or --hypernet/--task, not both\n");
        return 2;
    }
    if ((a->text_model || a->merged) && !a->hypernet && !a->adapter) {
        fprintf(stderr, "tasam segment: --text-model and --merged need --hypernet and --task\n");
        return 2;
    }
    if (strcmp(a->device, "auto") && strcmp(a->device, "cpu") && strcmp(a->device, "cuda")) {
        fprintf(stderr, "tasam segment: --device must be auto, cpu or cuda\n");
        return 2;
    }
    int prompts = a->n_points || a->n_boxes || a->mask_input;
    if (a->everything && prompts) {
        fprintf(stderr, "tasam segment: --everything prompts the whole image with a point grid: "
                        "drop --point, --box and --mask-input\n");
        return 2;
    }
    /* a task alone: every object of the task */
    if ((a->hypernet || a->adapter) && !prompts)
        a->everything = 1;
    if (a->amg_opt && !a->everything) {
        fprintf(stderr, "tasam segment: %s needs --everything\n", a->amg_opt);
        return 2;
    }
    if (a->everything && (!a->multimask || a->dump)) {
        fprintf(stderr, "tasam segment: %s does not apply to --everything\n",
                a->dump ? "--dump" : "--single-mask");
        return 2;
    }
    if (a->point_grids && a->side_given) {
        fprintf(stderr, "tasam segment: give --points-per-side or --point-grids, not both\n");
        return 2;
    }
    if (a->everything && a->point_grids) {
        /* the grids as the API takes them, checked by the same parser */
        json_error_t jerr;
        json_t *g = json_load_file(a->point_grids, JSON_REJECT_DUPLICATES, &jerr);
        if (!g) {
            fprintf(stderr, "tasam segment: --point-grids %s: line %d: %s\n", a->point_grids,
                    jerr.line, jerr.text);
            return 2;
        }
        srv_everything base = {.p = a->amg}, ev;
        srv_error e;
        json_t *o = json_pack("{s:o}", "point_grids", g);
        int bad = srv_everything_parse(o, &base, "everything", &ev, &e);
        json_decref(o);
        if (bad) {
            fprintf(stderr, "tasam segment: --point-grids %s: %s\n", a->point_grids, e.message);
            srv_everything_free(&ev);
            return 2;
        }
        a->grids = ev;
        a->amg = ev.p;
        a->amg.grids = a->grids.grids;
    }
    char field[64];
    if (a->everything && eng_amg_check(&a->amg, field)) {
        char opt[80] = "--";
        for (size_t i = 0; field[i] && field[i] != '[' && i + 3 < sizeof opt; i++)
            opt[i + 2] = field[i] == '_' ? '-' : field[i], opt[i + 3] = 0;
        fprintf(stderr, "tasam segment: %s: %s\n", opt, eng_last_error());
        srv_everything_free(&a->grids);
        return 2;
    }
    return 0;
}

/* A colour per mask for the overlay. */
static const uint8_t palette[8][3] = {{30, 144, 255}, {255, 99, 71}, {50, 205, 50}, {255, 215, 0},
                                      {186, 85, 211}, {0, 206, 209}, {255, 140, 0}, {220, 20, 60}};

static void draw_dot(uint8_t *rgb, int w, int h, int cx, int cy, int r, const uint8_t col[3])
{
    for (int y = cy - r; y <= cy + r; y++)
        for (int x = cx - r; x <= cx + r; x++)
            if (x >= 0 && y >= 0 && x < w && y < h &&
                (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r)
                memcpy(rgb + ((size_t)y * w + x) * 3, col, 3);
}

static void draw_rect(uint8_t *rgb, int w, int h, const float *b, const uint8_t col[3])
{
    int x0 = (int)b[0], y0 = (int)b[1], x1 = (int)b[2], y1 = (int)b[3];
    for (int t = 0; t < 2; t++)
        for (int x = x0; x <= x1; x++)
            for (int k = 0; k < 2; k++) {
                int y = k ? y1 - t : y0 + t, xx = x;
                if (xx >= 0 && y >= 0 && xx < w && y < h)
                    memcpy(rgb + ((size_t)y * w + xx) * 3, col, 3);
            }
    for (int t = 0; t < 2; t++)
        for (int y = y0; y <= y1; y++)
            for (int k = 0; k < 2; k++) {
                int x = k ? x1 - t : x0 + t;
                if (x >= 0 && y >= 0 && x < w && y < h)
                    memcpy(rgb + ((size_t)y * w + x) * 3, col, 3);
            }
}

/* PREFIX_P_M.png for each mask and PREFIX_overlay.png: the image with each
 * prompt's best mask (highest predicted IoU) tinted, and the prompts drawn. */
static int write_pngs(const segment_args *a, const eng_image *img, const uint8_t *masks,
                      const float *iou, int n_prompts, int C)
{
    size_t npx = (size_t)img->w * img->h;
    char path[4096];
    uint8_t *grey = malloc(npx), *ov = malloc(npx * 3);
    int rc = 0;
    if (!grey || !ov) {
        rc = eng_error(ENG_ENOMEM, "out of memory");
        goto out;
    }
    for (int p = 0; p < n_prompts && !rc; p++)
        for (int c = 0; c < C && !rc; c++) {
            const uint8_t *mk = masks + ((size_t)p * C + c) * npx;
            for (size_t i = 0; i < npx; i++)
                grey[i] = mk[i] ? 255 : 0;
            snprintf(path, sizeof path, "%s_%d_%d.png", a->png, p, c);
            rc = eng_png_write(path, grey, img->w, img->h, 1);
        }
    if (rc)
        goto out;
    memcpy(ov, img->rgb, npx * 3);
    for (int p = 0; p < n_prompts; p++) {
        int best = 0;
        for (int c = 1; c < C; c++)
            if (iou[p * C + c] > iou[p * C + best])
                best = c;
        const uint8_t *mk = masks + ((size_t)p * C + best) * npx;
        const uint8_t *col = palette[p % 8];
        for (size_t i = 0; i < npx; i++)
            if (mk[i])
                for (int k = 0; k < 3; k++)
                    ov[3 * i + k] = (uint8_t)((ov[3 * i + k] + col[k]) / 2);
    }
    static const uint8_t green[3] = {0, 255, 0}, red[3] = {255, 0, 0}, white[3] = {255, 255, 255};
    for (int i = 0; i < a->n_points; i++)
        draw_dot(ov, img->w, img->h, (int)a->points[2 * i], (int)a->points[2 * i + 1], 5,
                 a->labels[i] ? green : red);
    for (int b = 0; b < a->n_boxes; b++)
        draw_rect(ov, img->w, img->h, a->boxes + 4 * b, white);
    snprintf(path, sizeof path, "%s_overlay.png", a->png);
    rc = eng_png_write(path, ov, img->w, img->h, 3);
out:
    free(grey);
    free(ov);
    return rc;
}

/* The answer's first members: the image, the model, the adapter. */
static json_t *json_header(const segment_args *a, const eng_sam *model, const eng_image *img,
                           const ad_adapter *ad)
{
    json_t *root = json_object();
    json_object_set_new(root, "image", json_string(a->image));
    json_object_set_new(root, "width", json_integer(img->w));
    json_object_set_new(root, "height", json_integer(img->h));
    json_object_set_new(root, "model", json_string(eng_sam_model_id(model)));
    json_object_set_new(root, "device", json_string(eng_backend_describe(eng_sam_backend(model))));
    if (ad)
        json_object_set_new(root, "adapter",
                            json_pack("{s:s,s:s,s:s,s:s,s:i,s:f}", "id", ad->id, "task", ad->task,
                                      "hypernet_id", ad->hypernet_id, "hypernet_version",
                                      ad->hypernet_version, "rank", ad->rank, "alpha",
                                      (double)ad->alpha));
    return root;
}

/* Write the answer to --json (stdout for '-'); consumes root. */
static int json_write(const segment_args *a, json_t *root, int precision)
{
    int rc = 0, flags = JSON_INDENT(1) | JSON_REAL_PRECISION(precision);
    if (!strcmp(a->json, "-")) {
        json_dumpf(root, stdout, flags);
        fputc('\n', stdout);
    } else if (json_dump_file(root, a->json, flags) != 0) {
        rc = eng_error(ENG_EIO, "%s: cannot write: %s", a->json, strerror(errno));
    }
    json_decref(root);
    return rc;
}

static int write_json(const segment_args *a, const eng_sam *model, const eng_image *img,
                      const uint8_t *masks, const float *iou, const float *stab, int n_prompts,
                      int C, const double *timings, const ad_adapter *ad)
{
    size_t npx = (size_t)img->w * img->h;
    json_t *root = json_header(a, model, img, ad), *arr = json_array();
    int rc = 0;
    for (int p = 0; p < n_prompts && !rc; p++)
        for (int c = 0; c < C && !rc; c++) {
            eng_rle r = {0};
            char *counts = NULL;
            if ((rc = eng_rle_encode(masks + ((size_t)p * C + c) * npx, img->h, img->w, &r)) ||
                (rc = eng_rle_to_string(&r, &counts))) {
                eng_rle_free(&r);
                break;
            }
            double bb[4];
            eng_rle_bbox(&r, bb);
            json_t *m = json_object();
            json_object_set_new(m, "prompt", json_integer(p));
            json_object_set_new(m, "index", json_integer(c));
            json_object_set_new(
                m, "rle", json_pack("{s:[i,i],s:s}", "size", img->h, img->w, "counts", counts));
            json_object_set_new(m, "bbox", json_pack("[f,f,f,f]", bb[0], bb[1], bb[2], bb[3]));
            json_object_set_new(m, "area", json_integer((json_int_t)eng_rle_area(&r)));
            json_object_set_new(m, "predicted_iou", json_real(iou[p * C + c]));
            json_object_set_new(m, "stability_score", json_real(stab[p * C + c]));
            json_array_append_new(arr, m);
            free(counts);
            eng_rle_free(&r);
        }
    json_object_set_new(root, "masks", arr);
    json_object_set_new(root, "timings_ms",
                        json_pack("{s:f,s:f,s:f,s:f}", "image", timings[0], "encode", timings[1],
                                  "decode", timings[2], "postprocess", timings[3]));
    if (rc) {
        json_decref(root);
        return rc;
    }
    return json_write(a, root, 7);
}

static int load_mask_input(const char *path, float *dst)
{
    eng_ckpt *c = NULL;
    int rc = eng_ckpt_open(&c, path);
    if (!rc)
        rc = eng_ckpt_load_f32(c, "mask_input", 3, (int64_t[]){1, 256, 256}, dst);
    eng_ckpt_close(c);
    return rc;
}

/* Progress of a long everything run on stderr, about once a second. */
typedef struct amg_progress_state {
    double last_ms; /* when the last line was printed */
    double t0;      /* start */
} amg_progress_state;

static void amg_progress(void *arg, const eng_amg_progress *p)
{
    amg_progress_state *st = arg;
    double now = cli_now_ms();
    int done = p->points_done == p->points;
    if (now - st->last_ms < 1000 && !(done && p->n_crops > 1))
        return;
    st->last_ms = now;
    fprintf(stderr, "tasam: everything: crop %d/%d, %d/%d points, %zu masks kept, %.1f s\n",
            p->crop + 1, p->n_crops, p->points_done, p->points, p->kept, (now - st->t0) / 1e3);
}

/* The everything-mode JSON: the run's parameters, stats and masks. */
static int write_everything_json(const segment_args *a, const eng_sam *model, const eng_image *img,
                                 const eng_amg_result *r, const double *timings,
                                 const ad_adapter *ad)
{
    json_t *root = json_header(a, model, img, ad), *arr = json_array();
    int rc = 0;
    json_object_set_new(root, "mode", json_string("everything"));
    json_object_set_new(root, "everything", srv_everything_params_json(&a->amg));
    for (size_t i = 0; i < r->n && !rc; i++) {
        json_t *m = srv_everything_mask_json(&r->masks[i], SRV_OUT_RLE);
        if (!m)
            rc = eng_error(ENG_ENOMEM, "encoding mask %zu failed", i);
        json_array_append_new(arr, m);
    }
    json_object_set_new(root, "masks", arr);
    const eng_amg_stats *st = &r->stats;
    json_object_set_new(root, "everything_stats",
                        json_pack("{s:i,s:I,s:I,s:I,s:I}", "crops", st->crops, "prompts",
                                  (json_int_t)st->prompts, "upscaled", (json_int_t)st->upscaled,
                                  "candidates", (json_int_t)st->candidates, "masks",
                                  (json_int_t)r->n));
    json_object_set_new(root, "timings_ms",
                        json_pack("{s:f,s:f,s:f,s:f,s:f}", "image", timings[0], "encode",
                                  timings[1] + st->encode_ms, "decode", st->decode_ms,
                                  "postprocess", st->postprocess_ms, "nms", st->nms_ms));
    if (rc) {
        json_decref(root);
        return rc;
    }
    return json_write(a, root, 9);
}

/* PREFIX_N.png per mask and PREFIX_overlay.png with every mask tinted, the
 * largest first so that small ones stay visible. */
static int write_everything_pngs(const segment_args *a, const eng_image *img,
                                 const eng_amg_result *r)
{
    size_t npx = (size_t)img->w * img->h;
    char path[4096];
    uint8_t *mask = malloc(npx), *ov = malloc(npx * 3);
    size_t *order = malloc((r->n + 1) * sizeof *order);
    int rc = 0;
    if (!mask || !ov || !order) {
        rc = eng_error(ENG_ENOMEM, "out of memory");
        goto out;
    }
    memcpy(ov, img->rgb, npx * 3);
    for (size_t i = 0; i < r->n; i++)
        order[i] = i;
    for (size_t i = 1; i < r->n; i++) /* by decreasing area */
        for (size_t k = i; k > 0 && eng_rle_area(&r->masks[order[k]].rle) >
                                        eng_rle_area(&r->masks[order[k - 1]].rle);
             k--) {
            size_t t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
    for (size_t n = 0; n < r->n && !rc; n++) {
        size_t i = order[n];
        if ((rc = eng_rle_decode(&r->masks[i].rle, mask)))
            break;
        const uint8_t *col = palette[i % 8];
        for (size_t k = 0; k < npx; k++) {
            if (mask[k])
                for (int c = 0; c < 3; c++)
                    ov[3 * k + c] = (uint8_t)((ov[3 * k + c] + col[c]) / 2);
            mask[k] = mask[k] ? 255 : 0;
        }
        snprintf(path, sizeof path, "%s_%zu.png", a->png, i);
        rc = eng_png_write(path, mask, img->w, img->h, 1);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s_overlay.png", a->png);
        rc = eng_png_write(path, ov, img->w, img->h, 3);
    }
out:
    free(mask);
    free(ov);
    free(order);
    return rc;
}

/* Contract: everything mode on an encoded image (emb), under the adapter
 * when there is one; writes --json and --png. Returns the exit status. */
static int run_everything(const segment_args *a, eng_sam *model, const eng_image *img,
                          const float *emb, const eng_sam_lora *lora, const ad_adapter *ad,
                          const double *t)
{
    eng_amg_input in = {.image = img, .embedding = emb, .lora = lora};
    amg_progress_state ps = {0, cli_now_ms()};
    eng_amg_hooks hooks = {.progress = amg_progress, .arg = &ps};
    eng_amg_result r;
    int crops = 1;
    for (int i = 1, c = 4; i <= a->amg.crop_n_layers; i++, c *= 4)
        crops += c;
    fprintf(stderr, "tasam: everything: %d crop(s), %s grid%s\n", crops,
            a->amg.grids ? "explicit" : "a", a->amg.grids ? "s" : "");
    if (!a->amg.grids)
        fprintf(stderr, "tasam: everything: %dx%d points on the whole image\n",
                a->amg.points_per_side, a->amg.points_per_side);
    int rc = eng_amg_run(model, &in, &a->amg, &hooks, &r);
    if (rc) {
        fprintf(stderr, "tasam: everything: %s\n", eng_last_error());
        eng_amg_result_free(&r);
        return 1;
    }
    const eng_amg_stats *st = &r.stats;
    fprintf(stderr,
            "tasam: everything: %zu masks from %lld prompts (%lld upscaled, %lld past the "
            "filters) in %.1f s: encoder %.1f ms, decoder %.1f ms, postprocess %.1f ms, NMS "
            "%.1f ms\n",
            r.n, (long long)st->prompts, (long long)st->upscaled, (long long)st->candidates,
            (cli_now_ms() - ps.t0) / 1e3, t[1] + st->encode_ms, st->decode_ms, st->postprocess_ms,
            st->nms_ms);
    int status = 0;
    if (a->json && write_everything_json(a, model, img, &r, t, ad)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        status = 1;
    } else if (a->json && strcmp(a->json, "-")) {
        fprintf(stderr, "tasam: wrote %s\n", a->json);
    }
    if (!status && a->png) {
        if (write_everything_pngs(a, img, &r)) {
            fprintf(stderr, "tasam: %s\n", eng_last_error());
            status = 1;
        } else {
            fprintf(stderr, "tasam: wrote %s_overlay.png and %zu mask PNGs\n", a->png, r.n);
        }
    }
    eng_amg_result_free(&r);
    return status;
}

int cli_cmd_segment(int argc, char **argv)
{
    segment_args a;
    int rc = parse_segment_args(argc, argv, &a);
    if (rc)
        return rc == 1 ? 0 : rc;
    eng_backend *be = NULL;
    eng_sam *model = NULL;
    eng_image img = {0};
    float *input = NULL, *emb = NULL, *iou = NULL, *lo = NULL, *stab = NULL, *mask_in = NULL;
    uint8_t *masks = NULL;
    eng_sam_prompt *prompts = NULL;
    hn_hypernet *hyper = NULL;
    hn_text *text = NULL;
    ad_adapter *ad = NULL;
    eng_sam_lora *lora = NULL;
    eng_backend *dbe = NULL; /* the decoder's own backend, where split */
    double t[4] = {0}, t0;
    int status = 1;

    if ((rc = cli_open_backend(a.device, a.precision, a.threads, &be, &dbe)))
        return rc;
    fprintf(stderr, "tasam: loading %s on %s%s%s\n", a.checkpoint, eng_backend_describe(be),
            dbe ? ", decoder on " : "", dbe ? eng_backend_describe(dbe) : "");
    t0 = cli_now_ms();
    eng_sam_options opt = {
        .max_points = a.n_points > 16 ? a.n_points : 16, .max_batch = 1, .decoder_backend = dbe};
    if (eng_sam_load(&model, a.checkpoint, be, &opt)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        if (!strcmp(a.checkpoint, DEFAULT_CHECKPOINT))
            fprintf(stderr, "tasam: fetch the official checkpoint with `make run` (or "
                            "deploy/fetch-checkpoint.sh), or pass --checkpoint FILE\n");
        goto out;
    }
    const eng_sam_config *cfg = eng_sam_get_config(model);
    fprintf(stderr, "tasam: %s (embed %d, depth %d, %d heads) loaded in %.0f ms, model %s\n",
            cfg->name, cfg->embed_dim, cfg->depth, cfg->heads, cli_now_ms() - t0,
            eng_sam_model_id(model));

    if (a.hypernet || a.adapter) {
        if (a.hypernet) {
            if (cli_load_hypernet_and_text(a.hypernet, a.text_model, be, &hyper, &text))
                goto out;
            t0 = cli_now_ms();
            if (ad_adapter_generate(text, hyper, a.task, strlen(a.task), &ad)) {
                fprintf(stderr, "tasam: --task: %s\n", eng_last_error());
                goto out;
            }
            fprintf(stderr, "tasam: adapter generated in %.1f ms\n", cli_now_ms() - t0);
        } else if (ad_adapter_load(&ad, a.adapter)) {
            fprintf(stderr, "tasam: %s\n", eng_last_error());
            goto out;
        }
        if (ad_adapter_to_lora(ad, model, a.merged, &lora)) {
            fprintf(stderr, "tasam: adapter: %s\n", eng_last_error());
            goto out;
        }
        cli_print_adapter(ad);
        fprintf(stderr, "tasam: adapter applied %s (%zu KiB of device memory)\n",
                a.merged ? "merged" : "unmerged", eng_sam_lora_bytes(lora) >> 10);
    }

    t0 = cli_now_ms();
    if (eng_image_load(a.image, a.max_pixels, &img)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        goto out;
    }
    input = malloc((size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG * sizeof(float));
    emb = malloc((size_t)ENG_SAM_EMB_FLOATS * sizeof(float));
    if (!input || !emb) {
        fprintf(stderr, "tasam: out of memory\n");
        goto out;
    }
    eng_sam_imginfo info;
    if (eng_sam_preprocess(&img, input, &info)) {
        fprintf(stderr, "tasam: %s: %s\n", a.image, eng_last_error());
        goto out;
    }
    t[0] = cli_now_ms() - t0;
    for (int i = 0; i < a.n_points; i++)
        if (a.points[2 * i] < 0 || a.points[2 * i + 1] < 0 || a.points[2 * i] > img.w ||
            a.points[2 * i + 1] > img.h)
            fprintf(stderr, "tasam: warning: point %d (%g,%g) lies outside the %dx%d image\n", i,
                    a.points[2 * i], a.points[2 * i + 1], img.w, img.h);
    fprintf(stderr, "tasam: %s %dx%d, encoding ...\n", a.image, img.w, img.h);
    t0 = cli_now_ms();
    if (eng_sam_encode(model, input, 1, emb)) {
        fprintf(stderr, "tasam: encoder: %s\n", eng_last_error());
        goto out;
    }
    t[1] = cli_now_ms() - t0;
    if (a.everything) {
        status = run_everything(&a, model, &img, emb, lora, ad, t);
        goto out;
    }

    if (a.mask_input) {
        mask_in = malloc(ENG_SAM_LOWRES_FLOATS * sizeof(float));
        if (!mask_in || load_mask_input(a.mask_input, mask_in)) {
            fprintf(stderr, "tasam: %s\n", mask_in ? eng_last_error() : "out of memory");
            goto out;
        }
    }
    int n_prompts = a.n_boxes > 1 ? a.n_boxes : 1, C = a.multimask ? 3 : 1;
    size_t nm = (size_t)n_prompts * C, npx = (size_t)img.w * img.h;
    prompts = calloc((size_t)n_prompts, sizeof *prompts);
    iou = malloc(nm * sizeof(float));
    stab = malloc(nm * sizeof(float));
    lo = malloc(nm * ENG_SAM_LOWRES_FLOATS * sizeof(float));
    masks = malloc(nm * npx);
    if (!prompts || !iou || !stab || !lo || !masks) {
        fprintf(stderr, "tasam: out of memory for %zu masks of %dx%d\n", nm, img.w, img.h);
        goto out;
    }
    for (int p = 0; p < n_prompts; p++) {
        prompts[p].n_points = a.n_points;
        prompts[p].points = a.points;
        prompts[p].labels = a.labels;
        prompts[p].mask_input = mask_in;
        prompts[p].lora = lora;
        if (a.n_boxes) {
            prompts[p].has_box = 1;
            memcpy(prompts[p].box, a.boxes + 4 * p, sizeof prompts[p].box);
        }
    }
    t0 = cli_now_ms();
    if (eng_sam_decode(model, emb, &info, prompts, n_prompts, a.multimask, iou, lo)) {
        fprintf(stderr, "tasam: decoder: %s\n", eng_last_error());
        goto out;
    }
    t[2] = cli_now_ms() - t0;
    t0 = cli_now_ms();
    if (eng_sam_postprocess(model, lo, (int)nm, &info, masks, stab)) {
        fprintf(stderr, "tasam: postprocess: %s\n", eng_last_error());
        goto out;
    }
    t[3] = cli_now_ms() - t0;
    fprintf(stderr,
            "tasam: %d prompt(s) x %d mask(s): image %.1f ms, encoder %.1f ms, decoder %.1f ms, "
            "postprocess %.1f ms\n",
            n_prompts, C, t[0], t[1], t[2], t[3]);
    for (int p = 0; p < n_prompts; p++)
        for (int c = 0; c < C; c++) {
            size_t area = 0;
            const uint8_t *mk = masks + ((size_t)p * C + c) * npx;
            for (size_t i = 0; i < npx; i++)
                area += mk[i];
            fprintf(stderr,
                    "  prompt %d mask %d: predicted IoU %.3f, stability %.3f, area %zu px\n", p, c,
                    iou[p * C + c], stab[p * C + c], area);
        }

    if (a.dump) {
        /* A single prompt drops the batch dimension, as SamPredictor.predict. */
        int batched = a.n_boxes > 1;
        eng_st_entry e[4];
        memset(e, 0, sizeof e);
        e[0] = (eng_st_entry){"image_embedding", ENG_F32, 3, {256, 64, 64}, emb};
        e[1] = (eng_st_entry){"iou_predictions", ENG_F32, 1, {C}, iou};
        e[2] = (eng_st_entry){"low_res_logits", ENG_F32, 3, {C, 256, 256}, lo};
        e[3] = (eng_st_entry){"masks", ENG_U8, 3, {C, img.h, img.w}, masks};
        if (batched) {
            e[1] = (eng_st_entry){"iou_predictions", ENG_F32, 2, {n_prompts, C}, iou};
            e[2] = (eng_st_entry){"low_res_logits", ENG_F32, 4, {n_prompts, C, 256, 256}, lo};
            e[3] = (eng_st_entry){"masks", ENG_U8, 4, {n_prompts, C, img.h, img.w}, masks};
        }
        const char *meta[] = {"model",   eng_sam_model_id(model), "image", a.image,
                              "adapter", ad ? ad->id : ""};
        if (eng_safetensors_write(a.dump, e, 4, meta, ad ? 3 : 2)) {
            fprintf(stderr, "tasam: %s\n", eng_last_error());
            goto out;
        }
        fprintf(stderr, "tasam: wrote %s\n", a.dump);
    }
    if (a.json) {
        if (write_json(&a, model, &img, masks, iou, stab, n_prompts, C, t, ad)) {
            fprintf(stderr, "tasam: %s\n", eng_last_error());
            goto out;
        }
        if (strcmp(a.json, "-"))
            fprintf(stderr, "tasam: wrote %s\n", a.json);
    }
    if (a.png) {
        if (write_pngs(&a, &img, masks, iou, n_prompts, C)) {
            fprintf(stderr, "tasam: %s\n", eng_last_error());
            goto out;
        }
        fprintf(stderr, "tasam: wrote %s_overlay.png and %zu mask PNGs\n", a.png, nm);
    }
    status = 0;
out:
    free(input);
    free(emb);
    free(iou);
    free(stab);
    free(lo);
    free(masks);
    free(mask_in);
    free(prompts);
    eng_image_free(&img);
    srv_everything_free(&a.grids);
    eng_sam_lora_destroy(model, lora);
    ad_adapter_destroy(ad);
    hn_text_destroy(text);
    hn_hypernet_destroy(hyper);
    eng_sam_destroy(model);
    eng_backend_destroy(dbe);
    eng_backend_destroy(be);
    return status;
}
