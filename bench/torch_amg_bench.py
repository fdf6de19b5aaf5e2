#!/usr/bin/env python3
"""Time the official SamAutomaticMaskGenerator on the same model and image as
`bench/bench_amg` (for the ratio against tasam's everything mode on one
machine). Not part of `make bench`: it needs torch, torchvision, numpy,
Pillow and the segment-anything package (`make reference-deps` installs
Debian's torch and segment-anything into build/reference/venv).

  build/reference/venv/bin/python3 bench/torch_amg_bench.py \
      --checkpoint ../shared/fixtures/sam_tiny.pth --image ../shared/fixtures/images/dog.jpg \
      [--points-per-side 16] [--reps 3] [--threads 2] [--arch tiny|vit_b|vit_l|vit_h]

Prints the median wall time of generate() with the reference's thresholds
and with every mask kept (thresholds 0), and the mask counts.
"""
import argparse
import resource
import statistics
import time

import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.build_sam import _build_sam


def cpu_seconds():
    """CPU time (user + system) of this process: against the wall time, how
    much of the machine the run had."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def build(arch, checkpoint):
    if arch == "tiny":
        # the fixture config: embed 64, depth 2, 2 heads, block 1 global
        return _build_sam(64, 2, 2, [1], checkpoint=checkpoint)
    return sam_model_registry[arch](checkpoint=checkpoint)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True, help="a torch.save'd state_dict (.pth)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    sam = build(a.arch, a.checkpoint)
    sam.eval()
    image = np.array(Image.open(a.image).convert("RGB"))
    print(f"official SamAutomaticMaskGenerator, torch {torch.__version__}, {a.threads} threads; "
          f"{a.arch} {a.checkpoint}; {a.image} {image.shape[1]}x{image.shape[0]}; "
          f"{a.points_per_side}x{a.points_per_side} grid")
    for name, kw in (("reference defaults (0.88 / 0.95)", {}),
                     ("thresholds 0 (every mask kept)",
                      {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})):
        gen = SamAutomaticMaskGenerator(sam, points_per_side=a.points_per_side, **kw)
        times, cpu, n = [], 0.0, 0
        for r in range(a.reps + 1):  # one warm-up run
            t0, c0 = time.perf_counter(), cpu_seconds()
            masks = gen.generate(image)
            if r > 0:
                times.append((time.perf_counter() - t0) * 1e3)
                cpu += cpu_seconds() - c0
            n = len(masks)
        print(f"everything {name:34s}: {statistics.median(times):8.1f} ms median of {a.reps}, "
              f"{cpu / a.reps:.1f} CPU-s a run ({n} masks)")


if __name__ == "__main__":
    main()
