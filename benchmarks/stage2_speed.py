"""Speed of stage 2: seconds for 72 outputs at 96x96, against the floor of exact search.

The floor is the time of the matrix products that exact whole-image search cannot avoid: every
query pixel against every pixel of the K = 11 exemplars, (P x d) @ (d x K*P) with P = 96*96, for
the same descriptor size d. The pipeline computes all four windows and all 18 exemplar sets
from that one product, so its time over the floor measures everything else (stage 1, retrieval,
descriptors, window maxima, composition).

Usage::

    python benchmarks/stage2_speed.py --model runs/model-shoes-sr --data runs/shoes-sr [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch

from pixelnn.data.dataset import Dataset
from pixelnn.pipeline import PixelNNPipeline


def floor_seconds(p: int, k: int, d: int, chunk: int = 1024, repeats: int = 5) -> float:
    """Median time of the unavoidable products (P x d) @ (d x K*P): the fastest way found here
    (row blocks of ``chunk`` into one preallocated output; a fresh output per block is 2x slower)."""
    q = torch.nn.functional.normalize(torch.randn(p, d), dim=1)
    flat_t = torch.nn.functional.normalize(torch.randn(k * p, d), dim=1).T.contiguous()
    out = torch.empty(min(chunk, p), k * p)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for s in range(0, p, chunk):
            torch.mm(q[s:s + chunk], flat_t, out=out[:len(q[s:s + chunk])])
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--descriptor", default="hypercolumn")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    x = np.asarray(Dataset(args.data).split("val").inputs[0])
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'descriptor':28s} {'dims':>5s} {'72 outputs (s)':>15s} {'matching (s)':>13s} {'floor (s)':>10s} "
          f"{'total/floor':>12s} {'matching/floor':>15s}")
    for pca_dims in (64, None):
        pipe = PixelNNPipeline.from_model_dir(args.model, descriptor=args.descriptor, pca_dims=pca_dims)
        pipe(x)  # warm-up: weights, caches
        runs = [pipe(x) for _ in range(args.repeats)]
        total = statistics.median(r.timings["total"] for r in runs)
        matching = statistics.median(r.timings["matching"] for r in runs)
        size = runs[0].stage1.shape[0]
        d = pipe.descriptor.dims
        floor = floor_seconds(size * size, len(runs[0].neighbours), d, repeats=args.repeats)
        print(f"{pipe.descriptor.name:28s} {d:5d} {total:15.2f} {matching:13.2f} {floor:10.2f} {total / floor:12.2f} "
              f"{matching / floor:15.2f}")
        steps = {k: round(statistics.median(r.timings[k] for r in runs), 3) for k in runs[0].timings}
        print(f"    per step (s): {steps}")


if __name__ == "__main__":
    main()
