#!/usr/bin/env python3
"""The figures of one bench/gpu_check.sh run as the tables issues 15 and 16
ask for (markdown on stdout).

  gpu_summary.py FIGURES.txt

FIGURES.txt holds "INFO ..." lines (the machine) and "FIG label metric
value" lines (bench_gpu, torch_sam_bench.py, t4_estimate.py, tasam-bench);
a figure a run did not produce shows as "-". Ratios are taken only between
figures of this one run.
"""
import sys


def load(path):
    info, figs = [], {}
    for line in open(path):
        p = line.split()
        if line.startswith("INFO "):
            info.append(line[5:].strip())
        elif len(p) == 4 and p[0] == "FIG":
            try:
                figs[(p[1], p[2])] = float(p[3])
            except ValueError:
                pass
    return info, figs


def cell(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def table(figs, rows, cols, title):
    """rows: [(row name, label)], cols: [(column name, metric, fmt)]."""
    print(f"\n### {title}\n")
    print("| | " + " | ".join(c[0] for c in cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    for name, label in rows:
        vals = [cell(figs.get((label, m)), f) for _, m, f in cols]
        if all(v == "-" for v in vals):
            continue
        print(f"| {name} | " + " | ".join(vals) + " |")


def main():
    info, figs = load(sys.argv[1])
    print("## GPU check")
    for i in info:
        print(f"- {i}")

    enc_rows = [("tasam bf16 (served default)", "vit_h/bf16/native"),
                ("tasam fp16", "vit_h/fp16/native"),
                ("tasam fp16, sm_75 kernels (T4 path)", "vit_h/fp16/sm75"),
                ("official PyTorch bf16", "torch/vit_h/bf16/eager"),
                ("official PyTorch bf16 + torch.compile", "torch/vit_h/bf16/compile")]
    comp = figs.get(("torch/vit_h/bf16/compile", "encoder_b1_ms"))
    if comp:
        for _, label in enc_rows:
            v = figs.get((label, "encoder_b1_ms"))
            if v:
                figs[(label, "vs_compile")] = comp / v
    table(figs, enc_rows,
          [("encoder batch 1, ms", "encoder_b1_ms", "{:.2f}"),
           ("TFLOP/s", "encoder_b1_tflops", "{:.0f}"),
           ("batch 8, ms an image", "encoder_b8_ms_per_image", "{:.2f}"),
           ("torch.compile / this (batch 1)", "vs_compile", "{:.2f}x")],
          "ViT-H encoder (random weights)")

    table(figs, enc_rows[:3],
          [("global attention TFLOP/s", "attn_global_tflops", "{:.0f}"),
           ("windows TFLOP/s", "attn_window_tflops", "{:.0f}"),
           ("GEMM qkv TFLOP/s", "gemm_qkv_tflops", "{:.0f}"),
           ("GEMM mlp1 TFLOP/s", "gemm_mlp1_tflops", "{:.0f}"),
           ("global / GEMM", "attn_global_vs_gemm_pct", "{:.0f}%"),
           ("windows / GEMM", "attn_window_vs_gemm_pct", "{:.0f}%"),
           ("decoder t2i ms", "attn_dec_t2i_ms", "{:.3f}"),
           ("decoder i2t ms", "attn_dec_i2t_ms", "{:.3f}")],
          "Attention kernels at ViT-H's shapes (goal: >= 60% of the GEMMs)")

    dec_rows = [("bf16/fp16 (served default)", "vit_h/bf16/native"),
                ("same, CUDA graphs", "vit_h/bf16/native/graphs"),
                ("fp16", "vit_h/fp16/native"),
                ("fp16, sm_75 kernels", "vit_h/fp16/sm75"),
                ("fp16, sm_75 kernels, graphs", "vit_h/fp16/sm75/graphs"),
                ("official PyTorch bf16", "torch/vit_h/bf16/eager")]
    table(figs, dec_rows,
          [("1 prompt, ms", "decoder_1_resident_ms", "{:.3f}"),
           ("16 prompts", "decoder_16_resident_ms", "{:.3f}"),
           ("64 prompts", "decoder_64_resident_ms", "{:.3f}"),
           ("64, embedding uploaded", "decoder_64_uploaded_ms", "{:.3f}")],
          "Decoder, embedding resident (goals: 1 prompt <= 0.7 ms, 64 <= 4 ms)")

    table(figs, [("bf16 (served default)", "vit_h/bf16/native"),
                 ("fp16, sm_75 kernels", "vit_h/fp16/sm75")],
          [("embedding rel L2", "agree_embedding_rel_l2", "{:.3g}"),
           ("logits rel L2", "agree_logits_rel_l2", "{:.3g}"),
           ("mean mask IoU", "agree_mask_iou", "{:.5f}")],
          "Agreement with fp32 on this GPU (same ViT-H weights, random image, 16 prompts)")

    table(figs, [("bf16 served configuration", "vit_h/bf16/native")],
          [(f"after batch {b}, MiB", f"memory_b{b}_mib", "{:.0f}") for b in (1, 2, 4, 8)] +
          [("backends, MiB", "memory_backends_mib", "{:.0f}"),
           ("CUDA context + libraries, MiB", "memory_context_mib", "{:.0f}")],
          "Device memory (ViT-H; bench/memplan gives the T4's fp16 plan)")

    table(figs, [("this GPU", "vit_h/bf16/native")],
          [("mma.sync m16n8k8 TFLOP/s", "peak_mma_m16n8k8_tflops", "{:.0f}"),
           ("copy GB/s", "peak_copy_gbs", "{:.0f}"),
           ("GEMM 8192^3 TFLOP/s", "peak_gemm_8192_tflops", "{:.0f}")],
          "Ceilings measured here (the T4 estimate's denominators)")

    table(figs, [("ViT-H, fp16, sm_75 kernels", "t4-estimate/vit_h/fp16/sm75")],
          [("encoder, ms", "encoder_ms", "{:.0f}"), ("decoder 64 prompts, ms", "decoder_ms",
                                                     "{:.1f}")],
          "T4 estimate (t4_estimate.md: method and per-class table; goal: encoder < 200 ms)")

    table(figs, [(f"{c} clients", f"serve/vit_h/bf16/c{c}") for c in (1, 8, 64)],
          [("prompts/s", "prompts_per_s", "{:.0f}"), ("p50 latency, ms", "latency_p50_ms",
                                                      "{:.2f}"),
           ("errors", "errors", "{:.0f}")],
          "tasamd over HTTP, cached image, one point a request")


if __name__ == "__main__":
    main()
