"""tests/pycoco/crosscheck.py DIR: pycocotools' answers for the cross-check
in tests/test_cocoeval.c.

Reads, from DIR (written by the test):
  polys.json       [{"h", "w", "poly": [x0, y0, ...]}, ...]
  gt.json          COCO instances (ground truth)
  pred_segm.json   results with segmentation only
  pred_box.json    results with bbox only
and writes DIR/ref.json:
  {"polys": [compressed RLE counts of frPyObjects([poly], h, w)],
   "segm", "bbox", "segm_boxes": {"stats": [12], "per_category_ap": {id: ap}}}
where segm_boxes evaluates pred_box.json with iouType segm (boxes as
polygons, areas from the boxes).
"""
import contextlib
import io
import json
import os
import sys

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def evaluate(gt, pred_file, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(pred_file)
        e = COCOeval(gt, dt, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    per = {}
    for k, cat in enumerate(e.params.catIds):
        p = e.eval["precision"][:, :, k, 0, -1]
        p = p[p > -1]
        per[str(cat)] = float(np.mean(p)) if p.size else -1.0
    return {"stats": [float(s) for s in e.stats], "per_category_ap": per}


def main():
    d = sys.argv[1]
    out = {}
    polys = json.load(open(os.path.join(d, "polys.json")))
    out["polys"] = []
    for p in polys:
        rle = mask_util.frPyObjects([p["poly"]], p["h"], p["w"])[0]
        out["polys"].append(rle["counts"].decode("ascii"))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(d, "gt.json"))
    out["segm"] = evaluate(gt, os.path.join(d, "pred_segm.json"), "segm")
    out["bbox"] = evaluate(gt, os.path.join(d, "pred_box.json"), "bbox")
    out["segm_boxes"] = evaluate(gt, os.path.join(d, "pred_box.json"), "segm")
    json.dump(out, open(os.path.join(d, "ref.json"), "w"))


if __name__ == "__main__":
    main()
