"""Region control on shoes (issue 14's protocol): the sole/toe region from one Subcategory, the rest from another.

Two assignments per val input: A = sole (bottom third) from ``--sole`` and the rest from ``--rest``;
B = the two swapped. Prints, over the inputs:

- the share of each region's pixels (all 72 outputs) whose source exemplar has the requested label
  (must be 100%);
- the seam rate (:func:`pixelnn.evaluation.coherence.region_seam_rates`) on pairs crossing the region
  border, in a 2-px band beside it and inside, with regions and without (same pixel pairs);
- the visible side of the seams, the mean colour step between neighbours
  (:func:`pixelnn.evaluation.coherence.region_colour_steps`) on the same pairs: with regions and the
  default border blending, with regions and ``region_blend=0`` (the bare copies), and without regions;
- LPIPS to the photo of a Rand-1 output (one seeded draw per input, the same index for every run),
  with regions and unconstrained;
- seconds per input for 72 outputs, without and with the two regions;

and writes a figure (``--figure``): input, stage 1, the regions, then four outputs unconstrained,
with A unblended, with A and with B.

Usage::

    python benchmarks/regions_shoes.py --model runs/model-shoes-sr --data runs/shoes-sr --inputs 24 \
        [--figure docs/images/regions-shoes.png]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--inputs", type=int, default=24, help="val inputs (the first N)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--key", default="Subcategory")
    ap.add_argument("--sole", default="Knee High")
    ap.add_argument("--rest", default="Ankle")
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from PIL import Image

    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluation.coherence import region_colour_steps, region_seam_rates
    from pixelnn.evaluation.lpips import lpips_distance
    from pixelnn.options import SynthesisOptions
    from pixelnn.pipeline import PixelNNPipeline

    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    size = pipe.regressor.config.size
    sole = np.zeros((size, size), bool)
    sole[2 * size // 3:] = True  # the bottom third: sole and toe
    rest = ~sole
    split = Dataset(args.data).split("val")
    n = min(args.inputs, len(split))
    xs, photos = np.asarray(split.inputs[:n]), np.asarray(split.photos[:n])

    def where(v):
        return {"where": {args.key: [v]}}

    # grid order (issue 16): output k is the same exemplar set and window in every run
    runs = {"A": SynthesisOptions(regions=[(rest, where(args.rest)), (sole, where(args.sole))], order="grid"),
            "B": SynthesisOptions(regions=[(rest, where(args.sole)), (sole, where(args.rest))], order="grid")}
    runs["A_bare"] = runs["A"].replace(region_blend=0)
    allowed = {v: pipe.library.select(where={args.key: [v]}) for v in (args.sole, args.rest)}
    wanted = {"A": {1: args.rest, 2: args.sole}, "B": {1: args.sole, 2: args.rest}}
    wanted["A_bare"] = wanted["A"]
    print(f"{len(pipe.library)} exemplars; {args.key}={args.sole}: {len(allowed[args.sole])}, "
          f"{args.key}={args.rest}: {len(allowed[args.rest])}; {n} val inputs; sole = bottom third ({sole.sum()} px)")
    pipe(xs[0])  # warm-up (the descriptor PCA, LPIPS weights)
    share = {k: [] for k in runs}
    seams = {k: [] for k in ("A", "B", "plain_A")}
    steps = {k: [] for k in ("A", "A_bare", "B", "plain_A")}
    lp = {"plain": [], "A": [], "A_bare": [], "B": []}
    times = {"plain": [], "A": []}
    cpu = {"plain": [], "A": []}  # process CPU seconds: less sensitive to other jobs on the machine
    fig_rows = None
    rng = np.random.default_rng(0)
    for i in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        plain = pipe(xs[i], order="grid")
        t1, c1 = time.perf_counter(), time.process_time()
        res = {"A": pipe(xs[i], runs["A"])}
        t2, c2 = time.perf_counter(), time.process_time()
        cpu["plain"].append(c1 - c0)
        cpu["A"].append(c2 - c1)
        res["B"] = pipe(xs[i], runs["B"])
        res["A_bare"] = pipe(xs[i], runs["A_bare"])
        times["plain"].append(t1 - t0)
        times["A"].append(t2 - t1)
        o = int(rng.integers(len(plain.outputs)))
        lp["plain"].append(float(lpips_distance(plain.outputs[o], photos[i])[0]))
        for k, r in res.items():
            assert len(r.outputs) == len(plain.outputs)
            ok = [np.isin(r.exemplar[:, r.region == s], allowed[v]).mean() for s, v in wanted[k].items()]
            share[k].append(min(ok))
            if k in seams:
                seams[k].append(region_seam_rates(r.exemplar, r.source_y, r.source_x, r.region))
            steps[k].append(region_colour_steps(r.outputs, r.region))
            lp[k].append(float(lpips_distance(r.outputs[o], photos[i])[0]))
        seams["plain_A"].append(region_seam_rates(plain.exemplar, plain.source_y, plain.source_x, res["A"].region))
        steps["plain_A"].append(region_colour_steps(plain.outputs, res["A"].region))
        if i == 0:
            pick = [0, 20, 40, 60]
            fig_rows = [plain, res["A_bare"], res["A"], res["B"]], pick
        print(f"input {i + 1}/{n}: plain {t1 - t0:.1f} s, regions {t2 - t1:.1f} s", flush=True)
    mean, med = statistics.mean, statistics.median
    for k in runs:
        print(f"assignment {k}: share of region pixels from the requested {args.key}: min over inputs "
              f"{min(share[k]) * 100:.2f}%")
    for k in ("A", "B", "plain_A"):
        s = seams[k]
        print(f"seam rate {k:8s}: crossing {mean(v['crossing'] for v in s):.3f}, band {mean(v['band'] for v in s):.3f}, "
              f"inside {mean(v['inside'] for v in s):.3f}")
    for k in ("A", "A_bare", "B", "plain_A"):
        s = steps[k]
        print(f"colour step {k:8s}: crossing {mean(v['crossing'] for v in s):.2f}, band {mean(v['band'] for v in s):.2f}, "
              f"inside {mean(v['inside'] for v in s):.2f} (levels of 255)")
    for k, v in lp.items():
        print(f"Rand-1 LPIPS {k:6s}: {mean(v):.4f}")
    for k in ("A", "A_bare", "B"):
        d = np.array(lp[k]) - np.array(lp["plain"])
        print(f"Rand-1 LPIPS {k} - plain: {d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f} (paired s.e.)")
    ratio = [a / p for a, p in zip(times["A"], times["plain"])]
    print(f"s per input (72 outputs): plain {med(times['plain']):.2f}, two regions {med(times['A']):.2f}; "
          f"ratio median {med(ratio):.2f} (min {min(ratio):.2f}, max {max(ratio):.2f})")
    cratio = [a / p for a, p in zip(cpu["A"], cpu["plain"])]
    print(f"CPU s per input: plain {med(cpu['plain']):.2f}, two regions {med(cpu['A']):.2f}; "
          f"ratio median {med(cratio):.2f} (min {min(cratio):.2f}, max {max(cratio):.2f})")
    if args.figure and fig_rows:
        results, pick = fig_rows
        up = np.asarray(Image.fromarray(results[0].input).resize((size, size), Image.NEAREST))
        overlay = results[0].stage1.astype(np.float32)
        overlay[sole] = overlay[sole] * 0.5 + np.array([0, 160, 255]) * 0.5
        overlay[rest] = overlay[rest] * 0.5 + np.array([255, 60, 160]) * 0.5
        tiles = [[up, results[0].stage1, overlay.astype(np.uint8)]]
        for r in results:
            tiles.append([r.outputs[j] for j in pick])
        gap = 4
        width = max(len(t) for t in tiles) * (size + gap)
        canvas = np.full((len(tiles) * (size + gap), width, 3), 255, np.uint8)
        for row, t in enumerate(tiles):
            for col, im in enumerate(t):
                canvas[row * (size + gap):row * (size + gap) + size, col * (size + gap):col * (size + gap) + size] = im
        Image.fromarray(canvas).save(args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
