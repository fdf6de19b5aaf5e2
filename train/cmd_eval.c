/*
 * train/cmd_eval.c: `tasam-train eval`: mIoU and COCO AP of a
 * hypernetwork's adapters on a dataset (train/evaluate.h), printed and
 * written as JSON.
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine/error.h"
#include "hypernet/hypernet.h"
#include "train/embed.h"
#include "train/evaluate.h"
#include "train/io.h"
#include "train/model.h"
#include "train/tasks.h"
#include "train/train.h"

static void eval_usage(FILE *f)
{
    tr_eval_config d;
    tr_eval_config_default(&d);
    fprintf(f,
            "usage: tasam-train eval --checkpoint CK --data DIR --hypernet HN --json OUT "
            "[options]\n"
            "\n"
            "How well HN's adapters segment the tasks of DIR (instances.json + images/):\n"
            "  miou  per (image, task): clicks drawn as in training from a fixed seed, each\n"
            "        answered by its best-rated mask when the adapted IoU head rates it at\n"
            "        least --iou-thresh; the IoU of their union with the union of the task's\n"
            "        ground truth (1 when both are empty)\n"
            "  ap    COCO segm AP@[.50:.95] of task-only everything mode (a point grid under\n"
            "        the task's adapter, masks ranked by the adapted IoU head), each\n"
            "        result's category being the task's\n"
            "overall and for seen tasks, held-out phrasings, held-out attribute\n"
            "combinations and tasks with no object (their AP is undefined; dets_per_image\n"
            "counts what everything mode still returns), and per task in OUT.\n"
            "\n"
            "  --checkpoint CK         SAM weights (.pth or safetensors)\n"
            "  --data DIR              the dataset folder\n"
            "  --hypernet HN           the hypernetwork (`tasam hypernet init` gives plain SAM)\n"
            "  --json OUT              where the results go\n"
            "  --text-model DIR        text encoder folder (default: what HN names)\n"
            "  --cache DIR             embedding cache (default: .tasam-cache beside DIR)\n"
            "  --device auto|cpu|cuda  where SAM runs (default auto)\n"
            "  --threads N             CPU threads (default: all cores)\n"
            "  --seed S                seed of the pairs and clicks (default %llu)\n"
            "  --images N              the first N images (default all)\n"
            "  --prompts N             clicks per (image, task) (default %d)\n"
            "  --max-present N         present categories per image, 0: all (default %d)\n"
            "  --absent N              absent categories per image (default %d)\n"
            "  --iou-thresh X          predicted IoU a click's mask needs, 0: none (default %g)\n"
            "  --no-heldout-phrasings  skip the held-out phrasings\n"
            "  --no-ap                 mIoU only (AP runs everything mode: slow on a CPU)\n"
            "  --points-per-side N     everything mode's grid for AP (default %d)\n"
            "  --ap-categories N       AP on N seen categories chosen from the seed, and\n"
            "                          every held-out and no-object one (default all)\n"
            "  --pred-iou-thresh X     everything mode keeps masks rated above X (default %g)\n"
            "  --stability-thresh X    ... and at least this stable (default %g)\n"
            "  --quiet                 no progress on stderr\n"
            "\n"
            "example:\n"
            "  tasam-train eval --checkpoint ../shared/fixtures/sam_tiny.safetensors \\\n"
            "      --data data/synth/val --hypernet hn1.safetensors --json out/eval.json \\\n"
            "      --points-per-side 8\n",
            (unsigned long long)d.seed, d.prompts, d.max_present, d.absent, (double)d.iou_thresh,
            d.ap_points_per_side, d.ap_pred_iou_thresh, d.ap_stability_thresh);
}

static volatile sig_atomic_t eval_stop;

static void eval_progress(void *ctx, int done, int total)
{
    (void)ctx;
    if (isatty(2) || done == total)
        fprintf(stderr, "%seval: task %d/%d%s", isatty(2) ? "\r" : "", done, total,
                done == total ? "\n" : "");
}

static void eval_print(const tr_eval_result *r, const char *hn, const char *version)
{
    printf("hypernetwork %s (version %s) on %d images, %d (image, task) pairs, %.1f s\n", hn,
           version, r->images, r->pairs, r->seconds);
    printf("  %-20s  %8s  %6s  %8s  %s\n", "group", "mIoU", "pairs", "AP", "dets/image");
    for (int g = -1; g < TR_EVAL_GROUPS; g++) {
        double mi = g < 0 ? r->miou : r->group_miou[g], ap = g < 0 ? r->ap : r->group_ap[g];
        int n = g < 0 ? r->pairs : r->group_pairs[g];
        double dpi = g < 0 ? -1 : r->dets_per_image[g];
        char s_mi[32] = "-", s_ap[32] = "-", s_d[32] = "-";
        if (mi >= 0)
            snprintf(s_mi, sizeof s_mi, "%.4f", mi);
        if (ap >= 0)
            snprintf(s_ap, sizeof s_ap, "%.4f", ap);
        if (dpi >= 0)
            snprintf(s_d, sizeof s_d, "%.2f", dpi);
        printf("  %-20s  %8s  %6d  %8s  %s\n", g < 0 ? "all" : tr_eval_group_name(g), s_mi, n, s_ap,
               s_d);
    }
    printf("  present (task in the image): mIoU %.4f over %d pairs\n", r->present_miou,
           r->present_pairs);
    printf("miou %.6f\nap %.6f\n", r->miou, r->ap);
}

int tr_cmd_eval(int argc, char **argv)
{
    tr_eval_config ec;
    tr_eval_config_default(&ec);
    const char *ckpt = NULL, *data = NULL, *hn = NULL, *json = NULL, *text = NULL, *cache = NULL,
               *device = "auto", *threads = NULL, *seed = NULL, *images = NULL, *prompts = NULL,
               *present = NULL, *absent = NULL, *thresh = NULL, *pps = NULL, *apc = NULL,
               *piou = NULL, *pstab = NULL;
    int no_ho = 0, no_ap = 0, quiet = 0;
    const tr_opt opts[] = {{"--checkpoint", &ckpt, NULL},
                           {"--data", &data, NULL},
                           {"--hypernet", &hn, NULL},
                           {"--json", &json, NULL},
                           {"--text-model", &text, NULL},
                           {"--cache", &cache, NULL},
                           {"--device", &device, NULL},
                           {"--threads", &threads, NULL},
                           {"--seed", &seed, NULL},
                           {"--images", &images, NULL},
                           {"--prompts", &prompts, NULL},
                           {"--max-present", &present, NULL},
                           {"--absent", &absent, NULL},
                           {"--iou-thresh", &thresh, NULL},
                           {"--no-heldout-phrasings", NULL, &no_ho},
                           {"--no-ap", NULL, &no_ap},
                           {"--points-per-side", &pps, NULL},
                           {"--ap-categories", &apc, NULL},
                           {"--pred-iou-thresh", &piou, NULL},
                           {"--stability-thresh", &pstab, NULL},
                           {"--quiet", NULL, &quiet},
                           {NULL, NULL, NULL}};
    int rc = tr_opts_parse("eval", argc, argv, opts);
    if (rc == 1)
        eval_usage(stdout);
    if (rc)
        return rc == 1 ? 0 : 2;
    long long v, nt = 0;
    double x;
    const char *cmd = "eval";
#define EVAL_INT(s, opt, lo, hi, dst)                                                              \
    do {                                                                                           \
        if (tr_opt_int(cmd, opt, s, lo, hi, &v))                                                   \
            return 2;                                                                              \
        if (s)                                                                                     \
            dst = v;                                                                               \
    } while (0)
    EVAL_INT(threads, "--threads", 0, 1024, nt);
    EVAL_INT(seed, "--seed", 0, INT64_MAX, ec.seed);
    EVAL_INT(images, "--images", 0, 10000000, ec.max_images);
    EVAL_INT(prompts, "--prompts", 1, 256, ec.prompts);
    EVAL_INT(present, "--max-present", 0, 100000, ec.max_present);
    EVAL_INT(absent, "--absent", 0, 100000, ec.absent);
    EVAL_INT(pps, "--points-per-side", 1, 64, ec.ap_points_per_side);
    EVAL_INT(apc, "--ap-categories", 0, 100000, ec.ap_max_categories);
#undef EVAL_INT
    if (tr_opt_double(cmd, "--iou-thresh", thresh, 0, 1, &x))
        return 2;
    if (thresh)
        ec.iou_thresh = (float)x;
    if (tr_opt_double(cmd, "--pred-iou-thresh", piou, 0, 1, &ec.ap_pred_iou_thresh) ||
        tr_opt_double(cmd, "--stability-thresh", pstab, 0, 1, &ec.ap_stability_thresh))
        return 2;
    ec.heldout_phrasings = !no_ho;
    ec.ap = !no_ap;
    if (!ckpt || !data || !hn || !json) {
        fprintf(stderr, "tasam-train eval: --checkpoint, --data, --hypernet and --json are "
                        "required (see --help)\n");
        return 2;
    }
    if (strcmp(device, "auto") && strcmp(device, "cpu") && strcmp(device, "cuda")) {
        fprintf(stderr, "tasam-train eval: --device must be auto, cpu or cuda\n");
        return 2;
    }
    char dir[4096], version[HN_NAME_MAX] = "", id[HN_ID_LEN + 1] = "";
    if (cache)
        snprintf(dir, sizeof dir, "%s", cache);
    else if (tr_embed_default_dir(data, dir, sizeof dir)) {
        fprintf(stderr, "tasam-train eval: %s\n", eng_last_error());
        return 1;
    }
    tr_stop_on_signals(&eval_stop);
    tr_coco *ds = NULL;
    tr_embed *e = NULL;
    tr_model tm = {0};
    hn_params *p = NULL;
    hn_text *tx = NULL;
    tr_tasks *tk = NULL;
    tr_eval_result res = {0};
    int missing = 0;
    if ((rc = hn_params_read(&p, hn, version)) || (rc = tr_coco_open_dir(&ds, data, 0)) ||
        (rc = tr_model_open(&tm, ckpt, device, (int)nt, 8, ec.prompts < 16 ? ec.prompts : 16,
                            quiet)) ||
        (rc = hn_config_open_text(&p->cfg, text, tm.enc, &tx)) ||
        (rc = tr_embed_open(&e, ds, dir, eng_sam_model_id(tm.m), &missing)))
        goto out;
    hn_params_id(p, id);
    if (missing && !quiet)
        fprintf(stderr, "eval: embedding %d images on %s (cached for later runs)\n", missing,
                eng_backend_describe(tm.enc));
    if ((rc = tr_embed_fill(e, tm.m, tr_model_on_gpu(&tm) ? 8 : 1, NULL, NULL, &eval_stop)) ||
        (rc = tr_tasks_embed(&tk, ds, tx)))
        goto out;
    rc = tr_eval_run(&res, tm.m, e, ds, tk, p, &ec, quiet ? NULL : eval_progress, NULL, &eval_stop);
    if (rc)
        goto out;
    eval_print(&res, hn, version);
    json_t *j = tr_eval_json(&res, ds, 1);
    json_t *h = json_object(), *cfg = json_object();
    json_object_set_new(h, "path", json_string(hn));
    json_object_set_new(h, "id", json_string(id));
    json_object_set_new(h, "version", json_string(version));
    json_object_set_new(h, "text_model", json_string(p->cfg.text_model));
    json_object_set_new(j, "hypernetwork", h);
    json_object_set_new(j, "data", json_string(data));
    json_object_set_new(j, "model_id", json_string(eng_sam_model_id(tm.m)));
    json_object_set_new(j, "device", json_string(eng_backend_describe(tm.enc)));
    json_object_set_new(cfg, "seed", json_integer((json_int_t)ec.seed));
    json_object_set_new(cfg, "prompts", json_integer(ec.prompts));
    json_object_set_new(cfg, "max_present", json_integer(ec.max_present));
    json_object_set_new(cfg, "absent", json_integer(ec.absent));
    json_object_set_new(cfg, "iou_thresh", json_real(ec.iou_thresh));
    json_object_set_new(cfg, "heldout_phrasings", json_boolean(ec.heldout_phrasings));
    json_object_set_new(cfg, "ap", json_boolean(ec.ap));
    json_object_set_new(cfg, "points_per_side", json_integer(ec.ap_points_per_side));
    json_object_set_new(cfg, "ap_categories", json_integer(ec.ap_max_categories));
    json_object_set_new(cfg, "pred_iou_thresh", json_real(ec.ap_pred_iou_thresh));
    json_object_set_new(cfg, "stability_thresh", json_real(ec.ap_stability_thresh));
    json_object_set_new(j, "config", cfg);
    json_object_set_new(j, "seconds", json_real(res.seconds));
    rc = tr_mkdirs_parent(json);
    if (!rc)
        rc = tr_write_json(json, j, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(j);
out:
    if (rc == ENG_ECANCELED)
        fprintf(stderr, "tasam-train eval: cancelled\n");
    else if (rc)
        fprintf(stderr, "tasam-train eval: %s\n", eng_last_error());
    tr_eval_result_free(&res);
    tr_tasks_destroy(tk);
    hn_text_destroy(tx);
    tr_embed_destroy(e);
    tr_model_close(&tm);
    tr_coco_destroy(ds);
    hn_params_destroy(p);
    return rc == ENG_ECANCELED ? 3 : rc ? 1 : 0;
}
