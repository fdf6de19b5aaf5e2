#!/usr/bin/env python3
"""Estimate the ViT-H encoder's (and the 64-prompt decoder's) time on an
NVIDIA T4 from a run of the sm_75 code path on another GPU.

  t4_estimate.py --profile PROFILE.txt --figures FIGURES.txt [--stage encoder]
                 [--gemm-peak TFLOPS] [--t4-clock-factor F]

Inputs, all measured in one bench/gpu_check.sh run on the GPU at hand:
  PROFILE.txt  stderr of `TASAM_CUDA_KERNELS=sm75 TASAM_CUDA_PROFILE=1
               TASAM_NO_WARMUP=1 bench_gpu --dtype fp16 --profile-run STAGE`:
               device time per op and shape (each op's first call left out)
  FIGURES.txt  the "FIG label metric value" lines of the same script: the
               profile run's call count, the sm_75 path's wall-clock time of
               the stage, and the ceilings of that GPU (bench_gpu --peaks):
               peak_mma_m16n8k8_tflops (the sm_75 kernels' instruction),
               peak_copy_gbs (device copy, bytes read + written)

Method. Every op of the profile falls in one of three classes; its measured
efficiency on this GPU is carried over to the T4's peak for that class:
  GEMM (linear, matmul_nn, convolutions: cuBLASLt)   2*M*K*N FLOPs;
      e = achieved / this GPU's dense fp16 tensor peak (--gemm-peak, the
      vendor's figure; 989 TFLOP/s for H100/H200 SXM), assuming cuBLAS reaches
      the same fraction of the T4's 65 TFLOP/s with its Turing kernels.
  attention (our sm_75 kernel, the same compute_75 code on both GPUs)
      4*B*H*Tq*Tk*D FLOPs (+ the rel-pos tables); e = achieved / the measured
      mma.sync m16n8k8 rate here; on the T4 that instruction is the 65 TFLOP/s.
  memory-bound (LayerNorm, adds, copies, window moves, activations, ...)
      bytes read + written (fp16); e = achieved / the measured copy rate here;
      on the T4 e * 320 GB/s. Small ops are latency-bound here, so their e is
      low and this overstates their T4 time.
  T4 time = sum over ops of work / (e * T4 peak), plus the stage's host-side
  gaps as measured here (wall-clock time less the summed device time).
The T4's peaks are the datasheet's (65 TFLOP/s fp16 tensor, 320 GB/s, at the
1590 MHz boost clock); a T4 under its 70 W cap may sustain a lower clock:
--t4-clock-factor (sustained / 1590 MHz, measured on a T4) scales the
compute terms. Occupancy: the sm_75 kernels ran under the T4's shared memory
per SM (TASAM_CUDA_EMULATE_SMEM=65536); the T4's 4 MB L2 (this GPU's is
larger) is not emulated. This is an estimate, not a T4 measurement.
"""
import argparse
import math
import re
import sys

T4_TENSOR_TFLOPS = 65.0   # fp16 in, fp32 accumulate (datasheet)
T4_MEM_GBS = 320.0        # datasheet
ES = 2                    # fp16 storage on the sm_75 path


def parse_figures(path):
    figs = {}
    for line in open(path):
        p = line.split()
        if len(p) == 4 and p[0] == "FIG":
            try:
                figs[(p[1], p[2])] = float(p[3])
            except ValueError:
                pass
    return figs


def fig(figs, metric, want=None):
    """The value of `metric`, from a label containing `want` if given."""
    for (label, m), v in figs.items():
        if m == metric and (want is None or want in label):
            return v
    return None


ROW = re.compile(r"^\s+([\d.]+) ms\s+(\d+) calls\s+([\d.]+) ms/call\s+(.*)$")


def parse_profile(path):
    """[(name, ms_steady, calls_steady)] of the first table in the file."""
    rows, seen = [], False
    for line in open(path):
        if line.startswith("cuda profile"):
            if seen:
                break
            seen = True
            continue
        m = ROW.match(line)
        if seen and m:
            rows.append((m.group(4).strip(), float(m.group(1)), int(m.group(2))))
    return rows


def classify(name):
    """(class, work): work in FLOPs (gemm, attention) or bytes (memory)."""
    m = re.match(r"(linear|matmul_nn) (\d+)x(\d+)x(\d+)", name)
    if m:
        M, K, N = int(m.group(2)), int(m.group(3)), int(m.group(4))
        return "gemm", 2.0 * M * K * N
    m = re.match(r"conv2d (\d+)x(\d+)x(\d+) k(\d+) s(\d+) -> (\d+)", name)
    if m:
        cin, h, w, k, s, cout = (int(m.group(i)) for i in range(1, 7))
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        if k == 3:  # padded 3x3 (the neck)
            oh, ow = h, w
        return "gemm", 2.0 * oh * ow * cin * k * k * cout
    m = re.match(r"conv_transpose2x2\S* (\d+)x(\d+)x(\d+) -> (\d+)", name)
    if m:
        h, w, cin, cout = (int(m.group(i)) for i in range(1, 5))
        return "gemm", 2.0 * h * w * cin * cout * 4
    m = re.match(r"attention B(\d+) H(\d+) (\d+)x(\d+) D(\d+)( relpos)?", name)
    if m:
        b, h, tq, tk, d = (int(m.group(i)) for i in range(1, 6))
        f = 4.0 * b * h * tq * tk * d
        if m.group(6):
            g = int(round(math.sqrt(tk)))
            f += 4.0 * b * h * tq * (2 * g - 1) * d
        return "attention", f
    m = re.match(r"layernorm (\d+)x(\d+)", name)
    if m:
        return "memory", 2.0 * int(m.group(1)) * int(m.group(2)) * ES
    m = re.match(r"add (\d+)/(\d+)", name)
    if m:
        n, bn = int(m.group(1)), int(m.group(2))
        return "memory", (2.0 * n + bn) * ES
    m = re.match(r"(copy|activate) (\d+)", name)
    if m:
        return "memory", 2.0 * int(m.group(2)) * ES
    m = re.match(r"transpose (\d+)x(\d+)", name)
    if m:
        return "memory", 2.0 * int(m.group(1)) * int(m.group(2)) * ES
    m = re.match(r"window_(partition|unpartition_add) (\d+)x(\d+)x(\d+)", name)
    if m:
        h, w, c = int(m.group(2)), int(m.group(3)), int(m.group(4))
        hp, wp = -(-h // 14) * 14, -(-w // 14) * 14
        n = h * w * c + hp * wp * c + (h * w * c if m.group(1) == "unpartition_add" else 0)
        return "memory", float(n) * ES
    return "other", 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--figures", required=True)
    ap.add_argument("--stage", default="encoder", choices=["encoder", "decoder"])
    ap.add_argument("--gemm-peak", type=float, default=989.0,
                    help="this GPU's dense fp16 tensor peak, TFLOP/s (vendor datasheet)")
    ap.add_argument("--t4-clock-factor", type=float, default=1.0)
    a = ap.parse_args()

    figs = parse_figures(a.figures)
    rows = parse_profile(a.profile)
    calls_key = "profile_encoder_calls" if a.stage == "encoder" else "profile_decoder64_calls"
    calls = fig(figs, calls_key, "sm75")
    wall = fig(figs, "encoder_b1_ms" if a.stage == "encoder" else "decoder_64_resident_ms",
               "sm75")
    mma = fig(figs, "peak_mma_m16n8k8_tflops")
    copy = fig(figs, "peak_copy_gbs")
    missing = [k for k, v in (("profile calls", calls), ("sm_75 wall time", wall),
                              ("mma peak", mma), ("copy bandwidth", copy)) if not v]
    if not rows or missing:
        sys.exit(f"t4_estimate: missing {', '.join(missing) or 'the profile table'}")

    peak_here = {"gemm": a.gemm_peak * 1e12, "attention": mma * 1e12, "memory": copy * 1e9}
    peak_t4 = {"gemm": T4_TENSOR_TFLOPS * 1e12 * a.t4_clock_factor,
               "attention": T4_TENSOR_TFLOPS * 1e12 * a.t4_clock_factor,
               "memory": T4_MEM_GBS * 1e9}
    cls = {}
    for name, ms, n in rows:
        if n == 0:
            continue
        kind, work = classify(name)
        per_call = ms / n
        calls_per_stage = (n + 1) / calls  # the first call was left out of the table
        here = per_call * calls_per_stage
        if kind == "other" or work == 0:
            t4 = here  # unknown work: carried over as measured
        else:
            # work / (e * peak_t4) with e = achieved / peak_here: the measured
            # time scaled by the ratio of the class's peaks
            t4 = here * peak_here[kind] / peak_t4[kind]
        c = cls.setdefault(kind, [0.0, 0.0, 0.0])
        c[0] += here
        c[1] += t4
        c[2] += work * calls_per_stage
    device_here = sum(c[0] for c in cls.values())
    gap = max(0.0, wall - device_here)
    print(f"T4 estimate, {a.stage} of the sm_75 path (ViT-H), from {a.profile}:")
    print(f"| class | here: ms per {a.stage} call | work | efficiency here | T4 estimate, ms |")
    print("| --- | --- | --- | --- | --- |")
    total = gap
    for kind in ("gemm", "attention", "memory", "other"):
        if kind not in cls:
            continue
        here, t4, work = cls[kind]
        unit = "GFLOP" if kind in ("gemm", "attention") else "MB"
        wk = work / 1e9 if unit == "GFLOP" else work / 1e6
        eff = (work / (here * 1e-3) / peak_here[kind]) if kind in peak_here and here > 0 else 0
        print(f"| {kind} | {here:.3f} | {wk:.1f} {unit} | {100 * eff:.0f}% | {t4:.2f} |")
        total += t4
    print(f"| host-side gaps (wall {wall:.3f} ms less device {device_here:.3f} ms) | {gap:.3f} | "
          f"| | {gap:.2f} |")
    print(f"| **total** | {wall:.3f} | | | **{total:.1f}** |")
    print(f"(T4 peaks: {T4_TENSOR_TFLOPS} TFLOP/s fp16 tensor x clock factor "
          f"{a.t4_clock_factor}, {T4_MEM_GBS} GB/s; here: GEMM peak {a.gemm_peak} TFLOP/s "
          f"(datasheet), mma.sync {mma:.1f} TFLOP/s and copy {copy:.0f} GB/s (measured))")
    print(f"FIG t4-estimate/vit_h/fp16/sm75 {a.stage}_ms {total:.4g}")


if __name__ == "__main__":
    main()
