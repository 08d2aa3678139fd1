"""Region control on faces (issue 14): the eyes from one identity, the rest from the default set.

The eye band of the aligned CelebA crops (rows 40-56, columns 26-70 of 96; from the mean val face)
is one region whose exemplar set is ``identity=--identity``; every other pixel uses all exemplars.
For the first ``--inputs`` val inputs it prints how many outputs there are (a region set with fewer
than ``top_k`` exemplars reuses them, :func:`pixelnn.regions.set_ranks`), the share of eye pixels
copied from that identity (must be 100%), the seam rates and the colour steps at the border (with
the default border blending, with ``region_blend=0`` and without the region) and the seconds per
input; ``--figure`` shows, per input: input, stage 1, two unconstrained outputs, then the same three
outputs with the eyes from the identity unblended and blended; and the identity's exemplar photos
in the last row.

Usage::

    python benchmarks/regions_faces.py --model runs/model-faces-edges --data runs/faces-edges \
        [--identity 118] [--inputs 3] [--figure docs/images/regions-faces-eyes.png]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--identity", default="118")
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from PIL import Image

    from pixelnn.data.dataset import Dataset
    from pixelnn.evaluation.coherence import region_colour_steps, region_seam_rates
    from pixelnn.options import SynthesisOptions
    from pixelnn.pipeline import PixelNNPipeline

    pipe = PixelNNPipeline.from_model_dir(args.model, pixel_cache=False, device="cpu")
    size = pipe.regressor.config.size
    eyes = np.zeros((size, size), bool)
    eyes[40 * size // 96:56 * size // 96, 26 * size // 96:70 * size // 96] = True
    allowed = pipe.library.select(where={"identity": [args.identity]})
    opts = SynthesisOptions(regions=[(eyes, {"where": {"identity": [args.identity]}})], order="grid")  # output k: one spec
    split = Dataset(args.data).split("val")
    xs = np.asarray(split.inputs[:args.inputs])
    print(f"{len(pipe.library)} exemplars; identity {args.identity}: {len(allowed)}; eye band {eyes.sum()} px")
    pipe(xs[0])  # warm-up
    rows = []
    for i, x in enumerate(xs):
        t0 = time.perf_counter()
        plain = pipe(x, order="grid")
        t1 = time.perf_counter()
        r = pipe(x, opts)
        t2 = time.perf_counter()
        bare = pipe(x, opts.replace(region_blend=0))
        share = np.isin(r.exemplar[:, r.region == 1], allowed).mean()
        s = region_seam_rates(r.exemplar, r.source_y, r.source_x, r.region)
        p = region_seam_rates(plain.exemplar, plain.source_y, plain.source_x, r.region)
        print(f"input {i + 1}: {len(r.outputs)} of {len(plain.outputs)} outputs kept; eye pixels from identity "
              f"{args.identity}: {share * 100:.2f}%; seam rate crossing / band / inside {s['crossing']:.3f} / "
              f"{s['band']:.3f} / {s['inside']:.3f} (without regions {p['crossing']:.3f} / {p['band']:.3f} / "
              f"{p['inside']:.3f}); {t1 - t0:.1f} s plain, {t2 - t1:.1f} s with the region")
        for name, res in (("blended", r), ("bare", bare), ("without the region", plain)):
            c = region_colour_steps(res.outputs, r.region)
            print(f"    colour step, {name}: crossing {c['crossing']:.2f}, band {c['band']:.2f}, inside {c['inside']:.2f}")
        pick = np.linspace(0, len(r.outputs) - 1, 3).round().astype(int)
        x3 = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
        rows.append([np.asarray(Image.fromarray(x3).resize((size, size)))] + [plain.stage1]
                    + [plain.outputs[j] for j in (0, len(plain.outputs) - 1)]
                    + [bare.outputs[j] for j in pick] + [r.outputs[j] for j in pick])
    if args.figure:
        rows.append(list(pipe.library.take("photos", allowed)))
        gap = 4
        width = max(len(t) for t in rows) * (size + gap)
        canvas = np.full((len(rows) * (size + gap), width, 3), 255, np.uint8)
        for row, t in enumerate(rows):
            for col, im in enumerate(t):
                y, xx = row * (size + gap), col * (size + gap)
                canvas[y:y + size, xx:xx + size] = im
        Image.fromarray(canvas).save(args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
