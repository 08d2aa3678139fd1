"""HED edge maps (issue 17, part 3): images/s at each ``--hed-scale``, against what this CPU can compute.

Times :func:`pixelnn.edges.hed_probability` (the batched, channels-last forward pass ``pixelnn prepare``
runs) on ``--photos`` photos of a dataset at every scale, and counts the network's multiply-adds with
forward hooks on its convolutions, so each row also gives the achieved GFLOP/s (2 FLOP per
multiply-add). The floor is the rate of one large float32 matrix product on the same threads (oneDNN /
MKL sgemm), about the most this CPU does; when HED's rate is close to it, more images/s need fewer FLOPs
(a smaller network or lower precision), not a faster loop. ``--autocasts off,bf16`` adds a row per precision
(``hed_probability(autocast=...)``; GFLOP/s counts the same multiply-adds), interleaved over ``--rounds``, and
prints how far bf16's results are from float32's: the largest probability difference, and the share of the
thinned edge pixels (``postprocess_hed``) that differ or lie more than a pixel from float32's. Usage::

    python benchmarks/hed_speed.py --data runs/shoes-sr --photos 64 --scales 1,2 --autocasts off,bf16
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
    ap.add_argument("--autocasts", default="off", help="comma list of off, bf16, auto")
    ap.add_argument("--rounds", type=int, default=1, help="timings per row, interleaved; the median is printed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import torch.nn.functional as F

    from scipy import ndimage

    from pixelnn.data.dataset import Dataset
    from pixelnn.edges import hed_probability, postprocess_hed
    from pixelnn.models.hed import load_hed, preprocess

    photos = np.asarray(Dataset(args.data).split("train").photos[:args.photos])
    model = load_hed("cpu")
    peak = sgemm_gflops()
    autocasts = args.autocasts.split(",")
    print(f"{len(photos)} photos {photos.shape[1]}x{photos.shape[2]}, {torch.get_num_threads()} threads; "
          f"sgemm floor {peak:.0f} GFLOP/s; median of {args.rounds} round(s)")
    print(f"{'scale':>5s} {'autocast':>8s} {'images/s':>9s} {'GFLOP/image':>12s} {'GFLOP/s':>8s} {'of sgemm':>9s} "
          f"{'max|dp|':>8s} {'edges differ':>12s} {'>1 px away':>10s}")
    for scale in (float(s) for s in args.scales.split(",")):
        h, w = photos.shape[1:3]
        x = preprocess(photos[:1])
        big = (max(1, round(h * scale)), max(1, round(w * scale)))
        if big != (h, w):
            x = F.interpolate(x, size=big, mode="bicubic", align_corners=False)
        flops = conv_flops(model, x) / 1e9
        times: dict[str, list[float]] = {a: [] for a in autocasts}
        probs: dict[str, np.ndarray] = {}
        for a in autocasts:
            hed_probability(photos[:4], scale=scale, autocast=a)  # warm-up: weights, kernels
        for _ in range(args.rounds):
            for a in autocasts:
                t0 = time.perf_counter()
                probs[a] = hed_probability(photos, scale=scale, autocast=a)
                times[a].append(time.perf_counter() - t0)
        ref = hed_probability(photos, scale=scale) if "off" not in probs else probs["off"]
        ref_edges = postprocess_hed(ref)
        near_ref = np.stack([ndimage.binary_dilation(e, np.ones((3, 3), bool)) for e in ref_edges])
        for a in autocasts:
            rate = len(photos) / float(np.median(times[a]))
            e = postprocess_hed(probs[a])
            near = np.stack([ndimage.binary_dilation(m, np.ones((3, 3), bool)) for m in e])
            n_ref = max(1, int(ref_edges.sum()))
            differ = (e != ref_edges).sum() / n_ref
            away = ((e & ~near_ref).sum() + (ref_edges & ~near).sum()) / n_ref
            print(f"{scale:5g} {a:>8s} {rate:9.1f} {flops:12.2f} {rate * flops:8.0f} {rate * flops / peak:9.0%} "
                  f"{float(np.abs(probs[a] - ref).max()):8.4f} {differ:12.2%} {away:10.2%}")


if __name__ == "__main__":
    main()
