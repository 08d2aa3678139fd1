"""Region-level control (issue 14) on real data: time of 72 outputs with two regions against without, and
the seam rate at region borders against inside.

Two regions on a 96x96 shoe: the top half from one label (``--label1``, default Subcategory=Knee High)
and the bottom-left quarter from another (``--label2``, default Brand=UGG); the default set is every
exemplar. Each repeat times ``pipe(x)`` without regions and with them back to back, per input, and the
table gives the medians and the median of the per-repeat ratios (the machine is noisy). The seam rates
(:func:`pixelnn.evaluation.coherence.region_seam_rates`) are over the 72 outputs of every input, for
``matched`` and ``coherent``; provenance is checked on the way (every region pixel from its set).

Usage::

    nice -n 19 python benchmarks/regions.py --model runs/model-shoes-sr --data runs/shoes-sr \
        [--inputs 3] [--repeats 3] [--threads 1] [--pixel-cache /tmp/pc] [--skip-coherent]

Nothing is written into the model's folder: without ``--pixel-cache`` the neighbours' pixel descriptors
are computed on the fly; with it they are read from (and first stored in) that private folder, which is
warmed before timing.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def label(text: str) -> dict[str, list[str]]:
    key, _, value = text.partition("=")
    return {key: [value]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--inputs", type=int, default=3, help="val inputs (the first N)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pixel-cache", default=None, metavar="DIR", help="a private pixel cache folder")
    ap.add_argument("--label1", default="Subcategory=Knee High")
    ap.add_argument("--label2", default="Brand=UGG")
    ap.add_argument("--skip-coherent", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluation.coherence import region_seam_rates, seam_rate
    from pixelnn.options import SynthesisOptions
    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.pixel_cache import PixelDescriptorCache

    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    if args.pixel_cache:
        key = pipe._default
        desc, _ = pipe.pixel_descriptor(*key)
        pipe._descriptors[(key[0], key[1] or None)] = (desc, PixelDescriptorCache(Path(args.pixel_cache), desc))
    size = pipe.regressor.config.size
    top = np.zeros((size, size), bool)
    top[:size // 2] = True
    corner = np.zeros((size, size), bool)
    corner[size // 2:, :size // 2] = True
    regions = [(top, {"where": label(args.label1)}), (corner, {"where": label(args.label2)})]
    xs = [np.asarray(x) for x in Dataset(args.data).split("val").inputs[:args.inputs]]
    plain_opts, region_opts = SynthesisOptions(), SynthesisOptions(regions=regions)
    allowed = [None, pipe.library.select(where=label(args.label1)), pipe.library.select(where=label(args.label2))]
    print(f"{len(pipe.library)} exemplars; region 1 = top half, {args.label1} ({len(allowed[1])}); region 2 = "
          f"bottom-left quarter, {args.label2} ({len(allowed[2])}); {len(xs)} inputs, {args.threads} thread(s), "
          f"pixel cache: {args.pixel_cache or 'off (on the fly)'}")

    for x in xs:  # warm-up (and the pixel cache, when given), with the provenance check
        pipe(x, plain_opts)
        r = pipe(x, region_opts)
        for s, a in enumerate(allowed):
            used = np.unique(r.exemplar[:, r.region == s])
            assert a is None or np.isin(used, a).all(), f"set {s} copied from outside its exemplars"
    plain_t, region_t, ratios, steps = [], [], [], {"plain": [], "regions": []}
    for _ in range(args.repeats):
        for x in xs:
            t0 = time.perf_counter()
            a = pipe(x, plain_opts)
            t1 = time.perf_counter()
            b = pipe(x, region_opts)
            t2 = time.perf_counter()
            plain_t.append(t1 - t0)
            region_t.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
            steps["plain"].append(a.timings)
            steps["regions"].append(b.timings)
    med = statistics.median
    print(f"72 outputs, matched: without regions {med(plain_t):.2f} s, with two regions {med(region_t):.2f} s; "
          f"ratio median {med(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}) over {len(ratios)} runs")
    for name, ts in steps.items():
        print(f"  {name:8s} per step (median s): " + ", ".join(
            f"{k} {med(t[k] for t in ts):.2f}" for k in ("stage1", "retrieval", "descriptors", "matching",
                                                         "composition")))
    modes = ("matched",) if args.skip_coherent else ("matched", "coherent")
    for mode in modes:
        rates = []
        for x in xs:
            r = pipe(x, region_opts.replace(mode=mode))
            p = pipe(x, plain_opts.replace(mode=mode))
            rates.append((region_seam_rates(r.exemplar, r.source_y, r.source_x, r.region),
                          region_seam_rates(p.exemplar, p.source_y, p.source_x, r.region),
                          float(seam_rate(r.exemplar, r.source_y, r.source_x).mean()),
                          float(seam_rate(p.exemplar, p.source_y, p.source_x).mean())))
        m = lambda i, k: statistics.mean(v[i][k] for v in rates)  # noqa: E731
        print(f"seam rate, {mode}: with regions crossing {m(0, 'crossing'):.3f}, band (2 px) {m(0, 'band'):.3f}, "
              f"inside {m(0, 'inside'):.3f}, whole {statistics.mean(v[2] for v in rates):.3f}; without regions "
              f"(same pairs) crossing {m(1, 'crossing'):.3f}, band {m(1, 'band'):.3f}, inside {m(1, 'inside'):.3f}, "
              f"whole {statistics.mean(v[3] for v in rates):.3f}")


if __name__ == "__main__":
    main()
