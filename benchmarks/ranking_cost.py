"""Ranked outputs (issue 16 part 1): what scoring the outputs of one input costs, per score kind.

For the first ``--inputs`` inputs of a split, synthesizes the outputs in grid order (no scoring) and times
:func:`pixelnn.ranking.output_scores` on them three ways, whatever the model's own task:

- ``psnr``: the superres score against the area-downsampled photo (the outputs' own thumbnail task);
- ``edge_ap``: the edge score against the photo's HED edge map (as ``pixelnn prepare --task edges`` makes
  it), at each ``--hed-scales`` and ``--hed-autocasts`` (HED on every output: the cost of ranking an edges
  model's outputs; ``task.hed_autocast``);
- ``normal_angle``: the normals score against a sphere-shaped normal map (a face mesh pass per output;
  skipped when the face-mesh weights are not installed).

The outputs are those of the model at hand (not of an edges or normals model), so only the seconds are
meaningful for the edges and normals rows, not the scores. Prints medians over inputs, seconds per input.

Usage::

    nice -n 19 python benchmarks/ranking_cost.py --model runs/pixelnn-demo/model --data runs/pixelnn-demo/data
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
    ap.add_argument("--split", default="val")
    ap.add_argument("--inputs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hed-scales", default="1,2")
    ap.add_argument("--hed-autocasts", default="off", help="comma list of off, bf16, auto (TaskConfig.hed_autocast)")
    ap.add_argument("--no-normals", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    from pixelnn.config import TaskConfig
    from pixelnn.data.dataset import Dataset
    from pixelnn.edges import hed_edge_maps
    from pixelnn.normals import encode_normals
    from pixelnn.pipeline import PixelNNPipeline
    from pixelnn.ranking import output_scores
    from pixelnn.tasks import area_downsample

    pipe = PixelNNPipeline.from_model_dir(args.model, device="cpu")
    split = Dataset(args.data).split(args.split)
    size = pipe.task.size
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    inside = yy ** 2 + xx ** 2 < 0.6
    sphere = encode_normals(np.stack([xx, -yy, np.sqrt(np.clip(1 - xx ** 2 - yy ** 2, 0, 1))], -1), inside)
    rows: dict[str, list[float]] = {}
    synth = []
    for i in range(min(args.inputs, len(split))):
        photo = np.asarray(split.photos[i])
        t = time.perf_counter()
        result = pipe(np.asarray(split.inputs[i]), order="grid")
        synth.append(time.perf_counter() - t)
        outs = result.outputs
        cases = [("psnr", TaskConfig(name="superres", size=size, factor=pipe.task.factor),
                  area_downsample(photo[None], pipe.task.factor)[0])]
        for s in (float(v) for v in args.hed_scales.split(",")):
            for a in args.hed_autocasts.split(","):
                task = TaskConfig(name="edges", size=size, hed_scale=s, hed_autocast=a)
                cases.append((f"edge_ap (hed_scale {s:g}, hed_autocast {a})", task,
                              hed_edge_maps(photo[None], scale=s, autocast=a)[0]))
        if not args.no_normals:
            cases.append(("normal_angle", TaskConfig(name="normals", size=size), sphere))
        for name, task, x in cases:
            t = time.perf_counter()
            try:
                output_scores(outs, x, task)
            except Exception as e:  # e.g. no face-mesh weights
                print(f"{name}: skipped ({str(e).splitlines()[0]})")
                continue
            rows.setdefault(name, []).append(time.perf_counter() - t)
    print(f"{len(outs)} outputs of {size}x{size} per input, {len(synth)} inputs, {args.threads} torch threads; "
          f"synthesis (order grid) {np.median(synth):.2f} s per input")
    for name, secs in rows.items():
        print(f"{name}: {np.median(secs):.3f} s per input (min {min(secs):.3f}, max {max(secs):.3f})")


if __name__ == "__main__":
    main()
