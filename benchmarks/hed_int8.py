"""HED in int8 (issue 17, part 3): is post-training static quantization the other 2x? An experiment, not an option.

Quantizes HED's five VGG blocks with torch's FX post-training static quantization (per-channel int8 weights,
uint8 activations with a histogram observer, calibrated on ``--calibration`` train photos), keeps the side
outputs and the fusion in float32, and times it against float32 and bf16 autocast on the next ``--photos``
photos at ``--hed-scale`` (default 2), with how far each is from float32: the largest probability
difference, the share of thinned edge pixels (``postprocess_hed``) that differ, and the share more than a
pixel away. Usage::

    python benchmarks/hed_int8.py --data runs/shoes-sr [--engine x86|onednn] [--photos 64]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--photos", type=int, default=64)
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--hed-scale", type=float, default=2.0)
    ap.add_argument("--engine", choices=("x86", "onednn"), default="x86",
                    help="x86: torch's default qconfig (reduce_range); onednn: full-range activations")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # torch.ao.quantization's deprecation notices
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = args.engine
    from scipy import ndimage
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from pixelnn.data.dataset import Dataset
    from pixelnn.edges import postprocess_hed
    from pixelnn.models.hed import load_hed, preprocess

    photos = np.asarray(Dataset(args.data).split("train").photos[:args.calibration + args.photos])
    calib, test = photos[:args.calibration], photos[args.calibration:]
    hed = load_hed("cpu")
    size = tuple(round(s * args.hed_scale) for s in photos.shape[1:3])

    def enlarge(p: np.ndarray) -> torch.Tensor:
        x = preprocess(p)
        return x if size == x.shape[-2:] else F.interpolate(x, size=size, mode="bicubic", align_corners=False)

    if args.engine == "x86":
        qmap = get_default_qconfig_mapping("x86")
    else:
        qmap = QConfigMapping().set_global(QConfig(
            activation=HistogramObserver.with_args(reduce_range=False),
            weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)))
    model = copy.deepcopy(hed).to(memory_format=torch.contiguous_format)
    blocks, x = [], enlarge(calib)
    with torch.no_grad():
        for blk in model.blocks:  # each block on its own: HED's forward has shape-dependent branches
            prepared = prepare_fx(copy.deepcopy(blk).eval(), qmap, example_inputs=(x[:2],))
            for i in range(0, len(x), 8):
                prepared(x[i:i + 8])
            blocks.append(convert_fx(prepared))
            x = blk(x)

    def int8(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        sides = []
        for block, side in zip(blocks, model.sides):
            x = block(x)
            s = side(x)
            sides.append(s if s.shape[-2:] == (h, w) else F.interpolate(s, size=(h, w), mode="bilinear",
                                                                        align_corners=False))
        return torch.sigmoid(model.fuse(torch.cat(sides, 1)))

    def bf16(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return hed(x.contiguous(memory_format=torch.channels_last))

    def fp32(x: torch.Tensor) -> torch.Tensor:
        return hed(x.contiguous(memory_format=torch.channels_last))

    def run(fn) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(test), 16):
                p = fn(enlarge(test[i:i + 16])).float()
                out.append(F.interpolate(p, size=test.shape[1:3], mode="area")[:, 0].numpy())
        return np.concatenate(out)

    print(f"{len(test)} photos at scale {args.hed_scale:g} ({size[0]}x{size[1]}), {args.threads} threads, "
          f"engine {args.engine}")
    print(f"{'precision':>9s} {'images/s':>9s} {'max|dp|':>8s} {'edges differ':>12s} {'>1 px away':>10s}")
    ref = near_ref = ref_edges = None
    for name, fn in (("fp32", fp32), ("bf16", bf16), ("int8", int8)):
        run(fn)  # warm-up
        t0 = time.perf_counter()
        p = run(fn)
        rate = len(test) / (time.perf_counter() - t0)
        e = postprocess_hed(p)
        near = np.stack([ndimage.binary_dilation(m, np.ones((3, 3), bool)) for m in e])
        if ref is None:
            ref, ref_edges, near_ref = p, e, near
        n = max(1, int(ref_edges.sum()))
        print(f"{name:>9s} {rate:9.1f} {float(np.abs(p - ref).max()):8.4f} {(e != ref_edges).sum() / n:12.2%} "
              f"{((e & ~near_ref).sum() + (ref_edges & ~near).sum()) / n:10.2%}")


if __name__ == "__main__":
    main()
