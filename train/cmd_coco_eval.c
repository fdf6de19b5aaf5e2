/*
 * train/cmd_coco_eval.c: `tasam-train coco-eval`: the COCO protocol
 * (train/cocoeval.h) on a ground-truth file and a results file, printed as
 * pycocotools prints it and written as JSON.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "engine/error.h"
#include "train/coco.h"
#include "train/cocoeval.h"
#include "train/io.h"
#include "train/train.h"

static void coco_eval_usage(FILE *f)
{
    fprintf(f, "usage: tasam-train coco-eval --gt GT.json --pred PRED.json [options]\n"
               "\n"
               "COCO evaluation as pycocotools' COCOeval computes it (evaluate, accumulate,\n"
               "summarize): the 12 summary numbers (AP, AP50, AP75, AP small/medium/large,\n"
               "AR@1/10/100, AR small/medium/large) and the AP of every category.\n"
               "\n"
               "  --gt FILE         ground truth, COCO instances JSON (images are not read)\n"
               "  --pred FILE       results: a JSON list of {image_id, category_id, score,\n"
               "                    segmentation (RLE or polygons) and/or bbox [x,y,w,h]}\n"
               "  --iou-type T      segm (mask IoU, default) or bbox\n"
               "  --json OUT        also write {iou_type, stats, stats_named,\n"
               "                    per_category_ap, per_category, n_images, n_annotations,\n"
               "                    n_predictions} to OUT\n"
               "  --quiet           no per-category table\n"
               "\n"
               "example:\n"
               "  tasam-train coco-eval --gt data/val/instances.json --pred pred.json \\\n"
               "      --iou-type segm --json eval.json\n");
}

int tr_cmd_coco_eval(int argc, char **argv)
{
    const char *gt_path = NULL, *pred_path = NULL, *json_out = NULL, *type = "segm";
    int quiet = 0;
    const tr_opt opts[] = {{"--gt", &gt_path, NULL},    {"--pred", &pred_path, NULL},
                           {"--json", &json_out, NULL}, {"--iou-type", &type, NULL},
                           {"--quiet", NULL, &quiet},   {NULL, NULL, NULL}};
    int rc = tr_opts_parse("coco-eval", argc, argv, opts);
    if (rc == 1)
        coco_eval_usage(stdout);
    if (rc)
        return rc == 1 ? 0 : 2;
    if (!gt_path || !pred_path) {
        fprintf(stderr, "tasam-train coco-eval: --gt and --pred are required (see --help)\n");
        return 2;
    }
    tr_iou_type t;
    if (!strcmp(type, "segm"))
        t = TR_IOU_SEGM;
    else if (!strcmp(type, "bbox"))
        t = TR_IOU_BBOX;
    else {
        fprintf(stderr, "tasam-train coco-eval: --iou-type must be segm or bbox, not '%s'\n", type);
        return 2;
    }

    tr_coco *gt = NULL;
    tr_coco_dets *dt = NULL;
    tr_cocoeval *e = NULL;
    json_t *j = NULL;
    int status = 1;
    clock_t t0 = clock();
    if (tr_coco_load(&gt, gt_path, NULL, TR_COCO_NO_IMAGES) ||
        tr_coco_dets_load(&dt, gt, pred_path)) {
        fprintf(stderr, "tasam-train coco-eval: %s\n", eng_last_error());
        goto done;
    }
    fprintf(stderr,
            "coco-eval: ground truth %d images, %d categories, %d annotations; %d results; %s "
            "evaluation, result areas from their %s\n",
            gt->n_images, gt->n_categories, gt->n_anns, dt->n, type,
            t == TR_IOU_BBOX || dt->box_mode == 1 ? "boxes" : "masks");
    if (dt->n_unknown_category)
        fprintf(stderr,
                "coco-eval: note: %d results name a category_id that is not in the ground "
                "truth; they are not evaluated (as COCOeval)\n",
                dt->n_unknown_category);
    tr_cocoeval_params p;
    tr_cocoeval_params_default(&p, t);
    if (tr_cocoeval_run(&e, gt, dt, &p)) {
        fprintf(stderr, "tasam-train coco-eval: %s\n", eng_last_error());
        goto done;
    }
    printf("iou_type %s\n", type);
    tr_cocoeval_print(e, stdout);
    if (!quiet) {
        printf("\n%-10s %-24s %9s %9s\n", "category", "name", "AP", "AP50");
        for (int k = 0; k < e->K; k++) {
            int ci = tr_coco_category_index(gt, e->cat_ids[k]);
            printf("%-10lld %-24.24s %9.4f %9.4f\n", (long long)e->cat_ids[k],
                   ci >= 0 ? gt->categories[ci].name : "?", e->cat_ap[k], e->cat_ap50[k]);
        }
    }
    fprintf(stderr, "coco-eval: evaluated in %.2f s (CPU)\n",
            (double)(clock() - t0) / CLOCKS_PER_SEC);

    if (json_out) {
        json_t *stats = json_array(), *named = json_object(), *per = json_object(),
               *rows = json_array();
        j = json_object();
        if (!j || !stats || !named || !per || !rows) {
            json_decref(stats);
            json_decref(named);
            json_decref(per);
            json_decref(rows);
            fprintf(stderr, "tasam-train coco-eval: out of memory\n");
            goto done;
        }
        for (int i = 0; i < 12; i++) {
            json_array_append_new(stats, json_real(e->stats[i]));
            json_object_set_new(named, tr_cocoeval_stat_name(i), json_real(e->stats[i]));
        }
        for (int k = 0; k < e->K; k++) {
            char key[32];
            int ci = tr_coco_category_index(gt, e->cat_ids[k]);
            snprintf(key, sizeof key, "%lld", (long long)e->cat_ids[k]);
            json_object_set_new(per, key, json_real(e->cat_ap[k]));
            json_array_append_new(rows,
                                  json_pack("{s:I, s:s, s:f, s:f}", "id", (json_int_t)e->cat_ids[k],
                                            "name", ci >= 0 ? gt->categories[ci].name : "", "ap",
                                            e->cat_ap[k], "ap50", e->cat_ap50[k]));
        }
        json_object_set_new(j, "iou_type", json_string(type));
        json_object_set_new(j, "stats", stats);
        json_object_set_new(j, "stats_named", named);
        json_object_set_new(j, "per_category_ap", per);
        json_object_set_new(j, "per_category", rows);
        json_object_set_new(j, "n_images", json_integer(gt->n_images));
        json_object_set_new(j, "n_annotations", json_integer(gt->n_anns));
        json_object_set_new(j, "n_predictions", json_integer(dt->n));
        if (tr_write_json(json_out, j, JSON_INDENT(1))) {
            fprintf(stderr, "tasam-train coco-eval: %s\n", eng_last_error());
            goto done;
        }
        fprintf(stderr, "coco-eval: wrote %s\n", json_out);
    }
    status = 0;
done:
    json_decref(j);
    tr_cocoeval_destroy(e);
    tr_coco_dets_destroy(dt);
    tr_coco_destroy(gt);
    return status;
}
