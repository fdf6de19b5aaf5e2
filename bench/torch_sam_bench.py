#!/usr/bin/env python3
"""Time the official segment-anything PyTorch code on the same weights and the
same shapes as bench/bench_gpu, so the two give the ratio on one machine.

  torch_sam_bench.py --arch vit_h --checkpoint W.safetensors|W.pth
      [--device cuda|cpu] [--dtype fp32,bf16] [--compile] [--reps N]
      [--batch B] [--prompts 1,16,64]

Encoder: ms per image at batch 1 (and at --batch B), on a random normalised
input, with the weights in fp32 or under torch.autocast(bfloat16);
--compile also times torch.compile(image_encoder) (torch 2.x). Decoder: ms
per call for N prompts (one positive point each, three masks, as
SamPredictor.predict_torch runs them: prompt encoder + mask decoder on one
image embedding). Medians over --reps after warm-up; on CUDA every timing
ends with torch.cuda.synchronize(). Weights: an official .pth, or the
safetensors bench/mkweights writes (read with tests/reference/reference.py).
Every figure is also one line "FIG torch/ARCH/DTYPE/MODE METRIC VALUE", the
format of bench/bench_gpu, so bench/gpu_check.sh puts the two side by side.
A benchmark: it asserts nothing.
"""
import argparse
import os
import statistics
import sys
import time

import torch
from segment_anything import sam_model_registry

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
from reference import read_safetensors  # noqa: E402


def load(arch, path):
    model = sam_model_registry[arch](checkpoint=None)
    if path.endswith(".safetensors"):
        state = read_safetensors(path)
    else:
        state = torch.load(path, map_location="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        sys.exit(f"{path}: missing {missing[:3]}..., unexpected {unexpected[:3]}...")
    return model.eval()


def timed(fn, reps, sync):
    for _ in range(2):
        fn()
    sync()
    t = []
    for _ in range(reps):
        s = time.perf_counter()
        fn()
        sync()
        t.append((time.perf_counter() - s) * 1e3)
    return statistics.median(t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompts", default="1,16,64")
    a = ap.parse_args()

    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = load(a.arch, a.checkpoint).to(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"official segment-anything, torch {torch.__version__}, {a.arch} from {a.checkpoint} "
          f"on {name}")
    torch.manual_seed(0)
    x1 = torch.randn(1, 3, 1024, 1024, device=dev)
    xb = torch.randn(a.batch, 3, 1024, 1024, device=dev) if a.batch > 1 else None
    counts = [int(n) for n in a.prompts.split(",") if n]
    pts = torch.stack([torch.tensor([100.0 + 13 * i, 900.0 - 11 * i]) for i in range(max(counts))])
    pts = pts.to(dev)[:, None, :]                       # [N, 1, 2]
    labels = torch.ones(max(counts), 1, device=dev)     # [N, 1]

    for dt in a.dtype.split(","):
        auto = dt == "bf16"
        ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if auto else \
            (lambda: torch.autocast(dev.type, enabled=False))
        encoders = [("eager", model.image_encoder)]
        if a.compile:
            if hasattr(torch, "compile"):
                encoders.append(("torch.compile", torch.compile(model.image_encoder)))
            else:
                print(f"  torch.compile: not in torch {torch.__version__}")
        with torch.inference_mode():
            for label, enc in encoders:
                def run1(enc=enc):
                    with ctx():
                        enc(x1)
                ms = timed(run1, a.reps, sync)
                print(f"  {dt} {label}: encoder batch 1 {ms:.3f} ms")
                mode = "compile" if label == "torch.compile" else "eager"
                print(f"FIG torch/{a.arch}/{dt}/{mode} encoder_b1_ms {ms:.4g}")
                if xb is not None:
                    def runb(enc=enc):
                        with ctx():
                            enc(xb)
                    ms = timed(runb, max(3, a.reps // 2), sync) / a.batch
                    print(f"  {dt} {label}: encoder batch {a.batch} {ms:.3f} ms per image")
                    print(f"FIG torch/{a.arch}/{dt}/{mode} encoder_b{a.batch}_ms_per_image "
                          f"{ms:.4g}")
            with ctx():
                emb = model.image_encoder(x1)
            pe = model.prompt_encoder.get_dense_pe()
            for n in counts:
                def dec(n=n):
                    with ctx():
                        sparse, dense = model.prompt_encoder(points=(pts[:n], labels[:n]),
                                                             boxes=None, masks=None)
                        model.mask_decoder(image_embeddings=emb, image_pe=pe,
                                           sparse_prompt_embeddings=sparse,
                                           dense_prompt_embeddings=dense,
                                           multimask_output=True)
                ms = timed(dec, a.reps, sync)
                print(f"  {dt}: decoder {n:2d} prompt{'s' if n > 1 else ' '} {ms:.3f} ms per call")
                print(f"FIG torch/{a.arch}/{dt}/eager decoder_{n}_resident_ms {ms:.4g}")


if __name__ == "__main__":
    main()
