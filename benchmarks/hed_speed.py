"""HED edge maps (issue 17, part 3): images/s at each ``--hed-scale``, against what this CPU can compute.

Times :func:`pixelnn.edges.hed_probability` (the batched, channels-last forward pass ``pixelnn prepare``
runs) on ``--photos`` photos of a dataset at every scale, and counts the network's multiply-adds with
forward hooks on its convolutions, so each row also gives the achieved GFLOP/s (2 FLOP per
multiply-add). The floor is the rate of one large float32 matrix product on the same threads (oneDNN /
MKL sgemm), about the most this CPU does; when HED's rate is close to it, more images/s need fewer FLOPs
(a smaller network or lower precision), not a faster loop. Usage::

    python benchmarks/hed_speed.py --data runs/shoes-sr --photos 64 --scales 1,2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def conv_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs (2 x multiply-adds) of the convolutions of one forward pass of ``model`` on ``x``."""
    total = [0.0]

    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total[0] += 2.0 * k * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2.0 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a prepared dataset (its train photos are used)")
    ap.add_argument("--photos", type=int, default=64)
    ap.add_argument("--scales", default="1,2")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import torch.nn.functional as F

    from pixelnn.data.dataset import Dataset
    from pixelnn.edges import hed_probability
    from pixelnn.models.hed import load_hed, preprocess

    photos = np.asarray(Dataset(args.data).split("train").photos[:args.photos])
    model = load_hed("cpu")
    peak = sgemm_gflops()
    print(f"{len(photos)} photos {photos.shape[1]}x{photos.shape[2]}, {torch.get_num_threads()} threads; "
          f"sgemm floor {peak:.0f} GFLOP/s")
    print(f"{'scale':>5s} {'images/s':>9s} {'GFLOP/image':>12s} {'GFLOP/s':>8s} {'of sgemm':>9s}")
    for scale in (float(s) for s in args.scales.split(",")):
        hed_probability(photos[:4], scale=scale)  # warm-up: weights, kernels
        t0 = time.perf_counter()
        hed_probability(photos, scale=scale)
        rate = len(photos) / (time.perf_counter() - t0)
        h, w = photos.shape[1:3]
        x = preprocess(photos[:1])
        big = (max(1, round(h * scale)), max(1, round(w * scale)))
        if big != (h, w):
            x = F.interpolate(x, size=big, mode="bicubic", align_corners=False)
        flops = conv_flops(model, x) / 1e9
        print(f"{scale:5g} {rate:9.1f} {flops:12.2f} {rate * flops:8.0f} {rate * flops / peak:9.0%}")


if __name__ == "__main__":
    main()
