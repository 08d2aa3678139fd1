"""Seconds for 72 outputs per composition mode, timed through the pipeline (pixel cache warm).

Usage::

    python benchmarks/mode_speed.py --model runs/model-shoes-edges --data runs/shoes-edges [--inputs 5] \
        [--modes matched,coherent] [--threads 2]

Each mode runs with its defaults (``SynthesisOptions(mode=...)``, resolved by ``pipe.check_options``).
For each of ``--inputs`` evenly spaced val inputs (after one warm-up input), every mode runs once to
fill the pixel cache and once timed. Prints the median, min and max total and the median per step.
Pause other jobs first: the timings are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from pixelnn.data.dataset import Dataset
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--inputs", type=int, default=5)
    ap.add_argument("--modes", default="matched,coherent")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    pipe = PixelNNPipeline.from_model_dir(args.model)
    options = {m: pipe.check_options(SynthesisOptions(mode=m)) for m in modes}
    split = Dataset(args.data).split(args.split)
    idx = np.linspace(0, len(split) - 1, args.inputs + 1).astype(int)
    for mode in modes:  # warm-up: lazy weights, allocator
        pipe(np.asarray(split.inputs[idx[0]]), options[mode])
    res: dict[str, list] = {m: [] for m in modes}
    for i in idx[1:]:
        x = np.asarray(split.inputs[i])
        for mode in modes:
            pipe(x, options[mode])  # fills the pixel cache for this input's neighbours
            t = time.perf_counter()
            r = pipe(x, options[mode])
            res[mode].append((time.perf_counter() - t, r.timings))
    for mode, rows in res.items():
        total = [a for a, _ in rows]
        steps = {k: float(np.median([t[k] for _, t in rows])) for k in rows[0][1]}
        print(f"{mode}: total median {np.median(total):.2f} s (min {min(total):.2f}, max {max(total):.2f}); "
              + " ".join(f"{k}={v:.3f}" for k, v in steps.items()))


if __name__ == "__main__":
    main()
