#!/usr/bin/env python3
"""Run the official segment-anything reference on a checkpoint and an image
and write its outputs in the layout of `tasam segment --dump`, so the two can
be compared (tests/reference/compare.sh).

  reference.py --arch vit_b --checkpoint W.safetensors --image IMG \
      [--point X,Y,L]... [--box X0,Y0,X1,Y1] [--single-mask] \
      --dump OUT.safetensors [--save-pth OUT.pth]

--save-pth also writes the weights with torch.save, the format of Meta's
official .pth files, so the .pth loader is checked on a file torch wrote.
Needs torch, torchvision, numpy, Pillow and the segment-anything package.
"""
import argparse
import json
import struct

import numpy as np
import torch
from PIL import Image
from segment_anything import SamPredictor, sam_model_registry


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        b, e = info["data_offsets"]
        out[name] = torch.from_numpy(
            np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"]).copy())
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dt = {np.dtype("float32"): "F32", np.dtype("uint8"): "U8"}[arr.dtype]
        raw = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--point", action="append", default=[])
    ap.add_argument("--box")
    ap.add_argument("--single-mask", action="store_true")
    ap.add_argument("--dump", required=True)
    ap.add_argument("--save-pth")
    ap.add_argument("--fp64", action="store_true",
                    help="run the reference in float64: the exact answer both fp32 runs approximate")
    a = ap.parse_args()

    torch.set_num_threads(2)
    sd = read_safetensors(a.checkpoint)
    if a.fp64:
        torch.set_default_dtype(torch.float64)
        sd = {k: v.double() for k, v in sd.items()}
    sam = sam_model_registry[a.arch]()
    sam.load_state_dict(sd)
    sam.eval()
    if a.fp64:
        # the prompt encoder casts coordinates to float32; keep them in float64
        pe = sam.prompt_encoder.pe_layer
        encode = pe._pe_encoding
        pe._pe_encoding = lambda c: encode(c.double())
    if a.save_pth:
        torch.save(sd, a.save_pth)
    img = np.array(Image.open(a.image).convert("RGB"))
    pred = SamPredictor(sam)
    with torch.no_grad():
        pred.set_image(img)
        pts = [tuple(float(v) for v in p.split(",")) for p in a.point]
        coords = np.array([[x, y] for x, y, _ in pts]) if pts else None
        labels = np.array([int(l) for _, _, l in pts]) if pts else None
        box = np.array([float(v) for v in a.box.split(",")]) if a.box else None
        if not a.fp64:
            masks, iou, low = pred.predict(point_coords=coords, point_labels=labels, box=box,
                                           multimask_output=not a.single_mask)
        else:
            # SamPredictor.predict, without its float32 casts
            c = l = b = None
            if coords is not None:
                c = torch.as_tensor(pred.transform.apply_coords(coords, pred.original_size))[None]
                l = torch.as_tensor(labels)[None]
            if box is not None:
                b = torch.as_tensor(pred.transform.apply_boxes(box, pred.original_size))[None]
            m, i, lo = pred.predict_torch(c, l, b, None, not a.single_mask)
            masks, iou, low = m[0].numpy(), i[0].numpy(), lo[0].numpy()
        emb = pred.get_image_embedding()[0].numpy()
    write_safetensors(a.dump, {
        "image_embedding": emb.astype(np.float32),
        "iou_predictions": iou.astype(np.float32),
        "low_res_logits": low.astype(np.float32),
        "masks": masks.astype(np.uint8),
    })


if __name__ == "__main__":
    main()
